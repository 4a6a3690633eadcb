"""``curvfast ood --published``: the published choices the digits benchmark can run (KNN's k = 50, Sun et al. 2022).

The rule, written here from the paper rather than read from the pipeline: Sun et al. (ICML 2022) use k = 50 on
CIFAR-10; the digits default is k = 10 (a bank of 811 samples); an explicit --knn-k wins over either.
"""
from __future__ import annotations

import pytest

import curvfast.pipelines.ood as ood_pkg
import curvfast.pipelines.ood.pipeline as ood
from curvfast.cli import main
from curvfast.pipelines.common.contract import preset_config


def _published_k(published: bool, knn_k: int | None) -> int:
    return knn_k if knn_k is not None else (50 if published else 10)


@pytest.mark.parametrize("published", [False, True])
@pytest.mark.parametrize("knn_k", [None, 3])
def test_the_knn_detector_gets_the_published_k(published, knn_k):
    config = ood.Config(published=published, knn_k=knn_k)
    assert ood._posthoc_detectors(config, None)["knn"].k == _published_k(published, knn_k)


def test_the_paper_preset_turns_published_on():
    assert preset_config(ood_pkg, "paper").knn_neighbours() == 50
    assert preset_config(ood_pkg, "paper", knn_k=7).knn_neighbours() == 7  # an explicit option wins


def test_the_cli_flag_reaches_the_run(monkeypatch, tmp_path):
    seen = {}

    def fake_run(config, out=None):
        seen["config"] = config
        return {"id_accuracy": {}, "seconds": 0.0}

    monkeypatch.setattr(ood_pkg, "run", fake_run)
    assert main(["ood", "--published", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert seen["config"].published and seen["config"].knn_neighbours() == 50
