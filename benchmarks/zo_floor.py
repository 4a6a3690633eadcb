"""The zo estimator's float32 rounding floor ulp(L)/(4h), and what ``float64_losses=True`` does to it.

``python -m benchmarks.zo_floor [--samples 256] [--probes 10]`` scores a random ReLU CNN (3x32x32 inputs, uniform
pixels, 10 classes; the last layer's weights scaled by s and one bias of 0.85 so that the loss is about 1.6, the
labels all that class) with ``method="zo"`` four ways:

- float32: the default (float32 model and losses; the stencil is summed in float64);
- upcast logits: a loss oracle computing the cross-entropy from the float32 logits cast to float64;
- ``float64_losses=True``: the stencil's losses from a float64 copy of the model;
- the reference: the float64 model itself (``model.double()``, ``x.double()``).

Per scale s it reports the mean loss, the reference's mean zo value and the float32 floor ulp(max(L, 1))/(4h),
then per variant the ratio of its mean value to the reference's, the fraction of exact zeros, the median relative
error against the reference, the fraction flagged ``below_rounding_floor`` and the seconds taken. Writes
benchmarks/results/<device>/zo_floor.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.environment import environment, results_dir, write_results
from curvfast import input_curvature

SCALES = (0.001, 0.003, 0.01, 0.03, 0.3)


def _net(scale: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    with torch.no_grad():
        net[-1].weight.mul_(scale)
        net[-1].bias.zero_()
        net[-1].bias[0] = 0.85  # loss about 1.6 for label 0 while the logits barely depend on x
    return net


def _timed(fn):
    start = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - start


def _row(res, ref: torch.Tensor, seconds: float) -> dict:
    v = res.value.double()
    flagged = res.below_rounding_floor
    return {"ratio_of_means": float(v.mean() / ref.mean()), "zero_fraction": float((v == 0).double().mean()),
            "median_relative_error": float(((v - ref).abs() / ref).median()),
            "flagged_fraction": None if flagged is None else float(flagged.double().mean()),
            "seconds": round(seconds, 2)}


def measure(scale: float, samples: int, probes: int, seed: int) -> dict:
    net = _net(scale, seed)
    net64 = copy.deepcopy(net).double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 3, 32, 32, generator=gen)
    y = torch.zeros(samples, dtype=torch.long)
    opts = {"method": "zo", "probes": probes, "seed": seed}

    def upcast(xb, yb):
        return F.cross_entropy(net(xb).double(), yb, reduction="none")

    ref, ref_s = _timed(lambda: input_curvature(net64, x.double(), y, **opts))
    fp32, fp32_s = _timed(lambda: input_curvature(net, x, y, **opts))
    up, up_s = _timed(lambda: input_curvature(upcast, x, y, **opts))
    f64, f64_s = _timed(lambda: input_curvature(net, x, y, float64_losses=True, **opts))
    r = ref.value
    return {"scale": scale, "mean_loss": float(fp32.loss.mean()), "reference_mean": float(r.mean()),
            "float32_floor": float(fp32.rounding_floor.double().mean()),
            "float32": _row(fp32, r, fp32_s), "upcast_logits": _row(up, r, up_s),
            "float64_losses": _row(f64, r, f64_s) | {"max_relative_difference": float(
                ((f64.value.double() - r).abs() / r).max())},
            "reference_seconds": round(ref_s, 2)}


def markdown(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        "# zo rounding floor: float32 losses vs float64", "",
        f"`{command}` on {env['device']}, torch {env['torch']}, {env['threads']} thread(s), "
        f"load average {', '.join(f'{v:.1f}' for v in env['load_average'] or ())}.", "",
        "Random ReLU CNN (3x32x32, last layer x s, loss ≈ 1.6), zo with h = 1e-3. ratio: mean value / the float64 "
        "model's mean; zeros: fraction of values exactly 0; rel err: median |value − float64| / float64; flagged: "
        "fraction with `below_rounding_floor` (value ≤ 2.5 floors).", "",
        "| s | loss | float64 zo mean | float32 floor ulp(L)/(4h) | float32: ratio / zeros / rel err / flagged "
        "| upcast logits: ratio / zeros / rel err | float64_losses: max rel diff vs float64 model / flagged "
        "| seconds: float32 / float64_losses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, u, f = r["float32"], r["upcast_logits"], r["float64_losses"]
        lines.append(
            f"| {r['scale']:g} | {r['mean_loss']:.3f} | {r['reference_mean']:.3g} | {r['float32_floor']:.3g} "
            f"| {a['ratio_of_means']:.2f} / {a['zero_fraction']:.3f} / {a['median_relative_error']:.3g} / "
            f"{a['flagged_fraction']:.3f} "
            f"| {u['ratio_of_means']:.2f} / {u['zero_fraction']:.3f} / {u['median_relative_error']:.3g} "
            f"| {f['max_relative_difference']:.2g} / {f['flagged_fraction']:.3f} "
            f"| {a['seconds']:.1f} / {f['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [measure(s, args.samples, args.probes, args.seed) for s in SCALES]
    device = torch.device("cpu")
    env = environment(device)
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python -m benchmarks.zo_floor "
               f"--samples {args.samples} --probes {args.probes} --seed {args.seed}")
    write_results(results_dir(device), "zo_floor", {"environment": env, "command": command, "rows": rows},
                  markdown(rows, env, command))


if __name__ == "__main__":
    main()
