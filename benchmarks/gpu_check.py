"""``make gpu-check`` (``python -m benchmarks.gpu_check``): verify curvfast on the GPU at hand.

With the Python it is given (no venv, nothing installed) it
1. refuses at once, with the reason, where no CUDA GPU is visible;
2. builds the extension in place against that Python's torch, for the GPU present;
3. runs the CUDA half of the test matrix (``pytest -m cuda``);
4. runs the estimator suite's quick cases and the op suite on CUDA, Verifix's no-unfold products
   by cuDNN against the fused ``patch_gram`` op (``verifix_projector --gram-rates``), and ResNet-50
   at 224x224 with C=1000 (``sampled``: top 10 classes + 10 tail samples) in fp32 and under bf16 autocast;
5. writes ``benchmarks/results/<gpu>/gpu_check.{json,md}`` (next to ``estimators`` and ``ops``)
   and prints a one-screen summary.

A step that fails is recorded and the next one still runs; the exit code is 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_or_exit() -> str:
    try:
        import torch
    except ImportError:
        sys.exit(f"gpu-check: {sys.executable} has no torch; pass the GPU machine's Python: make gpu-check PYTHON=...")
    if not torch.cuda.is_available():
        sys.exit(f"gpu-check: no CUDA GPU is visible to {sys.executable} (torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda}); run it on a machine with a GPU")
    return torch.cuda.get_device_name(0)


def _run(cmd: list[str], log: str, timeout: int, env: dict | None = None) -> dict:
    """Run ``cmd`` from the repository root, its output teed into ``log``; rc and seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1), "log": os.path.basename(log)}


def build(folder: str) -> dict:
    """Build in place for the visible GPU with the system compiler (CXX/CC unset).

    A CXX that links libstdc++ statically crashes on the first error message next to torch's
    shared libstdc++ (setup.py refuses such a build), so the compiler torch's builder picks by
    default is used.
    """
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC")}
    env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    return _run([sys.executable, "setup.py", "build_ext", "--inplace"], os.path.join(folder, "gpu_build.log"), 900, env)


def cuda_tests(folder: str) -> dict:
    xml = os.path.join(folder, "gpu_tests.xml")
    step = _run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rfEs",
                 f"--junitxml={xml}", "tests"], os.path.join(folder, "gpu_tests.log"), 240)
    if os.path.exists(xml):
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        failures = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            key = {"failure": "failed", "error": "failed"}.get(outcome, outcome)
            counts[key] += 1
            if key == "failed":
                failures.append(f"{case.get('classname')}::{case.get('name')}")
        step.update(counts, failures=failures)
    return step


def resnet50_imagenet_case(batch: int, repeats: int, device: str = "cuda", exact_images: int = 2) -> dict:
    """ResNet-50, 224x224, C=1000, ``sampled`` (top 10 + 10 tail) in fp32 and bf16 autocast.

    ``input_curvature`` turns autocast off (bf16 curvature was 154-500% off fp32 on an H100), so
    the bf16 row checks that a caller's autocast changes neither the value nor, much, the time.
    Reports images/s, cost in input-gradient passes, and how far bf16 lands from fp32: the
    median relative difference of the sampled estimates (same seed and sample ids, but bf16
    logits can move the tail draws), the same for two fp32 runs with different seeds (the
    sampling-noise floor), and the deterministic ``exact`` trace on ``exact_images`` images.
    """
    import torch

    import curvfast
    from benchmarks.cases import build_case
    from benchmarks.estimators import timed

    device = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, x, y, info = build_case("resnet50_c1000", batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    ids = torch.arange(batch, device=device)

    def grad():
        xg = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xg), y, reduction="sum").backward()
        return xg.grad

    def sampled(seed=0):
        return curvfast.input_curvature(model, x, y, method="sampled", top_classes=10, probes=10, sample_ids=ids,
                                        seed=seed).value

    def median_rel(a, b):
        return statistics.median(((a.float().cpu() - b.float().cpu()) / b.float().cpu()).abs().tolist())

    rows, values = {}, {}
    for precision in ("fp32", "bf16_autocast"):
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
                value, t_sampled = timed(sampled, repeats, device)
                _, t_grad = timed(grad, repeats, device)
        except RuntimeError as exc:  # recorded: the other precision's row still counts
            rows[precision] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        values[precision] = value.float().cpu()
        rows[precision] = {"sampled": t_sampled, "input_gradient": t_grad,
                           "images_per_s": batch / t_sampled["median_s"],
                           "cost_input_grad_passes": t_sampled["median_s"] / t_grad["median_s"]}
    result = {"case": "resnet50_c1000", "batch": batch, "input": info["input"], "classes": info["classes"],
              "method": "sampled, top 10 + 10 tail", "rows": rows}
    if len(values) == 2:
        result["bf16_vs_fp32_median_rel_diff"] = median_rel(values["bf16_autocast"], values["fp32"])
        result["fp32_seed_noise_median_rel_diff"] = median_rel(sampled(seed=1), values["fp32"])
        result["bf16_speedup"] = rows["fp32"]["sampled"]["median_s"] / rows["bf16_autocast"]["sampled"]["median_s"]
        few = slice(0, exact_images)
        exact = curvfast.input_curvature(model, x[few], y[few], method="exact").value
        with torch.autocast(device.type, dtype=torch.bfloat16):
            exact_bf16 = curvfast.input_curvature(model, x[few], y[few], method="exact").value
        result["exact_bf16_vs_fp32_median_rel_diff"] = median_rel(exact_bf16, exact)
        result["exact_images"] = exact_images
    return result


def markdown(result: dict) -> str:
    lines = [f"# gpu-check: {result['gpu']}", "",
             f"torch {result['torch']}, CUDA {result['cuda']}, Python {result['python']}; total {result['seconds']:.0f} s", "",
             "| step | rc | seconds | detail |", "|---|---|---|---|"]
    for name, step in result["steps"].items():
        detail = ""
        if "passed" in step:
            detail = f"{step['passed']} passed, {step['failed']} failed, {step['skipped']} skipped"
            if step["failures"]:
                detail += ": " + ", ".join(f.split("::")[-1] for f in step["failures"][:8])
        lines.append(f"| {name} | {step['rc']} | {step['seconds']} | {detail} |")
    r50 = result.get("resnet50")
    if r50:
        lines += ["", f"ResNet-50, 224x224, C=1000, batch {r50['batch']}, {r50['method']}:", "",
                  "| precision | sampled median s | min s | images/s | input-grad median s | cost (input-grad passes) |",
                  "|---|---|---|---|---|---|"]
        for precision, row in r50["rows"].items():
            if "error" in row:
                lines.append(f"| {precision} | failed: {row['error']} | | | | |")
                continue
            lines.append(f"| {precision} | {row['sampled']['median_s']:.4f} | {row['sampled']['min_s']:.4f} | "
                         f"{row['images_per_s']:.0f} | {row['input_gradient']['median_s']:.4f} | {row['cost_input_grad_passes']:.2f} |")
        if "bf16_speedup" in r50:
            lines += ["", f"Call under bf16 autocast (curvfast computes in the model's dtype) vs fp32: "
                          f"{r50['bf16_speedup']:.2f}x the speed; median relative difference of the "
                          f"sampled estimates {r50['bf16_vs_fp32_median_rel_diff']:.2e} (two fp32 seeds: "
                          f"{r50['fp32_seed_noise_median_rel_diff']:.2e}); exact trace on {r50['exact_images']} images: "
                          f"{r50['exact_bf16_vs_fp32_median_rel_diff']:.2e}."]
    for name in ("estimators", "ops"):
        path = os.path.join(result["folder"], f"{name}.md")
        if os.path.exists(path):
            lines += ["", f"## {name}", "", open(path).read().strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-build", action="store_true", help="use the extension already built in place")
    parser.add_argument("--r50-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    gpu = _gpu_or_exit()
    start = time.perf_counter()
    sys.path.insert(0, ROOT)
    import platform

    import torch

    from benchmarks.environment import results_dir, write_results

    folder = results_dir(torch.device("cuda"))
    os.makedirs(folder, exist_ok=True)
    steps = {}
    if not args.skip_build:
        steps["build"] = build(folder)
    steps["cuda_tests"] = cuda_tests(folder)
    steps["estimators_quick"] = _run([sys.executable, "-m", "benchmarks.estimators", "--device", "cuda", "--cases",
                                      "digits_cnn", "resnet18_c10"], os.path.join(folder, "gpu_estimators.log"), 600)
    steps["ops"] = _run([sys.executable, "-m", "benchmarks.ops", "--device", "cuda"], os.path.join(folder, "gpu_ops.log"), 300)
    steps["verifix_products"] = _run([sys.executable, "-m", "benchmarks.verifix_projector", "--gram-rates", "--device", "cuda",
                                      "--repeats", "5", "--name", "verifix_projector"],
                                     os.path.join(folder, "gpu_verifix_products.log"), 300)
    result = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "folder": folder, "steps": steps}
    t0 = time.perf_counter()
    try:
        result["resnet50"] = resnet50_imagenet_case(args.r50_batch, args.repeats)
        steps["resnet50_c1000"] = {"cmd": "in process", "rc": 0, "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # recorded, and the summary still prints
        steps["resnet50_c1000"] = {"cmd": "in process", "rc": f"{type(exc).__name__}: {exc}"[:300],
                                   "seconds": round(time.perf_counter() - t0, 1)}
    result["seconds"] = time.perf_counter() - start
    write_results(folder, "gpu_check", result, markdown(result))
    ok = all(step["rc"] == 0 for step in steps.values()) and not steps["cuda_tests"].get("failed")
    print(f"gpu-check {'PASSED' if ok else 'FAILED'}; results in {folder}/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
