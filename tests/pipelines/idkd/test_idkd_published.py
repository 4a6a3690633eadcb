"""idkd's published-protocol options (--mixing row-normalised, --msp-threshold, --published), checked against
faithful re-implementations of the published rules written here, and the refusals and undefined statistics."""
import json
import os

import numpy as np
import pytest
import torch

from curvfast.errors import ConfigError, UnknownNameError
from curvfast.pipelines.common.contract import config_dict
from curvfast.pipelines.idkd import PRESETS, Config, build_topology, published_msp_accepts
from curvfast.pipelines.idkd.labels import label_quality
from curvfast.pipelines.idkd.report import _mean


def _published_social15():
    """utils/graph_manager.py, GraphType.Social_15, restated: the networkx adjacency of the Florentine families
    graph (networkx's node order) plus the identity, each entry divided by its column sum broadcast along the row,
    which for this symmetric matrix is the row sum; returned with that node order."""
    import networkx as nx

    graph = nx.florentine_families_graph()
    a = nx.to_numpy_array(graph) + np.eye(15)
    return a / np.repeat([a.sum(axis=0)], 15, axis=0).T, list(graph.nodes)


def test_row_normalised_social_graph_is_the_published_matrix():
    published, order = _published_social15()
    ours = build_topology("social", 15, "row-normalised")
    index = {name: i for i, name in enumerate(sorted(order))}  # curvfast numbers the families alphabetically
    perm = [index[name] for name in order]
    np.testing.assert_allclose(ours.weights[np.ix_(perm, perm)], published, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ours.weights.sum(1), 1.0, atol=1e-12)  # row stochastic ...
    assert not np.allclose(ours.weights, ours.weights.T)  # ... but not symmetric on this irregular graph
    degree = np.array([len(n) for n in ours.neighbours])
    for i in range(15):
        np.testing.assert_allclose(ours.weights[i, [i, *ours.neighbours[i]]], 1 / (1 + degree[i]))
    metropolis = build_topology("social", 15)
    assert metropolis.neighbours == ours.neighbours and not np.allclose(metropolis.weights, ours.weights)
    assert 0 < ours.spectral_gap() < 1


@pytest.mark.parametrize("name,n", [("ring", 16), ("torus", 9), ("full", 5)])
def test_row_normalised_equals_metropolis_on_regular_graphs(name, n):
    np.testing.assert_allclose(build_topology(name, n, "row-normalised").weights, build_topology(name, n).weights)


def test_published_msp_filter_is_a_strict_fixed_threshold_at_the_label_temperature():
    logits = torch.tensor([[np.log(97.0), 0.0, 0.0], [np.log(99.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # MSP 0.97, 0.99, 1/3
    assert published_msp_accepts(logits, 0.98).tolist() == [False, True, False]
    assert published_msp_accepts(logits, 0.98, temperature=10.0).tolist() == [False, False, False]
    msp = float(torch.softmax(logits.double(), 1).amax(1)[1])
    assert not published_msp_accepts(logits, msp)[1]  # published: conf > threshold, strictly


def test_published_switch_sets_every_published_choice_and_records_them():
    cfg = Config(published=True).validate()
    settings = config_dict(cfg)
    assert settings["published"] and settings["mixing"] == "row-normalised" and settings["msp_threshold"] == 0.98
    assert Config(published=True, msp_threshold=0.9).validate().msp_threshold == 0.9  # an explicit value wins
    paper = Config(**{**PRESETS["paper"], "public_root": "/none", "device": "cpu"})  # the published filter
    assert (paper.mixing, paper.msp_threshold, paper.detector) == ("row-normalised", 0.98, "msp")
    defaults = Config().validate()
    assert defaults.mixing == "metropolis" and defaults.msp_threshold is None
    with pytest.raises(ConfigError, match="--msp-threshold .* applies to --detector msp"):
        Config(published=True, detector="knn").validate()
    with pytest.raises(ConfigError, match="--msp-threshold must be in"):
        Config(msp_threshold=1.0).validate()


def test_vrm_is_refused_before_any_node_starts(tmp_path, capsys):
    from curvfast.cli import main

    with pytest.raises(UnknownNameError, match=r"must be one of msp, .*knn.*\(got 'vrm'; vrm scores the auxiliary"):
        Config(detector="vrm").validate()
    with pytest.raises(SystemExit) as exit_:  # refused while parsing
        main(["idkd", "--out", str(tmp_path / "run"), "--detector", "vrm"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'msp'" in err and "'knn'" in err and "'vrm'" in err
    assert not os.path.exists(tmp_path / "run" / "results.json")


def test_label_statistics_are_none_where_undefined():
    targets = torch.full((3, 4), 0.25)
    got = label_quality(torch.arange(3), targets, torch.full((3,), -1))  # only foreign samples: no digit accuracy
    assert got["digit_label_accuracy"] is None and got["photo_fraction"] == 1.0
    assert label_quality(torch.arange(0), targets[:0], torch.full((3,), -1))["photo_fraction"] is None
    assert _mean([None, None]) is None and _mean([None, 0.5, 0.25]) == 0.375
    json.dumps(got, allow_nan=False)

