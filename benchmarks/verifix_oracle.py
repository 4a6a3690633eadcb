"""How much the published Verifix code's two oracles flatter its numbers: the same noisy-label model per
seed, corrected with our protocol (noisy labels only) and with the published choices.

Per seed, one ``curvfast verifix`` model is trained (arm ``ours``) and every other arm re-corrects that
same model from its ``trained.pt`` (``--checkpoint``), so the arms differ only in the options below:

    ours             --method auto (exact trace), verified set ranked on the train part under noisy labels,
                     α chosen on the whole validation part under noisy labels
    oracle_ranking   --oracle-ranking: ranked over the whole train split under the true labels
    oracle_alpha     --oracle-alpha: α chosen on the validation samples whose labels were not flipped
    oracle_both      both oracles, the exact trace still ranking
    ours_fd          --method fd: Garg et al.'s statistic (the published ranking), noisy labels
    published        --published: fd ranking and both oracles (the authors' utils.py)

The table gives mean ± sample std over seeds of the clean test accuracy after Verifix and of the gain
over the uncorrected model, and the per-seed paired differences (arm − its noisy-label twin).

    OMP_NUM_THREADS=1 python -m benchmarks.verifix_oracle [--seeds 0 1 2 3 4] [--noise 0.25] [--alphas A,B,..]
        [--out runs/verifix_oracle] [--name verifix_oracle]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

from benchmarks.environment import environment, results_dir, write_results
from curvfast.pipelines.verifix import Config, run

ARMS = {
    "ours": {},
    "oracle_ranking": {"oracle_ranking": True},
    "oracle_alpha": {"oracle_alpha": True},
    "oracle_both": {"oracle_ranking": True, "oracle_alpha": True},
    "ours_fd": {"method": "fd"},
    "published": {"published": True},
}
PAIRS = (("oracle_ranking", "ours"), ("oracle_alpha", "ours"), ("oracle_both", "ours"), ("published", "ours_fd"),
         ("published", "ours"))


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--alphas", default="1e4,3e4,1e5,3e5,1e6", help="α grid (default: the published one)")
    parser.add_argument("--out", default="runs/verifix_oracle", help="run folders: OUT/seed_<k>/<arm>/")
    parser.add_argument("--name", default="verifix_oracle")
    args = parser.parse_args()
    alphas = tuple(float(a) for a in args.alphas.split(","))
    torch.set_num_threads(1)
    load, start = [os.getloadavg()[0]], time.perf_counter()
    runs = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        seed_start = time.perf_counter()
        folder = os.path.join(args.out, f"seed_{seed}")
        for arm, options in ARMS.items():
            trained = None if arm == "ours" else os.path.join(folder, "ours", "trained.pt")
            config = Config(noise=args.noise, alphas=alphas, seeds=(seed,), checkpoint=trained, quiet=True, **options)
            runs[arm].append(run(config, out=os.path.join(folder, arm)))
        print(f"seed {seed}: {time.perf_counter() - seed_start:.0f} s;",
              ", ".join(f"{arm} {100 * runs[arm][-1]['accuracy_after']:.2f}" for arm in ARMS), flush=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime  # this process's CPU time (one thread): what the study cost the machine
    load.append(os.getloadavg()[0])

    def after(arm):
        return [r["accuracy_after"] for r in runs[arm]]

    def gain(arm):
        return [r["accuracy_after"] - r["accuracy_before"] for r in runs[arm]]

    lines = ["| arm | test accuracy after (%) | gain (points) | α chosen per seed | verified clean | "
             "verified from the validation part |", "|---|---|---|---|---|---|"]
    before = [r["accuracy_before"] for r in runs["ours"]]
    lines.append(f"| (before Verifix, every arm) | {_mean_sd(before)} | | | | |")
    for arm in ARMS:
        alphas = ", ".join("kept" if r["alpha"] is None else f"{r['alpha']:g}" for r in runs[arm])
        clean = statistics.fmean(r["verified_clean_fraction"] for r in runs[arm])
        from_val = ", ".join(str(r["verified_from_validation"]) for r in runs[arm])
        lines.append(f"| `{arm}` | {_mean_sd(after(arm))} | {_mean_sd(gain(arm))} | {alphas} | {100 * clean:.1f}% | "
                     f"{from_val} |")
    lines += ["", f"| paired difference of the test accuracy after (points) | seeds {', '.join(map(str, args.seeds))} | "
              "mean ± sd | seeds where the first is higher |", "|---|---|---|---|"]
    pairs = []
    for a, b in PAIRS:
        diff = [x - y for x, y in zip(after(a), after(b))]
        pairs.append({"arm": a, "minus": b, "differences": diff})
        cells = ", ".join(f"{100 * d:+.2f}" for d in diff)
        lines.append(f"| `{a}` − `{b}` | {cells} | {_mean_sd(diff)} | {sum(d > 0 for d in diff)} of {len(diff)} "
                     f"({sum(d == 0 for d in diff)} ties) |")
    result = {"settings": vars(args) | {"arms": ARMS}, "environment": environment(torch.device("cpu")),
              "load_average": load, "wall_seconds": round(wall, 1),
              "cpu_seconds": round(cpu, 1), "pairs": pairs,
              "runs": {arm: [{k: r[k] for k in ("accuracy_before", "accuracy_after", "alpha", "verified_clean_fraction",
                                                "verified_from_validation", "alpha_validation_size", "seconds")}
                             for r in rs] for arm, rs in runs.items()}}
    header = [f"# Verifix: the published oracles vs noisy labels only (`python -m benchmarks.verifix_oracle`, digits, "
              f"{args.noise:.0%} symmetric noise, α grid {args.alphas}, seeds {', '.join(map(str, args.seeds))}, one thread, "
              f"{wall:.0f} s wall, {cpu:.0f} s CPU, load {load[0]:.1f} → {load[1]:.1f})", ""]
    write_results(results_dir(torch.device("cpu")), args.name, result, "\n".join(header + lines + [""]))


if __name__ == "__main__":
    main()
