"""``curvfast.param_curvature`` against a PyHessian-style loop, at equal accuracy, on one CPU thread.

The baseline (written here after reading what PyHessian's ``hessian.trace`` / ``hessian.eigenvalues`` do; none of
its code): one probe at a time, each a full pass over the data with a fresh forward, ``autograd.grad`` with
``create_graph=True`` and a second ``autograd.grad`` for Hv; trace by Hutchinson (Rademacher), top eigenvalue by
power iteration stopped when the Rayleigh quotient changes by less than 1e-3 relatively (PyHessian's rule).

Accuracy targets, per case, against a long reference run of curvfast:
- trace: relative standard error ``--trace-rtol`` (default 2%). A Hutchinson-type estimator needs
  P = (s / (rtol * tr))^2 probes, s its per-probe standard deviation, measured from its own probes (baseline: plain
  Rademacher; curvfast: the Lanczos-deflated probes). The baseline's time is P times its median time per probe
  (its cost is linear in probes); curvfast runs with its P and is timed whole (Lanczos steps included).
- top eigenvalue: the first iterate within ``--eig-rtol`` (default 1e-3) of the reference, timed per iteration
  along each run (power iteration; Lanczos).
The two are interleaved, ``--repeats`` times; median and min. ``--quick``: fewer samples and repeats.

    python -m benchmarks.param_curvature [--quick] [--cases digits_cnn resnet18_c10]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import curvfast
from benchmarks.cases import build_case
from benchmarks.environment import environment, results_dir, write_results
from curvfast.flatness import LossHessian, lanczos, ritz

SAMPLES = {"digits_cnn": 256, "resnet18_c10": 4}  # ResNet-18: ~6 s per HVP of 8 images on one shared CPU thread
QUICK_SAMPLES = {"digits_cnn": 64, "resnet18_c10": 2}
REPEATS = {"digits_cnn": 3, "resnet18_c10": 1}
REFERENCE = {"digits_cnn": {"probes": 64, "steps": 80, "pilot": 16}, "resnet18_c10": {"probes": 32, "steps": 40, "pilot": 8}}
BATCH = 64


def _batches(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def baseline_hvp(model, batches, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """PyHessian-style Hv over the data: per batch a forward, grad with create_graph, grad of g.v; weighted sum."""
    params, total, count = _params(model), [torch.zeros_like(p) for p in _params(model)], 0
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        total = [t + h.detach() * len(x) for t, h in zip(total, hv)]
        count += len(x)
    return [t / count for t in total]


def baseline_probe(model, batches, gen) -> tuple[float, float]:
    """One Rademacher Hutchinson sample v^T H v, and its wall time."""
    t0 = time.perf_counter()
    v = [torch.randint(0, 2, p.shape, generator=gen).to(p) * 2 - 1 for p in _params(model)]
    hv = baseline_hvp(model, batches, v)
    return float(sum((a * b).sum() for a, b in zip(v, hv))), time.perf_counter() - t0


def baseline_power(model, batches, max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> list[tuple[float, float]]:
    """Power iteration, PyHessian's stopping rule; ``[(eigenvalue estimate, elapsed s)]`` per iteration."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in _params(model)]
    t0, out, prev = time.perf_counter(), [], None
    for _ in range(max_iter):
        norm = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / norm for t in v]
        hv = baseline_hvp(model, batches, v)
        lam = float(sum((a * b).sum() for a, b in zip(v, hv)))
        out.append((lam, time.perf_counter() - t0))
        v = hv
        if prev is not None and abs(lam - prev) / (abs(prev) + 1e-6) < tol:
            break
        prev = lam
    return out


def curvfast_lanczos(model, batches, steps: int, seed: int = 0, ref: float | None = None,
                     rtol: float = 0.0) -> list[tuple[float, float]]:
    """curvfast's Lanczos (the code param_curvature runs); ``[(top Ritz value, elapsed s)]`` per step, stopped at
    the first within ``rtol`` of ``ref``."""
    op = LossHessian(model, batches)
    start = curvfast.ops.probes(torch.tensor([3]), 1, op.dim, seed=seed, dtype=op.dtype)[0]
    t0, out = time.perf_counter(), []

    def record(runs):
        out.append((float(ritz(runs, 0)[0][-1]), time.perf_counter() - t0))
        return ref is not None and abs(out[-1][0] - ref) <= rtol * abs(ref)

    lanczos(op.matmat, start, steps, record)
    return out


def _first_within(trajectory, ref, rtol):
    for i, (lam, t) in enumerate(trajectory):
        if abs(lam - ref) <= rtol * abs(ref):
            return t, i + 1
    return None, len(trajectory)


def _stats(values):
    values = [v for v in values if v is not None]
    return {"median_s": statistics.median(values), "min_s": min(values)} if values else {"median_s": None, "min_s": None}


def run_case(name: str, samples: int, repeats: int | None, trace_rtol: float, eig_rtol: float, deflate: int) -> dict:
    model, x, y, info = build_case(name, samples)
    model = model.eval()
    batches = _batches(x, y)
    D = sum(p.numel() for p in _params(model))
    # the long reference runs
    ref = REFERENCE[name]
    ref_trace = curvfast.param_curvature(model, batches, "trace", probes=ref["probes"], deflate=deflate, probe_batch=8,
                                         seed=99)
    ref_eig = curvfast.param_curvature(model, batches, "top_eigenvalues", k=1, rtol=1e-6, steps=ref["steps"], seed=99)
    # per-probe spreads: the baseline's plain probes (timed one by one), curvfast's deflated probes (the reference)
    gen = torch.Generator().manual_seed(0)
    pilot = [baseline_probe(model, batches, gen) for _ in range(ref["pilot"])]
    sd_plain = statistics.stdev([q for q, _ in pilot])
    sd_defl = ref_trace.stderr * math.sqrt(ref_trace.probes)
    need_plain = max(2, math.ceil((sd_plain / (trace_rtol * abs(ref_trace.value))) ** 2))
    need_defl = max(2, math.ceil((sd_defl / (trace_rtol * abs(ref_trace.value))) ** 2))
    rows = {k: [] for k in ("base_probe", "ours_trace", "base_eig", "ours_eig")}
    errs = {"ours_trace": [], "base_eig_at_stop": [], "base_eig_iters": [], "ours_eig_steps": []}
    for r in range(repeats or REPEATS[name]):  # interleaved
        rows["base_probe"] += [t for _, t in (baseline_probe(model, batches, gen) for _ in range(2))]
        t0 = time.perf_counter()
        ours = curvfast.param_curvature(model, batches, "trace", probes=need_defl, deflate=deflate, probe_batch=8, seed=r)
        rows["ours_trace"].append(time.perf_counter() - t0)
        errs["ours_trace"].append(abs(ours.value - ref_trace.value) / abs(ref_trace.value))
        power = baseline_power(model, batches, seed=r)
        t_base, iters = _first_within(power, ref_eig.value, eig_rtol)
        rows["base_eig"].append(t_base)
        errs["base_eig_at_stop"].append(abs(power[-1][0] - ref_eig.value) / abs(ref_eig.value))
        errs["base_eig_iters"].append(iters)
        lz = curvfast_lanczos(model, batches, steps=40, seed=r, ref=ref_eig.value, rtol=eig_rtol)
        t_ours, steps = _first_within(lz, ref_eig.value, eig_rtol)
        rows["ours_eig"].append(t_ours)
        errs["ours_eig_steps"].append(steps)
    probe = _stats(rows["base_probe"])
    base_trace = {k: v * need_plain for k, v in probe.items()}
    result = {
        "case": {"name": name, "samples": samples, "params": D, **info},
        "reference": {"trace": ref_trace.value, "trace_stderr": ref_trace.stderr, "trace_probes": ref_trace.probes,
                      "deflate": deflate, "top_eigenvalue": ref_eig.value, "top_eigenvalue_residual": ref_eig.stderr},
        "trace": {"rtol": trace_rtol, "per_probe_sd_plain": sd_plain, "per_probe_sd_deflated": sd_defl,
                  "probes_plain": need_plain, "probes_deflated": need_defl, "baseline_per_probe": probe,
                  "baseline": base_trace, "curvfast": _stats(rows["ours_trace"]),
                  "curvfast_rel_err": errs["ours_trace"]},
        "top_eigenvalue": {"rtol": eig_rtol, "baseline": _stats(rows["base_eig"]), "curvfast": _stats(rows["ours_eig"]),
                           "baseline_iterations_to_rtol": errs["base_eig_iters"],
                           "baseline_rel_err_at_its_stop": errs["base_eig_at_stop"],
                           "curvfast_steps_to_rtol": errs["ours_eig_steps"]},
    }
    ratios = {}
    for stat in ("trace", "top_eigenvalue"):
        b, o = result[stat]["baseline"]["median_s"], result[stat]["curvfast"]["median_s"]
        ratios[f"{stat}_median"] = b / o if b and o else None
        b, o = result[stat]["baseline"]["min_s"], result[stat]["curvfast"]["min_s"]
        ratios[f"{stat}_min"] = b / o if b and o else None
    result["ratios"] = ratios
    return result


def _fmt(v):
    return "not reached" if v is None else f"{v:.3g}"


def markdown(results: list[dict], env: dict) -> str:
    lines = [f"Device: {env['device']}, torch {env['torch']}, {env['threads']} threads, native ops {env['native_ops']}.", ""]
    for r in results:
        c, t, e = r["case"], r["trace"], r["top_eigenvalue"]
        lines += [f"### {c['name']}: {c['samples']} samples, D = {c['params']:,} parameters", "",
                  f"Weights: {c['weights']}. Reference: tr(H) = {r['reference']['trace']:.5g} "
                  f"± {r['reference']['trace_stderr']:.2g} (curvfast, {r['reference']['trace_probes']} probes deflated by "
                  f"{r['reference']['deflate']} Lanczos steps), top eigenvalue {r['reference']['top_eigenvalue']:.6g} "
                  f"(Lanczos, residual {r['reference']['top_eigenvalue_residual']:.1e}).", "",
                  "| target | method | median s | min s | work | note |", "|---|---|---|---|---|---|",
                  f"| trace, {t['rtol']:.0%} rel. stderr | PyHessian-style loop | {_fmt(t['baseline']['median_s'])} | "
                  f"{_fmt(t['baseline']['min_s'])} | {t['probes_plain']} probes | per-probe sd {t['per_probe_sd_plain']:.3g}; "
                  f"{t['probes_plain']} x median {t['baseline_per_probe']['median_s']:.3g} s per probe |",
                  f"| trace, {t['rtol']:.0%} rel. stderr | curvfast (deflated Hutchinson) | {_fmt(t['curvfast']['median_s'])} | "
                  f"{_fmt(t['curvfast']['min_s'])} | {t['probes_deflated']} probes + {r['reference']['deflate']} Lanczos | "
                  f"per-probe sd {t['per_probe_sd_deflated']:.3g}; rel. err vs reference "
                  f"{', '.join(f'{v:.3f}' for v in t['curvfast_rel_err'])} |",
                  f"| top eigenvalue, {e['rtol']:g} rel. err | power iteration | {_fmt(e['baseline']['median_s'])} | "
                  f"{_fmt(e['baseline']['min_s'])} | {e['baseline_iterations_to_rtol']} HVPs | rel. err at its own stop: "
                  f"{', '.join(f'{v:.1e}' for v in e['baseline_rel_err_at_its_stop'])} |",
                  f"| top eigenvalue, {e['rtol']:g} rel. err | curvfast (Lanczos) | {_fmt(e['curvfast']['median_s'])} | "
                  f"{_fmt(e['curvfast']['min_s'])} | {e['curvfast_steps_to_rtol']} HVPs | full reorthogonalisation |", "",
                  "Ratios (baseline / curvfast): " + ", ".join(f"{k} = {_fmt(v)}" for k, v in r["ratios"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--trace-rtol", type=float, default=0.02)
    parser.add_argument("--eig-rtol", type=float, default=1e-3)
    parser.add_argument("--deflate", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    samples = QUICK_SAMPLES if args.quick else SAMPLES
    repeats = 1 if args.quick else args.repeats
    results = [run_case(name, samples[name], repeats, args.trace_rtol, args.eig_rtol, args.deflate) for name in args.cases]
    device = torch.device("cpu")
    env = environment(device)
    name = "param_curvature_quick" if args.quick else "param_curvature"
    write_results(results_dir(device), name, {"environment": env, "cases": results}, markdown(results, env))


if __name__ == "__main__":
    main()
