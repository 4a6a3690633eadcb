"""Curvature Clues' central claim on a natural-image stand-in: do curvature attacks overtake the others as the pool grows?

The stand-in: RGB 32x32 crops of the ten pinned real photos of ``curvfast.data.PHOTOS`` (scikit-learn's and
scikit-image's sample images), the photo as the class (10 classes): a crop of random side in [32, 96] pixels at a
random place, area-resized to 32x32, grey photos repeated over the three channels, written once as an ImageFolder
(``DATA/train/<photo>/<i>.png``, seeded by ``--data-seed``). For each pool size n (``--subset-size n`` of that folder)
and seed, ``curvfast mia`` trains ``--shadows`` shadows and ``--targets`` fixed targets (each model on a random half,
``small_cnn`` with crop-flip, identity + flip views) and runs every attack with ``--published-quirk``, so the published
rules (``lira_published``: the max-probability LiRA of the published tables; ``curv_zo_lr_published``) sit beside ours
(Carlini et al.'s ``lira_online``; ``curv_zo_lr``, and ``curv_zo_lr_sum``: the published two-view aggregation with our
statistics) on the same models and signals.

``python -m benchmarks.mia_standin --pools 1000,3000,10000 --seeds 0,1,2 --out runs/mia_standin`` writes
``benchmarks/results/cpu-2core-x86_64/mia_standin.md``: per pool, mean ± sd over seeds of AUROC and TPR at 0.1% FPR
(each seed's number is the mean over its targets), and per-seed paired differences (mean ± sd), with the wall time.
Run folders are reused when their settings match (``curvfast mia`` caches models and signals).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from curvfast.data import PHOTOS
from curvfast.pipelines.mia import Config, run

RESULTS = os.path.join(os.path.dirname(__file__), "results", "cpu-2core-x86_64", "mia_standin.md")
SHOWN = ("loss", "lira_online", "lira_published", "sablayrolles", "curv_zo_nll", "curv_zo_lr", "curv_zo_lr_sum",
         "curv_zo_lr_published", "curv_zo_nll_published")
PAIRS = (("curv_zo_nll", "lira_online"), ("curv_zo_nll", "lira_published"), ("curv_zo_nll", "loss"),
         ("lira_online", "lira_published"), ("curv_zo_lr", "curv_zo_lr_sum"), ("curv_zo_lr", "curv_zo_lr_published"))


def _photo_rgb(package: str, name: str) -> np.ndarray:
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        im = np.asarray(load_sample_image(name))
    else:
        import skimage.data

        im = np.asarray(getattr(skimage.data, name)())
    im = im[..., :3] if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im, dtype=np.uint8)


def make_folder(root: str, n: int, seed: int = 0) -> str:
    """Write ``n`` RGB 32x32 photo crops as ``root/train/<photo>/<i>.png`` once (a marker file records n and seed)."""
    from PIL import Image

    marker = os.path.join(root, "standin.json")
    spec = {"n": n, "seed": seed, "photos": [name for _, name in PHOTOS]}
    if os.path.isfile(marker) and json.load(open(marker)) == spec:
        return root
    photos = [_photo_rgb(*p) for p in PHOTOS]
    rng = np.random.default_rng(seed)
    for stale in glob.glob(os.path.join(root, "train", "*", "*.png")):  # crops of a larger n
        if int(os.path.splitext(os.path.basename(stale))[0]) >= n:
            os.remove(stale)
    for c, (_, name) in enumerate(PHOTOS):
        os.makedirs(os.path.join(root, "train", f"{c}_{os.path.splitext(name)[0]}"), exist_ok=True)
    for i in range(n):
        c = int(rng.integers(len(photos)))
        im = photos[c]
        side = min(int(rng.integers(32, 97)), *im.shape[:2])
        r, q = rng.integers(im.shape[0] - side + 1), rng.integers(im.shape[1] - side + 1)
        crop = torch.from_numpy(im[r:r + side, q:q + side].copy()).permute(2, 0, 1)[None].float()
        small = F.adaptive_avg_pool2d(crop, 32)[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        path = os.path.join(root, "train", f"{c}_{os.path.splitext(PHOTOS[c][1])[0]}", f"{i:05d}.png")
        if not os.path.isfile(path):  # an interrupted run resumes (the draws above are the same)
            Image.fromarray(small).save(path)
    with open(marker, "w") as f:
        json.dump(spec, f)
    return root


def one_run(args, data: str, pool: int, seed: int) -> dict:
    config = Config(dataset="imagefolder", root=data, split="train", subset_size=pool, width=args.width,
                    shadows=args.shadows, targets=args.targets, epochs=args.epochs, seed=seed, probes=args.probes,
                    signals=("loss", "conf", "maxconf", "curv_zo"), published_quirk=True, quiet=True)
    out = os.path.join(args.out, f"pool{pool}_seed{seed}")
    if args.collect:  # the finished runs' results, without touching them
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        if results["settings"]["seed"] != seed or results["population"]["samples"] != pool:
            raise SystemExit(f"{out} holds another run")
        with open(os.path.join(out, "wall_s.txt")) as f:
            return {"wall": float(f.read()), "attacks": results["attacks"], "accuracy": results["accuracy"]}
    start = time.perf_counter()
    results = run(config, out=out)
    wall_file = os.path.join(out, "wall_s.txt")  # the wall time of the run that trained and scored (a rerun reuses them)
    if results["seconds"]["train"] > 0 or not os.path.isfile(wall_file):
        with open(wall_file, "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n")
    with open(wall_file) as f:
        wall = float(f.read())
    return {"wall": wall, "attacks": results["attacks"], "accuracy": results["accuracy"]}


def _ms(values, scale=100.0) -> str:
    v = np.asarray(values, dtype=np.float64) * scale
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"


def table(runs: dict, pools, seeds) -> str:
    lines = []
    for metric, key in (("AUROC %", "auroc"), ("TPR at 0.1% FPR %", "0.001")):
        lines += [f"**{metric}** (mean ± sd over seeds {','.join(map(str, seeds))}; each seed: mean over its targets)", "",
                  "| pool n (train n/2) | train / held-out acc. | " + " | ".join(SHOWN) + " |",
                  "|---" * (len(SHOWN) + 2) + "|"]
        for pool in pools:
            rs = [runs[(pool, s)] for s in seeds]
            acc = f"{np.mean([r['accuracy']['train_mean'] for r in rs]):.2f} / {np.mean([r['accuracy']['heldout_mean'] for r in rs]):.2f}"
            cells = [_ms([_get(r, a, key) for r in rs]) for a in SHOWN]
            lines.append(f"| {pool} ({pool // 2}) | {acc} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**Paired differences** (per seed, first − second; mean ± sd over seeds, percentage points)", "",
              "| pool n | " + " | ".join(f"{a} − {b} AUROC" for a, b in PAIRS) + " | curv_zo_nll − lira_online TPR@0.1% |",
              "|---" * (len(PAIRS) + 2) + "|"]
    for pool in pools:
        rs = [runs[(pool, s)] for s in seeds]
        cells = [_ms([_get(r, a, "auroc") - _get(r, b, "auroc") for r in rs]) for a, b in PAIRS]
        cells.append(_ms([_get(r, "curv_zo_nll", "0.001") - _get(r, "lira_online", "0.001") for r in rs]))
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| pool n | wall time per seed (s) | best attack by mean AUROC |")
    lines.append("|---|---|---|")
    for pool in pools:
        rs = [runs[(pool, s)] for s in seeds]
        best = max(SHOWN, key=lambda a: np.mean([_get(r, a, "auroc") for r in rs]))
        walls = ", ".join(f"{r['wall']:.0f}" for r in rs)
        lines.append(f"| {pool} | {walls} | {best} |")
    return "\n".join(lines) + "\n"


def _get(result: dict, attack: str, key: str) -> float:
    entry = result["attacks"][attack]
    return entry["auroc"] if key == "auroc" else entry["tpr_at_fpr"][key]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pools", default="1000,3000,10000,20000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shadows", type=int, default=8)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--data", default="runs/mia_standin/data")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-size", type=int, default=None, help="images in the folder (default: the largest pool)")
    parser.add_argument("--out", default="runs/mia_standin")
    parser.add_argument("--results", default=RESULTS, help="the markdown table written ('' to skip)")
    parser.add_argument("--collect", action="store_true", help="tabulate the finished run folders (runs launched one "
                                                               "per pool and seed, in parallel) instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pools, seeds = [int(p) for p in args.pools.split(",")], [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    size = args.data_size or max(pools)
    data = args.data if args.collect else make_folder(args.data, size, args.data_seed)
    runs = {}
    for pool in pools:
        for seed in seeds:
            runs[(pool, seed)] = one_run(args, data, pool, seed)
            print(f"pool {pool} seed {seed}: {runs[(pool, seed)]['wall']:.0f} s", flush=True)
    text = (f"Command: `python -m benchmarks.mia_standin --pools {args.pools} --seeds {args.seeds} --shadows {args.shadows} "
            f"--targets {args.targets} --epochs {args.epochs} --width {args.width} --probes {args.probes} --data-size {size}` "
            f"(data: {size} RGB 32x32 crops of the {len(PHOTOS)} pinned photos, data seed {args.data_seed}); "
            + ("one process per pool and seed, run in parallel, one thread each; wall times per run below.\n\n" if args.collect
               else f"total wall {time.perf_counter() - start:.0f} s, one thread.\n\n") + table(runs, pools, seeds))
    print(text)
    if args.results:
        os.makedirs(os.path.dirname(args.results), exist_ok=True)
        with open(args.results, "w") as f:
            f.write("# `curvfast mia` stand-in: does curvature overtake the other attacks as the pool grows?\n\n" + text)


if __name__ == "__main__":
    main()
