"""Verifix projectors for every conv layer of a CIFAR-stem ResNet-18: no-unfold streaming vs materialise-all.

Both routes compute, for each of the 20 Conv2d layers, the soft projector P_α = U diag(λ(r)) Uᵀ
(α = 1e4) from the layer's im2col patches on the same ``--samples`` inputs (all rows, or the same
random subset of at most ``--max-rows`` rows per layer):

- **materialise** (baseline, the published recipe): one forward of all samples; a hook unfolds the
  layer's whole input (N · L patches x d, all materialised), keeps the row subset and calls
  ``torch.linalg.svd`` (float32).
- **stream** (curvfast): ``iter_layer_spectra`` in batches of ``--batch`` samples, layers a few
  at a time under ``--state-budget`` bytes of sketch state; a conv's patches are never formed: its
  Gram matrix is accumulated in float64 from weight-gradient convolutions of the input's shifted
  views (or the randomized route's sketch by conv forward + weight gradient, ``--route randomized
  --rank k``), or by the fused native op (``--kernel native``; ``auto``, the default, uses it for
  the layers computed in float64), then the projector from the Gram matrix by one Cholesky factorisation.
- **reference** (not timed, skipped with ``--no-reference``): exact float64 projectors from the
  float64 Gram matrices of the unfolded patches and ``eigh``, to tell which side's rounding a
  distance between the two comes from.

Each route runs in its own process, which writes each layer's projector to disk as soon as it
exists (neither route holds all 20), so that its peak resident memory (``ru_maxrss``) is its own.
Reported: wall time of the computation (curvfast's per layer too), peak RSS above the process's RSS
before it (model and inputs already built), and agreement: relative Frobenius distances of the
projectors (pairwise among the sides) and the top-1 agreement of the corrected models on held-out
inputs. ``--sides stream`` runs curvfast alone (where the baseline cannot fit in memory). The weights
are random (no CIFAR weights exist offline) and the inputs are 32x32 crops of sklearn's bundled photos.

    python -m benchmarks.verifix_projector [--samples 1000] [--max-rows N] [--batch 50] [--threads 2] [--kernel auto]
        [--name verifix_projector]
    python -m benchmarks.verifix_projector --gram-rates --threads 1 --name NAME   # conv vs native kernel per layer
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.cases import photo_crops
from benchmarks.environment import environment, results_dir, write_results
from curvfast.pipelines.verifix import (DEFAULT_STATE_BUDGET, RowSampler, apply_projectors, iter_layer_spectra, layer_operator,
                                        layer_rows, soft_projector, target_layers)
from curvfast.linalg import SpectrumResult
from curvfast.models import cifar_resnet18

ALPHA = 1e4


def build(samples: int, seed: int):
    torch.manual_seed(seed)
    model = cifar_resnet18(10).eval()
    convs = [name for name, m in target_layers(model).items() if isinstance(m, torch.nn.Conv2d)]
    return model, convs, photo_crops(samples, 32, seed)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def save(folder: str, name: str, projector: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    torch.save(projector.to(dtype), os.path.join(folder, f"{name}.pt"))


@torch.no_grad()
def materialise(model, convs, x, max_rows: int | None, seed: int, out: str) -> None:
    """Baseline: all patches of a layer at once, the row subset, torch.linalg.svd (float32)."""
    modules = dict(model.named_modules())

    def hook_for(i, name):
        def hook(module, args):
            rows, positions = layer_rows(module, args[0])  # (g, N·L, d): every patch, materialised
            keep = RowSampler(len(x), positions, max_rows, seed + 7919 * i).local(0, len(x))
            rows = rows if keep is None else rows[:, keep]
            _, s, vh = torch.linalg.svd(rows, full_matrices=False)
            spectrum = SpectrumResult(vh.mT, s, rows.square().sum((1, 2)), rows.shape[1], "svd")
            save(out, name, soft_projector(spectrum, ALPHA))

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(i, n)) for i, n in enumerate(convs)]
    model(x)
    for h in handles:
        h.remove()


def stream(model, convs, x, args, out: str) -> dict:
    """curvfast; returns each layer's seconds (activations, sketch, result) and projector seconds."""
    spectra = iter_layer_spectra(
        model, x, layers=convs, max_rows=args.max_rows, route=args.route, rank=args.rank, batch_size=args.batch,
        seed=args.seed, state_budget=args.state_budget, kernel=args.kernel, progress=False,
    )
    layers = {}
    for name, layer in spectra:
        start = time.perf_counter()
        save(out, name, soft_projector(layer.spectrum, ALPHA, overwrite=True), dtype=torch.float64)  # no d x d copies
        layers[name] = {"route": layer.spectrum.route, "sketch_seconds": layer.seconds, "projector_seconds": time.perf_counter() - start}
        del layer  # only the current group's state stays alive
    return layers


@torch.no_grad()
def reference(model, convs, x, args, out: str) -> None:
    """Exact float64 projectors (not timed): every layer's Gram matrix from unfolded patches in float64,
    ``--batch`` samples at a time, then ``eigh`` and U diag(λ) Uᵀ (the same subset of rows as both sides)."""
    modules = dict(model.named_modules())
    grams, energies, offset = {}, {}, [0]

    def hook_for(i, name):
        def hook(module, args_):
            rows, positions = layer_rows(module, args_[0].double())
            keep = RowSampler(len(x), positions, args.max_rows, args.seed + 7919 * i).local(offset[0], len(args_[0]))
            rows = rows if keep is None else rows[:, keep]
            if name not in grams:
                grams[name], energies[name] = 0, 0
            grams[name] = grams[name] + rows.mT @ rows
            energies[name] = energies[name] + rows.square().sum((1, 2))

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(i, n)) for i, n in enumerate(convs)]
    for offset[0] in range(0, len(x), args.batch):
        model(x[offset[0] : offset[0] + args.batch])
    for h in handles:
        h.remove()
    for name in convs:
        evals, evecs = torch.linalg.eigh(grams.pop(name))
        spectrum = SpectrumResult(evecs.flip(-1), evals.flip(-1).clamp_min(0).sqrt(), energies[name], 0, "reference")
        save(out, name, soft_projector(spectrum, ALPHA), dtype=torch.float64)


def child(args) -> None:
    """Run one route in this process; print its timing and memory as JSON; save its projectors."""
    torch.set_num_threads(args.threads)
    model, convs, x = build(args.samples, args.seed)
    start_rss = rss_bytes()
    out = os.path.join(args.tmp, args.child)
    os.makedirs(out)
    start = time.perf_counter()
    layers = None
    if args.child == "materialise":
        materialise(model, convs, x, args.max_rows, args.seed, out)
    elif args.child == "stream":
        layers = stream(model, convs, x, args, out)
    else:
        reference(model, convs, x, args, out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "start_rss": start_rss, "peak_rss": peak, "peak_above_start": peak - start_rss,
                      "layers": layers}))


def run_routes(sides, args, tmp: str) -> dict:
    """Each side in its own process: one after the other, or all at once with ``--concurrent`` (then
    both see the same machine load; the side that finishes first frees the CPU for the other)."""
    def start(side):
        cmd = [sys.executable, "-m", "benchmarks.verifix_projector", "--child", side, "--tmp", tmp]
        for key in ("samples", "max_rows", "batch", "threads", "seed", "route", "rank", "state_budget", "kernel"):
            if getattr(args, key) is not None:
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def finish(proc):
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{proc.args} failed with status {proc.returncode}")
        return json.loads(out.strip().splitlines()[-1])

    if args.concurrent:
        procs = {side: start(side) for side in sides}
        return {side: finish(proc) for side, proc in procs.items()}
    return {side: finish(start(side)) for side in sides}


@torch.no_grad()
def agreement(args, tmp: str, sides) -> dict:
    """Relative Frobenius distances between the sides' projectors (per layer and the max over layers)
    and the top-1 agreement of the corrected models on held-out crops."""
    model, convs, _ = build(args.samples, args.seed)
    projectors = {side: {n: torch.load(os.path.join(tmp, side, f"{n}.pt")).double() for n in convs} for side in sides}
    held_out = photo_crops(args.eval_samples, 32, args.seed + 1)
    preds = {"original": model(held_out).argmax(1)}
    preds |= {side: apply_projectors(build(args.samples, args.seed)[0], p)(held_out).argmax(1) for side, p in projectors.items()}
    out = {"top1_agreement_materialise_vs_original": (preds["materialise"] == preds["original"]).float().mean().item()}
    for a, b in (("stream", "materialise"), ("stream", "reference"), ("materialise", "reference")):
        if a in projectors and b in projectors:
            rel = {n: (torch.linalg.matrix_norm(projectors[a][n] - projectors[b][n])
                       / torch.linalg.matrix_norm(projectors[b][n])).max().item() for n in convs}
            out[f"projector_rel_frobenius_{a}_vs_{b}"] = rel
            out[f"projector_rel_frobenius_max_{a}_vs_{b}"] = max(rel.values())
            out[f"top1_agreement_{a}_vs_{b}"] = (preds[a] == preds[b]).float().mean().item()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def gram_rates(args) -> None:
    """The no-unfold products of one layer per stage on one batch, by the framework's convolutions
    (``kernel="conv"``) and by the fused native op (``"native"``), on the same rows: the Gram
    G += Xᵀ X (2 n d² flops, all of G counted) and the sketch Z += Xᵀ (X Q) for Q of ``--width``
    columns (4 n d l flops). Warm-up, then ``--repeats`` interleaved repetitions; median and min
    seconds, GFLOP/s at the median, the largest relative difference of the two kernels' results,
    and a dense GEMM's rate in the same dtype as the ceiling. ``--device cuda``: the same on the GPU
    (cuDNN's convolutions against the op's CUDA im2col + cuBLAS), synchronised around each call."""
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    device = torch.device(args.device)
    model, _, x = build(args.batch, args.seed)
    model, x = model.to(device), x.to(device)
    layers = ("conv1", "layer1.0.conv2", "layer2.1.conv1", "layer3.1.conv1", "layer4.1.conv1")
    inputs = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda _, a, n=n: inputs.__setitem__(n, a[0])) for n in layers]
    model(x)
    for h in handles:
        h.remove()

    def timed(calls: dict) -> dict:
        """{kernel: [seconds]}: one warm-up call each, then the kernels in turn ``--repeats`` times."""
        for f in calls.values():
            f()
        times = {k: [] for k in calls}
        for _ in range(args.repeats):
            for k, f in calls.items():
                _sync(device)
                start = time.perf_counter()
                f()
                _sync(device)
                times[k].append(time.perf_counter() - start)
        return times

    rows, out = [], {}
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(2048, 2048, dtype=dtype, device=device)
        gemm = timed({"gemm": lambda a=a: a @ a})["gemm"]
        out[f"gemm_{dtype}"] = 2 * 2048**3 / statistics.median(gemm) / 1e9
        rows.append(f"| dense GEMM 2048² | | | {dtype} | | {out[f'gemm_{dtype}']:.1f} | | | |")
    for name in layers:
        ops_ = {k: layer_operator(modules[name], inputs[name], kernel=k)[0] for k in ("conv", "native")}
        op = ops_["conv"]
        g, d, n, width = op.groups, op.dim, op.rows, args.width
        q = torch.randn(g, d, width, dtype=torch.float64, device=device)
        results = {k: (torch.zeros(g, d, d, dtype=torch.float64, device=device),
                       torch.zeros(g, d, width, dtype=torch.float64, device=device)) for k in ops_}
        products = {
            "Gram": (2 * n * d * d, {k: lambda o=o, r=results[k]: o.add_gram_to(r[0]) for k, o in ops_.items()}),
            f"sketch (l = {width})": (4 * n * d * width,
                                      {k: lambda o=o, r=results[k]: o.add_gram_times_to(r[1], q) for k, o in ops_.items()}),
        }
        out[name] = {"dtype": str(op.x.dtype), "dim": d, "rows": n}
        for i, (product, (flops, calls)) in enumerate(products.items()):
            times = timed(calls)
            want, got = results["conv"][i], results["native"][i]  # both summed the same rows 1 + repeats times
            diff = ((got - want).abs().max() / want.abs().max()).item()
            stats = {k: {"median_s": statistics.median(t), "min_s": min(t), "gflops_median": flops / statistics.median(t) / 1e9,
                         "seconds": t} for k, t in times.items()}
            ratio = stats["native"]["median_s"] / stats["conv"]["median_s"]
            out[name][product] = stats | {"native_over_conv_median": ratio, "max_rel_difference": diff}
            rows.append(f"| {name} | {product} | {d} x {n} rows | {op.x.dtype} | "
                        f"{stats['conv']['median_s']:.3f} / {stats['conv']['min_s']:.3f} | {stats['conv']['gflops_median']:.1f} | "
                        f"{stats['native']['median_s']:.3f} / {stats['native']['min_s']:.3f} | {stats['native']['gflops_median']:.1f} | "
                        f"{ratio:.2f} |")
    load_end = os.getloadavg()[0]
    lines = [f"No-unfold products, conv primitives vs the fused native op (curvfast::patch_gram_add_), {args.batch} photo crops, "
             f"{device.type} ({args.threads} CPU thread(s)), {args.repeats} interleaved repeats after a warm-up, "
             f"load average {load_start:.1f} at the start, "
             f"{load_end:.1f} at the end, torch {torch.__version__}", "",
             "| layer | product | d x rows | dtype | conv s (median / min) | conv GFLOP/s | native s (median / min) | native GFLOP/s "
             "| native / conv |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    write_results(results_dir(device), f"{args.name}_rates",
                  {"settings": vars(args), "rates": out, "load_average_start": load_start, "load_average_end": load_end},
                  "\n".join(lines))


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--max-rows", type=int, default=None, help="rows per layer (default: all)")
    parser.add_argument("--batch", type=int, default=50, help="samples per streamed batch")
    parser.add_argument("--route", default="auto", choices=("auto", "gram", "randomized"))
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--state-budget", type=int, default=DEFAULT_STATE_BUDGET, help="bytes of sketch state alive at once")
    parser.add_argument("--sides", choices=("both", "stream"), default="both", help="stream: curvfast alone (baseline does not fit)")
    parser.add_argument("--name", default="verifix_projector", help="results file name")
    parser.add_argument("--concurrent", action="store_true", help="run both sides at the same time (same machine load)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the exact float64 projectors (untimed)")
    parser.add_argument("--child", choices=("materialise", "stream", "reference"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", default="auto", choices=("auto", "conv", "native"), help="how curvfast computes conv products")
    parser.add_argument("--gram-rates", action="store_true",
                        help="only the no-unfold products' times, conv vs native kernel, and GEMM's rate (NAME_rates)")
    parser.add_argument("--repeats", type=int, default=5, help="--gram-rates: timed repetitions per kernel")
    parser.add_argument("--width", type=int, default=64, help="--gram-rates: columns l of the sketch's Q")
    parser.add_argument("--device", default="cpu", help="--gram-rates: cpu or cuda (the full runs are CPU-only)")
    args = parser.parse_args(argv)
    if args.gram_rates:
        gram_rates(args)
        return None
    if args.child:
        child(args)
        return None
    sides = ("materialise", "stream") if args.sides == "both" else ("stream",)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        routes = run_routes(sides, args, tmp)
        agree = None
        if args.sides == "both":
            if args.reference:
                args.concurrent = False
                routes |= run_routes(("reference",), args, tmp)
            agree = agreement(args, tmp, ("materialise", "stream", "reference") if args.reference else sides)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "tmp")} | {"alpha": ALPHA, "layers": 20}
    result = {"settings": settings, "environment": environment(torch.device("cpu")), "routes": routes, "agreement": agree,
              "load_average_start": load_start}
    gib = 2**30
    ours = routes["stream"]
    rows = "all rows" if args.max_rows is None else f"at most {args.max_rows} rows per layer"
    lines = [
        f"Verifix projectors, all 20 conv layers of a CIFAR-stem ResNet-18, {args.samples} photo crops 32x32, {rows}, "
        f"CPU ({args.threads} threads), torch {torch.__version__}", "",
        "| route | seconds | peak memory above start (GiB) |", "|---|---|---|",
    ]
    if agree is not None:
        base = routes["materialise"]
        result["time_ratio"] = ours["seconds"] / base["seconds"]
        result["memory_ratio"] = ours["peak_above_start"] / base["peak_above_start"]
        lines.append(f"| materialise all unfold patches + torch.linalg.svd (float32) | {base['seconds']:.1f} "
                     f"| {base['peak_above_start'] / gib:.2f} |")
    lines.append(
        f"| curvfast no-unfold streaming ({args.route}{'' if args.rank is None else f', rank {args.rank}'}, kernel {args.kernel}, "
        f"batch {args.batch}, "
        f"state budget {args.state_budget / 2**20:.0f} MiB) | {ours['seconds']:.1f} | {ours['peak_above_start'] / gib:.3f} |"
    )
    if ours["layers"]:
        sketch = sum(layer["sketch_seconds"] for layer in ours["layers"].values())
        factor = sum(layer["projector_seconds"] for layer in ours["layers"].values())
        lines += ["", f"curvfast's time: {sketch:.1f} s in the layers' sketches (their activations' products and results), "
                  f"{factor:.1f} s forming the projectors, the rest in the forward passes"]
    if agree is not None:
        def distance(a, b):
            return f"{agree[f'projector_rel_frobenius_max_{a}_vs_{b}']:.1e}"

        lines += ["", f"time ratio {result['time_ratio']:.3f}, memory ratio {result['memory_ratio']:.3f}; max over layers of the relative "
                  f"Frobenius distance of the projectors: curvfast vs baseline {distance('stream', 'materialise')}"]
        if args.reference:
            lines[-1] += (f", curvfast vs exact float64 {distance('stream', 'reference')}, baseline vs exact float64 "
                          f"{distance('materialise', 'reference')}")
        lines += [f"top-1 agreement of the corrected models on {args.eval_samples} held-out crops: curvfast vs baseline "
                  f"{agree['top1_agreement_stream_vs_materialise']:.3f}"
                  + (f", curvfast vs exact {agree['top1_agreement_stream_vs_reference']:.3f}" if args.reference else "")]
    lines += ["", f"load average (1 min) {load_start:.1f} at the start, {result['environment']['load_average'][0]:.1f} at the end"]
    write_results(results_dir(torch.device("cpu")), args.name, result, "\n".join(lines + [""]))
    return result

if __name__ == "__main__":
    main()
