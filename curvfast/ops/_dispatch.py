"""The ops' entry points: validate the inputs, then run the native kernel or the reference.

Each function dispatches to ``torch.ops.curvfast.<op>`` (C++/CUDA, see csrc/) when the
extension is loaded and has kernels for the input's device, else to the same-named function in
:mod:`curvfast.ops.reference`, which computes the same math. Inputs are validated here with
ValueError / TypeError naming the argument; the native kernels check again (RuntimeError).
The ops are not differentiable: their inputs must not require grad.
"""

from __future__ import annotations

import torch

from curvfast.ops import _loader, reference
from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError

__all__ = ["native_available", "cuda_compiled", "load_error", "probes", "logit_factor",
           "weighted_sq_norms", "probe_moments", "patch_gram", "patch_gram_add_"]

_FLOATS = (torch.float32, torch.float64)


def native_available() -> bool:
    """Whether the native ops are in use.

    Returns:
        True when the compiled extension loaded and registered all ops.
    """
    return _loader.NATIVE


def cuda_compiled() -> bool:
    """Whether the native ops have CUDA kernels.

    Returns:
        True when the loaded extension was built with CUDA kernels.
    """
    return _loader.CUDA_COMPILED


def load_error() -> str | None:
    """Why the native ops are unavailable.

    Returns:
        The load error as ``"<type>: <message>"``, or None when they loaded.
    """
    return _loader.LOAD_ERROR


def _use_native(device: torch.device) -> bool:
    if not _loader.NATIVE:
        return False
    return device.type == "cpu" or (device.type == "cuda" and _loader.CUDA_COMPILED)


def _check_values(device: torch.device) -> bool:
    """Whether to check the inputs' values (not just shapes) here.

    Always, except while torch.compile traces a call that runs the native kernel, which checks them again at run time
    (reading a value would break the graph).
    """
    return not (torch.compiler.is_compiling() and _use_native(device))


def _tensor(name: str, t, ndim: int, dtypes: tuple, fix: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
    if t.dim() != ndim:
        raise ConfigError(f"{name} must be {ndim}-D (got shape {tuple(t.shape)})")
    if t.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be {names} (got {t.dtype}){fix}")
    if t.requires_grad:
        raise ConfigError(f"{name} must not require grad: curvfast ops are not differentiable; "
                          f"pass {name}.detach()")


def _int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (got {type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {value})")


def _same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ConfigError(f"tensors must be on one device (got {listing}); move them with .to()")


def _check_sample_ids(sample_ids, batch: int | None) -> None:
    _tensor("sample_ids", sample_ids, 1, (torch.int64,),
            "; convert with sample_ids.long()")
    if batch is not None and sample_ids.shape[0] != batch:
        raise ConfigError(f"sample_ids must have length B={batch} (got {sample_ids.shape[0]})")


def probes(sample_ids: torch.Tensor, num_probes: int, dim: int, *, seed: int, probe_offset: int = 0,
           distribution: str = "rademacher", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Deterministic random probe vectors, shape (B, num_probes, dim), on sample_ids' device.

    Entry (b, p, d) depends only on (seed, s = sample_ids[b], j = probe_offset + p, d), never on the batch
    (Philox4x32-10: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), with
    key = (seed mod 2^32, seed >> 32):

    - rademacher: r = philox((d // 128, j, s mod 2^32, s >> 32), key); the entry is +1 if bit d % 32 of word
      r[(d % 128) // 32] is set, else -1, so :math:`E[v v^T] = I`;
    - gaussian: r = philox((d // 2, j, s mod 2^32, s >> 32), key); Box-Muller with u1 = (a + 1) 2^-53,
      u2 = b 2^-53 (a, b the 53-bit draws (r0 << 21) ^ (r1 >> 11) and (r2 << 21) ^ (r3 >> 11)), computed in
      float64 with portable log/sin/cos (bit-identical on CPU and CUDA), then rounded to dtype:

    .. math:: v_d = \sqrt{-2 \log u_1}\, \cos(2\pi u_2) \ (d \text{ even}), \quad
              \sqrt{-2 \log u_1}\, \sin(2\pi u_2) \ (d \text{ odd})

    Args:
        sample_ids: (B,) int64 non-negative dataset indices.
        num_probes: probes per sample (>= 0).
        dim: entries per probe (>= 0).
        seed: the key, in [0, 2^63).
        probe_offset: index of the first probe; probe_offset + num_probes <= 2^32.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        dtype: torch.float32 or torch.float64.

    Returns:
        The probes, (B, num_probes, dim) in ``dtype``.

    Raises:
        ConfigError: an out-of-range count, seed or offset.
        UnknownNameError: an unknown distribution.
        DataError: a negative sample id.
        TypeError: a non-int count, a non-tensor or non-int64 ``sample_ids``, or another dtype.
    """
    _check_sample_ids(sample_ids, None)
    _int("num_probes", num_probes, 0)
    _int("dim", dim, 0)
    _int("seed", seed, 0)
    _int("probe_offset", probe_offset, 0)
    if seed >= 2**63:
        raise ConfigError(f"seed must be < 2**63 (got {seed})")
    if probe_offset + num_probes > 2**32:
        raise ConfigError(f"probe_offset + num_probes must be <= 2**32 (got {probe_offset} + "
                          f"{num_probes}); probe indices are 32-bit")
    if distribution not in ("rademacher", "gaussian"):
        raise UnknownNameError(f"distribution must be 'rademacher' or 'gaussian' (got {distribution!r})")
    if dtype not in _FLOATS:
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (got {dtype})")
    if sample_ids.numel() and _check_values(sample_ids.device) and int(sample_ids.min()) < 0:
        raise DataError("sample_ids must be non-negative (they index the dataset)")
    if _use_native(sample_ids.device):
        return torch.ops.curvfast.probes(sample_ids, seed, probe_offset, num_probes, dim,
                                         distribution, dtype)
    return reference.probes(sample_ids, num_probes, dim, seed=seed, probe_offset=probe_offset,
                            distribution=distribution, dtype=dtype)


def logit_factor(logits: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor, *, num_exact: int,
                 num_tail: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Factor of the cross-entropy Hessian in logit space.

    With ls = log_softmax(z) (float64 internally), p = exp(ls) and :math:`u_c = e_c - p`:

    .. math:: A = \operatorname{diag}(p) - p p^T = \sum_c p_c u_c u_c^T

    The cotangent entries are -p_j, and 1 - p_c = -expm1(ls_c) on the diagonal (accurate at tiny loss).

    - num_exact >= C: K = C, classes 0..C-1, weights p_c, so :math:`\sum_k w_k u_k u_k^T = A`.
    - num_exact < C (requires num_tail >= 1): K = num_exact + num_tail. First the num_exact classes with the
      largest logits (ties to the lower index) with weights p_c; then num_tail stratified draws from the tail T
      (other classes, ascending index) with :math:`P_T = \sum_{c \in T} p_c`: stratum j uses u_j from Philox
      (seeded by seed and the sample id), point (j + u_j) / num_tail, and takes the first tail class whose
      cumulative p exceeds point * P_T, with weight P_T / num_tail. Hence :math:`\sum_k w_k f(c_k)` is an unbiased
      estimate of :math:`\sum_c p_c f(c)` (exact on the top classes).

    Args:
        logits: (B, C) float32/float64 logits z, C >= 2, finite.
        labels: (B,) int64 labels y in [0, C).
        sample_ids: (B,) int64 non-negative dataset indices (key the tail draws).
        num_exact: classes kept exactly (>= C: the exact factor).
        num_tail: stratified tail draws (>= 1 when num_exact < C).
        seed: seed of the tail draws.

    Returns:
        ``(cotangents (B, K, C), weights (B, K), classes (B, K) int64, loss (B,))`` with loss = -ls[y], in the
        dtype of ``logits``.

    Raises:
        ConfigError: a bad shape, count or device.
        DataError: a label outside [0, C) or a negative sample id.
        NonFiniteError: NaN or infinite logits.
        TypeError: a non-tensor, or a wrong dtype.
    """
    _tensor("logits", logits, 2, _FLOATS, "; convert with logits.float()")
    B, C = logits.shape
    if C < 2:
        raise ConfigError(f"logits need at least 2 classes (got shape {tuple(logits.shape)})")
    _tensor("labels", labels, 1, (torch.int64,), "; convert with labels.long()")
    if labels.shape[0] != B:
        raise ConfigError(f"labels must have length B={B} (got {labels.shape[0]})")
    _check_sample_ids(sample_ids, B)
    _same_device(logits=logits, labels=labels, sample_ids=sample_ids)
    _int("num_exact", num_exact, 0)
    _int("num_tail", num_tail, 0)
    _int("seed", seed, 0)
    if num_exact < C and num_tail < 1:
        raise ConfigError(f"num_exact={num_exact} < C={C} samples the remaining classes, so "
                          "num_tail must be >= 1 (or set num_exact >= C for the exact factor)")
    if B and _check_values(logits.device):
        bad_label_lo, bad_label_hi, bad_id, non_finite = torch.stack([
            labels.min() < 0, labels.max() >= C, sample_ids.min() < 0,
            ~torch.isfinite(logits).all()]).tolist()
        if bad_label_lo or bad_label_hi:
            raise DataError(f"labels must lie in [0, C={C})")
        if bad_id:
            raise DataError("sample_ids must be non-negative (they index the dataset)")
        if non_finite:
            raise NonFiniteError("logits must be finite (got NaN or inf)")
    if _use_native(logits.device):
        return torch.ops.curvfast.logit_factor(logits, labels, sample_ids, num_exact, num_tail,
                                               seed)
    return reference.logit_factor(logits, labels, sample_ids, num_exact=num_exact,
                                  num_tail=num_tail, seed=seed)


def weighted_sq_norms(vjp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Weighted squared norms of per-sample vectors, accumulated in float64.

    .. math:: \mathrm{out}_{bk} = w_{bk} \sum_d \mathrm{vjp}_{bkd}^2

    With :math:`\mathrm{vjp}_{bk} = J_b^T u_k` (input-space pullback of the factor's cotangents) this is the
    per-entry contribution to :math:`\operatorname{tr}(J^T A J) = \sum_k w_k \|J^T u_k\|^2`.

    Args:
        vjp: (B, K, D) float32/float64.
        weights: (B, K) in vjp's dtype.

    Returns:
        (B, K) in vjp's dtype.

    Raises:
        ConfigError: a bad shape, size, value or device of an argument (named in the message).
        TypeError: an argument is not a tensor or has the wrong dtype.
    """
    _tensor("vjp", vjp, 3, _FLOATS, "; convert with vjp.float()")
    _tensor("weights", weights, 2, _FLOATS, "; convert with weights.to(vjp.dtype)")
    if tuple(weights.shape) != tuple(vjp.shape[:2]):
        raise ConfigError(f"weights must have shape (B, K) = {tuple(vjp.shape[:2])} "
                          f"(got {tuple(weights.shape)})")
    if weights.dtype != vjp.dtype:
        raise TypeError(f"weights must have vjp's dtype {vjp.dtype} (got {weights.dtype}); "
                        "convert with weights.to(vjp.dtype)")
    _same_device(vjp=vjp, weights=weights)
    if _use_native(vjp.device):
        return torch.ops.curvfast.weighted_sq_norms(vjp, weights)
    return reference.weighted_sq_norms(vjp, weights)


def probe_moments(probes: torch.Tensor, hvp: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Merge P probe results per sample into running Welford moments.

    Per (b, p): :math:`q_0 = v^T H v` (a Hutchinson trace sample) and :math:`q_1 = \|Hv\|^2` (a squared-Frobenius
    sample), in float64. With the batch mean :math:`m_b` and sum of squared deviations :math:`M_{2b}` of the P
    values (per statistic), n = count + P and :math:`\delta = m_b - \mathrm{mean}` (Chan, Golub & LeVeque,
    "Updating formulae and a pairwise algorithm for computing sample variances", 1979):

    .. math:: \mathrm{mean}' = \mathrm{mean} + \delta P / n, \qquad
              m_2' = m_2 + M_{2b} + \delta^2 \,\mathrm{count}\, P / n

    The variance is m2 / (n - 1).

    Args:
        probes: (B, P, D) probe vectors v, P >= 1.
        hvp: (B, P, D) the products Hv, probes' dtype.
        mean: (B, 2) running means (columns q0, q1); float64 recommended.
        m2: (B, 2) running sums of squared deviations, mean's dtype.
        count: probes merged so far (>= 0).

    Returns:
        ``(mean', m2')`` in mean's dtype.

    Raises:
        ConfigError: a bad shape, size, value or device of an argument (named in the message).
        TypeError: an argument is not a tensor or has the wrong dtype.
    """
    _tensor("probes", probes, 3, _FLOATS, "; convert with probes.float()")
    _tensor("hvp", hvp, 3, _FLOATS, "; convert with hvp.to(probes.dtype)")
    if hvp.shape != probes.shape:
        raise ConfigError(f"hvp must have probes' shape {tuple(probes.shape)} "
                          f"(got {tuple(hvp.shape)})")
    if hvp.dtype != probes.dtype:
        raise TypeError(f"hvp must have probes' dtype {probes.dtype} (got {hvp.dtype}); "
                        "convert with hvp.to(probes.dtype)")
    if probes.shape[1] < 1:
        raise ConfigError("probes must hold at least one probe (P >= 1)")
    B = probes.shape[0]
    _tensor("mean", mean, 2, _FLOATS, "; convert with mean.double()")
    _tensor("m2", m2, 2, _FLOATS, "; convert with m2.double()")
    if tuple(mean.shape) != (B, 2) or tuple(m2.shape) != (B, 2):
        raise ConfigError(f"mean and m2 must have shape (B, 2) = ({B}, 2) "
                          f"(got {tuple(mean.shape)} and {tuple(m2.shape)})")
    if m2.dtype != mean.dtype:
        raise TypeError(f"m2 must have mean's dtype {mean.dtype} (got {m2.dtype})")
    _same_device(probes=probes, hvp=hvp, mean=mean, m2=m2)
    _int("count", count, 0)
    if _use_native(probes.device):
        return torch.ops.curvfast.probe_moments(probes, hvp, mean, m2, count)
    return reference.probe_moments(probes, hvp, mean, m2, count)


def _pair(name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ConfigError(f"{name} must be a positive int or a pair of positive ints (got {value!r})")
    return pair


def _check_patch_gram(x, mask, kernel, stride, dilation, groups, omega):
    """Validates patch_gram's arguments; returns (kernel, stride, dilation) as pairs."""
    _tensor("x", x, 4, _FLOATS, "; convert with x.float()")
    kernel, stride, dilation = _pair("kernel", kernel), _pair("stride", stride), _pair("dilation", dilation)
    _int("groups", groups, 1)
    batch, channels, height, width = x.shape
    if channels % groups:
        raise ConfigError(f"groups={groups} must divide x's {channels} channels (the layer's groups)")
    extent = [dl * (k - 1) + 1 for k, dl in zip(kernel, dilation)]
    if extent[0] > height or extent[1] > width:
        raise ConfigError(f"the dilated kernel spans {extent[0]}x{extent[1]} but x is {height}x{width}; "
                          "pass the input padded like the layer pads it")
    out = tuple((n - e) // s + 1 for n, e, s in zip((height, width), extent, stride))
    _tensor("mask", mask, 3, (x.dtype,), f"; convert with mask.to({x.dtype})")
    if tuple(mask.shape) != (batch, *out):
        raise ConfigError(f"mask must have shape (B, H_out, W_out) = {(batch, *out)} (got {tuple(mask.shape)})")
    if omega is None:
        _same_device(x=x, mask=mask)
    else:
        dim = channels // groups * kernel[0] * kernel[1]
        _tensor("omega", omega, 3, _FLOATS, "; convert with omega.double()")
        if tuple(omega.shape[:2]) != (groups, dim):
            raise ConfigError(f"omega must have shape (groups, d, l) = ({groups}, {dim}, l) (got {tuple(omega.shape)})")
        _same_device(x=x, mask=mask, omega=omega)
    if _check_values(x.device):
        named = {"x": x, "mask": mask, **({} if omega is None else {"omega": omega})}
        finite = torch.stack([torch.isfinite(t).all() for t in named.values()]).tolist()  # one sync
        for name, ok in zip(named, finite):
            if not ok:
                raise NonFiniteError(f"{name} must be finite (got NaN or inf); the Gram of its rows would be NaN. "
                                     f"Clean the input first (e.g. torch.nan_to_num({name}))")
    return kernel, stride, dilation


def patch_gram(x: torch.Tensor, mask: torch.Tensor, kernel: int | tuple[int, int],
               stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1, groups: int = 1,
               omega: torch.Tensor | None = None) -> torch.Tensor:
    r"""Masked Gram matrix (or sketch) of a convolution's im2col rows, without materialising them.

    Per group j, in float64:

    .. math:: G_j = X_j^T \operatorname{diag}(m) X_j \ (g, d, d), \qquad
              \text{or } X_j^T \operatorname{diag}(m) X_j \Omega_j \ (g, d, l) \text{ for } \Omega

    X_j is group j's im2col matrix of the already padded input ``x`` (B, C, H, W) under a
    convolution with ``kernel``, ``stride`` and ``dilation`` (ints or pairs) and ``groups`` groups:
    one row per output position (b, oy, ox), row-major, whose d = C/g · kh · kw entries are
    x[b, j·C/g + c, oy·s_h + a·δ_h, ox·s_w + e·δ_w] in (c, a, e) order (the order of
    ``W.reshape(C_out, -1)``). ``mask`` (B, H_out, W_out), in x's dtype, weighs the rows (0/1
    selects a subset). The native kernels im2col tiles of the rows with m != 0 and multiply them
    in x's dtype (float32 tiles of 256 rows, added in float64). Memory: the tiles and the output.

    Args:
        x: (B, C, H, W) float32/float64 input, padded as the layer pads it.
        mask: (B, H_out, W_out) row weights in x's dtype.
        kernel: kernel size (kh, kw), an int or a pair.
        stride: the stride, an int or a pair.
        dilation: the dilation, an int or a pair.
        groups: the convolution's groups; divides C.
        omega: (g, d, l) sketch matrix, or None for the Gram matrix.

    Returns:
        (g, d, d), or (g, d, l) with ``omega``, float64.

    Raises:
        ConfigError: a bad shape, size, value or device of an argument (named in the message).
        TypeError: an argument is not a tensor or has the wrong dtype.
        NonFiniteError: ``x``, ``mask`` or ``omega`` holds NaN or Inf.
    """
    kernel, stride, dilation = _check_patch_gram(x, mask, kernel, stride, dilation, groups, omega)
    if _use_native(x.device):
        return torch.ops.curvfast.patch_gram(x, mask, kernel, stride, dilation, groups, omega)
    return reference.patch_gram(x, mask, kernel, stride, dilation, groups, omega)


def patch_gram_add_(acc: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, kernel: int | tuple[int, int],
                    stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1, groups: int = 1,
                    omega: torch.Tensor | None = None) -> torch.Tensor:
    """``acc += patch_gram(x, mask, ...)`` in place, without a second output-sized tensor.

    The native kernels add each tile's product into ``acc``.

    Args:
        acc: float64, contiguous, of :func:`patch_gram`'s output shape.
        x: as for :func:`patch_gram`.
        mask: as for :func:`patch_gram`.
        kernel: as for :func:`patch_gram`.
        stride: as for :func:`patch_gram`.
        dilation: as for :func:`patch_gram`.
        groups: as for :func:`patch_gram`.
        omega: as for :func:`patch_gram`.

    Returns:
        ``acc``.

    Raises:
        ConfigError: a bad shape, size, value or device of an argument (named in the message).
        TypeError: an argument is not a tensor or has the wrong dtype.
        NonFiniteError: ``x``, ``mask`` or ``omega`` holds NaN or Inf.
    """
    kernel, stride, dilation = _check_patch_gram(x, mask, kernel, stride, dilation, groups, omega)
    _tensor("acc", acc, 3, (torch.float64,), "; accumulate in a float64 tensor")
    dim = x.shape[1] // groups * kernel[0] * kernel[1]
    shape = (groups, dim, dim if omega is None else omega.shape[2])
    if tuple(acc.shape) != shape:
        raise ConfigError(f"acc must have shape {shape} (got {tuple(acc.shape)})")
    if not acc.is_contiguous():
        raise ConfigError("acc must be contiguous; accumulate into acc.contiguous() and copy back")
    _same_device(acc=acc, x=x)
    if _use_native(x.device):
        torch.ops.curvfast.patch_gram_add_(acc, x, mask, kernel, stride, dilation, groups, omega)
    else:
        acc.add_(reference.patch_gram(x, mask, kernel, stride, dilation, groups, omega))
    return acc
