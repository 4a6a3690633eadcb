"""Peak memory of ``mia`` signal computation and ``memorization`` scoring when the dataset grows 4x.

``python -m benchmarks.memory`` writes generated CIFAR-shaped image folders (RGB 32x32 JPEGs, 10
classes; 2,000 and 8,000 training images by default) and measures, each in a fresh Python
process, the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) of

- ``mia``: ``curvfast mia --checkpoint --keep`` on the folder: 5 saved small CNNs (1 target, 4
  shadows), signals loss, conf and curv_zo streamed through a DataLoader, then the attacks, the
  ROC figure and the files (everything the command does after training);
- ``memorization scoring``: what the pipeline computes for each trained model, on the folder read
  lazily: exact curvature and loss of 4 MLPs in one streamed pass
  (:func:`~curvfast.pipelines.memorization.trajectory.curvature_per_model`) and their
  correctness / label probability on the training and test images
  (:func:`~curvfast.pipelines.memorization.feldman.label_predictions`);
- ``memorization (whole run)``: ``curvfast memorization --preset smoke`` on the folder, for
  comparison: its training of many models on subsets holds the training split as one float32
  tensor (N·3·32·32·4 bytes), so this row grows with N by design.

Each child also reports its RSS just before the measured work (after imports and model loading),
so the table shows the growth the data causes. Models are tiny so the runs take minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.environment import environment, results_dir, write_results

TASKS = ("mia", "memorization_scoring", "memorization_run")
LABELS = {"mia": "mia signals + attacks", "memorization_scoring": "memorization scoring",
          "memorization_run": "memorization (whole run, smoke)"}
MODELS = {"mia": 5, "memorization_scoring": 4}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _prepare(root: pathlib.Path, images: int) -> None:
    """The image folder and the saved mia models with their keep matrix."""
    from curvfast.io import save_checkpoint
    from curvfast.pipelines.common.data import DataOptions, build_network, load_split
    from curvfast.pipelines.mia import balanced_keep
    from tests.conftest import write_image_folder

    write_image_folder(root / "data", classes=10, per_class=images // 10, test_per_class=20)
    options = DataOptions(dataset="imagefolder", root=str(root / "data"))
    _, info = load_split(options, "train")
    for m in range(MODELS["mia"]):
        torch.manual_seed(m)
        save_checkpoint(str(root / "models" / f"model_{m}.pt"), build_network(options, "small_cnn", info, (3, 32, 32), width=8),
                        model="small_cnn")
    keep = np.vstack([balanced_keep(1, images, 0), balanced_keep(MODELS["mia"] - 1, images, 1)])
    np.save(root / "keep.npy", keep)


def _child(task: str, root: str) -> dict:
    """Run one measured task in this (fresh) process; returns RSS before, peak, and seconds."""
    from curvfast.cli import main

    data = os.path.join(root, "data")
    common = ["--dataset", "imagefolder", "--root", data, "--device", "cpu", "--quiet", "--out", os.path.join(root, f"out-{task}")]
    if task == "mia":
        argv = ["mia", "--checkpoint", os.path.join(root, "models"), "--keep", os.path.join(root, "keep.npy"), "--split", "train",
                "--targets", "1", "--width", "8", "--signals", "loss,conf,curv_zo", "--probes", "2", "--views", "identity", *common]
    elif task == "memorization_run":
        argv = ["memorization", "--preset", "smoke", *common]
    else:
        from curvfast.pipelines.common.data import DataOptions, load_split
        from curvfast.pipelines.memorization import curvature_per_model, label_predictions, model_factory

        options = DataOptions(dataset="imagefolder", root=data)
        train, info = load_split(options, "train")
        test, _ = load_split(options, "test")
        torch.manual_seed(0)
        models = [model_factory("mlp", info.num_classes, (3, 32, 32), 16, "cifar10")() for _ in range(MODELS[task])]
    before, start = _rss_mb(), time.perf_counter()
    if task == "memorization_scoring":
        curvature_per_model(models, train, method="exact", batch_size=512)
        label_predictions(models, train)
        label_predictions(models, test)
    elif main(argv) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed")
    return {"rss_before_mb": round(before, 1), "peak_rss_mb": round(_peak_mb(), 1), "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(2000, 8000), help="training images of the small and the large run")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--child", nargs=2, metavar=("TASK", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows = {task: {} for task in args.tasks}
    with tempfile.TemporaryDirectory(prefix="curvfast-memory-") as tmp:
        for n in args.sizes:
            root = pathlib.Path(tmp) / str(n)
            _prepare(root, n)
            for task in args.tasks:
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", task, str(root)], check=True,
                                      capture_output=True, text=True, env=env)
                rows[task][str(n)] = json.loads(done.stdout.strip().splitlines()[-1])
                print(task, n, rows[task][str(n)], flush=True)
    small, large = args.sizes
    for task in rows:
        a, b = rows[task][str(small)], rows[task][str(large)]
        rows[task]["peak_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    tensor_mb = {str(n): round(n * 3 * 32 * 32 * 4 / 2**20, 1) for n in args.sizes}
    result = {"environment": environment(torch.device("cpu")), "sizes": list(args.sizes), "tasks": rows,
              "float32_training_tensor_mb": tensor_mb, "command": "python -m benchmarks.memory"}
    lines = [f"Peak RSS (MB) in a fresh process, generated 32x32 RGB JPEG folders of {small} and {large} training images "
             f"(`python -m benchmarks.memory`, 1 thread, CPU). 'before': RSS after imports and model loading.", "",
             f"| task | before, {small} | peak, {small} | before, {large} | peak, {large} | peak ratio ({large // small}x data) | "
             f"seconds ({small} / {large}) |", "|---|---|---|---|---|---|---|"]
    for task in rows:
        a, b = rows[task][str(small)], rows[task][str(large)]
        lines.append(f"| {LABELS[task]} | {a['rss_before_mb']:.0f} | {a['peak_rss_mb']:.0f} | {b['rss_before_mb']:.0f} | "
                     f"{b['peak_rss_mb']:.0f} | {rows[task]['peak_ratio']:.2f} | {a['seconds']:.0f} / {b['seconds']:.0f} |")
    lines += ["", f"For scale: the training split as one float32 tensor is {tensor_mb[str(small)]} MB / {tensor_mb[str(large)]} MB; "
              "mia and memorization hold these 8-bit images as uint8, a quarter of that."]
    write_results(results_dir(torch.device("cpu")), "memory", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
