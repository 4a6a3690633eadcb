"""IDKD against vanilla KD with a foreign public set that partly overlaps the private classes (docs/idkd.md).

``python -m benchmarks.idkd_overlap [--seeds 0,1,2] [--out runs/idkd/overlap]`` writes two image folders from
the bundled digits: the *private task* is the digits 0-5 (``priv/train``, ``priv/test``: the fixed train/test split
restricted to those classes), the *foreign public images* are the training digits 6-9 (``pub/train``). Every run
is ``curvfast idkd --dataset imagefolder --root priv --public-dataset imagefolder --public-root pub``: the public
unlabeled set is then the held-out quarter of the private training digits (classes 0-5: the overlap), the
digits 6-9 (classes no node has) and photo patches. Per seed, three runs that share their initial training
(the runs are deterministic): DSGD, vanilla KD and IDKD with the calibrated MSP filter; IDKD with the k-NN filter;
IDKD with the published fixed MSP > 0.98 filter (``--published``). Each runs with one thread per node process.

Writes ``OUT/rows.json`` (``--table-only`` re-writes the table from it) and
``benchmarks/results/cpu-2core-x86_64/idkd_overlap.md``: mean ± sd over seeds of the mean node accuracy,
the per-seed paired differences IDKD − vanilla KD, and what each filter passed (share of foreign targets: digits
6-9 and photos), plus the commands, wall time and CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from curvfast.data import DigitsDataset
from curvfast.io import write_json
from curvfast.pipelines.idkd import Config, run

PRIVATE = range(6)  # the private classes; the digits 6-9 are foreign public images
RESULTS = os.path.join("benchmarks", "results", "cpu-2core-x86_64", "idkd_overlap.md")
VARIANTS = {  # name -> (options beyond the shared ones, methods read from that run)
    "msp": ({"methods": ("dsgd", "vanilla_kd", "idkd")}, {"dsgd": "dsgd", "vanilla_kd": "vanilla_kd", "idkd_msp": "idkd"}),
    "knn": ({"methods": ("idkd",), "detector": "knn"}, {"idkd_knn": "idkd"}),
    "published": ({"methods": ("idkd",), "published": True}, {"idkd_msp_0.98": "idkd"}),
}
LABELS = {"dsgd": "`dsgd` (private data only)", "vanilla_kd": "vanilla KD (all public samples)",
          "idkd_msp": "IDKD, MSP calibrated at tpr 0.95",
          "idkd_knn": "IDKD, k-NN filter", "idkd_msp_0.98": "IDKD, published MSP > 0.98 (`--published`)"}


def write_folders(root: str) -> tuple[str, str]:
    """``root/priv/{train,test}/<c>/`` for the digits 0-5 and ``root/pub/train/<c>/`` for the training digits 6-9,
    as 8-bit grey PNGs (the digits' 17 grey levels survive exactly: k/16 * 255 is rounded, then read back)."""
    from PIL import Image

    for split in ("train", "test"):
        ds = DigitsDataset(split)
        for i, (image, label) in enumerate(zip(ds.images, ds.targets.tolist())):
            if split == "test" and label not in PRIVATE:
                continue
            folder = os.path.join(root, "priv" if label in PRIVATE else "pub", split, str(label))
            os.makedirs(folder, exist_ok=True)
            pixels = np.round(image[0].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"{i:04d}.png"))
    return os.path.join(root, "priv"), os.path.join(root, "pub")


def shared_options(args, priv: str, pub: str, seed: int) -> dict:
    return {"dataset": "imagefolder", "root": priv, "public_dataset": "imagefolder", "public_root": pub,
            "nodes": args.nodes, "dirichlet_alpha": args.alpha, "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs, "public_photos": args.photos, "seed": seed, "quiet": True}


def command(args, variant: str, seed: int) -> str:
    extra = {"msp": "--methods dsgd,vanilla_kd,idkd", "knn": "--methods idkd --detector knn",
             "published": "--methods idkd --published"}[variant]
    return (f"curvfast idkd --dataset imagefolder --root DIR/priv --public-dataset imagefolder --public-root DIR/pub "
            f"--nodes {args.nodes} --dirichlet-alpha {args.alpha} --epochs {args.epochs} --finetune-epochs "
            f"{args.finetune_epochs} --public-photos {args.photos} --seed {seed} {extra} --quiet "
            f"--out {args.out}/{variant}_s{seed}")


def one_seed(args, priv: str, pub: str, seed: int) -> dict:
    """Every variant's numbers for ``seed``: {method: {accuracy, foreign share, targets, label accuracy}}."""
    row: dict = {"wall_s": 0.0}
    for variant, (options, methods) in VARIANTS.items():
        start = time.perf_counter()
        res = run(Config(**shared_options(args, priv, pub, seed), **options), out=f"{args.out}/{variant}_s{seed}")
        row["wall_s"] += time.perf_counter() - start
        row["initial"] = res["initial"]["mean_accuracy"]
        for name, method in methods.items():
            m = res["methods"][method]
            row[name] = {"accuracy": m["mean_accuracy"], "foreign": m.get("mean_photo_fraction"),
                         "targets": m.get("mean_num_targets"), "label_accuracy": m.get("mean_digit_label_accuracy")}
        row["public"] = res["data"]
    return row


def _pm(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def _signed_pm(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():+.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():+.4f}"


def table(args, rows: list[dict], seeds: list[int], cpu_s: float) -> str:
    wall = sum(r["wall_s"] for r in rows)
    data = rows[0]["public"]
    lines = [
        "# IDKD vs vanilla KD, foreign public set with partial class overlap (`python -m benchmarks.idkd_overlap`)",
        "",
        f"Private task: digits 0-5 ({data['private']} private training images over {args.nodes} nodes, ring, "
        f"Dirichlet alpha {args.alpha}; {data['test']} test images). Public unlabeled set: {data['public_digits']} "
        f"held-out digits 0-5 (the overlap) + {data['public_photos']} foreign images ({data['public_photos'] - args.photos} "
        f"training digits 6-9, {args.photos} photo patches). SmallCNN width 16, QGM, {args.epochs} + "
        f"{args.finetune_epochs} epochs, seeds {', '.join(map(str, seeds))}. Wall {wall:.0f} s for "
        f"{3 * len(seeds)} runs, {cpu_s / 60:.1f} CPU-minutes (user + system time of the driver and its processes), one thread per node "
        f"process, on the shared 2-core machine.",
        "",
        "Mean node accuracy on the digits 0-5 test images, mean ± sd over seeds [per seed]:",
        "",
        "| method | accuracy | per seed | − vanilla KD, per seed | mean ± sd of the difference |",
        "|---|---|---|---|---|",
    ]
    init = [r["initial"] for r in rows]
    lines.append(f"| initial decentralized model | {_pm(init)} | {' '.join(f'{v:.4f}' for v in init)} | | |")
    for name, label in LABELS.items():
        acc = [r[name]["accuracy"] for r in rows]
        if name == "vanilla_kd":
            diff, mean = "", ""
        else:
            d = [r[name]["accuracy"] - r["vanilla_kd"]["accuracy"] for r in rows]
            diff, mean = " ".join(f"{v:+.4f}" for v in d), _signed_pm(d)
        lines.append(f"| {label} | {_pm(acc)} | {' '.join(f'{v:.4f}' for v in acc)} | {diff} | {mean} |")
    lines += ["", "What the filters passed (mean over nodes, then over seeds; n/a: no node kept a public sample):", "",
              "| method | public targets per node | foreign share of the targets | argmax accuracy of the overlap "
              "targets |", "|---|---|---|---|"]
    for name, label in LABELS.items():
        if name == "dsgd":
            continue
        lines.append(f"| {label} | {_mean_defined([r[name]['targets'] for r in rows], 1)} | "
                     f"{_mean_defined([r[name]['foreign'] for r in rows], 1, 100, ' %')} | "
                     f"{_mean_defined([r[name]['label_accuracy'] for r in rows])} |")
    lines += ["", "Commands (DIR: the folder the driver writes the image folders to):", "", "```bash"]
    lines += [command(args, v, s) for s in seeds for v in VARIANTS]
    lines += ["```", ""]
    return "\n".join(lines)


def _mean_defined(values, digits: int = 4, scale: float = 1.0, unit: str = "") -> str:
    """Mean over the seeds where the value is defined (None: no node kept a target), with how many those were."""
    defined = [v for v in values if v is not None]
    if not defined:
        return "n/a"
    return f"{scale * np.mean(defined):.{digits}f}{unit}" + (f" ({len(defined)} of {len(values)} seeds)"
                                                              if len(defined) < len(values) else "")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--out", default="runs/idkd/overlap")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--table-only", action="store_true", help="re-write the table from OUT/rows.json, run nothing")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    saved = os.path.join(args.out, "rows.json")
    if args.table_only:
        with open(saved) as f:
            record = json.load(f)
        rows, cpu = record["rows"], record["cpu_s"]
    else:
        priv, pub = write_folders(os.path.join(args.out, "data"))
        rows = []
        for seed in seeds:
            rows.append(one_seed(args, priv, pub, seed))
            print(f"seed {seed}: {rows[-1]['wall_s']:.0f} s, "
                  + ", ".join(f"{k} {rows[-1][k]['accuracy']:.4f}" for k in LABELS), flush=True)
        cpu = sum(u.ru_utime + u.ru_stime
                  for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
        write_json(saved, {"rows": rows, "cpu_s": cpu, "seeds": seeds})
    text = table(args, rows, seeds, cpu)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
