"""One node of an IDKD run: a ``torch.distributed`` process started by torchrun (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``... in the environment). ``python -m curvfast.pipelines.idkd.worker OUT/config.json``: the
run folder is the folder holding the config.

Protocol of every node (Ravikumar et al., IDKD):
1. initial decentralized training (QGM or DSGDm, gossip with neighbours every step) on the private
   shard minus a calibration hold-out;
2. soft labels of the public set from the node's model;
3. an in-distribution score (any curvfast.ood detector: MSP, k-NN feature distance, input curvature...) and
   its threshold calibrated on the hold-out (or the published fixed MSP threshold); the input curvature of the
   public set, reported whatever the filter;
4. the in-distribution subset of the public set (IDKD) or all of it (vanilla KD);
5. indices + soft labels to neighbours, aggregation, then decentralized fine-tuning on private +
   labelled public samples. The ``dsgd`` baseline fine-tunes on private data only, for the same
   number of steps. All methods start from the same phase-1 state.
Every node gathers every node's numbers (the run's one collective, for the report only) and rank 0
writes ``results.json``; a failing node writes
``errors/rank<r>.json`` before it exits, so the launcher can name the root cause.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from curvfast.distributed import init_process_group
from curvfast.io import write_json
from curvfast.metrics import auroc
from curvfast.pipelines.common.contract import write_results
from curvfast.pipelines.common.data import build_network
from curvfast.training import TrainRecipe, evaluate, fit, soft_cross_entropy
from curvfast.pipelines.idkd.config import WIDTH_MODELS, Config
from curvfast.pipelines.idkd.comm import NeighbourComm, NeighbourError
from curvfast.pipelines.idkd.data import build_data
from curvfast.pipelines.idkd.detectors import calibrated_threshold, node_scores, public_curvature, published_msp_accepts
from curvfast.pipelines.idkd.labels import aggregate_labels, label_quality, select_public
from curvfast.pipelines.idkd.optim import DecentralizedSGD
from curvfast.pipelines.idkd.partition import dirichlet_partition, iid_partition
from curvfast.pipelines.idkd.report import accuracy_figure, curvature_stats, run_summary
from curvfast.pipelines.idkd.topology import build_topology
from curvfast.errors import ConfigError

__all__ = ["run_node", "run_process", "main"]


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """``steps`` index batches of exactly ``min(batch_size, n)`` samples, walking through fresh permutations."""
    size = min(batch_size, n)
    queue = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while len(queue) < size:
            queue = torch.cat([queue, torch.randperm(n, generator=gen)])
        yield queue[:size]
        queue = queue[size:]


def _soft_cross_entropy(model, x, targets):
    return soft_cross_entropy(model(x), targets)


def _train(model, opt: DecentralizedSGD, x, targets, steps: int, cfg: Config, gen, desc: str, show: bool,
           fail: int | None = None) -> None:
    """Minimise the soft cross-entropy -sum_c t_c log softmax(f(x))_c with decentralized SGD for ``steps``
    mini-batches of ``x`` (on the CPU; :func:`fit` moves each batch to the model's device after the
    ``--augment`` transform; every optimiser step gossips with the neighbours)."""
    def batches():
        for step, idx in enumerate(tqdm(_batches(len(x), cfg.batch_size, steps, gen), total=steps, desc=desc,
                                        disable=not show, leave=False)):
            if step == fail:
                raise RuntimeError(f"injected failure on node {opt.comm.rank} at step {step} (fail_node)")
            yield x[idx], targets[idx]

    fit(model, batches(), TrainRecipe(epochs=1, optimizer=opt, schedule="constant"), loss_fn=_soft_cross_entropy,
        batch_transform=cfg.batch_transform(int(gen.initial_seed())), device=next(model.parameters()).device)


def _device_and_backend(cfg: Config) -> tuple[torch.device, str]:
    """CPU: gloo. ``cuda``: GPU ``LOCAL_RANK mod #GPUs``, NCCL when every local process gets its own GPU, else
    gloo staged through the host. ``cuda:N``: GPU N for every local process (NCCL only for one process per host)."""
    device = torch.device(cfg.device)
    if device.type == "cpu":
        return device, "gloo"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device} was requested but no GPU is visible; use --device cpu")
    count = torch.cuda.device_count()
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device.index is None:
        device, own_gpu = torch.device("cuda", local_rank % count), local_world <= count
    elif device.index >= count:
        raise ConfigError(f"--device {cfg.device}: this host has {count} GPU(s) (cuda:0 .. cuda:{count - 1})")
    else:
        own_gpu = local_world == 1
    torch.cuda.set_device(device)
    return device, "nccl" if own_gpu else "gloo"


def _finetune_rounds(steps: int, steps_per_epoch: int, every: int) -> list[int]:
    """Fine-tuning steps between label exchanges: all ``steps`` after one exchange (``every`` = 0), else
    ``every`` epochs' worth per exchange (the last round takes the rest)."""
    chunk = every * steps_per_epoch
    if every == 0 or chunk >= steps:
        return [steps]
    return [chunk] * (steps // chunk) + ([steps % chunk] if steps % chunk else [])


def run_node(cfg: Config, out: str) -> dict:
    """Run this process's node (the process group must be initialised); rank 0 writes ``out/results.json``
    and ``out/accuracy.png``. Returns the results (the same on every node)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != cfg.nodes:
        raise ConfigError(f"--nodes {cfg.nodes} but torchrun started {world} processes; make them equal")
    torch.set_num_threads(cfg.node_threads)
    device, _ = _device_and_backend(cfg)
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    show = rank == 0 and not cfg.quiet and sys.stderr.isatty()
    start = time.perf_counter()

    topology = build_topology(cfg.topology, world, cfg.mixing)
    data = build_data(cfg, cfg.public_fraction, cfg.public_photos, cfg.seed, cfg.public_dataset, cfg.public_root)
    if cfg.partition == "iid":
        parts = iid_partition(len(data.private_y), world, cfg.seed, cfg.min_samples)
    else:
        parts = dirichlet_partition(data.private_y.numpy(), world, cfg.dirichlet_alpha, cfg.seed, cfg.min_samples)
    mine = torch.from_numpy(parts[rank])
    perm = torch.randperm(len(mine), generator=torch.Generator().manual_seed(cfg.seed * 7919 + rank))
    n_calib = max(2, round(cfg.calib_fraction * len(mine)))
    x_mine = data.private_images(mine, cfg)  # this node's shard only
    t_mine = F.one_hot(data.private_y[mine], data.num_classes).float()
    x_calib, x_train, t_train = x_mine[perm[:n_calib]], x_mine[perm[n_calib:]], t_mine[perm[n_calib:]]
    x_pub = data.public_images(cfg)
    num_public = len(x_pub)

    torch.manual_seed(cfg.seed)  # identical initial model on every node
    extra = {"width": cfg.width} if cfg.model in WIDTH_MODELS else {}
    model = build_network(cfg, cfg.model, data, data.input_shape, **extra).to(device)
    comm = NeighbourComm(topology, rank, cfg.timeout, comm_device)
    opt = DecentralizedSGD(model, comm, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.algorithm)

    steps1 = cfg.epochs * math.ceil(len(data.private_y) / (world * cfg.batch_size))
    fail = cfg.fail_step if cfg.fail_node == rank else None
    _train(model, opt, x_train, t_train, steps1, cfg, torch.Generator().manual_seed(cfg.seed * 7919 + rank + 1),
           "initial training", show, fail)
    phase1 = {"accuracy": evaluate(model, data.test), "bytes": comm.bytes_sent}

    public_logits, calib_scores, public_scores = node_scores(cfg.detector, model, x_train, t_train.argmax(1),
                                                             x_calib, x_pub, cfg.knn_k)
    if cfg.msp_threshold is None:
        threshold = calibrated_threshold(calib_scores, cfg.tpr)
        accepted_public = public_scores >= threshold
    else:  # the published rule: a fixed MSP threshold
        threshold = cfg.msp_threshold
        accepted_public = published_msp_accepts(public_logits, threshold, cfg.temperature)
    curvature = -public_scores if cfg.detector == "curvature" else public_curvature(model, x_pub)
    snapshot = (copy.deepcopy(model.state_dict()), opt.state_dict())

    epoch_steps = math.ceil((len(data.private_y) + num_public) / (world * cfg.batch_size))
    steps2 = cfg.finetune_epochs * epoch_steps
    node = {"node": rank, "neighbours": list(topology.neighbours[rank]), "num_private": len(mine),
            "class_counts": np.bincount(data.private_y[mine].numpy(), minlength=data.num_classes).tolist(),
            "threshold": threshold, "initial_accuracy": phase1["accuracy"], "methods": {},
            # how well this node's score separates held-out public images (positive) from foreign ones; reporting only
            "detector_auroc_digits_vs_photos": auroc(public_scores.numpy(), data.public_is_digit.numpy(), positive=True)
            if 0 < int(data.public_is_digit.sum()) < num_public else None,
            "curvature": curvature_stats(curvature, data.public_is_digit, accepted_public)}
    for method in cfg.methods:
        model.load_state_dict(snapshot[0])
        opt.load_state_dict(snapshot[1])
        opt.lr = cfg.finetune_lr
        comm.bytes_sent = label_bytes = 0
        stats: dict = {}
        keep = torch.empty(0, dtype=torch.int64)
        targets = torch.empty(0, data.num_classes)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank + 2)
        rounds = _finetune_rounds(steps2, epoch_steps, cfg.exchange_every if method != "dsgd" else 0)
        for round_, steps in enumerate(rounds):
            if method != "dsgd":
                if round_ == 0:  # the node's own labels of the public samples its filter accepts
                    own_idx, own_labels = select_public(
                        public_logits, accepted_public if method == "idkd" else None, cfg.temperature)
                    accepted = data.public_is_digit[own_idx]
                    stats = {"own_accepted_digits": int(accepted.sum()), "own_accepted_photos": int((~accepted).sum())}
                else:  # as published: re-send the aggregated labels, so labels travel one more hop per exchange
                    own_idx, own_labels = keep, targets
                before = comm.bytes_sent
                received = comm.exchange_labels(own_idx, own_labels)
                label_bytes += comm.bytes_sent - before
                contributions = [(comm.self_weight, own_idx, own_labels)]
                contributions += [(comm.weights[j], *received[j]) for j in comm.neighbours]
                keep, targets = aggregate_labels(num_public, contributions)
                stats.update(label_quality(keep, targets, data.public_y))
            x_ft = torch.cat([x_mine, x_pub[keep]])
            t_ft = torch.cat([t_mine, targets])
            _train(model, opt, x_ft, t_ft, steps, cfg, gen, f"fine-tuning ({method})", show)
        node["methods"][method] = {"accuracy": evaluate(model, data.test), "label_bytes": label_bytes,
                                   "comm_bytes": phase1["bytes"] + comm.bytes_sent, "exchanges": len(rounds)
                                   if method != "dsgd" else 0, **stats}
    node["seconds"] = round(time.perf_counter() - start, 2)
    gathered = [None] * world
    dist.all_gather_object(gathered, node)
    results = run_summary(cfg, topology, gathered, steps=(steps1, steps2), data=data)
    if rank == 0:
        accuracy_figure(results, os.path.join(out, "accuracy.png"))
        write_results(out, results)
    return results


def _record_failure(out: str, err: BaseException) -> None:
    rank = int(os.environ.get("RANK", -1))
    write_json(os.path.join(out, "errors", f"rank{rank}.json"), {
        "node": rank, "type": type(err).__name__, "message": str(err), "time": time.time(),
        "lost_neighbour": isinstance(err, NeighbourError), "traceback": traceback.format_exc()})


def run_process(cfg: Config, out: str) -> dict:
    """Join the process group torchrun described in the environment, run this node, leave the group.
    A failure is recorded in ``out/errors/rank<r>.json`` and re-raised."""
    try:
        _, backend = _device_and_backend(cfg)
        init_process_group(backend, cfg.timeout)
        return run_node(cfg, out)
    except BaseException as err:
        _record_failure(out, err)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m curvfast.pipelines.idkd.worker CONFIG.json``: run this torchrun process's node."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m curvfast.pipelines.idkd.worker CONFIG.json  (started by torchrun)", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        run_process(Config.from_json(f.read()), os.path.dirname(os.path.abspath(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
