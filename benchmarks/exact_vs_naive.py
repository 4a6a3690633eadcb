"""Exact logit-space trace vs a naive one-probe-at-a-time double-backward Hutchinson loop.

Case: CIFAR-stem ResNet-18, batch 32, C = 10, 32x32 inputs, CPU. Weights are random (no
pretrained CIFAR weights exist offline) with the final layer scaled so the softmax is as peaked
as a trained model's on its training data; inputs are 32x32 crops of sklearn's bundled photos,
labelled with the model's own prediction (as training samples of a fitted model are).

Reported: median and minimum time of curvfast's exact trace and of one naive probe; the naive
loop's per-sample relative standard deviation measured from its own probes; the number of probes
(and time) the naive loop needs for 1% median relative error; exact's own error against float64.

    python -m benchmarks.exact_vs_naive [--repeats 5] [--naive-probes 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import curvfast
from benchmarks.baselines.naive_hutchinson import naive_hutchinson_probe
from curvfast.io import atomic_write_bytes, write_json
from curvfast.models import cifar_resnet18

MEDIAN_ABS_NORMAL = 0.6745  # median |Z| for a standard normal Z


def photo_crops(batch: int, size: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(img, dtype=np.float32) / 255.0 for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(batch):
        img = photos[i % len(photos)]
        r, c = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        crops.append(img[r : r + size, c : c + size].transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(crops))
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-probes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cifar_resnet18(10).eval()
    x = photo_crops(args.batch, 32, seed=0)
    with torch.no_grad():
        logits = model(x)
        model.fc.weight.mul_(8.0 / logits.std().item())  # peaked softmax, as a trained model's
        model.fc.bias.zero_()
        y = model(x).argmax(1)
        p_max = model(x).softmax(1).max(1).values

    def input_gradient():
        xg = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xg), y, reduction="sum").backward()
        return xg.grad

    _, t_grad = timed(input_gradient, args.repeats)

    # curvfast exact (fp32), and its error against float64
    curvfast.input_curvature(model, x[:2], y[:2], method="exact")  # warm-up (and the cached PL check)
    exact, t_exact = timed(lambda: curvfast.input_curvature(model, x, y, method="exact"), args.repeats)
    exact64 = curvfast.input_curvature(model.double(), x.double(), y, method="exact").value
    model.float()
    exact_err = ((exact.value.double() - exact64).abs() / exact64).median().item()

    # naive loop: time per probe, and its variance from its own probes
    gen = torch.Generator().manual_seed(1)
    naive_probe_times, samples = [], []
    for _ in range(args.naive_probes):
        start = time.perf_counter()
        samples.append(naive_hutchinson_probe(model, x, y, gen))
        naive_probe_times.append(time.perf_counter() - start)
    samples = torch.stack(samples).double()  # (probes, B)
    rel_sd = samples.std(0) / exact64.abs()
    naive_err = ((samples.mean(0) - exact64).abs() / exact64).median().item()
    probes_for_1pct = int(np.ceil((MEDIAN_ABS_NORMAL * rel_sd.median().item() / 0.01) ** 2))
    t_probe = {"median_s": statistics.median(naive_probe_times), "min_s": min(naive_probe_times), "repeats": args.naive_probes}

    result = {
        "case": {"model": "cifar_resnet18 (random weights, final layer scaled)", "input": [3, 32, 32], "classes": 10,
                 "batch": args.batch, "device": "cpu", "mean_max_softmax": round(p_max.mean().item(), 4)},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                        "native_ops": curvfast.ops.native_available(), "machine": platform.machine()},
        "input_gradient": t_grad,
        "exact": {**t_exact, "median_rel_err_vs_float64": exact_err,
                  "cost_in_input_gradients": t_exact["median_s"] / t_grad["median_s"]},
        "naive_hutchinson_per_probe": t_probe,
        "naive_hutchinson": {
            "probes_measured": args.naive_probes,
            "median_rel_err_with_measured_probes": naive_err,
            "median_per_probe_rel_sd": rel_sd.median().item(),
            "probes_for_1pct_median_rel_err": probes_for_1pct,
            "time_for_1pct_s_median": probes_for_1pct * t_probe["median_s"],
        },
        "ratio_naive_1pct_over_exact_median": probes_for_1pct * t_probe["median_s"] / t_exact["median_s"],
        "ratio_one_naive_probe_over_exact_median": t_probe["median_s"] / t_exact["median_s"],
    }
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "exact_vs_naive.json"), result)
    atomic_write_bytes(os.path.join(args.out, "exact_vs_naive.md"), markdown(result).encode())
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    e, p, n, g = r["exact"], r["naive_hutchinson_per_probe"], r["naive_hutchinson"], r["input_gradient"]
    return "\n".join([
        f"CIFAR-stem ResNet-18, batch {r['case']['batch']}, C=10, CPU ({r['environment']['threads']} threads), torch {r['environment']['torch']}",
        "",
        "| method | median s | min s | in input-gradient passes | median rel. error vs float64 |",
        "|---|---|---|---|---|",
        f"| one input gradient (reference cost) | {g['median_s']:.3f} | {g['min_s']:.3f} | 1 | |",
        f"| curvfast exact (9 VJPs, one forward) | {e['median_s']:.3f} | {e['min_s']:.3f} | {e['cost_in_input_gradients']:.1f} | {e['median_rel_err_vs_float64']:.1e} |",
        f"| naive Hutchinson, 1 probe | {p['median_s']:.3f} | {p['min_s']:.3f} | {p['median_s'] / g['median_s']:.1f} | {n['median_per_probe_rel_sd'] * MEDIAN_ABS_NORMAL:.2f} |",
        f"| naive Hutchinson, {n['probes_measured']} probes | {n['probes_measured'] * p['median_s']:.2f} | {n['probes_measured'] * p['min_s']:.2f} | {n['probes_measured'] * p['median_s'] / g['median_s']:.0f} | {n['median_rel_err_with_measured_probes']:.3f} |",
        f"| naive Hutchinson, {n['probes_for_1pct_median_rel_err']} probes (1% target, extrapolated) | {n['time_for_1pct_s_median']:.0f} | | {n['time_for_1pct_s_median'] / g['median_s']:.0f} | 0.01 |",
        "",
        f"Naive loop to 1% / exact: {r['ratio_naive_1pct_over_exact_median']:.0f}x; one naive probe / exact: {r['ratio_one_naive_probe_over_exact_median']:.2f}x.",
        "",
    ])


if __name__ == "__main__":
    main()
