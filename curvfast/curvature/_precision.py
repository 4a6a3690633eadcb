r"""Precision policies: what runs in which floating-point format while curvature is computed.

Three named policies (``input_curvature(..., precision=...)``, ``curvfast score --precision``):

- ``"fp32"`` (default): every op in the model's dtype, TF32 off for CUDA matmuls and cuDNN convolutions,
  autocast off. The reference the others are measured against.
- ``"tf32"``: as ``"fp32"`` with TF32 allowed (10-bit mantissa inputs, fp32 accumulation) on CUDA. On a CPU
  it is ``"fp32"``.
- ``"bf16"``: mixed, for the logit-space methods (``exact``, ``sampled``). The logits, the softmax and the
  logit-space factor come from an fp32 forward (no graph); the C class VJPs :math:`v_c = J'^\top (e_c - p)`
  pull back through a second forward run under bf16 autocast, and :math:`\sum_c w_c \lVert v_c \rVert^2` is
  accumulated in fp32.

Why the logits must be fp32 (measured by ``python -m benchmarks.precision``, docs/native-ops.md): bf16 keeps
8 mantissa bits, so a logit z is rounded by up to :math:`|z| \cdot 2^{-9}`. On a peaked model (|z| in the
hundreds or thousands, as the scaled-head benchmark models and confident trained ones have), that rounding
moves the runner-up logits by whole units, and :math:`p_c = e^{z_c - \mathrm{lse}(z)}` of every class but the
top one by factors of :math:`e^{\pm 1}` or more: the trace, a sum weighted by those :math:`p_c`, lands
hundreds of percent away (the 500% seen on an H100). Errors in the Jacobian itself are benign: :math:`J'` is
the Jacobian of the bf16 network, each VJP is off by a few :math:`2^{-9}` relative, and a squared norm
averages those errors over D input elements. The identity :math:`\sum_c p_c v_c = J'^\top \sum_c p_c (e_c -
p) = 0` holds for :math:`J'` too, so the exact route still recovers the top class from the others.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from ..errors import ConfigError, UnknownNameError

__all__ = ["PRECISIONS", "LOW_PRECISION_METHODS", "check_precision", "precision_policy", "tf32_mode", "no_tf32",
           "autocast_dtype"]

PRECISIONS = ("fp32", "tf32", "bf16")
LOW_PRECISION_METHODS = ("exact", "sampled")  # bf16: the methods whose factor comes from the logits alone

_LOCK = threading.Lock()
_STATE = {"users": 0, "allowed": None, "saved": None}  # active blocks (any thread), their setting, what to restore


def check_precision(precision: str, method: str) -> None:
    """Refuse an unknown policy, or a low-precision one for a method that cannot use it.

    Args:
        precision: one of :data:`PRECISIONS`.
        method: the concrete method (``auto`` resolved).

    Raises:
        UnknownNameError: ``precision`` is not a policy.
        ConfigError: ``"bf16"`` with a method outside :data:`LOW_PRECISION_METHODS`, or ``"tf32"`` / ``"bf16"``
            with fd / zo (their h-sized steps need full fp32).
    """
    if precision not in PRECISIONS:
        raise UnknownNameError(f"precision must be one of {PRECISIONS} (got {precision!r})")
    if precision == "bf16" and method not in LOW_PRECISION_METHODS:
        raise ConfigError(f"precision='bf16' is for the logit-space methods {LOW_PRECISION_METHODS} (method={method!r} "
                          "takes second derivatives or finite differences, which bf16 cannot resolve); use "
                          "precision='fp32' or 'tf32', or method='exact'/'sampled' on a piecewise-linear net")
    if precision == "tf32" and method in ("fd", "zo"):
        raise ConfigError(f"method={method!r} differences losses or gradients at a step h; TF32 rounds at about that "
                          "size, so it runs in fp32 only: use precision='fp32'")


@contextlib.contextmanager
def tf32_mode(allowed: bool) -> Iterator[None]:
    """TF32 allowed or not for CUDA matmuls and cuDNN convolutions within the block.

    The flags are process-wide: the first of overlapping blocks (in any thread) saves them and the last one
    restores them. Blocks asking for the other setting while one is active would change each other's numbers,
    so they are refused. Only the backend flags are read and written: torch's generic
    ``get_float32_matmul_precision`` raises once a user has mixed its old and new TF32 APIs.

    Args:
        allowed: True for TF32, False for full fp32.

    Yields:
        None, with the setting in force.

    Raises:
        ConfigError: another thread holds a block with the other setting.
    """
    with _LOCK:
        if _STATE["users"] and _STATE["allowed"] != allowed:
            raise ConfigError("precision policies 'tf32' and 'fp32' were asked for at the same time (from two threads "
                              "or nested calls); the TF32 flags are process-wide: score with one policy at a time")
        if _STATE["users"] == 0:
            _STATE["saved"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            _STATE["allowed"] = allowed
            torch.backends.cuda.matmul.allow_tf32 = allowed
            torch.backends.cudnn.allow_tf32 = allowed
        _STATE["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["users"] -= 1
            if _STATE["users"] == 0:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _STATE["saved"]


def no_tf32() -> contextlib.AbstractContextManager:
    """Full fp32 matmuls and convolutions within the block: TF32 rounds at about the size of an h=1e-3 step.

    Returns:
        ``tf32_mode(False)``.
    """
    return tf32_mode(False)


@contextlib.contextmanager
def precision_policy(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block under ``precision``'s TF32 setting with the caller's autocast off.

    The bf16 policy's autocast is applied by the forward that builds the VJP graph only
    (:func:`autocast_dtype`), never around the logits.

    Args:
        precision: one of :data:`PRECISIONS` (checked).
        device: where the curvature is computed.

    Yields:
        None.

    Raises:
        UnknownNameError: ``precision`` is not a policy.
    """
    if precision not in PRECISIONS:
        raise UnknownNameError(f"precision must be one of {PRECISIONS} (got {precision!r})")
    autocast_off = (torch.autocast(device_type=device.type, enabled=False) if device.type in ("cpu", "cuda")
                    else contextlib.nullcontext())
    with tf32_mode(precision == "tf32"), autocast_off:
        yield


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of the VJP graph's forward under ``precision`` (None: no autocast).

    Args:
        precision: one of :data:`PRECISIONS`.

    Returns:
        ``torch.bfloat16`` for ``"bf16"``, else None.
    """
    return torch.bfloat16 if precision == "bf16" else None
