"""Matplotlib figures written atomically as PNG: the one pyplot / save helper every figure uses."""
from __future__ import annotations

import io
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from curvfast.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["pyplot", "save_png", "image_grid"]


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed).

    Returns:
        The ``matplotlib.pyplot`` module.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, path: str, dpi: int = 110, tight_layout: bool = True) -> None:
    """Write ``fig`` to ``path`` as a PNG atomically (temp file + rename), then close it.

    Args:
        fig: The matplotlib figure.
        path: The PNG file to write.
        dpi: The resolution.
        tight_layout: Call ``fig.tight_layout()`` first.
    """
    if tight_layout:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def image_grid(images: np.ndarray, titles: list[str], path: str, columns: int = 8, suptitle: str | None = None) -> None:
    """Save images (N, C, H, W) in [0, 1] as a titled grid.

    Args:
        images: The images (N, C, H, W) in [0, 1]; one channel is drawn in grey.
        titles: One title per image.
        path: The PNG file to write.
        columns: Images per row.
        suptitle: A title over the whole grid, or None.
    """
    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        img = np.transpose(img, (1, 2, 0))
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img.clip(0, 1), cmap="gray_r" if img.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    save_png(fig, path, dpi=100)
