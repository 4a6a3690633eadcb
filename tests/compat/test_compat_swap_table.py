"""DROP_INS, the modules mirroring the published paths, and the swap table of docs/compat.md agree."""
from __future__ import annotations

import importlib
import inspect

import pytest

from conftest import REPO
from curvfast.compat import DROP_INS

PAGE = (REPO / "docs" / "compat.md").read_text()
# Every published file that defines one of the scorers (read from the three repositories).
PUBLISHED = {
    ("DeepakTatachar/Curvature-Clues", path) for path in (
        "precompute_scores/precompute_cifar10_scores.py", "precompute_scores/precompute_cifar100_scores.py",
        "precompute_scores/precompute_cifar100_scores_dp.py", "precompute_scores/precompute_cifar10_mentr_scores.py",
        "precompute_scores/precompute_cifar100_mentr_scores.py", "precompute_scores/precompute_imagenet_scores.py")
} | {("DeepakTatachar/Privacy-Memorization-Curvature", path) for path in (
    "calc_curv_fz_models.py", "calc_curv_fz_imagenet_models.py", "private_model_curve_scorer.py",
    "utils/loss_curve_score.py")} | {("purdue-nrl/Memorization-Curvature", "score_imagenet_checkpoint.py")}


def test_every_published_file_has_a_drop_in():
    assert {(d.repository, d.path) for d in DROP_INS} == PUBLISHED


@pytest.mark.parametrize("drop_in", DROP_INS, ids=lambda d: d.path)
def test_the_import_line_gives_the_drop_in_and_the_page_lists_it(drop_in):
    module = importlib.import_module(drop_in.module)
    assert getattr(module, drop_in.name) is drop_in.replacement
    assert drop_in.module.endswith(drop_in.path.removesuffix(".py").replace("/", "."))
    assert f"`{drop_in.import_line}`" in PAGE
    assert f"`{drop_in.path}`" in PAGE


def test_variants_that_differ_never_share_a_function():
    """One function per published variant: entries share a function only when signature and returns agree."""
    by_function = {}
    for d in DROP_INS:
        by_function.setdefault(d.replacement, set()).add((d.name, d.returns, d.binds_net))
    assert all(len(variants) == 1 for variants in by_function.values())
    assert len(by_function) == 8


@pytest.mark.parametrize("drop_in", [d for d in DROP_INS if d.name != "CurveScore"], ids=lambda d: d.path)
def test_published_positional_arguments(drop_in):
    params = inspect.signature(drop_in.replacement).parameters
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    head = [] if drop_in.binds_net else ["net"]
    tail = ["h", "niter", "temp"] + ([] if drop_in.name == "get_regularized_curvature_for_batch" else ["device"])
    extra = ["compute_curvature"] if drop_in.name == "get_curvature_for_batch_zo" else []
    assert positional == head + ["batch_data", "batch_labels"] + tail + extra
    assert [params[n].default for n in ("h", "niter", "temp")] == [1e-3, 10, 1]


def test_readme_links_the_swap_table():
    assert "docs/compat.md" in (REPO / "README.md").read_text()
