"""Precision policies (``input_curvature(precision=...)``): error against fp32 and speed, per model and method.

    python -m benchmarks.precision [--device cpu|cuda] [--batch 8] [--repeats 3] [--quick]

For each case, three weight settings: ``trained`` (the digits CNN, 10 epochs: a real, peaked model),
``peaked`` (random weights, final layer scaled to a mean max-softmax of ~0.99, labels = predictions: logits of
large magnitude, the setting that broke bf16 before) and ``random`` (the same net with its final layer
re-initialised: near-uniform softmax). Each policy (fp32 with TF32 off = the reference, tf32, bf16) scores the
same batch with the same sample ids and seed; reported: median and 95th-percentile relative error against the
reference, and median / min seconds over interleaved repeats (policies alternate within each repeat).

Writes ``benchmarks/results/<device>/precision.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import curvfast
from benchmarks.cases import build_case
from benchmarks.environment import environment, results_dir, write_results

POLICIES = ("fp32", "tf32", "bf16")
CASES = {  # case -> (method, extra options)
    "digits_cnn": ("exact", {}),
    "resnet18_c10": ("exact", {}),
    "resnet18_c100": ("sampled", {"top_classes": 10, "probes": 10}),
    "resnet50_c1000": ("sampled", {"top_classes": 10, "probes": 10}),
}


def _variants(name: str, batch: int):
    """``(label, model, x, y)`` for the weight settings of a case."""
    model, x, y, info = build_case(name, batch)
    if name == "digits_cnn":
        return [("trained", model, x, y)]
    random = build_case(name, batch)[0]
    head = random.fc if hasattr(random, "fc") else random[-1]
    torch.manual_seed(1)
    head.reset_parameters()
    with torch.no_grad():
        y_random = random(x).argmax(1)
    return [("peaked", model, x, y), ("random", random, x, y_random)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, batch: int, repeats: int, device: torch.device) -> list[dict]:
    """One row per (weights, policy): errors against fp32 and timings."""
    method, extra = CASES[name]
    rows = []
    for label, model, x, y in _variants(name, batch):
        model, x, y = model.to(device), x.to(device), y.to(device)
        ids = torch.arange(len(x), device=device)

        def call(policy):
            return curvfast.input_curvature(model, x, y, method=method, sample_ids=ids, precision=policy,
                                            **extra).value

        values = {p: call(p).double().cpu() for p in POLICIES}  # also the warm-up
        times = {p: [] for p in POLICIES}
        for _ in range(repeats):
            for p in POLICIES:  # interleaved
                _sync(device)
                start = time.perf_counter()
                call(p)
                _sync(device)
                times[p].append(time.perf_counter() - start)
        ref = values["fp32"]
        for p in POLICIES:
            rel = ((values[p] - ref).abs() / ref.abs().clamp_min(1e-300)).numpy()
            rows.append({
                "case": name, "weights": label, "method": method, "policy": p, "batch": len(x),
                "median_rel_err": float(np.median(rel)), "p95_rel_err": float(np.percentile(rel, 95)),
                "max_rel_err": float(rel.max()), "median_s": float(np.median(times[p])), "min_s": float(min(times[p])),
                "images_per_s": len(x) / float(np.median(times[p])),
            })
            print(f"{name:15s} {label:8s} {p:5s} median {rows[-1]['median_rel_err']:.2e} "
                  f"p95 {rows[-1]['p95_rel_err']:.2e} {rows[-1]['median_s']:.3f}s", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Precision policies on {result['environment']['device']}", "",
             f"`{result['command']}`; error relative to the fp32 policy (TF32 off) on the same batch, ids and seed; "
             "times: median / min of interleaved repeats.", "",
             "| case | weights | method | policy | batch | median rel. err | p95 rel. err | max | median s | min s | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['weights']} | {r['method']} | {r['policy']} | {r['batch']} | "
                     f"{r['median_rel_err']:.2e} | {r['p95_rel_err']:.2e} | {r['max_rel_err']:.2e} | "
                     f"{r['median_s']:.3f} | {r['min_s']:.3f} | {r['images_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=None, choices=tuple(CASES))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one for stable CPU ratios)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cases = args.cases or (("digits_cnn", "resnet18_c10", "resnet18_c100") if device.type == "cpu" else tuple(CASES))
    rows = [row for name in cases for row in run_case(name, args.batch, args.repeats, device)]
    result = {"command": "python -m benchmarks.precision " + " ".join(sys.argv[1:] if argv is None else argv),
              "environment": environment(device), "rows": rows}
    write_results(results_dir(device), "precision", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
