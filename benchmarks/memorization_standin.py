"""Stand-in study for docs/memorization.md (issue 29): our choices against the published ones, per seed, on digits.

1. **Trace vs Garg et al.'s fd statistic on the same trajectories**: one ``curvfast memorization`` run per seed
   (``Config(compare_methods=("fd",))``) scores every checkpoint of the proxy and mislabel runs with the exact
   trace (ours) and with fd (h = 1e-3, 10 probes, per-sample losses); agreement with the run's own Feldman
   memorization and flipped-label AUROC, side by side, paired per seed (trace − fd).
2. **DP-SGD at the published ε grid** (``PUBLISHED_EPSILONS``, 18 budgets, and without DP) with Unveiling's
   membership design (70% of the rest plus half of the top 1% most memorized by run 1's estimate), DP batch 256 and
   the fd statistic: mean curvature and the published memorization statistic against ε, both fitted curves (ours:
   A(1 − e^{−ε}) + c2; published: (a + b e^{−cε}) d (1 − e^{−ε}) + e), paired per seed (published − ours).

Sizes are cut to fit the project's CPU budget (all runs <= 30 CPU-minutes, one thread each): see ``--help`` and the
table's header for what was cut. ``python -m benchmarks.memorization_standin --seeds 0,1,2 --threads 1``
writes ``benchmarks/results/cpu-2core-x86_64/memorization_standin.md`` (and ``.json``); each seed's numbers are
also kept in ``--out``/seed_S.json, so seeds can run as separate processes (``--seeds 1``) and
``--table-only --seeds 0,1,2`` then builds the table from those files.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from curvfast.data import DigitsDataset
from curvfast.pipelines.memorization import (PUBLISHED_EPSILONS, Config, dp_plot, dp_sweep, fit_unveiling_bounds,
                                             model_factory, run)

HERE = os.path.join(os.path.dirname(__file__), "results", "cpu-2core-x86_64")


def _trajectories(args, seed: int) -> dict:
    config = Config(dataset="digits", subset_models=args.subset_models, epochs=args.epochs, proxy_models=1, folds=2,
                    compare_methods=("fd",), top=8, seed=seed, quiet=True)
    res = run(config, out=os.path.join(args.out, f"trajectories_s{seed}"))
    fd = res["compare_methods"]["fd"]

    def measures(corr: dict) -> dict:
        return {"pearson": corr["pearson"], "spearman": corr["spearman"], "cosine": corr["cosine"],
                "top1_overlap": corr["top_k"][0]["overlap"], "top5_cosine": corr["top_k"][1]["cosine"]}

    return {"trace": {**measures(res["correlation"]), "mislabel_auroc": res["mislabel_auroc"]["curvature"]},
            "fd": {**measures(fd["correlation"]), "mislabel_auroc": fd["mislabel_auroc"]["averaged"]},
            "flipped_fitted": res["flipped_labels_fitted"], "seconds": res["seconds"]["total"]}


def _dp(args, seed: int) -> dict:
    train, test = DigitsDataset("train"), DigitsDataset("test")
    with np.load(os.path.join(args.out, f"trajectories_s{seed}", "scores.npz")) as z:
        mem = z["memorization"]
    top = np.argsort(-np.nan_to_num(mem, nan=-2), kind="stable")[:max(2, round(0.01 * len(mem)))]
    make = model_factory("mlp", 10, (1, 8, 8))
    t = time.perf_counter()
    rows = dp_sweep(make, train.images, train.targets, test, epsilons=PUBLISHED_EPSILONS, models=args.dp_models,
                    fraction=0.7, epochs=args.dp_epochs, batch_size=256, method="fd", probes=10, seed=seed + 40_000,
                    design="published", top=top)
    bounds = fit_unveiling_bounds(rows, "published")
    dp_plot(rows, bounds, os.path.join(args.out, f"dp_s{seed}.png"))
    dp = [r for r in rows if r["epsilon"] is not None]
    eps = [r["epsilon"] for r in dp]
    return {"r2_linear": bounds["curvature_fit"]["r2"], "r2_published": bounds["published_curvature_fit"].get("r2"),
            "curvature_rank_corr": float(spearmanr(eps, [r["mean_curvature"] for r in dp]).statistic),
            "memorization_rank_corr": float(spearmanr(eps, [r["mean_memorization_top_k"] for r in dp]).statistic),
            "curvature_eps1": dp[0]["mean_curvature"], "curvature_eps100": dp[-1]["mean_curvature"],
            "curvature_nodp": rows[-1]["mean_curvature"], "mem_top_eps1": dp[0]["mean_memorization_top_k"],
            "mem_top_eps100": dp[-1]["mean_memorization_top_k"], "accuracy_eps1": dp[0]["accuracy"],
            "accuracy_eps100": dp[-1]["accuracy"],
            "memorization_bound_holds": all(b["holds"] for b in bounds["memorization_bound"]),
            "seconds": time.perf_counter() - t, "rows": rows, "bounds": bounds}


def _stat(values) -> str:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    return f"{np.nanmean(v):.3g} ± {np.nanstd(v, ddof=1):.2g}" if v.size > 1 else f"{v[0]:.3g}"


def _table(per_seed: dict, args) -> str:
    seeds = sorted(per_seed)
    wall = sum(per_seed[s]["wall_seconds"] for s in seeds)
    cpu = sum(per_seed[s]["cpu_seconds"] for s in seeds)
    loads = [x for s in seeds for x in per_seed[s]["load"]]
    lines = [
        "# memorization stand-in (digits, 1347 training images; `python -m benchmarks.memorization_standin "
        f"--seeds {','.join(map(str, seeds))} --subset-models {args.subset_models} --epochs {args.epochs} "
        f"--dp-models {args.dp_models} --dp-epochs {args.dp_epochs} --threads {args.threads}`)", "",
        f"Seeds {seeds}; {cpu / 60:.1f} CPU-minutes in all ({wall / 60:.1f} min wall summed over the seeds' runs), one "
        f"thread each, on the shared 2-core machine (1-minute load {min(loads):.0f}-{max(loads):.0f}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}). Cut to fit 30 CPU-minutes: {args.subset_models} subset models "
        f"(default 64), {args.epochs} epochs (default 100), 1 proxy run (default 2), 2 folds (default 5); DP: "
        f"{args.dp_models} models per ε (published 10 for curvature, 40 for memorization) and {args.dp_epochs} DP "
        "epochs (published 20). mean ± sd over seeds; paired = per-seed difference, then mean ± sd.", "",
        "## 1. Trace (ours) vs Garg et al.'s fd statistic, same trajectories", "",
        "| measure (vs the run's Feldman memorization) | trace | fd (h 1e-3, 10 probes) | paired trace − fd |",
        "|---|---|---|---|",
    ]
    for key, name in (("pearson", "Pearson"), ("spearman", "Spearman"), ("cosine", "cosine (all samples)"),
                      ("top1_overlap", "top-1% overlap"), ("top5_cosine", "cosine on the top 5% by memorization"),
                      ("mislabel_auroc", "flipped-label AUROC (averaged over epochs)")):
        tr = [per_seed[s]["trajectories"]["trace"][key] for s in seeds]
        fd = [per_seed[s]["trajectories"]["fd"][key] for s in seeds]
        diff = [None if a is None or b is None else a - b for a, b in zip(tr, fd)]
        lines.append(f"| {name} | {_stat(tr)} | {_stat(fd)} | {_stat(diff)} |")
    fitted = [per_seed[s]["trajectories"]["flipped_fitted"] for s in seeds]
    lines += ["", f"Flipped labels fitted by the final mislabel models: {_stat(fitted)}.", "",
              "## 2. DP-SGD at the published ε grid (1, 5, 10, …, 100; 18 budgets), published design and statistic", "",
              "| quantity | mean ± sd over seeds |", "|---|---|"]
    dp = {s: per_seed[s]["dp"] for s in seeds}
    for key, name in (("curvature_eps1", "mean fd curvature of members at ε = 1"),
                      ("curvature_eps100", "mean fd curvature at ε = 100"),
                      ("curvature_nodp", "mean fd curvature without DP"),
                      ("curvature_rank_corr", "Spearman(ε, mean curvature) over the 18 budgets"),
                      ("mem_top_eps1", "published memorization of the top 1% at ε = 1"),
                      ("mem_top_eps100", "published memorization of the top 1% at ε = 100"),
                      ("memorization_rank_corr", "Spearman(ε, published memorization)"),
                      ("accuracy_eps1", "test accuracy at ε = 1"), ("accuracy_eps100", "test accuracy at ε = 100"),
                      ("r2_linear", "R² of our fit A(1 − e^{−ε}) + c2"),
                      ("r2_published", "R² of the published fit (a + b e^{−cε}) d (1 − e^{−ε}) + e")):
        lines.append(f"| {name} | {_stat([dp[s][key] for s in seeds])} |")
    diff = [None if dp[s]["r2_published"] is None else dp[s]["r2_published"] - dp[s]["r2_linear"] for s in seeds]
    holds = all(dp[s]["memorization_bound_holds"] for s in seeds)
    lines += [f"| paired R²: published − ours | {_stat(diff)} |", "",
              f"mem ≤ 1 − e^{{−ε}} (our normalised estimate) holds at every budget of every seed: {holds}.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--subset-models", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--dp-models", type=int, default=2)
    parser.add_argument("--dp-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/memorization_standin")
    parser.add_argument("--table", default=os.path.join(HERE, "memorization_standin.md"))
    parser.add_argument("--table-only", action="store_true", help="build the table from --out/seed_S.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    for seed in [] if args.table_only else seeds:
        start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        result = {"trajectories": _trajectories(args, seed)}
        result["dp"] = _dp(args, seed)
        result.update(wall_seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu,
                      load=[load, os.getloadavg()[0]])
        with open(os.path.join(args.out, f"seed_{seed}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=float)
        print(f"seed {seed}: {result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU", flush=True)
    per_seed = {}
    for seed in seeds:
        with open(os.path.join(args.out, f"seed_{seed}.json"), encoding="utf-8") as f:
            per_seed[seed] = json.load(f)
    table = _table(per_seed, args)
    with open(args.table, "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.splitext(args.table)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({str(s): {k: v for k, v in r.items()} for s, r in per_seed.items()}, f, indent=1)
    print(table)
    return per_seed


if __name__ == "__main__":
    main()
