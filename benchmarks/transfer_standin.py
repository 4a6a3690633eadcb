"""Stand-in for TREND's CIFAR-10 study: does the published radius eps* = 8/255 work on 32x32x3 inputs?

On the 8x8 digits (D = 64) PGD at 8/255 fools almost nothing, so docs/transfer.md moves eps* to 48/255. This
driver asks the same question on inputs of CIFAR's shape (D = 3,072): RGB 32x32 crops of the ten pinned real
photos (:data:`curvfast.data.PHOTOS`, the photo as the class; train crops from the left 70 % of each photo, test
crops from the right 30 %, so no test pixel was seen in training), a small zoo, PGD L-inf 40 x 0.01 at the metric
radius 8/255 **without a random start** (TREND's ``trans.py``) and with one (curvfast's default), per seed (sized
for a shared 2-core CPU: 5 models, 4 epochs, 50 attacked images, a 4-radius sweep, ensembles of the seed pair
only, through ``--ensemble-size 2 --accuracy-margin 0``):

1. write the image folder (once, seeded by 0);
2. ``curvfast transfer --seed`` = seed (other attacked images, other random starts) with ``--random-start``, then
   with ``--no-random-start``; the zoo is trained once (by seed 0's first run) and its models are copied to every
   other run, so the seeds vary the attacked images and the random starts, not the training (CPU budget);
3. read each run's ``results.json`` / ``transfer.npz``: the full-precision CNN's self-attack success at 8/255,
   the fitted and raw T at 8/255 for seed, input-quantisation, halftone and architecture pairs.

A run folder that already holds ``results.json`` is read, not run again (seeds can run as separate processes and
a last call with every seed writes the table). Writes a markdown table (mean ± sd over seeds, and the paired
difference no-start − start per seed) to ``--md``.
``python -m benchmarks.transfer_standin --seeds 0,1,2 --threads 1 --out runs/transfer_standin``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import torch

from curvfast.data import PHOTOS
from curvfast.pipelines.transfer import Config, Fit, fit_curves, run, transfer_heatmap

CLASSES = len(PHOTOS)


def _photo_rgb(package: str, name: str) -> np.ndarray:
    """One pinned photo as float32 (H, W, 3) in [0, 1] (grey photos repeated over the channels)."""
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        image = np.asarray(load_sample_image(name))
    else:
        import skimage.data

        image = np.asarray(getattr(skimage.data, name)())
    image = image.astype(np.float32) / 255.0
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def write_folder(root: str, per_class: int, test_per_class: int, size: int = 32, seed: int = 0) -> None:
    """``root/{train,test}/<photo>/<i>.png``: random square crops (side 32..96) area-resized to ``size``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (package, name) in enumerate(PHOTOS):
        photo = _photo_rgb(package, name)
        cut = int(0.7 * photo.shape[1])
        for split, count, (lo, hi) in (("train", per_class, (0, cut)), ("test", test_per_class, (cut, photo.shape[1]))):
            folder = os.path.join(root, split, f"{c:02d}_{name.split('.')[0]}")
            os.makedirs(folder, exist_ok=True)
            region = photo[:, lo:hi]
            for i in range(count):
                side = int(rng.integers(size, min(3 * size, *region.shape[:2]) + 1))
                r = int(rng.integers(region.shape[0] - side + 1))
                col = int(rng.integers(region.shape[1] - side + 1))
                crop = torch.from_numpy(np.ascontiguousarray(region[r:r + side, col:col + side])).permute(2, 0, 1)[None]
                small = torch.nn.functional.adaptive_avg_pool2d(crop, size)[0].permute(1, 2, 0).numpy()
                Image.fromarray((small * 255).round().clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))


ZOO = ("small_cnn", "small_cnn@1", "small_cnn+in1", "small_cnn+halftone", "mlp2")


PAIRS = {  # column name -> (source index, target index) in ZOO
    "seed": (0, 1), "FP→in1": (0, 2), "FP→halftone": (0, 3), "FP→mlp2": (0, 4),
}


def summarise(folder: str) -> dict:
    """The numbers the table reports, from one run folder."""
    with open(os.path.join(folder, "results.json")) as fh:
        res = json.load(fh)
    npz = np.load(os.path.join(folder, "transfer.npz"))
    eps = npz["eps"]
    at = int(np.argmin(abs(eps - res["settings"]["metric_eps"])))
    n_ss, pool = npz["n_ss"], npz["pool"]
    out = {"self_fooled_8": float(n_ss[0, 0, at] / pool[0, 0]), "pool": int(pool[0, 0]),
           "self_fooled_all": float(n_ss[np.arange(len(pool)), np.arange(len(pool)), at].sum()
                                    / np.diag(pool).sum()),
           "accuracy": float(np.mean([m["test_accuracy"] for m in res["models"]])), "seconds": res["seconds"]}
    for key, (s, t) in PAIRS.items():
        out[f"T {key}"] = res["transfer_matrix"][s][t]
        out[f"raw {key}"] = res["transfer_matrix_empirical"][s][t]
    return out


def draw(folder: str, figures: str) -> None:
    """The run's heatmap and counts-and-fits figure, redrawn from its results into ``figures``."""
    with open(os.path.join(folder, "results.json")) as fh:
        res = json.load(fh)
    npz = np.load(os.path.join(folder, "transfer.npz"))
    names, settings = list(res["settings"]["models"]), res["settings"]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in res["transfer_matrix"]])
    os.makedirs(figures, exist_ok=True)
    transfer_heatmap(matrix, names, os.path.join(figures, "transfer_standin_matrix.png"),
                     f"photo crops 32x32x3, PGD {settings['steps']}x{settings['step']} without random start\n"
                     "fitted N_s->t / N_s->s at eps = 8/255")
    fits = [[Fit(**res["fit"][f"{s}->{t}"]["st"]) for t in names] for s in names]
    fit_curves(npz["eps"], npz["n_st"], fits, names, os.path.join(figures, "transfer_standin_fits.png"),
               settings["metric_eps"])


def _fmt(values) -> str:
    values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values, ddof=1):.3f} [{' '.join(f'{v:.3f}' for v in values)}]"


def table(rows: dict, seeds: list[int]) -> str:
    """Markdown: per quantity, mean ± sd [per seed] without and with a random start, and the paired difference."""
    keys = ["self_fooled_8", "self_fooled_all", *[f"{k} {p}" for p in PAIRS for k in ("T", "raw")]]
    names = {"self_fooled_8": "small_cnn fooled by its own PGD at 8/255 (of its pool)",
             "self_fooled_all": "every member fooled by its own PGD at 8/255 (pooled)"}
    lines = ["| quantity at ε = 8/255 | no random start (TREND) | random start (curvfast default) | "
             "paired difference (no start − start) |", "|---|---|---|---|"]
    for key in keys:
        a = [rows[s, False][key] for s in seeds]
        b = [rows[s, True][key] for s in seeds]
        diff = [np.nan if x is None or y is None else x - y for x, y in zip(a, b)]
        label = names.get(key, key.replace("T ", "fitted T ").replace("raw ", "raw ratio "))
        lines.append(f"| {label} | {_fmt(a)} | {_fmt(b)} | {_fmt(diff)} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=200, help="training crops per photo")
    parser.add_argument("--test-per-class", type=int, default=30, help="test crops per photo")
    parser.add_argument("--subset-size", type=int, default=50, help="attacked test images")
    parser.add_argument("--eps", default="0,4/255,8/255,16/255")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/transfer_standin")
    parser.add_argument("--md", default="benchmarks/results/cpu-2core-x86_64/transfer_standin.md")
    parser.add_argument("--figures", default="docs/figures",
                        help="where the first seed's no-start heatmap and fits are drawn (transfer_standin_*.png)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: tabulate the seeds whose two runs have finished")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = os.path.join(args.out, "data")
    if not os.path.isdir(os.path.join(root, "test")):
        write_folder(root, args.per_class, args.test_per_class)
    rows, wall = {}, {}
    for seed in seeds:
        common = dict(dataset="imagefolder", root=root, models=ZOO, eps=tuple(args.eps.split(",")),
                      metric_eps="8/255", robust_eps=("8/255",), epochs=args.epochs, subset_size=args.subset_size,
                      ensemble_size=2, accuracy_margin=0.0, seed=seed, quiet=True)  # ensembles: the seed pair only
        folders = [os.path.join(args.out, f"s{seed}_{arm}", "results.json") for arm in ("start", "nostart")]
        if args.collect and not all(os.path.exists(f) for f in folders):
            continue
        for start in (True, False):
            out = os.path.join(args.out, f"s{seed}_{'start' if start else 'nostart'}")
            if not os.path.exists(os.path.join(out, "results.json")):  # a finished run is read, not repeated
                trained = os.path.join(args.out, "s0_start", "models")
                if (seed, start) != (0, True):  # the same trained models
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.copytree(trained, os.path.join(out, "models"))
                run(Config(random_start=start, **common), out=out)
            rows[seed, start] = summarise(out)
            wall[seed, start] = rows[seed, start]["seconds"]
            print(f"seed {seed} random_start={start}: {wall[seed, start]:.0f} s", rows[seed, start], flush=True)
    seeds = sorted({s for s, _ in rows})
    text = "\n".join([
        "# transfer stand-in: TREND's eps* = 8/255 on 32x32x3 photo crops, with and without a random start",
        "",
        f"`python -m benchmarks.transfer_standin --seeds {args.seeds} --epochs {args.epochs} --per-class "
        f"{args.per_class} --test-per-class {args.test_per_class} --subset-size {args.subset_size} --eps {args.eps} "
        f"--threads {args.threads}`",
        "",
        f"{CLASSES} classes (one per pinned photo), {CLASSES * args.per_class} training and "
        f"{CLASSES * args.test_per_class} test crops of 3x32x32; zoo {', '.join(ZOO)} (trained once, seed 0's models "
        "copied to every seed); "
        f"{args.epochs} epochs; {args.subset_size} attacked test images per seed; PGD L-inf 40 x 0.01; sweep "
        f"{args.eps}. Mean test accuracy of the zoo per seed: "
        + ", ".join(f"{rows[s, True]['accuracy']:.3f}" for s in seeds) + ". Wall time per run with the models reused "
        "(attacks, curvature, ensembles; s, on a shared machine): "
        + ", ".join(f"seed {s}: {wall[s, True]:.0f} with and {wall[s, False]:.0f} without a random start"
                    for s in seeds) + ".",
        "",
        "Each cell: mean ± sd over the seeds [per seed]; fitted T is the TREND metric (ratio of the fitted curves, "
        "denominator over the pair's pool), raw ratio N_s→t / N_s→s|t at 8/255.",
        "",
        table(rows, seeds),
        "",
    ])
    draw(os.path.join(args.out, f"s{seeds[0]}_nostart"), args.figures)
    os.makedirs(os.path.dirname(args.md) or ".", exist_ok=True)
    with open(args.md, "w") as fh:
        fh.write(text)
    print(text)
    return {"rows": {f"{s}_{st}": v for (s, st), v in rows.items()}, "wall": {f"{s}_{st}": v for (s, st), v in wall.items()}}


if __name__ == "__main__":
    main()
