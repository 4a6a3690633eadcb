"""IDKD / decentralized learning: topologies, partitions, label aggregation, real gloo point-to-point
exchanges (gossip, timeouts, a dead neighbour) and end-to-end torchrun runs of `curvfast idkd`."""
from __future__ import annotations

import copy
import json
import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from curvfast.pipelines.idkd.comm import NeighbourComm, NeighbourError
from curvfast.pipelines.idkd.data import build_data
from curvfast.errors import ConfigError, DataError, PeerError, UnknownNameError
from curvfast.pipelines.idkd.detectors import calibrated_threshold, node_scores
from curvfast.pipelines.idkd.labels import aggregate_labels, select_public
from curvfast.pipelines.idkd.partition import class_histogram, dirichlet_partition
from curvfast.pipelines.idkd.topology import build_topology, metropolis_hastings
from conftest import read_results

TOPOLOGY_CASES = [("ring", 2), ("ring", 3), ("ring", 16), ("torus", 4), ("torus", 9), ("torus", 12), ("torus", 7),
                  ("social", 15), ("full", 2), ("full", 6)]


@pytest.mark.parametrize("name,n", TOPOLOGY_CASES)
def test_mixing_matrix_symmetric_doubly_stochastic(name, n):
    topo = build_topology(name, n)
    w = topo.weights
    assert w.shape == (n, n)
    np.testing.assert_allclose(w, w.T, atol=0)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    assert (w >= 0).all() and (np.diag(w) > 0).all()
    for i in range(n):  # nonzero off-diagonal weights are exactly the graph's neighbours
        assert set(np.flatnonzero(w[i])) - {i} == set(topo.neighbours[i])
        assert i not in topo.neighbours[i]
    assert topo.spectral_gap() > 1e-9  # connected: gossip converges to the average


def test_topology_specifics():
    np.testing.assert_allclose(build_topology("ring", 16).weights[0, [15, 0, 1]], 1 / 3)  # published ring weights
    np.testing.assert_allclose(build_topology("full", 5).weights, 0.2)
    assert all(len(nb) == 4 for nb in build_topology("torus", 16).neighbours)
    social = build_topology("social", 15)
    import networkx as nx

    assert sum(map(len, social.neighbours)) // 2 == nx.florentine_families_graph().number_of_edges() == 20
    # Metropolis-Hastings on an irregular graph (a star): centre degree 3, leaves 1
    w = metropolis_hastings(4, [(0, 1), (0, 2), (0, 3), (1, 0)])
    np.testing.assert_allclose(w[0], [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(w[1], [0.25, 0.75, 0, 0])
    with pytest.raises(ConfigError, match="--nodes 15"):
        build_topology("social", 8)
    with pytest.raises(UnknownNameError, match="topology must be one of"):
        build_topology("star", 4)
    with pytest.raises(ValueError, match="num_nodes"):
        build_topology("ring", 1)


def test_dirichlet_partition_reproducible_and_skewed():
    labels = np.repeat(np.arange(10), 100)
    a = dirichlet_partition(labels, 8, alpha=0.1, seed=3)
    b = dirichlet_partition(labels, 8, alpha=0.1, seed=3)
    c = dirichlet_partition(labels, 8, alpha=0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    allidx = np.concatenate(a)
    assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)  # disjoint cover
    assert min(map(len, a)) >= 10

    def dominance(parts):  # mean share of a node's largest class
        hist = class_histogram(labels, parts, 10)
        return float((hist.max(1) / hist.sum(1)).mean())

    assert dominance(a) > 0.5 > 0.2 > dominance(dirichlet_partition(labels, 8, alpha=1000.0, seed=3))
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(labels, 4, alpha=0.0)
    with pytest.raises(ValueError, match="nodes"):
        dirichlet_partition(labels, 200, alpha=1.0)


def test_public_set_is_disjoint_from_private_and_holds_photos():
    from curvfast.pipelines.idkd import Config

    data = build_data(Config(), public_fraction=0.25, seed=0)
    public_x, private_x = data.public_images(Config()), data.private_images(np.arange(len(data.private_y)), Config())
    pub_digits = public_x[data.public_is_digit]
    assert len(pub_digits) == round(0.25 * 1347) and (~data.public_is_digit).sum() == len(pub_digits)
    assert len(data.private_y) + len(pub_digits) == 1347 and len(private_x) == len(data.private_y)
    assert not set(data.private_idx) & set(data.public_idx)
    # held-out digits are never private samples (compare exact pixel rows; sklearn digits contain no duplicates
    # across this split at the float level other than by identity)
    private_rows = {row.numpy().tobytes() for row in private_x.flatten(1)}
    assert not any(row.numpy().tobytes() in private_rows for row in pub_digits.flatten(1))
    photos = public_x[~data.public_is_digit]
    assert photos.shape[1:] == (1, 8, 8) and float(photos.min()) >= 0 and float(photos.max()) <= 1
    shard = data.private_images([5, 2], Config())  # a node loads only its own samples, in its order
    torch.testing.assert_close(shard, private_x[[5, 2]])


def test_calibrated_threshold_and_selection():
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(200, 10, generator=gen) * 3
    scores = torch.softmax(calib, 1).amax(1)  # MSP
    thr = calibrated_threshold(scores, tpr=0.95)
    assert 0.95 <= (scores >= thr).double().mean() < 0.97  # what was asked, not much more
    idx, soft = select_public(calib, scores >= thr)
    assert torch.equal(idx, torch.nonzero(scores >= thr).flatten())
    torch.testing.assert_close(soft.sum(1), torch.ones(len(idx)))
    torch.testing.assert_close(soft, torch.softmax(calib[idx], 1))
    assert len(select_public(calib, None)[0]) == 200  # vanilla KD: no filter
    with pytest.raises(DataError, match="calibration set is empty"):
        calibrated_threshold(torch.empty(0))
    with pytest.raises(ConfigError, match="tpr must be in"):
        calibrated_threshold(scores, tpr=0.0)


def test_node_scores_are_negated_curvfast_ood_scores():
    """msp: max softmax probability; knn: minus the distance to the k-th nearest normalised training feature
    (k capped at the reference set), both through curvfast.ood's detectors and feature hook."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    gen = torch.Generator().manual_seed(2)
    ref, calib, public = (torch.randn(n, 6, generator=gen) for n in (30, 4, 7))
    y = torch.arange(30) % 3
    logits, calib_s, public_s = node_scores("msp", model, ref, y, calib, public)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(public))
        torch.testing.assert_close(public_s, torch.softmax(model(public), 1).amax(1))
        feats = model[:-1]
        r = feats(ref).double()
        r = r / r.norm(dim=1, keepdim=True)
        q = feats(public).double()
        q = q / q.norm(dim=1, keepdim=True)
    _, _, got = node_scores("knn", model, ref, y, calib, public, k=3)
    expected = -torch.cdist(q, r).kthvalue(3, dim=1).values.float()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    _, _, capped = node_scores("knn", model, ref[:2], y[:2], calib, public, k=5)
    torch.testing.assert_close(capped, node_scores("knn", model, ref[:2], y[:2], calib, public, k=2)[2])
    from curvfast.pipelines.idkd import Config

    with pytest.raises(UnknownNameError, match="--detector must be one of"):
        Config(detector="nope").validate()


def test_label_aggregation_weighted_and_never_empty():
    gen = torch.Generator().manual_seed(1)

    def soft(k):
        return torch.softmax(torch.randn(k, 4, generator=gen, dtype=torch.float64), 1).float()

    own = (1 / 3, torch.tensor([0, 2, 5]), soft(3))
    left = (1 / 3, torch.tensor([2, 3]), soft(2))
    right = (1 / 3, torch.empty(0, dtype=torch.int64), torch.empty(0, 4))  # a neighbour that labelled nothing
    far = (1 / 6, torch.tensor([5]), soft(1))
    idx, targets = aggregate_labels(8, [own, left, right, far])
    assert idx.tolist() == [0, 2, 3, 5]  # 1, 4, 6, 7: nobody labelled them -> no target at all
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert (targets.sum(1) > 0).all()
    expected = {
        0: own[2][0].double(),
        2: (own[2][1].double() + left[2][0].double()) / 2,
        3: left[2][1].double(),
        5: (own[2][2].double() / 3 + far[2][0].double() / 6) / (1 / 3 + 1 / 6),
    }
    for row, s in enumerate(idx.tolist()):
        torch.testing.assert_close(targets[row].double(), expected[s], atol=1e-6, rtol=0)
    # only contributors with no labels at all: an empty target set, not zero rows
    idx_e, t_e = aggregate_labels(8, [right])
    assert len(idx_e) == 0 and t_e.shape == (0, 4)
    with pytest.raises(DataError, match="positive"):
        aggregate_labels(8, [(0.0, torch.tensor([1]), soft(1))])
    with pytest.raises(DataError, match="twice"):
        aggregate_labels(8, [(0.5, torch.tensor([1, 1]), soft(2))])


def _solo_comm():
    """A one-node graph: gossip is the identity and needs no process group."""
    from curvfast.pipelines.idkd.topology import Topology

    return NeighbourComm(Topology("solo", np.ones((1, 1)), ((),)), 0, timeout_s=1.0, comm_device=torch.device("cpu"))


def _tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen)


def test_dsgdm_on_one_node_is_heavy_ball_sgd():
    from curvfast.pipelines.idkd.optim import DecentralizedSGD

    model, x, y = _tiny_problem()
    ref = copy.deepcopy(model)
    opt = DecentralizedSGD(model, _solo_comm(), lr=0.1, momentum=0.9, weight_decay=1e-3, algorithm="dsgdm")
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        for net in (model, ref):
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)


def test_qgm_momentum_update_on_one_node():
    """Without neighbours x' = x - eta (g + beta m), so m <- beta m + (1 - beta)(g + beta m)."""
    from curvfast.pipelines.idkd.optim import DecentralizedSGD

    model, x, y = _tiny_problem()
    opt = DecentralizedSGD(model, _solo_comm(), lr=0.1, momentum=0.9, weight_decay=0.0, algorithm="qgm")
    params = list(model.parameters())
    m = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for _ in range(4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        theta = torch.cat([p.detach().reshape(-1) for p in params]).clone()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        opt.step()
        torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params]), theta - 0.1 * (g + 0.9 * m))
        m = 0.9 * m + 0.1 * (g + 0.9 * m)
        torch.testing.assert_close(opt.momentum, m, atol=1e-10, rtol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _p2p_worker(rank, world, port, mode, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=20))
    topo = build_topology("ring", world)
    comm = NeighbourComm(topo, rank, timeout_s=3.0, comm_device=torch.device("cpu"))
    try:
        if mode == "gossip":
            x = torch.arange(5, dtype=torch.float32) + 10 * rank
            mixed = comm.gossip(x)
            labels = torch.full((rank, 3), float(rank))  # node 0 accepts nothing
            got = comm.exchange_labels(torch.arange(rank), labels)
            _save(folder, rank, (mixed, comm.bytes_sent, {j: (i.tolist(), lab.tolist()) for j, (i, lab) in got.items()}))
        elif rank == 1:  # mode "dead": exits without a word; mode "stall": alive but silent
            if mode == "dead":
                os._exit(0)
            time.sleep(6)
        else:
            try:
                comm.gossip(torch.ones(4))
                _save(folder, rank, "no error")
            except NeighbourError as err:
                _save(folder, rank, str(err))
    finally:
        if mode == "gossip":
            dist.destroy_process_group()


def _save(folder, rank, obj):
    torch.save(obj, os.path.join(folder, f"rank{rank}.pt"))


def _spawn(world, mode, folder):
    """Run ``_p2p_worker`` on ``world`` real gloo processes; return ``{rank: what it saved}``."""
    ctx = mp.start_processes(_p2p_worker, args=(world, _free_port(), mode, str(folder)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        assert time.monotonic() < deadline, "p2p workers did not finish"
    return {int(f[4:-3]): torch.load(os.path.join(folder, f), weights_only=False) for f in os.listdir(folder)}


def test_gossip_and_label_exchange_over_gloo(tmp_path):
    world = 3
    res = _spawn(world, "gossip", tmp_path)
    w = torch.from_numpy(build_topology("ring", world).weights)
    x = torch.stack([torch.arange(5, dtype=torch.float64) + 10 * r for r in range(world)])
    for rank in range(world):
        mixed, sent, labels = res[rank]
        torch.testing.assert_close(mixed.double(), (w @ x)[rank], atol=1e-5, rtol=0)
        # 5 floats to 2 neighbours, one int64 count to each, then rank ids (int32) and rank x 3 labels (float32)
        assert sent == 2 * 5 * 4 + 2 * 8 + (2 * rank * 4 + 2 * rank * 3 * 4)
        for j, (idx, lab) in labels.items():
            assert idx == list(range(j)) and lab == [[float(j)] * 3] * j


def test_neighbour_error_is_a_peer_error():
    """A lost neighbour is a failed collective: ``except PeerError`` (and ``except RuntimeError``) catch it."""
    assert issubclass(NeighbourError, PeerError) and issubclass(NeighbourError, RuntimeError)


@pytest.mark.parametrize("mode", ["dead", "stall"])
def test_lost_neighbour_raises_clear_error(mode, tmp_path):
    """A neighbour that died (connection closed) or stalls (timeout) ends the exchange with NeighbourError."""
    message = _spawn(2, mode, tmp_path)[0]
    assert message.startswith("node 0: gossip with neighbours [1] failed"), message
    assert "crashed, stalled or exceeded the 3 s timeout" in message


def _run_cli(tmp_path, *extra):
    from curvfast.cli import main

    out = str(tmp_path / "run")
    rc = main(["idkd", "--out", out, "--epochs", "2", "--finetune-epochs", "1", "--width", "8", "--batch-size", "16",
               "--public-photos", "100", "--timeout", "30", "--quiet", *extra])
    return rc, out


def test_cli_three_node_ring_run(tmp_path, capsys):
    rc, out = _run_cli(tmp_path, "--nodes", "3", "--topology", "ring", "--dirichlet-alpha", "0.1")
    assert rc == 0, capsys.readouterr().err
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["methods"]) == {"dsgd", "vanilla_kd", "idkd"}
    assert os.path.isfile(os.path.join(out, "accuracy.png"))
    state = sum(t.numel() for t in _small_cnn_state(8))
    steps = res["steps"]["initial"] + res["steps"]["finetune"]
    for name, m in res["methods"].items():
        assert len(m["node_accuracy"]) == 3 and m["mean_accuracy"] == pytest.approx(np.mean(m["node_accuracy"]))
        assert all(0.0 <= a <= 1.0 for a in m["node_accuracy"])
        # gossip: every step each of 3 nodes sends its float32 state to its 2 neighbours; plus the label messages
        assert m["comm_bytes"] - m["label_bytes"] == steps * 3 * 2 * state * 4
    assert res["methods"]["dsgd"]["label_bytes"] == 0
    vanilla, idkd = res["methods"]["vanilla_kd"], res["methods"]["idkd"]
    public = res["data"]["public_digits"] + res["data"]["public_photos"]
    assert vanilla["mean_num_targets"] == public  # no filter: every public sample gets a target
    assert 0 < idkd["mean_num_targets"] <= public
    assert idkd["label_bytes"] <= vanilla["label_bytes"] == 3 * 2 * (8 + public * (4 + 10 * 4))
    assert res["data"]["public_photos"] == 100 and res["topology"]["name"] == "ring"


def _small_cnn_state(width):
    from curvfast.models import build_model

    model = build_model("small_cnn", 10, 1, width=width)
    return [p for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]


def test_cli_crashed_node_gives_clear_error(tmp_path, capsys):
    rc, out = _run_cli(tmp_path, "--nodes", "2", "--fail-node", "1", "--fail-step", "2")
    err = capsys.readouterr().err
    assert rc == 1
    assert "curvfast idkd: error: node 1 failed: RuntimeError: injected failure on node 1 at step 2" in err
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_cli_bad_arguments(tmp_path, capsys):
    from curvfast.cli import main

    assert main(["idkd", "--out", str(tmp_path), "--nodes", "8", "--topology", "social"]) == 2
    assert "--nodes 15" in capsys.readouterr().err
    assert main(["idkd", "--out", str(tmp_path), "--calib-fraction", "1.5"]) == 2
    assert "--calib-fraction" in capsys.readouterr().err


def test_under_an_outer_torchrun_every_process_runs_its_node(tmp_path):
    """`torchrun -m curvfast idkd` spawns nothing: each process is one node, rank 0 writes the run
    folder, and every process returns (and prints) the same results."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0",
         "-m", "curvfast", "idkd", "--out", str(out), "--epochs", "1", "--finetune-epochs", "1", "--width", "8",
         "--batch-size", "16", "--public-photos", "50", "--methods", "dsgd,idkd"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["nodes"] == 2 and set(res["methods"]) == {"dsgd", "idkd"}
    assert not (out / "config.json").exists()  # nothing was launched
    printed = proc.stdout.count(f'"dsgd": {res["methods"]["dsgd"]["mean_accuracy"]}')
    assert printed == 2, proc.stdout


def test_smoke_run_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(cifar_folder, tmp_path, capsys):
    """The issue's done-when command on a generated CIFAR-shaped folder: RGB 32x32 shards, normalisation inside
    the model, crop-flip, an IID split; results.json records the resolved config."""
    from curvfast.cli import main

    out = tmp_path / "run"
    rc = main(["idkd", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(cifar_folder), "--normalize", "cifar10",
               "--augment", "crop-flip", "--device", "cpu", "--partition", "iid", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = read_results(out)
    s = res["settings"]
    assert (s["dataset"], s["normalize"], s["augment"], s["device"], s["nodes"], s["partition"]) == (
        "imagefolder", "cifar10", "crop-flip", "cpu", 2, "iid")
    assert res["data"] == {"private": 225, "public_digits": 75, "public_photos": 50, "test": 100}
    assert [n["num_private"] for n in res["nodes"]] == [113, 112]  # the IID split: equal shards
    for m in res["methods"].values():
        assert len(m["node_accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in m["node_accuracy"])
    assert (out / "accuracy.png").stat().st_size > 0


def test_exchange_every_resends_the_aggregated_labels_during_fine_tuning(tmp_path, capsys):
    """--exchange-every 1 with 2 fine-tuning epochs: two label exchanges per node; the second re-sends the labels
    the node aggregated in the first (the published rule), not its own selection again. With --published: the
    published fixed MSP threshold and mixing are the ones used and recorded."""
    rc, out = _run_cli(tmp_path, "--nodes", "2", "--methods", "vanilla_kd,idkd", "--finetune-epochs", "2",
                       "--exchange-every", "1", "--epochs", "1", "--published")
    assert rc == 0, capsys.readouterr().err
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["settings"]["published"] and res["topology"]["mixing"] == "row-normalised"
    assert res["detector"]["threshold"] == "fixed MSP > 0.98" and [n["threshold"] for n in res["nodes"]] == [0.98] * 2
    public = res["data"]["public_digits"] + res["data"]["public_photos"]
    assert [n["methods"]["vanilla_kd"]["exchanges"] for n in res["nodes"]] == [2, 2]
    assert res["methods"]["vanilla_kd"]["label_bytes"] == 2 * 2 * (8 + public * (4 + 10 * 4))
    per = [n["methods"]["idkd"] for n in res["nodes"]]  # one neighbour each: 8 + k (4 + 4 C) bytes per message
    own = [p["own_accepted_digits"] + p["own_accepted_photos"] for p in per]
    aggregated = [p["num_targets"] for p in per]  # on a 2-node ring: the union of both selections, on both nodes
    assert aggregated[0] == aggregated[1] >= max(own)
    assert res["methods"]["idkd"]["label_bytes"] == sum(2 * 8 + (k + a) * 44 for k, a in zip(own, aggregated))


def test_finetune_rounds_split_the_steps_between_exchanges():
    from curvfast.pipelines.idkd.worker import _finetune_rounds

    assert _finetune_rounds(30, 10, 0) == [30]
    assert _finetune_rounds(30, 10, 1) == [10, 10, 10]
    assert _finetune_rounds(30, 10, 2) == [20, 10]
    assert _finetune_rounds(30, 10, 5) == [30]
    assert _finetune_rounds(0, 10, 1) == [0]


def test_device_and_data_options_are_checked_before_launch(cifar_folder, tmp_path, capsys):
    from curvfast.cli import main

    assert main(["idkd", "--out", str(tmp_path), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["idkd", "--out", str(tmp_path), "--device", "cuda:0"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["idkd", "--out", str(tmp_path), "--public-dataset", "cifar100"]) == 2
    assert "--public-root" in capsys.readouterr().err
    assert main(["idkd", "--out", str(tmp_path), "--normalize", "bogus"]) == 2
    assert main(["idkd", "--out", str(tmp_path), "--public-fraction", "0", "--public-photos", "0"]) == 2
    assert "public set empty" in capsys.readouterr().err
    assert main(["idkd", "--out", str(tmp_path), "--dataset", "imagefolder", "--root", str(tmp_path / "none"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "only_train").mkdir()
    (tmp_path / "only_train" / "train").symlink_to(cifar_folder / "train")  # a folder without test/ is refused
    assert main(["idkd", "--out", str(tmp_path), "--dataset", "imagefolder", "--root", str(tmp_path / "only_train"),
                 "--quiet"]) == 2
    assert "no 'test' split" in capsys.readouterr().err


def test_public_set_from_a_second_dataset_without_held_out_images(cifar_folder):
    """--public-fraction 0 --public-dataset: every training image is private, the public set is the other dataset
    (the published recipe: CIFAR private data, Tiny ImageNet public data), all of it foreign for the reports."""
    from curvfast.pipelines.idkd import Config

    options = Config(dataset="imagefolder", root=str(cifar_folder))
    data = build_data(options, public_fraction=0.0, public_photos=0, public_dataset="imagefolder",
                      public_root=str(cifar_folder))
    assert len(data.private_y) == 300 and len(data.public_idx) == 0
    public = data.public_images(options)
    assert public.shape == (300, 3, 32, 32) and not data.public_is_digit.any()
    with pytest.raises(ConfigError, match="public set is empty"):
        build_data(options, public_fraction=0.0, public_photos=0)


def test_a_node_killed_by_a_signal_is_reported_with_the_end_of_the_quiet_log(tmp_path, monkeypatch):
    """A process that dies without recording an error (here SIGKILL after some output): the quiet run's error
    carries the end of torchrun.log instead of only asking for a rerun."""
    import importlib
    import sys

    from curvfast.pipelines.common.contract import RunFailed
    from curvfast.pipelines.idkd.pipeline import Config

    launch_module = importlib.import_module("curvfast.pipelines.idkd.launch")

    killer = "import os, signal; print('last words of the node', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(launch_module, "torchrun_command", lambda nodes, path: [sys.executable, "-c", killer])
    with pytest.raises(RunFailed) as err:
        launch_module.launch(Config(quiet=True), str(tmp_path))
    message = str(err.value)
    assert f"exited with code {-9}" in message and "no node recorded an error" in message
    assert "last words of the node" in message and "torchrun.log" in message
