"""The drop-in scorers (``curvfast.compat``) against the published loops they replace, at their defaults.

Cases (h = 1e-3, n = 10, the published CIFAR settings):

- ``digits``: the digits CNN (small_cnn trained 10 epochs), 1x8x8, C = 10, batch 128;
- ``cifar``: CIFAR-stem ResNet-18, C = 10, 3x32x32, batch 16 (the published scripts use 512 on a GPU).

Per case, interleaved after one warm-up call each (``timed_interleaved``: a b, b a, ...): the published
zero-order loop of Curvature-Clues ``precompute_cifar10_scores.py`` against its drop-in, and the published
finite-difference loop (Privacy-Memorization-Curvature ``calc_curv_fz_models.py``; every fd variant runs
it) against its drop-in, both drop-ins at their published-identical defaults. The published loops are the
faithful re-implementations of tests/compat/_published_scorers.py. Before timing, each pair runs once under
the same ``torch.manual_seed``: the report gives the largest difference of the scores relative to the
largest published score, and whether torch's generator ended in the same state.

    python -m benchmarks.compat [--cases digits cifar] [--device cpu|cuda] [--digits-batch 128] [--cifar-batch 16]
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.cases import build_case
from benchmarks.environment import environment, results_dir, write_results
from benchmarks.estimators import timed_interleaved
from curvfast.compat import DROP_INS
from tests.compat._published_scorers import fd_loop, zo_v2

CASES = {"digits": "digits_cnn", "cifar": "resnet18_c10"}
H = 1e-3
STATS = ("median", "min", "cpu_median", "cpu_min")  # wall clock, and this process's CPU time (less load-sensitive)


def _drop_in(path: str):
    return next(d.replacement for d in DROP_INS if d.path == path)


def _agreement(published, drop_in) -> dict:
    """One call of each under the same seed: the largest score difference over the largest published score."""
    torch.manual_seed(0)
    ref = published()
    state = torch.get_rng_state()
    torch.manual_seed(0)
    got = drop_in()
    same_state = bool(torch.equal(torch.get_rng_state(), state))
    diffs = [float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max()) for a, b in zip(got, ref)]
    return {"max_rel_diff": max(diffs), "same_generator_state": same_state}


def run_case(name: str, batch: int, niter: int, repeats: int, device: torch.device) -> dict:
    model, x, y, info = build_case(CASES[name], batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    zo = _drop_in("precompute_scores/precompute_cifar10_scores.py")
    fd = _drop_in("calc_curv_fz_models.py")
    pairs = {
        "zo": (lambda: zo_v2(model, x, y, H, niter), lambda: zo(model, x, y, H, niter)),
        "fd": (lambda: fd_loop(model, x.clone(), y, H, niter)[:2], lambda: fd(model, x, y, H, niter)),
    }
    agreement = {kind: _agreement(*pair) for kind, pair in pairs.items()}
    fns = {f"{side}_{kind}": fn for kind, pair in pairs.items() for side, fn in zip(("published", "curvfast"), pair)}
    rows = timed_interleaved(fns, repeats, device)
    for row in rows.values():
        row["images_per_s"] = batch / row["median_s"]
    ratios = {f"{kind}_published_over_curvfast_{stat}": rows[f"published_{kind}"][f"{stat}_s"]
              / rows[f"curvfast_{kind}"][f"{stat}_s"] for kind in pairs for stat in STATS}
    return {"case": {"name": name, "model": CASES[name], "batch": batch, "h": H, "niter": niter, "device": str(device),
                     **info}, "rows": rows, "ratios": ratios, "agreement": agreement}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Device: {env['device']}, torch {env['torch']}, {env['threads']} threads, native ops {env['native_ops']}.",
             "", f"Command: `{result['command']}`", ""]
    for case in result["cases"]:
        c = case["case"]
        lines += [f"### {c['name']}: {c['model']}, input {'x'.join(map(str, c['input']))}, C={c['classes']}, "
                  f"batch {c['batch']}, h={c['h']}, n={c['niter']}, {c['device']}", "",
                  "| scorer | median s | min s | CPU median s | CPU min s | images/s |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {r['median_s']:.4g} | {r['min_s']:.4g} | {r['cpu_median_s']:.4g} | {r['cpu_min_s']:.4g} | "
                  f"{r['images_per_s']:.1f} |" for k, r in case["rows"].items()]
        lines += ["", "Ratios (published / curvfast): " + ", ".join(f"{k} = {v:.3g}" for k, v in case["ratios"].items()),
                  "", "Same seed: " + ", ".join(f"{k}: max relative difference {a['max_rel_diff']:.2g}, generator state "
                                              f"{'identical' if a['same_generator_state'] else 'DIFFERENT'}"
                                              for k, a in case["agreement"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--digits-batch", type=int, default=128)
    parser.add_argument("--cifar-batch", type=int, default=16)
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default benchmarks/results/<device>/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = {"digits": args.digits_batch, "cifar": args.cifar_batch}
    cases = []
    for name in args.cases:
        cases.append(run_case(name, batches[name], args.niter, args.repeats, device))
        print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in cases[-1]["ratios"].items()), flush=True)
    command = " ".join(["python -m benchmarks.compat", *(sys.argv[1:] if argv is None else argv)])
    result = {"environment": environment(device), "settings": vars(args), "command": command, "cases": cases}
    write_results(args.out or results_dir(device), "compat", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
