"""curvfast's native ops.

Philox probes, the logit-space Gauss-Newton factor, fused per-sample reductions and the fused patch Gram / sketch
of a convolution's im2col rows.

Each op dispatches to ``torch.ops.curvfast.<op>`` (C++/CUDA, see csrc/) when the extension is loaded
and has kernels for the input's device, else to the same-named function in
:mod:`curvfast.ops.reference`, which computes the same math (:mod:`curvfast.ops._dispatch`).
"""
from curvfast.ops import reference
from curvfast.ops._dispatch import (cuda_compiled, load_error, logit_factor, native_available, patch_gram,
                                    patch_gram_add_, probe_moments, probes, weighted_sq_norms)

__all__ = ["native_available", "cuda_compiled", "load_error", "probes", "logit_factor",
           "weighted_sq_norms", "probe_moments", "patch_gram", "patch_gram_add_", "reference"]
