"""Norm-scaling against MSP on an unsaturated in-distribution task, paired per seed (docs/ood.md, issue 29).

``python -m benchmarks.ood_unsaturated [--epochs 2,3,5,10,30 --seeds 0,1,2,3,4 --out FILE.md]`` runs
``curvfast ood``'s benchmark (digits 0-5 in distribution, its five OoD sets, every registered detector) once per
seed and training length, single-threaded; the short runs leave neither the ID accuracy nor MSP at its ceiling,
30 epochs is the default (saturated) run. Each seed trains, fits and scores exactly as ``curvfast ood --epochs E
--seeds S`` does (a seed's networks, OoD sets and scores do not depend on the other seeds). It writes markdown:
a summary of norm-scaling minus MSP per training length, then per length every detector's AUROC and FPR95
(average over the OoD sets, mean ± sample sd over seeds), its paired difference from MSP (mean ± sd, and on how
many seeds it beats MSP), norm-scaling's per-seed numbers, and the wall time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from curvfast.pipelines.ood import Config, run

REFERENCE = "msp"
HEADLINE = ("norm_scaling", "norm_scaling_features")  # the published method: on the logits, on class-mean similarities


def one_seed(epochs: int, seed: int, folder: str) -> dict:
    """``curvfast ood --epochs epochs --seeds seed --quiet --out folder``'s results."""
    return run(Config(epochs=epochs, seeds=(seed,), quiet=True), out=folder)


def _ms(values, signed: bool = False) -> str:
    """mean ± sample sd (ddof 1) of per-seed fractions, in %."""
    v = 100 * np.asarray(values, dtype=np.float64)
    mean = f"{v.mean():+.2f}" if signed else f"{v.mean():.2f}"
    return f"{mean} ± {v.std(ddof=1):.2f}" if len(v) > 1 else mean


def _metric(runs: dict[int, dict], name: str, metric: str) -> np.ndarray:
    """Per seed (sorted), the detector's metric averaged over the OoD sets."""
    return np.array([runs[s]["detectors"][name][metric] for s in sorted(runs)])


def _accuracy(runs: dict[int, dict], net: str) -> np.ndarray:
    return np.array([runs[s]["id_accuracy"][net]["mean"] for s in sorted(runs)])


def _better(diff: np.ndarray, metric: str) -> str:
    """On how many seeds the difference favours the detector (AUROC up, FPR95 down)."""
    return f"{int((diff > 0).sum() if metric == 'auroc' else (diff < 0).sum())}/{len(diff)}"


def summary(by_epochs: dict[int, dict[int, dict]]) -> str:
    """One row per (training length, norm-scaling variant): the paired differences from MSP."""
    lines = [f"| epochs | ID accuracy | {REFERENCE} AUROC | detector | AUROC | ΔAUROC vs {REFERENCE} | better | "
             f"{REFERENCE} FPR95 | FPR95 | ΔFPR95 vs {REFERENCE} | better |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for epochs, runs in by_epochs.items():
        ref = {m: _metric(runs, REFERENCE, m) for m in ("auroc", "fpr95")}
        for name in HEADLINE:
            v = {m: _metric(runs, name, m) for m in ("auroc", "fpr95")}
            d = {m: v[m] - ref[m] for m in v}
            lines.append(f"| {epochs} | {_ms(_accuracy(runs, 'baseline'))} | {_ms(ref['auroc'])} | {name} | "
                         f"{_ms(v['auroc'])} | {_ms(d['auroc'], True)} | {_better(d['auroc'], 'auroc')} | "
                         f"{_ms(ref['fpr95'])} | {_ms(v['fpr95'])} | {_ms(d['fpr95'], True)} | "
                         f"{_better(d['fpr95'], 'fpr95')} |")
    return "\n".join(lines)


def table(runs: dict[int, dict], epochs: int) -> str:
    """Every detector against MSP at one training length, and norm-scaling per seed (``runs``: seed -> results)."""
    seeds = sorted(runs)
    lines = [f"`--epochs {epochs}`, seeds {', '.join(map(str, seeds))}. ID test accuracy: K-class "
             f"{_ms(_accuracy(runs, 'baseline'))}, VRM {_ms(_accuracy(runs, 'vrm'))}.", "",
             f"| detector | AUROC | FPR95 | ΔAUROC vs {REFERENCE} | better | ΔFPR95 vs {REFERENCE} | better |",
             "|---|---|---|---|---|---|---|"]
    ref = {m: _metric(runs, REFERENCE, m) for m in ("auroc", "fpr95")}
    for n in runs[seeds[0]]["detectors"]:
        v = {m: _metric(runs, n, m) for m in ("auroc", "fpr95")}
        d = {m: v[m] - ref[m] for m in v}
        paired = ("—",) * 4 if n == REFERENCE else (_ms(d["auroc"], True), _better(d["auroc"], "auroc"),
                                                     _ms(d["fpr95"], True), _better(d["fpr95"], "fpr95"))
        lines.append(f"| {n} | {_ms(v['auroc'])} | {_ms(v['fpr95'])} | " + " | ".join(paired) + " |")
    name = HEADLINE[0]
    lines += ["", f"Per seed, {name} − {REFERENCE} (points): ΔAUROC "
              + ", ".join(f"{100 * d:+.2f}" for d in _metric(runs, name, "auroc") - ref["auroc"])
              + "; ΔFPR95 " + ", ".join(f"{100 * d:+.2f}" for d in _metric(runs, name, "fpr95") - ref["fpr95"])
              + f" (seeds {', '.join(map(str, seeds))}); seconds per seed "
              + ", ".join(f"{runs[s]['seconds']:.1f}" for s in seeds) + "."]
    return "\n".join(lines)


def report(by_epochs: dict[int, dict[int, dict]], seconds: float) -> str:
    """The markdown file: the conventions, the summary, one table per training length, the wall time."""
    parts = ["# Norm-scaling on an unsaturated in-distribution task (`python -m benchmarks.ood_unsaturated`)", "",
             "`curvfast ood --epochs E --seeds S --threads 1` (digits 0-5 in distribution, the five OoD sets "
             "averaged). AUROC and FPR95 in %, mean ± sample sd over seeds; Δ = detector − "
             f"{REFERENCE} on the same seed (same network, same OoD sets), mean ± sd of the per-seed differences; "
             f"\"better\" = on how many seeds the detector beats {REFERENCE} (higher AUROC, lower FPR95).", "",
             summary(by_epochs)]
    for epochs, runs in by_epochs.items():
        parts += ["", f"## {epochs} epochs", "", table(runs, epochs)]
    parts += ["", f"Wall time: {seconds:.0f} s in all (one thread; load average at the end "
              f"{os.getloadavg()[0]:.1f} on the shared 2-core machine)."]
    return "\n".join(parts) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", default="2,3,5,10,30", help="training lengths, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    by_epochs: dict[int, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in (int(v) for v in args.epochs.split(",")):
            for s in (int(v) for v in args.seeds.split(",")):
                res = one_seed(epochs, s, os.path.join(tmp, f"e{epochs}_s{s}"))
                by_epochs.setdefault(epochs, {})[s] = res
                print(f"epochs {epochs} seed {s}: {res['seconds']:.1f} s, ID accuracy "
                      f"{res['id_accuracy']['baseline']['mean']:.4f}", flush=True)
    text = report(by_epochs, time.perf_counter() - start)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
