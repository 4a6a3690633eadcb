"""``curvfast idkd``: the settings of a run (:class:`Config`, handed to every node process as JSON)
and :func:`run`, which starts the node processes with torchrun (or, inside an outer torchrun, runs
this process's node).

IDKD (Ravikumar et al., "Homogenizing non-IID datasets via in-distribution knowledge distillation
for decentralized learning"): after decentralized training, every node labels the public samples
its calibrated in-distribution filter accepts, neighbours exchange and average those soft labels
with the mixing weights, and every node fine-tunes on private + labelled public data.
"""
from __future__ import annotations

import os

from curvfast.errors import ConfigError
from curvfast.pipelines.common.contract import run_folder
from curvfast.pipelines.common.data import load_split
from curvfast.pipelines.idkd.config import METHODS, PRESETS, Config
from curvfast.pipelines.idkd.launch import launch
from curvfast.pipelines.idkd.report import format_table
from curvfast.pipelines.idkd.worker import run_process

__all__ = ["Config", "PRESETS", "run", "summary", "METHODS"]


def _outer_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run(config: Config, out: str | None = None) -> dict:
    """Run ``config`` and return the results, which rank 0 writes to ``out/results.json`` with
    ``out/accuracy.png``. Standalone, ``config.nodes`` worker processes are started with torchrun
    (``out/config.json`` is their settings); inside an outer torchrun (``RANK`` and ``WORLD_SIZE``
    set) this process runs its own node and every node returns the same results. A failed node
    raises :class:`~curvfast.pipelines.common.contract.RunFailed` naming the node that failed first."""
    config.validate()
    with run_folder(out) as folder:
        if _outer_torchrun():
            if int(os.environ["WORLD_SIZE"]) != config.nodes:
                raise ConfigError(f"--nodes {config.nodes} differs from torchrun's WORLD_SIZE {os.environ['WORLD_SIZE']}")
            results = run_process(config, folder)
        else:
            for split in ("train", "test"):  # a missing dataset or split fails here, before any node starts
                load_split(config, split)
            results = launch(config, folder)
    if not config.quiet and int(os.environ.get("RANK", 0)) == 0:
        print(format_table(results))
    return results


def summary(results: dict) -> dict:
    """What ``curvfast idkd`` prints: the mean test accuracy of the initial model and of every method, the run time."""
    return {"initial_accuracy": results["initial"]["mean_accuracy"],
            "mean_accuracy": {m: v["mean_accuracy"] for m, v in results["methods"].items()},
            "seconds": results["seconds"]}
