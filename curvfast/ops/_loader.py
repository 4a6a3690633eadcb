"""Loads the compiled extension ``curvfast._C`` once; never raises.

``CURVFAST_DISABLE_NATIVE=1`` skips loading. On any failure the error is stored (see
:func:`curvfast.ops.load_error`) and the ops fall back to :mod:`curvfast.ops.reference`.
"""

from __future__ import annotations

import importlib
import os

import torch

OP_NAMES = ("probes", "logit_factor", "weighted_sq_norms", "probe_moments", "patch_gram", "patch_gram_add_")


def _load() -> tuple[bool, bool, str | None]:
    """Load the extension.

    Returns:
        (native ops registered, CUDA kernels compiled, error message or None).
    """
    if os.environ.get("CURVFAST_DISABLE_NATIVE") == "1":
        return False, False, "native ops disabled by CURVFAST_DISABLE_NATIVE=1"
    try:
        importlib.import_module("curvfast._C")
        for name in OP_NAMES:
            getattr(torch.ops.curvfast, name)
        return True, bool(torch.ops.curvfast.cuda_compiled()), None
    except Exception as exc:  # any failure means: use the references
        return False, False, f"{type(exc).__name__}: {exc}"


NATIVE, CUDA_COMPILED, LOAD_ERROR = _load()
