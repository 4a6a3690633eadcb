"""The published Verifix protocol's oracle choices (``--oracle-ranking``, ``--oracle-alpha``, ``--published``),
each checked against a re-implementation of the authors' rule written here from their ``utils.py``
(github.com/sangamesh-kodge/Verifix): ``get_high_low_curve_dataloader`` ranks the whole training split
(validation part included) under its true labels; ``activation_projection_based_unlearning`` keeps the α
whose accuracy on the validation samples with unflipped labels beats the original model's (strictly, in
grid order)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from curvfast.cli import main
from curvfast.engine import score
from curvfast.errors import DataError
from curvfast.io import load_checkpoint
from curvfast.pipelines.verifix import Config, apply_projectors, layer_spectra, projectors_for, run
from curvfast.pipelines.common.data import build_network, load_split
from curvfast.training import evaluate

ALPHAS = (3.0, 30.0, 1e3, 1e4)  # small values: on a 2-epoch model they move the validation accuracy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch noisy-label digits model (random verified set), its run folder and the train split."""
    out = tmp_path_factory.mktemp("verifix_base")
    config = Config(epochs=2, verified_size=20, method="random", alphas=ALPHAS, quiet=True)
    res = run(config, out=str(out))
    train_full, info = load_split(config, "train")
    return out, res, train_full, info


def _rerun(trained, tmp_path, **options) -> tuple[dict, dict]:
    out, _, _, _ = trained
    res = run(Config(epochs=2, verified_size=20, alphas=ALPHAS, quiet=True, checkpoint=str(out / "trained.pt"),
                     **options), out=str(tmp_path))
    return res, dict(np.load(tmp_path / "verified.npz"))


def _model(trained):
    out, _, train_full, info = trained
    net = build_network(Config(), "small_cnn", info, tuple(train_full[0][0].shape))
    net.load_state_dict(load_checkpoint(str(out / "trained.pt"))["state_dict"])
    return net.eval()


def test_oracle_alpha_is_the_published_rule_on_the_unflipped_validation_samples(trained, tmp_path):
    res, npz = _rerun(trained, tmp_path, method="random", oracle_alpha=True)
    _, noisy_res, train_full, _ = trained
    net = _model(trained)
    # the published rule, written out: the validation samples whose label was not flipped, scored with it
    val = npz["validation_index"]
    kept = val[~npz["flipped"][val]]
    x = torch.stack([train_full[int(i)][0] for i in kept])
    oracle_val = TensorDataset(x, torch.as_tensor(npz["clean_label"][kept]))
    verified = Subset(train_full, npz["verified_split_index"].tolist())
    spectra = layer_spectra(net, verified, max_rows=Config().max_rows, seed=0)
    best_alpha, best = None, evaluate(net, oracle_val)
    accuracies = {}
    for alpha in ALPHAS:  # grid order, strict improvement over the original model (ties keep the earlier choice)
        candidate = copy.deepcopy(net)
        apply_projectors(candidate, projectors_for(spectra, alpha))
        accuracies[f"{alpha:g}"] = evaluate(candidate, oracle_val)
        if accuracies[f"{alpha:g}"] > best:
            best_alpha, best = alpha, accuracies[f"{alpha:g}"]
    assert res["alpha_validation_size"] == len(kept) < len(val)
    assert res["verifix"]["validation_by_alpha"] == pytest.approx(accuracies, abs=1e-12)
    assert res["verifix"]["validation_before"] == pytest.approx(evaluate(net, oracle_val), abs=1e-12)
    assert res["alpha"] == best_alpha
    # the default scores α on the whole validation part under its noisy labels: other numbers
    assert noisy_res["alpha_validation_size"] == len(val)
    assert noisy_res["verifix"]["validation_by_alpha"] != res["verifix"]["validation_by_alpha"]
    assert res["settings"]["oracle_alpha"] and not noisy_res["settings"]["oracle_alpha"]


def test_oracle_ranking_ranks_the_whole_split_under_its_true_labels(trained, tmp_path):
    res, npz = _rerun(trained, tmp_path, method="exact", oracle_ranking=True)
    _, _, train_full, _ = trained
    n = len(train_full)
    assert npz["ranked_index"].tolist() == list(range(n))  # the validation part is ranked too
    # the published ranking, written out: curvature under the true labels, the lowest per true class
    curv = score(_model(trained), train_full, method="exact", progress=False).score
    np.testing.assert_allclose(npz["curvature"], curv, rtol=1e-6)
    clean = npz["clean_label"]
    expected = np.sort(np.concatenate([np.flatnonzero(clean == c)[np.argsort(curv[clean == c], kind="stable")[:2]]
                                       for c in range(10)]))
    assert npz["verified_split_index"].tolist() == expected.tolist()
    assert res["verified_from_validation"] == int(np.isin(expected, npz["validation_index"]).sum())
    # grouped by the noisy labels (the default's classes) the same scores give another set: the oracle reads the truth
    noisy = npz["noisy_label"]
    by_noisy = np.concatenate([np.flatnonzero(noisy == c)[np.argsort(curv[noisy == c], kind="stable")[:2]]
                               for c in range(10)])
    assert set(by_noisy.tolist()) != set(expected.tolist())


def test_published_turns_on_both_oracles_and_the_fd_ranking_and_records_them(trained, tmp_path):
    assert (Config(published=True).oracle_ranking, Config(published=True).oracle_alpha) == (True, True)
    assert Config(published=True).method == "fd" and Config().method == "auto" and not Config().oracle_alpha
    assert Config(published=True, method="random").method == "random"  # an explicit other method is kept
    out, _, _, _ = trained
    assert main(["verifix", "--epochs", "2", "--verified-size", "20", "--alphas", "1e4", "--method", "random",
                 "--published", "--checkpoint", str(out / "trained.pt"), "--out", str(tmp_path), "--quiet"]) == 0
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert (settings["published"], settings["oracle_ranking"], settings["oracle_alpha"]) == (True, True, True)
    assert len(np.load(tmp_path / "verified.npz")["ranked_index"]) == settings["train_size"] + settings["validation_size"]


def test_the_paper_preset_runs_the_published_protocol_and_no_published_turns_it_off():
    from curvfast.pipelines.common.contract import preset_config
    import curvfast.pipelines.verifix as verifix

    paper = preset_config(verifix, "paper")
    assert (paper.published, paper.oracle_ranking, paper.oracle_alpha, paper.method) == (True, True, True, "fd")
    ours = preset_config(verifix, "paper", published=False)  # what --preset paper --no-published builds
    assert (ours.oracle_ranking, ours.oracle_alpha, ours.method) == (False, False, "fd")


def test_oracle_alpha_without_an_unflipped_validation_sample_is_refused():
    from curvfast.pipelines.verifix.pipeline import _unflipped

    with pytest.raises(DataError, match="--oracle-alpha"):
        _unflipped(None, np.array([0, 1]), torch.tensor([0, 1, 2]), torch.tensor([True, True, False]))
