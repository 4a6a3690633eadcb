"""PKD's gain over CE-trained ICs with matched budgets and with the published 2:1 budget (docs/pkd.md, Results).

The published code trains the CE-baseline ICs for 150 epochs and the PKD ICs for 300 (Efstathia-Soufleri/PKD,
``run_training_CE.sh`` / ``run_training_KD.sh``); ``curvfast pkd`` gives both ``--exit-epochs`` by default. For
each seed this runs ``curvfast pkd`` on the bundled synthetic clips twice on the same streams (same seed):

- ``matched``: CE and PKD ICs both ``--exit-epochs`` (curvfast's default protocol);
- ``published``: CE ICs half of it (``--ce-epochs``), and WISE by the published rule (``--wise-solver sgd
  --wise-first-exit raw --wise-published-test --wise-fallback heads``); the IC optimiser stays curvfast's, so the
  PKD ICs are the same in both runs (checked) and only the CE budget and WISE's rule change.

The gain is the mean over the 9 ICs of PKD minus CE test accuracy (points). Flatness is measured on the run's own
streams only (``--flatness-seeds 1``; it does not touch the ICs). A finished run folder is reused, so seeds can
run in separate processes and a last call writes the table:

``python -m benchmarks.pkd_budget --seeds 0 1 2 --data-seed 0 --threads 1 --out runs/pkd_budget``

(``--data-seed 0``: every seed trains on the clips of seed 0 and varies the initialisation and batch order.)
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from curvfast.pipelines.pkd import EXIT_NAMES, STREAM_ORDER, Config, fit_wise, run, wise_sweep

TABLE = os.path.join(os.path.dirname(__file__), "results", "cpu-2core-x86_64", "pkd_budget.md")
PUBLISHED_WISE = {"wise_solver": "sgd", "wise_first_exit": "raw", "wise_published_test": True, "wise_fallback": "heads"}
ICS = [i for i, name in enumerate(EXIT_NAMES) if not name.endswith("/head")]
HEADS = [EXIT_NAMES.index(f"{s}/head") for s in STREAM_ORDER]
TOGGLES = {"curvfast": {}, "sgd solver": {"solver": "sgd"}, "raw first exit": {"first_exit": "raw"},
           "mean test": {"published_test": True}, "heads fallback": {"fallback": True},
           "all four": {"solver": "sgd", "first_exit": "raw", "published_test": True, "fallback": True}}


def _run(folder: str, config: Config) -> dict:
    """Results of ``config`` in ``folder`` (reused when complete), with the wall and CPU seconds of the run."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        wall, cpu = time.perf_counter(), time.process_time()
        results = run(config, out=folder)
        results["cost"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                           "load_average": os.getloadavg()[0]}
        with open(os.path.join(folder, "cost.json"), "w") as f:
            json.dump(results["cost"], f)
    with open(path) as f:
        results = json.load(f)
    with open(os.path.join(folder, "cost.json")) as f:
        results["cost"] = json.load(f)
    return results


def _ic_mean(results: dict, kind: str) -> float:
    return 100 * float(np.mean(np.asarray(results["ic_accuracy"][kind])[ICS]))


def seed_row(seed: int, exit_epochs: int, out: str, data_seed: int | None = None) -> dict:
    """The two runs of one seed and their numbers."""
    common = dict(seed=seed, data_seed=data_seed, exit_epochs=exit_epochs, flatness_seeds=1, flatness_clips=8,
                  flatness_probes=2, quiet=True)
    matched = _run(os.path.join(out, f"seed{seed}_matched"), Config(**common))
    published = _run(os.path.join(out, f"seed{seed}_published"),
                     Config(**common, ce_epochs=max(1, round(exit_epochs / 2)), **PUBLISHED_WISE))
    if matched["ic_accuracy"]["pkd"] != published["ic_accuracy"]["pkd"]:
        raise RuntimeError(f"seed {seed}: the PKD ICs differ between the two runs; they should share streams and ICs")
    pkd = _ic_mean(matched, "pkd")
    return {"seed": seed, "budgets": (matched["budgets"], published["budgets"]),
            "ce_matched": _ic_mean(matched, "ce"), "ce_published": _ic_mean(published, "ce"), "pkd": pkd,
            "gain_matched": pkd - _ic_mean(matched, "ce"), "gain_published": pkd - _ic_mean(published, "ce"),
            "wise_ours": 100 * matched["wise"]["accuracy"], "wise_published": 100 * published["wise"]["accuracy"],
            "wall_s": matched["cost"]["wall_s"] + published["cost"]["wall_s"],
            "cpu_s": matched["cost"]["cpu_s"] + published["cost"]["cpu_s"],
            "load": max(matched["cost"]["load_average"], published["cost"]["load_average"])}


def table(rows: list[dict], exit_epochs: int) -> str:
    """The markdown table: one line per seed, then mean ± sd (sample sd) over the seeds."""
    half = max(1, round(exit_epochs / 2))
    head = (f"| seed | CE ICs, {exit_epochs} epochs | CE ICs, {half} epochs | PKD ICs, {exit_epochs} epochs | "
            f"gain, matched | gain, 2:1 | 2:1 − matched | WISE(PKD) ours | WISE(PKD) published rule | "
            "wall / CPU s (both runs) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    keys = ("ce_matched", "ce_published", "pkd", "gain_matched", "gain_published", "diff", "wise_ours", "wise_published")
    for row in rows:
        row["diff"] = row["gain_published"] - row["gain_matched"]
    lines = [f"| {r['seed']} | " + " | ".join(f"{r[k]:+.1f}" if k.startswith(("gain", "diff")) else f"{r[k]:.1f}"
                                              for k in keys) + f" | {r['wall_s']:.0f} / {r['cpu_s']:.0f} |" for r in rows]
    sign = {k: "+" if k.startswith(("gain", "diff")) else "" for k in keys}
    stats = " | ".join(f"{np.mean([r[k] for r in rows]):{sign[k]}.1f} ± {np.std([r[k] for r in rows], ddof=1):.1f}"
                       for k in keys)
    total = f"{sum(r['wall_s'] for r in rows):.0f} / {sum(r['cpu_s'] for r in rows):.0f}"
    return head + "\n".join(lines) + f"\n| mean ± sd | {stats} | {total} |\n"


def wise_toggles(seed: int, out: str, tau: float = 0.999999) -> dict:
    """WISE(PKD) test accuracy (%) on the matched run's saved logits with each published choice alone and all four,
    fitted on the training logits as in the runs (alpha 0.1 after 5 free exits; head weights without L1)."""
    folder = os.path.join(out, f"seed{seed}_matched")
    logits = np.load(os.path.join(folder, "logits.npz"))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    fit, labels = logits["fit_pkd"], logits["fit_labels"]
    row = {"plain ensemble": 100 * results["plain_ensemble_accuracy"]}
    for name, t in TOGGLES.items():
        solver = t.get("solver", "fista")
        weights = fit_wise(fit, labels, 0.1, 5, solver, t.get("first_exit", "fitted"))
        fallback = (HEADS, fit_wise(fit[:, HEADS], labels, 0.0, len(HEADS), solver)[-1]) if t.get("fallback") else None
        chosen = wise_sweep(logits["test_pkd"], logits["test_labels"], weights, results["macs"]["cumulative"], [tau],
                            t.get("published_test", False), fallback)[0]
        row[name] = 100 * chosen["accuracy"]
        row[f"{name} exits"] = chosen["mean_exits"]
    return row


def toggles_table(rows: dict[int, dict]) -> str:
    """Markdown: one line per seed, WISE(PKD) accuracy with each toggle (mean exits run in brackets)."""
    names = ["plain ensemble", *TOGGLES]
    text = "| seed | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    for seed, row in rows.items():
        text += f"| {seed} | " + " | ".join(f"{row[n]:.1f}" + (f" ({row[n + ' exits']:.2f})" if n in TOGGLES else "")
                                           for n in names) + " |\n"
    return text


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--exit-epochs", type=int, default=12, help="PKD's IC epochs (CE: the same, or half)")
    parser.add_argument("--data-seed", type=int, default=None, help="one set of clips for every seed (default: each "
                                                                     "seed its own clips)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/pkd_budget", help="run folders, one per seed and protocol")
    parser.add_argument("--table", default=TABLE, help="where the markdown table goes ('' : print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [seed_row(seed, args.exit_epochs, args.out, args.data_seed) for seed in args.seeds]
    text = table(rows, args.exit_epochs)
    text += ("\nWISE(PKD) at tau = 0.999999 on each seed's matched-run logits, one published choice at a time "
             "(mean exits run per clip in brackets):\n\n" + toggles_table({s: wise_toggles(s, args.out) for s in args.seeds}))
    if args.table and len(rows) > 1:
        with open(args.table, "w") as f:
            f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
