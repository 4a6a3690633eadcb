"""The pipelines' figures are readable: mia's ROC with 15 attacks, ood's legends, memorization's captions, transfer's
fits drawn with their own points."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image


@pytest.fixture
def captured(monkeypatch):
    """The figures the modules would save, instead of saving them."""
    figures = []

    def patch(module):
        monkeypatch.setattr(module, "save_png", lambda fig, path, **kw: figures.append(fig))
        return figures

    return patch


def test_mia_roc_with_15_attacks_names_the_top_5(captured):
    from curvfast.pipelines.mia import evaluate

    figures = captured(evaluate)
    rng = np.random.default_rng(0)
    members = rng.random((2, 40)) < 0.5
    scores = {f"attack{i:02d}": members + rng.normal(0, 0.2 + 0.1 * i, (2, 40)) for i in range(15)}
    evaluate.plot_rocs(scores, members, "unused.png", title="t")
    legend = figures[0].axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 5 + 2 and texts[0].startswith("10 other attacks") and texts[-1] == "chance"
    top = [float(t.rstrip(")").split()[-1]) for t in texts[1:6]]  # "name (AUROC x)", best first
    others_best = float(texts[0].rstrip(")").split("-")[-1])
    assert top == sorted(top, reverse=True) and others_best <= top[-1]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8


def test_ood_roc_has_one_legend_of_at_least_8pt(captured):
    from curvfast.pipelines.ood import report

    figures = captured(report)
    rng = np.random.default_rng(0)
    dets, sets = ["msp", "energy", "knn"], ["a", "b", "c", "d", "e"]
    arrays = {f"{d}/id": rng.normal(0, 1, 30) for d in dets} | {f"{d}/{s}": rng.normal(1, 1, 20) for d in dets for s in sets}
    report.roc_figure(arrays, dets, sets, "unused.png")
    fig = figures[0]
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == dets
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 8
    assert all(ax.get_legend() is None for ax in fig.axes)


def test_memorization_captions_name_files_and_classes(tmp_path):
    from torchvision.datasets import ImageFolder

    from curvfast.pipelines.memorization.figures import sample_caption

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{cls}_0001.png")
    folder = ImageFolder(str(tmp_path))
    assert sample_caption(folder, 1, 1) == "dog_0001.png\ndog"
    assert sample_caption([None] * 3, 2, 7) == "#2 y=7"  # no files, no class names (the bundled digits)


def test_transfer_fits_share_their_points_colour_and_axes(captured):
    from curvfast.pipelines.transfer import figures as transfer_figures
    from curvfast.pipelines.transfer.transfer import transfer_matrix

    figures = captured(transfer_figures)
    eps = np.array([0, 2, 4, 8, 16]) / 255
    n_st = np.array([[[0, 3, 6, 9, 10], [0, 0, 1, 5, 9]], [[0, 1, 2, 3, 4], [0, 4, 8, 10, 10]]], dtype=float)
    pool = np.full((2, 2), 10)
    _, fits, _ = transfer_matrix(eps, n_st, n_st, pool, 4 / 255)
    transfer_figures.fit_curves(eps, n_st, fits, ["m0", "m1"], "unused.png", 4 / 255)
    ax = figures[0].axes[0]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    curves = [line for line in ax.lines if line.get_marker() != "o" and line.get_linestyle() == "-"]
    assert len(dots) == len(curves) == 2
    for t, (dot, curve) in enumerate(zip(dots, curves)):
        assert to_rgba(dot.get_color()) == to_rgba(curve.get_color())
        np.testing.assert_allclose(dot.get_ydata(), n_st[0, t])  # the counts, in images
        np.testing.assert_allclose(np.interp(eps, curve.get_xdata(), curve.get_ydata()), fits[0][t](eps), atol=0.05)
    assert "rmse" in ax.get_title()
