"""``make gpu-check`` (``python -m benchmarks.gpu_check``): verify curvfast on the GPU at hand.

With the Python it is given (no venv, nothing installed) it
1. refuses at once, with the reason, where no CUDA GPU is visible;
2. builds the extension in place against that Python's torch, for the GPU present;
3. runs the CUDA half of the test matrix (``pytest -m cuda``);
4. runs the estimator suite's quick cases and the op suite on CUDA, Verifix's no-unfold products
   by cuDNN against the fused ``patch_gram`` op (``verifix_projector --gram-rates``);
5. runs the real job (``benchmarks.gpu_scoring``): ``curvfast score`` on a generated ImageNet-layout folder of
   224² JPEGs, ResNet-50 C=1000 ``sampled``, ``--batch-size auto``, per precision policy (img/s, busy fraction,
   peak memory, error against fp32), and CIFAR ResNet-18 C=10 ``exact``; then the precision policies' error
   and speed per model (``benchmarks.precision``);
6. writes ``benchmarks/results/<gpu>/gpu_check.{json,md}`` (next to ``gpu_scoring``, ``precision``,
   ``estimators`` and ``ops``) and prints a one-screen summary.

A step that fails is recorded and the next one still runs; the exit code is 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
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
    for name in ("gpu_scoring", "precision", "estimators", "ops"):
        path = os.path.join(result["folder"], f"{name}.md")
        if os.path.exists(path):
            lines += ["", f"## {name}", "", open(path).read().strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-build", action="store_true", help="use the extension already built in place")
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
    steps["scoring_job"] = _run([sys.executable, "-m", "benchmarks.gpu_scoring", "--device", "cuda"],
                                os.path.join(folder, "gpu_scoring.log"), 600)
    steps["precision"] = _run([sys.executable, "-m", "benchmarks.precision", "--device", "cuda"],
                              os.path.join(folder, "gpu_precision.log"), 300)
    result = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "folder": folder, "steps": steps}
    result["seconds"] = time.perf_counter() - start
    write_results(folder, "gpu_check", result, markdown(result))
    ok = all(step["rc"] == 0 for step in steps.values()) and not steps["cuda_tests"].get("failed")
    print(f"gpu-check {'PASSED' if ok else 'FAILED'}; results in {folder}/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
