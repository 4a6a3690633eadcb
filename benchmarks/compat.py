"""Drop-in scorers (``curvfast.compat``) against the published loops they replace.

Cases at the published settings (override the batch with ``--cifar-batch`` / ``--imagenet-batch``):

- ``cifar``: CIFAR-stem ResNet-18, C = 10, 3x32x32, batch 512, h = 1e-3, n = 10 (Curvature Clues
  ``precompute_cifar10_scores.py``; the memorization CIFAR scorers use the same h and n);
- ``imagenet``: ResNet-50, C = 1000, 3x224x224, batch 32, h = 1e-4, n = 10 (the ImageNet scripts' h).

Per case, interleaved after one warm-up call each: the published zero-order loop
(``get_curvature_for_batch_zo_v2``: 1 + 4n forwards of the batch) against
``curvfast.compat.get_curvature_for_batch_zo_v2``; the published finite-difference loop
(``CurveScore.regularizer`` / ``get_regularized_curvature_for_batch``: per probe a clean and a
perturbed forward and one backward) against ``curvfast.compat.get_regularized_curvature_for_batch``;
and, for C <= 100, ``exact=True`` (one forward and C backward passes). The published loops are the
faithful re-implementations that tests/compat/test_compat.py checks curvfast against.

    python -m benchmarks.compat [--cases cifar imagenet] [--device cpu|cuda] [--cifar-batch 512] [--imagenet-batch 32]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.cases import build_case
from benchmarks.environment import environment, results_dir, write_results
from benchmarks.estimators import timed_interleaved
from curvfast.compat import get_curvature_for_batch_zo_v2, get_regularized_curvature_for_batch
from tests.test_compat import published_regularizer, published_zo

CASES = {"cifar": ("resnet18_c10", 1e-3), "imagenet": ("resnet50_c1000", 1e-4)}


def run_case(name: str, batch: int, niter: int, repeats: int, device: torch.device) -> dict:
    case, h = CASES[name]
    model, x, y, info = build_case(case, batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    fns = {
        "published_zo": lambda: published_zo(model, x, y, h=h, niter=niter),
        "curvfast_zo": lambda: get_curvature_for_batch_zo_v2(model, x, y, h, niter),
        "published_fd": lambda: published_regularizer(model, x, y, h=h, niter=niter),
        "curvfast_fd": lambda: get_regularized_curvature_for_batch(model, x, y, h, niter, batch_mean=True),
    }
    if info["classes"] <= 100:
        fns["curvfast_exact_zo"] = lambda: get_curvature_for_batch_zo_v2(model, x, y, h, niter, exact=True)
    rows = timed_interleaved(fns, repeats, device)
    for row in rows.values():
        row["images_per_s"] = batch / row["median_s"]
    ratios = {"zo_published_over_curvfast": rows["published_zo"]["median_s"] / rows["curvfast_zo"]["median_s"],
              "fd_published_over_curvfast": rows["published_fd"]["median_s"] / rows["curvfast_fd"]["median_s"]}
    if "curvfast_exact_zo" in rows:
        ratios["zo_published_over_curvfast_exact"] = rows["published_zo"]["median_s"] / rows["curvfast_exact_zo"]["median_s"]
    return {"case": {"name": name, "model": case, "batch": batch, "h": h, "niter": niter, "device": str(device), **info},
            "rows": rows, "ratios": ratios}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Device: {env['device']}, torch {env['torch']}, {env['threads']} threads, native ops {env['native_ops']}.", ""]
    for case in result["cases"]:
        c = case["case"]
        lines += [f"### {c['name']}: {c['model']}, input {'x'.join(map(str, c['input']))}, C={c['classes']}, "
                  f"batch {c['batch']}, h={c['h']}, n={c['niter']}, {c['device']}", "",
                  "| scorer | median s | min s | images/s |", "|---|---|---|---|"]
        lines += [f"| {k} | {r['median_s']:.4g} | {r['min_s']:.4g} | {r['images_per_s']:.1f} |" for k, r in case["rows"].items()]
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.3g}" for k, v in case["ratios"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cifar-batch", type=int, default=512)
    parser.add_argument("--imagenet-batch", type=int, default=32)
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="default benchmarks/results/<device>/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = {"cifar": args.cifar_batch, "imagenet": args.imagenet_batch}
    cases = []
    for name in args.cases:
        cases.append(run_case(name, batches[name], args.niter, args.repeats, device))
        print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in cases[-1]["ratios"].items()), flush=True)
    result = {"environment": environment(device), "settings": vars(args), "cases": cases}
    write_results(args.out or results_dir(device), "compat", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
