"""``curvfast demo`` (``make demo``).

Train a small CNN on the bundled digits, score every training digit with the exact input-Hessian trace, and plot the
most curved ones.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from curvfast.data import get_dataset
from curvfast.engine import score
from curvfast.plots import image_grid
from curvfast.training import CURVFAST_TRAIN, train_model

__all__ = ["run_demo"]


def run_demo(out: str = "runs/demo", *, epochs: int = 30, seed: int = 0, top: int = 24,
             log: Callable[[str], object] = print) -> dict:
    """Write ``out/model.pt``, ``out/scores.npz``, ``out/results.json`` and ``out/top_curvature.png``.

    Args:
        out: The output folder (created if missing).
        epochs: Training epochs of the small CNN.
        seed: Seeds the training.
        top: How many of the most curved digits the figure shows.
        log: Receives one progress line at a time.

    Returns:
        The scores' summary (``ScoreResult.summary()``).
    """
    os.makedirs(out, exist_ok=True)
    log(f"[1/3] training small_cnn on digits ({epochs} epochs)")
    recipe = dataclasses.replace(CURVFAST_TRAIN, epochs=epochs, seed=seed)
    model, info = train_model("small_cnn", "digits", recipe, out=os.path.join(out, "model.pt"))
    log(f"      train accuracy {info['train_accuracy']:.4f}, test accuracy {info['test_accuracy']:.4f}")
    dataset, _ = get_dataset("digits", "train")
    log(f"[2/3] scoring all {len(dataset)} training digits with the exact input-Hessian trace")
    res = score(model, dataset, method="exact", batch_size=128, out=out, progress=None)
    summary = res.summary()
    log("      " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    most = res.index[(-res.score).argsort()[:top]]
    images = dataset.images[most].numpy()
    titles = [f"#{i} y={int(dataset.targets[i])}\ncurv={res.score[i]:.3g}" for i in most]
    grid = os.path.join(out, "top_curvature.png")
    image_grid(images, titles, grid, suptitle="digits with the highest input-loss curvature (exact trace)")
    log(f"[3/3] wrote {out}/scores.npz, {out}/results.json, {out}/model.pt and {grid}")
    return summary
