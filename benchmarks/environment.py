"""The environment record every benchmark result carries, and where results go."""
from __future__ import annotations

import os
import platform
import re

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def environment(device: torch.device) -> dict:
    import curvfast  # imported here: gpu_check names its folder before it builds the extension

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "native_ops": curvfast.ops.native_available(),
        "cuda_kernels": curvfast.ops.cuda_compiled(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def results_dir(device: torch.device) -> str:
    """``benchmarks/results/<device>/`` with a file-system-safe device name."""
    return os.path.join("benchmarks", "results", re.sub(r"[^A-Za-z0-9._-]+", "-", device_name(device)))


def write_results(folder: str, name: str, result: dict, markdown: str) -> None:
    """Atomically write ``<folder>/<name>.json`` and ``<folder>/<name>.md``; print the table."""
    from curvfast.io import atomic_write_bytes, write_json

    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, f"{name}.json"), result)
    atomic_write_bytes(os.path.join(folder, f"{name}.md"), markdown.encode())
    print(markdown)
