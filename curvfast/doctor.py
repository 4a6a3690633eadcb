"""``curvfast doctor``: what this installation has (versions, native extension, CUDA kernels, GPUs)."""
from __future__ import annotations

import platform

import torch

__all__ = ["report"]


def report() -> dict:
    """Versions, whether the native extension loaded, whether it has CUDA kernels, GPUs present.

    Returns:
        A JSON-ready dict: ``curvfast``, ``python``, ``torch``, ``torchvision`` and ``torch_cuda`` versions,
        ``extension`` (loaded), ``extension_error``, ``cuda_compiled``, ``gpu_available``, ``gpu`` (the first
        device's name) and ``threads``.
    """
    import torchvision

    from curvfast import ops
    from curvfast._version import __version__

    gpu = torch.cuda.is_available()
    return {
        "curvfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": ops.native_available(),
        "extension_error": ops.load_error(),
        "cuda_compiled": ops.cuda_compiled(),
        "gpu_available": gpu,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "threads": torch.get_num_threads(),
    }
