"""Start an IDKD run as ``python -m torch.distributed.run --standalone --nproc-per-node=N`` worker processes,
and turn a failed run into one clear error that names the node that failed first."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from curvfast.io import atomic_write_bytes
from curvfast.pipelines.idkd.config import IDKDConfig

__all__ = ["launch", "IDKDRunError", "diagnose_failure"]


class IDKDRunError(RuntimeError):
    """A worker process failed; the message names the root-cause node and its error."""


def torchrun_command(cfg: IDKDConfig, config_path: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nodes}",
            "--max-restarts=0", "--monitor-interval=0.5", "-m", "curvfast.pipelines.idkd.worker", config_path]


def diagnose_failure(out: str, returncode: int) -> str:
    """One message from the ``errors/rank<r>.json`` files: the first node that failed for a reason of its own
    (not a lost neighbour), else the first to fail at all."""
    errors = []
    for path in glob.glob(os.path.join(out, "errors", "rank*.json")):
        with open(path) as f:
            errors.append(json.load(f))
    if not errors:
        return (f"torchrun exited with code {returncode} and no node recorded an error "
                "(killed by a signal or out of memory?); rerun without --quiet to see its output")
    errors.sort(key=lambda e: (e["lost_neighbour"], e["time"]))
    root = errors[0]
    message = f"node {root['node']} failed: {root['type']}: {root['message']}"
    followers = sorted(e["node"] for e in errors[1:] if e["lost_neighbour"])
    if followers:
        message += f"; nodes {followers} then stopped after losing a neighbour"
    return message + f" (torchrun exit code {returncode}; tracebacks in {os.path.join(out, 'errors')})"


def launch(cfg: IDKDConfig) -> dict:
    """Run ``cfg`` on ``cfg.nodes`` local processes; return the parsed ``results.json``.

    With ``cfg.quiet`` the workers' output goes to ``out/torchrun.log`` instead of the terminal."""
    os.makedirs(cfg.out, exist_ok=True)
    for stale in glob.glob(os.path.join(cfg.out, "errors", "rank*.json")):
        os.unlink(stale)
    config_path = os.path.join(cfg.out, "config.json")
    atomic_write_bytes(config_path, (cfg.to_json() + "\n").encode())
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
    if cfg.quiet:
        with open(os.path.join(cfg.out, "torchrun.log"), "w") as log:
            proc = subprocess.run(torchrun_command(cfg, config_path), env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run(torchrun_command(cfg, config_path), env=env)
    if proc.returncode != 0:
        raise IDKDRunError(diagnose_failure(cfg.out, proc.returncode))
    with open(os.path.join(cfg.out, "results.json")) as f:
        return json.load(f)
