"""The real job, end to end: ``curvfast score`` on a generated ImageNet-layout folder of JPEGs, per precision policy.

    python -m benchmarks.gpu_scoring [--device cuda] [--images 1024] [--size 224] [--workers 12]

1. Writes ``<work>/val/<class>/<i>.jpg``: ``--images`` JPEGs (quality 90) of side ``--size``, crops of sklearn's
   bundled photos, in 16 class folders, and a ResNet-50 checkpoint (C=1000, ImageNet normalisation inside the
   model, random weights with the final layer scaled to a mean max-softmax of ~0.99: large logits, the setting
   that broke bf16 before).
2. Runs ``python -m curvfast score --dataset imagefolder --split val --image-size S --method sampled`` (top 10
   classes + 10 tail samples) with ``--batch-size auto`` for each policy (fp32 = TF32 off, the reference; tf32;
   bf16; bf16 with channels-last), each in its own process, JPEG decoding included.
3. Reports per run: images/s over the scoring loop and over the whole process, the batch found, the device's
   busy fraction (CUDA-event time of the curvature passes over the loop's wall time), peak memory, and the
   median / 95th-percentile relative error of the scores against the fp32 run (same sample ids and seed).
   Then the CIFAR ResNet-18 C=10 ``exact`` case (in process, tensors on the device, batch auto).

Writes ``benchmarks/results/<device>/gpu_scoring.{json,md}``. On a CPU, small settings make a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = (("fp32", []), ("tf32", ["--precision", "tf32"]), ("bf16", ["--precision", "bf16"]),
        ("bf16_channels_last", ["--precision", "bf16", "--channels-last"]))


def make_folder(work: str, images: int, size: int, classes: int = 16) -> str:
    """``images`` JPEG crops of side ``size`` under ``work/val/<class>/``; returns the root."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(images):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2]) + 1))
        top, left = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        folder = os.path.join(work, "val", f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        crop.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return work


def make_checkpoint(path: str, arch: str, size: int) -> str:
    """A peaked random ``arch`` (C=1000, ImageNet normalisation inside) saved for ``curvfast score``."""
    from benchmarks.cases import _peaked, photo_crops
    from curvfast.io import save_checkpoint
    from curvfast.models import build_model, normalized

    torch.manual_seed(0)
    net = build_model(arch, 1000, 3).eval()
    model = normalized(net, "imagenet").eval()
    with torch.no_grad():
        _peaked(model, net.fc, photo_crops(8, size, 0))
    save_checkpoint(path, model, model=arch, num_classes=1000, in_channels=3, normalize="imagenet")
    return path


def score_run(label: str, extra: list[str], root: str, checkpoint: str, size: int, device: str, workers: int,
              out: str) -> dict:
    """One ``curvfast score`` process; its settings, timings and scores."""
    cmd = [sys.executable, "-m", "curvfast", "score", "--checkpoint", checkpoint, "--dataset", "imagefolder",
           "--root", root, "--split", "val", "--image-size", str(size), "--method", "sampled", "--batch-size", "auto",
           "--device", device, "--workers", str(workers), "--chunk-size", "0", "--quiet", "--out", out, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"label": label, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "failed"}
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(out, "scores.npz")) as z:
        scores = z["score"]
    run, settings = result["run"], result["settings"]
    n = len(scores)
    row = {"label": label, "precision": settings.get("precision", "fp32"), "batch": settings["batch_size"],
           "channels_last": settings.get("channels_last"), "images": n, "process_s": round(wall, 1),
           "images_per_s_process": n / wall, "pass_widths": settings.get("pass_widths")}
    if "scoring_s" in run:
        row.update(scoring_s=run["scoring_s"], images_per_s=n / run["scoring_s"],
                   busy_fraction=run["device_busy_s"] / run["scoring_s"],
                   peak_memory_gib=run["peak_memory_bytes"] / 2**30)
    row["_scores"] = scores
    return row


def cifar_exact_case(device: str, images: int) -> dict:
    """CIFAR ResNet-18, C=10, ``exact``, batch auto, tensors already on the device (no decoding)."""
    import curvfast
    from curvfast.models import cifar_resnet18

    torch.manual_seed(0)
    model = cifar_resnet18(10).eval().to(device)
    x = torch.rand(images, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x[:256]).argmax(1).repeat(images // 256 + 1)[:images]
    data = torch.utils.data.TensorDataset(x, y)
    curvfast.score(model, torch.utils.data.Subset(data, range(min(images, 512))), method="exact", batch_size="auto",
                   device=device, progress=False)  # warm-up: kernels, calibration
    res = curvfast.score(model, data, method="exact", batch_size="auto", device=device, progress=False)
    run = res.run
    row = {"case": "resnet18_c10 exact", "images": images, "batch": res.settings["batch_size"],
           "seconds": res.seconds}
    if "scoring_s" in run:
        row.update(images_per_s=images / run["scoring_s"], busy_fraction=run["device_busy_s"] / run["scoring_s"],
                   peak_memory_gib=run["peak_memory_bytes"] / 2**30)
    return row


def errors(rows: list[dict]) -> None:
    """Each row's median and 95th-percentile relative error against the fp32 row's scores (in place)."""
    ref = next((r["_scores"] for r in rows if r["label"] == "fp32" and "_scores" in r), None)
    for r in rows:
        scores = r.pop("_scores", None)
        if ref is not None and scores is not None:
            rel = np.abs(scores - ref) / np.maximum(np.abs(ref), 1e-300)
            r.update(median_rel_err=float(np.median(rel)), p95_rel_err=float(np.percentile(rel, 95)))


def markdown(result: dict) -> str:
    lines = [f"# The scoring job on {result['device']}", "", f"`{result['command']}`", "",
             f"{result['arch']}, {result['size']}² JPEGs decoded by {result['workers']} workers, C=1000, "
             "`sampled` (top 10 + 10 tail), `--batch-size auto`; errors against the fp32 run (TF32 off).", "",
             "| run | batch | img/s (loop) | img/s (process) | busy | peak GiB | median rel. err | p95 rel. err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['label']} | {r['batch']} | {r.get('images_per_s', float('nan')):.0f} | "
                     f"{r['images_per_s_process']:.0f} | {r.get('busy_fraction', float('nan')):.0%} | "
                     f"{r.get('peak_memory_gib', float('nan')):.1f} | {r.get('median_rel_err', float('nan')):.2e} | "
                     f"{r.get('p95_rel_err', float('nan')):.2e} |")
    c = result.get("cifar")
    if c:
        lines += ["", f"CIFAR ResNet-18, C=10, `exact`, {c['images']} images on the device, batch {c['batch']}: "
                      f"{c.get('images_per_s', float('nan')):.0f} img/s, busy {c.get('busy_fraction', float('nan')):.0%}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--cifar-images", type=int, default=20000)
    parser.add_argument("--runs", nargs="+", default=[label for label, _ in RUNS],
                        choices=[label for label, _ in RUNS])
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from benchmarks.environment import device_name, results_dir, write_results

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as work:
        root = make_folder(work, args.images, args.size)
        checkpoint = make_checkpoint(os.path.join(work, "model.pt"), args.arch, args.size)
        rows = [score_run(label, extra, root, checkpoint, args.size, args.device, args.workers,
                          os.path.join(work, f"run-{label}")) for label, extra in RUNS if label in args.runs]
    errors(rows)
    result = {"command": "python -m benchmarks.gpu_scoring " + " ".join(sys.argv[1:] if argv is None else argv),
              "device": device_name(device), "arch": args.arch, "size": args.size, "workers": args.workers,
              "rows": rows, "cifar": cifar_exact_case(args.device, args.cifar_images) if args.cifar_images else None}
    write_results(results_dir(device), "gpu_scoring", result, markdown(result))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
