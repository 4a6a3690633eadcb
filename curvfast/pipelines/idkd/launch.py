"""Start an IDKD run as ``python -m torch.distributed.run --standalone --nproc-per-node=N`` worker processes,
and turn a failed run into one clear error (:class:`RunFailed`) that names the node that failed first."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from curvfast.io import atomic_write_bytes
from curvfast.pipelines.common.contract import RunFailed

__all__ = ["launch", "diagnose_failure"]


def torchrun_command(nodes: int, config_path: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nodes}",
            "--max-restarts=0", "--monitor-interval=0.5", "-m", "curvfast.pipelines.idkd.worker", config_path]


def _log_tail(path: str, lines: int = 40) -> str:
    """The last ``lines`` lines of the quiet run's ``torchrun.log`` ("" when there is none)."""
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def diagnose_failure(out: str, returncode: int) -> str:
    """One message from the ``errors/rank<r>.json`` files: the first node that failed for a reason of its own
    (not a lost neighbour), else the first to fail at all. When no node recorded an error (a process killed
    by a signal, a failed rendezvous), the message ends with the tail of a quiet run's ``torchrun.log``."""
    errors = []
    for path in glob.glob(os.path.join(out, "errors", "rank*.json")):
        with open(path) as f:
            errors.append(json.load(f))
    if not errors:
        log = os.path.join(out, "torchrun.log")
        tail = _log_tail(log)
        where = f"; the end of {log}:\n{tail}" if tail else "; rerun without --quiet to see its output"
        return f"torchrun exited with code {returncode} and no node recorded an error (killed by a signal or out of memory?){where}"
    errors.sort(key=lambda e: (e["lost_neighbour"], e["time"]))
    root = errors[0]
    message = f"node {root['node']} failed: {root['type']}: {root['message']}"
    followers = sorted(e["node"] for e in errors[1:] if e["lost_neighbour"])
    if followers:
        message += f"; nodes {followers} then stopped after losing a neighbour"
    return message + f" (torchrun exit code {returncode}; tracebacks in {os.path.join(out, 'errors')})"


def launch(config, out: str) -> dict:
    """Run ``config`` (a validated :class:`~curvfast.pipelines.idkd.pipeline.Config`) on ``config.nodes``
    local processes writing to the run folder ``out``; return the parsed ``results.json``.

    The workers read ``out/config.json``. With ``config.quiet`` their output goes to
    ``out/torchrun.log`` instead of the terminal. A failed run raises :class:`RunFailed`."""
    os.makedirs(out, exist_ok=True)
    for stale in glob.glob(os.path.join(out, "errors", "rank*.json")):
        os.unlink(stale)
    config_path = os.path.join(out, "config.json")
    atomic_write_bytes(config_path, (config.to_json() + "\n").encode())
    env = {**os.environ, "OMP_NUM_THREADS": str(config.node_threads)}
    command = torchrun_command(config.nodes, config_path)
    if config.quiet:
        with open(os.path.join(out, "torchrun.log"), "w") as log:
            proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run(command, env=env)
    if proc.returncode != 0:
        raise RunFailed(diagnose_failure(out, proc.returncode))
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)
