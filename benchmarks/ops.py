"""Run the op-level pytest-benchmark suite and tabulate native vs composed torch per op.

    python -m benchmarks.ops [--device cpu|cuda]

Writes ``benchmarks/results/<device>/ops.{json,md}``: per op and implementation the median and
minimum of 5 rounds, and each composed-torch implementation's median over the native median.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from benchmarks.environment import environment, results_dir, write_results


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Device: {env['device']}, torch {env['torch']}, {env['threads']} threads; B=256, C=1000, D=3·224·224.", "",
             "| op | implementation | median ms | min ms | median / native |", "|---|---|---|---|---|"]
    for op, impls in result["ops"].items():
        native = impls["native"]["median_s"]
        for impl, row in impls.items():
            lines.append(f"| {op} | {impl} | {row['median_s'] * 1e3:.1f} | {row['min_s'] * 1e3:.1f} | {row['median_s'] / native:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "bench.json")
        env = {**os.environ, "CURVFAST_BENCH_DEVICE": args.device}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(os.path.dirname(__file__), "test_ops_speed.py"),
                        f"--benchmark-json={raw}", "--benchmark-disable-gc"], check=True, env=env)
        with open(raw) as f:
            bench = json.load(f)
    ops: dict[str, dict] = {}
    for b in bench["benchmarks"]:
        ops.setdefault(b["group"], {})[b["params"]["impl"]] = {"median_s": b["stats"]["median"], "min_s": b["stats"]["min"],
                                                                "rounds": b["stats"]["rounds"]}
    result = {"environment": environment(device), "ops": ops}
    write_results(args.out or results_dir(device), "ops", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
