"""Estimator suite: curvfast's exact / sampled / hutchinson / fd / zo against the baselines.

For each case (model, input, C, batch, device) and method it records, from one run:
- seconds per batch (median and minimum of ``--repeats``), images per second;
- cost in units of one input-gradient pass (a forward plus one backward of the summed loss);
- median relative error against a float64 exact reference on a subset of the batch;
- time to reach 1% median relative error: exact is there already; a Hutchinson-type method
  needs P₁ = (0.6745·s/0.01)² probes, where s is the median per-sample relative standard
  deviation of one probe measured from its own probes (0.6745 = median |Z| of a standard
  normal); time = P₁ × time per probe. fd and zo estimate h·‖H‖_F and h·√(2/π)·‖H‖_F, not
  the trace: their error is against those targets, and their bias floor can make 1% unreachable.

Smooth cases (GELU MLP, patch transformer) have no exact/sampled rows (those methods refuse smooth
models); their reference is the float64 trace from D HVPs, and they time the new ``auto``
(``deflated``): exact Gauss-Newton trace + residual deflated on the Gauss-Newton range; its time
to 1% is measured, not extrapolated: ``deflated`` is re-run and timed with the P₁ residual probes
that the auto row's own spread asks for (its error is reported too).
``exact`` is timed after the first call, which calibrates its pass width, interleaved with its
plain-loop baseline (one forward plus C ``autograd.grad`` calls reusing the graph).

Baselines (benchmarks/baselines/, never in the library): a naive one-probe-at-a-time double-
backward Hutchinson loop, torch.func ``vmap(jvp(grad))`` Hutchinson, and the published fd and
zo estimators as published.

    python -m benchmarks.estimators [--cases digits_cnn resnet18_c10 ...] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

import curvfast
from benchmarks.baselines.func_hutchinson import func_hutchinson
from benchmarks.baselines.naive_hutchinson import naive_hutchinson_probe
from benchmarks.baselines.published_fd import published_fd
from benchmarks.baselines.published_zo import published_zo
from benchmarks.cases import CASE_NAMES, SMOOTH_CASES, build_case
from benchmarks.environment import environment, results_dir, write_results

MEDIAN_ABS_NORMAL = 0.6745
DEFAULT_BATCH = {"digits_cnn": 64, "gelu_mlp_digits": 16, "vgg_c10": 32, "vit_c10": 8, "resnet18_c10": 16, "resnet18_c100": 16,
                 "resnet50_c1000": 2}
# ImageNet-size on a CPU: a few HVPs, few repeats; millisecond-scale calls: many interleaved pairs
CASE_LIMITS = {"resnet50_c1000": {"probes": 2, "repeats": 2, "pair_repeats": 3}, "digits_cnn": {"pair_repeats": 61},
               "vgg_c10": {"pair_repeats": 21}, "resnet18_c100": {"pair_repeats": 11}}
NO_NAIVE_LOOP = ("resnet50_c1000",)
PAIR_REPEATS = 7  # exact vs its plain loop (and sampled vs its loop), interleaved: the ratio the issue bounds by 1.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device):
    """Run ``fn`` once to warm up, then ``repeats`` times; median and minimum seconds."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return out, {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def timed_interleaved(fns: dict, repeats: int, device) -> dict:
    """Warm every function up, then alternate them ``repeats`` times, in reversed order every
    other round (a b, b a, a b, ...): on a shared machine the compared sides see the same load
    and the same positions. Median and minimum seconds per function, of the wall clock and of
    this process's CPU time (which other processes' load inflates less; one thread here)."""
    for fn in fns.values():
        fn()
    wall, cpu = {key: [] for key in fns}, {key: [] for key in fns}
    for i in range(repeats):
        for key in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[key]()
            _sync(device)
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {key: {"median_s": statistics.median(wall[key]), "min_s": min(wall[key]), "cpu_median_s": statistics.median(cpu[key]),
                  "cpu_min_s": min(cpu[key]), "repeats": repeats} for key in fns}


def _rel_err(estimate, reference) -> float:
    return ((estimate.double().cpu() - reference) / reference).abs().median().item()


def _probes_for_1pct(per_probe_rel_sd: float) -> int:
    return math.ceil((MEDIAN_ABS_NORMAL * per_probe_rel_sd / 0.01) ** 2)


def run_case(name: str, *, batch: int, subset: int, probes: int, repeats: int, device: torch.device) -> dict:
    model, x, y, info = build_case(name, batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    C, smooth = info["classes"], name in SMOOTH_CASES
    probes, repeats = CASE_LIMITS.get(name, {}).get("probes", probes), min(repeats, CASE_LIMITS.get(name, {}).get("repeats", repeats))
    sub = slice(0, min(subset, batch))
    ids = torch.arange(batch, device=device)
    t = lambda fn: timed(fn, repeats, device)[1]  # noqa: E731

    def input_gradient():
        xg = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xg), y, reduction="sum").backward()
        return xg.grad

    rows: dict[str, dict] = {}
    t_grad = t(input_gradient)
    rows["input_gradient"] = {**t_grad, "cost": 1.0}

    ref_frob = None
    if smooth:  # float64 deflated with Q = I: D HVPs, the exact trace of the full Hessian
        m64, x64 = model.double(), x[sub].double()
        ref_trace = curvfast.input_curvature(m64, x64, y[sub], method="deflated", probes=x[0].numel()).value.cpu()
        model.float()
        ref_note = "float64 exact trace (deflated with Q = I: D HVPs per sample)"
    elif C <= 100:  # float64 references on the subset: exact trace and Frobenius norm (C VJPs in float64)
        m64, x64 = model.double(), x[sub].double()
        ref_trace = curvfast.input_curvature(m64, x64, y[sub], method="exact").value.cpu()
        ref_frob = curvfast.input_curvature(m64, x64, y[sub], method="exact", statistic="frobenius").value.cpu()
        model.float()
        ref_note = "float64 exact"
    else:  # 999 VJPs per 224x224 image is too slow for this CPU: sampled with a 100-class head and 100 tail strata
        ref = curvfast.input_curvature(model, x[sub], y[sub], method="sampled", top_classes=100, probes=100, sample_ids=ids[sub])
        ref_trace = ref.value.double().cpu()
        rel_se = (ref.stderr.double().cpu() / ref_trace.abs()).max().item()
        ref_note = f"float32 sampled, top 100 classes + 100 tail strata (relative standard error at most {rel_se:.1e})"

    def add(key, timing, estimate=None, target=None, per_probe_rel_sd=None, probes_used=None, note=""):
        row = {**timing, "images_per_s": batch / timing["median_s"], "cost": timing["median_s"] / t_grad["median_s"], "note": note}
        if estimate is not None and target is not None:
            row["median_rel_err"] = _rel_err(estimate[sub], target)
        if per_probe_rel_sd is not None:
            p1 = _probes_for_1pct(per_probe_rel_sd)
            row.update(per_probe_rel_sd=per_probe_rel_sd, probes=probes_used, probes_for_1pct=p1,
                       time_to_1pct_s=timing["median_s"] / probes_used * p1)
        elif "median_rel_err" in row and row["median_rel_err"] < 0.01:
            row["time_to_1pct_s"] = timing["median_s"]
        rows[key] = row

    def plain_vjps(count):  # one forward plus ``count`` input-VJPs as plain torch calls
        def run():
            xg = x.clone().requires_grad_(True)
            logits = model(xg)
            for c in range(count):
                torch.autograd.grad(logits[:, c].sum(), xg, retain_graph=c < count - 1)
        return run

    def loop_trace():  # the loop a user would write for exact's result: tr(H_b) = Σ_c p_c ‖J_bᵀ(e_c − p_b)‖²
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        p = logits.detach().softmax(1)
        trace = torch.zeros(batch, dtype=torch.float64, device=device)
        for c in range(C):
            u = -p
            u[:, c] += 1
            (v,) = torch.autograd.grad(logits, xg, u, retain_graph=c < C - 1)
            trace += p[:, c].double() * v.flatten(1).double().square().sum(1)
        return trace

    top = min(10, C)
    pair_repeats = CASE_LIMITS.get(name, {}).get("pair_repeats", max(repeats, PAIR_REPEATS))
    if not smooth and C <= 100:
        exact_fn = lambda: curvfast.input_curvature(model, x, y, method="exact")  # noqa: E731
        res = exact_fn()  # the one-time pass-width calibration (VJP_PLANNER) happens in this first call
        same = ((res.value.double() - loop_trace()).abs().max() / res.value.double().abs().max()).item()
        pair = timed_interleaved({"loop": loop_trace, "exact": exact_fn}, pair_repeats, device)
        add("forward_plus_C_vjps", pair["loop"], note=f"1 forward + {C} VJPs of e_c − p and Σ_c p_c‖v_c‖², plain torch; "
                                                     "interleaved with exact")
        add("curvfast_exact", pair["exact"], res.value, ref_trace,
            note=f"pass width {res.pass_width} (calibrated); loop's trace within {same:.1e} x the largest")
    if not smooth:
        sampled = lambda: curvfast.input_curvature(model, x, y, method="sampled", top_classes=top, probes=10, sample_ids=ids)  # noqa: E731
        if C > 100:
            pair = timed_interleaved({"loop": plain_vjps(2 * top), "sampled": sampled}, pair_repeats, device)
            add("forward_plus_20_vjps", pair["loop"], note=f"1 forward + {2 * top} VJPs, plain torch; interleaved with sampled")
            timing = pair["sampled"]
        else:
            timing = t(sampled)
        add("curvfast_sampled", timing, sampled().value, ref_trace, note=f"top {top} classes exact + 10 tail samples")

    hut = lambda: curvfast.input_curvature(model, x, y, method="hutchinson", probes=probes, sample_ids=ids)  # noqa: E731
    res = hut()
    sd = (res.stderr[sub].double().cpu() * math.sqrt(probes) / ref_trace.abs()).median().item()
    add("curvfast_hutchinson", t(hut), res.value, ref_trace, sd, probes, note=f"{probes} probes, batched fwd-over-rev")

    if smooth:  # the new auto (deflated), then deflated re-run with the residual probes its own spread asks for
        auto = lambda: curvfast.input_curvature(model, x, y, sample_ids=ids)  # noqa: E731
        res, nres = auto(), curvfast.curvature.DEFAULT_PROBES["deflated"]
        add("curvfast_auto_deflated", t(auto), res.value, ref_trace, note=f"{nres} residual probes + {min(10, C - 1)} deflated directions")
        if res.stderr is not None:
            sd = (res.stderr[sub].double().cpu() * math.sqrt(nres) / ref_trace.abs()).median().item()
            p1 = max(2, _probes_for_1pct(sd))
            rows["curvfast_auto_deflated"].update(per_probe_rel_sd=sd, probes=nres, probes_for_1pct=p1)
            at_p1 = lambda: curvfast.input_curvature(model, x, y, method="deflated", probes=p1, sample_ids=ids)  # noqa: E731
            add("curvfast_deflated_at_1pct", t(at_p1), at_p1().value, ref_trace, note=f"{p1} residual probes (P₁ of the row above), timed")
            rows["curvfast_deflated_at_1pct"]["time_to_1pct_s"] = rows["curvfast_deflated_at_1pct"]["median_s"]

    gen = torch.Generator(device=device)
    naive_samples = []

    def naive_loop():
        gen.manual_seed(1)
        naive_samples.clear()
        for _ in range(probes):
            naive_samples.append(naive_hutchinson_probe(model, x, y, gen))
        return torch.stack(naive_samples).mean(0)

    if name not in NO_NAIVE_LOOP:
        naive = naive_loop()
        sd_naive = (torch.stack(naive_samples)[:, sub].double().std(0) / ref_trace.abs()).median().item()
        add("naive_hutchinson_loop", t(naive_loop), naive, ref_trace, sd_naive, probes,
            note="1 probe at a time, double backward, host sync")
        func_note = "same estimator as the naive loop; its variance"
    else:  # same Rademacher estimator as curvfast's Hutchinson: its spread
        sd_naive, func_note = rows["curvfast_hutchinson"]["per_probe_rel_sd"], "same estimator as curvfast hutchinson; its variance"
    fh = lambda: func_hutchinson(model, x, y, probes, gen.manual_seed(2))  # noqa: E731
    add("func_vmap_jvp_grad", t(fh), fh(), ref_trace, sd_naive, probes, note=func_note)

    if ref_frob is not None:
        h = 1e-3
        fd = curvfast.input_curvature(model, x, y, method="fd", sample_ids=ids).value
        add("curvfast_fd", t(lambda: curvfast.input_curvature(model, x, y, method="fd", sample_ids=ids)), fd, h * ref_frob,
            note="target h·‖H‖_F")
        pfd = lambda: published_fd(model, x, y, generator=gen.manual_seed(3)) * batch  # undo the mean-reduced loss  # noqa: E731
        add("published_fd", t(pfd), pfd(), h * ref_frob, note="target h·‖H‖_F; scores ×B (mean-reduced loss)")
        zo_target = h * math.sqrt(2 / math.pi) * ref_frob
        zo = curvfast.input_curvature(model, x, y, method="zo", sample_ids=ids).value
        add("curvfast_zo", t(lambda: curvfast.input_curvature(model, x, y, method="zo", sample_ids=ids)), zo, zo_target,
            note="target h·√(2/π)·‖H‖_F, one view")
        pzo = lambda: published_zo(model, x, y, generator=gen.manual_seed(4))  # noqa: E731
        add("published_zo", t(pzo), pzo(), zo_target, note="2 views x (1 + 4x10) forwards per image")
    return {"case": {"name": name, "batch": batch, "device": str(device), "reference": ref_note, **info}, "rows": rows}


def ratios(case: dict) -> dict:
    """The issues' target ratios for one case (only those whose rows exist)."""
    r = case["rows"]
    out = {}
    trace_baselines = [r[k]["time_to_1pct_s"] for k in ("naive_hutchinson_loop", "func_vmap_jvp_grad") if k in r]
    if "curvfast_exact" in r:
        out["exact_vs_best_baseline_at_1pct"] = min(trace_baselines) / r["curvfast_exact"]["median_s"]
        out["exact_over_plain_loop_of_C_vjps"] = r["curvfast_exact"]["median_s"] / r["forward_plus_C_vjps"]["median_s"]
        if "cpu_median_s" in r["curvfast_exact"]:
            out["exact_over_plain_loop_min"] = r["curvfast_exact"]["min_s"] / r["forward_plus_C_vjps"]["min_s"]
            out["exact_over_plain_loop_cpu_time"] = r["curvfast_exact"]["cpu_median_s"] / r["forward_plus_C_vjps"]["cpu_median_s"]
    if "forward_plus_20_vjps" in r:
        out["sampled_over_forward_plus_20_vjps"] = r["curvfast_sampled"]["median_s"] / r["forward_plus_20_vjps"]["median_s"]
        out["sampled_over_input_gradient"] = r["curvfast_sampled"]["cost"]
        out["sampled_vs_func_at_1pct"] = r["func_vmap_jvp_grad"]["time_to_1pct_s"] / r["curvfast_sampled"]["median_s"]
    if "curvfast_auto_deflated" in r:
        auto = r.get("curvfast_deflated_at_1pct", r["curvfast_auto_deflated"])["time_to_1pct_s"]
        out["auto_vs_func_at_1pct"] = r["func_vmap_jvp_grad"]["time_to_1pct_s"] / auto
        out["auto_vs_hutchinson_at_1pct"] = r["curvfast_hutchinson"]["time_to_1pct_s"] / auto
    if "naive_hutchinson_loop" in r:
        out["hutchinson_batched_vs_naive_same_probes"] = r["naive_hutchinson_loop"]["median_s"] / r["curvfast_hutchinson"]["median_s"]
    out["hutchinson_batched_vs_func_same_probes"] = r["func_vmap_jvp_grad"]["median_s"] / r["curvfast_hutchinson"]["median_s"]
    if "published_fd" in r:
        out["fd_published_over_curvfast"] = r["published_fd"]["median_s"] / r["curvfast_fd"]["median_s"]
        out["zo_published_over_curvfast"] = r["published_zo"]["median_s"] / r["curvfast_zo"]["median_s"]
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Device: {env['device']}, torch {env['torch']}, {env['threads']} threads, native ops {env['native_ops']}.", ""]
    for case in result["cases"]:
        c = case["case"]
        run = f" Run {case['run']['date']} (load average {case['run']['load_average'][0]:.1f})." if "run" in case else ""
        lines += [f"### {c['name']}: input {'x'.join(map(str, c['input']))}, C={c['classes']}, batch {c['batch']}, {c['device']}",
                  "", f"Weights: {c['weights']}. Reference: {c['reference']}.{run}", "",
                  "| method | median s | min s | images/s | cost (input-grad passes) | median rel. err | time to 1% (s) | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, row in case["rows"].items():
            err = f"{row['median_rel_err']:.2e}" if "median_rel_err" in row else ""
            t1 = f"{row['time_to_1pct_s']:.3g}" if "time_to_1pct_s" in row else ("not reached" if err else "")
            if "probes_for_1pct" in row:
                t1 += f" ({row['probes_for_1pct']} probes)"
            ips = f"{row['images_per_s']:.1f}" if "images_per_s" in row else ""
            lines.append(f"| {key} | {row['median_s']:.4g} | {row['min_s']:.4g} | {ips} | {row['cost']:.1f} | {err} | {t1} "
                         f"| {row.get('note', '')} |")
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.3g}" for k, v in case["ratios"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASE_NAMES), choices=CASE_NAMES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    parser.add_argument("--subset", type=int, default=8, help="samples with a float64 reference")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="default benchmarks/results/<device>/")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these cases in the folder's existing estimators.json "
                             "(each case keeps its run's date and settings)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or results_dir(device)
    cases = []
    for name in args.cases:
        case = run_case(name, batch=args.batch or DEFAULT_BATCH[name], subset=args.subset, probes=args.probes,
                        repeats=args.repeats, device=device)
        case["ratios"] = ratios(case)
        case["run"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args),
                       "load_average": environment(device)["load_average"]}
        cases.append(case)
        print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in case["ratios"].items()), flush=True)
    result = {"environment": environment(device), "settings": vars(args), "cases": cases}
    old_path = os.path.join(out, "estimators.json")
    if args.merge and os.path.exists(old_path):
        with open(old_path) as f:
            old = json.load(f)
        new = {c["case"]["name"]: c for c in cases}
        kept = [new.pop(c["case"]["name"], c) for c in old["cases"]]
        result = {**old, "cases": kept + list(new.values())}
    write_results(out, "estimators", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
