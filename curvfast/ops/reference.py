"""Pure-torch / numpy reference implementations of the curvfast native ops.

They are the fallback when the compiled extension is unavailable and the oracle in the tests.
Random probes repeat the native arithmetic operation by operation (Philox4x32-10 on uint64
arrays holding 32-bit words, and the portable log / sin / cos on float64 arrays; numpy never
fuses multiply-adds), so on the CPU they equal the native kernels bit for bit. Arguments are
assumed valid: the public wrappers in :mod:`curvfast.ops` check them.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK32 = np.uint64(0xFFFFFFFF)
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_PIO2_HI = float.fromhex("0x1.921fb54442d18p+0")
_PIO2_LO = float.fromhex("0x1.1a62633145c07p-54")
# 1/25, 1/23, ..., 1/3 (Horner order of the atanh series).
_LOG_COEFS = [1.0 / k for k in range(25, 1, -2)]
_SIN_COEFS = [-1.0 / 51090942171709440000.0, 1.0 / 121645100408832000.0,
              -1.0 / 355687428096000.0, 1.0 / 1307674368000.0, -1.0 / 6227020800.0,
              1.0 / 39916800.0, -1.0 / 362880.0, 1.0 / 5040.0, -1.0 / 120.0, 1.0 / 6.0]
_COS_COEFS = [1.0 / 2432902008176640000.0, -1.0 / 6402373705728000.0, 1.0 / 20922789888000.0,
              -1.0 / 87178291200.0, 1.0 / 479001600.0, -1.0 / 3628800.0, 1.0 / 40320.0,
              -1.0 / 720.0, 1.0 / 24.0, -0.5]


def philox4x32_10(c0: np.ndarray | int, c1: np.ndarray | int, c2: np.ndarray | int, c3: np.ndarray | int,
                  k0: int, k1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Philox4x32-10 on broadcastable arrays of 32-bit counter words.

    Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011. One round, with the key
    (k0, k1) advanced by the Weyl increments (0x9E3779B9, 0xBB67AE85) between rounds:

    .. math:: (h_0, l_0) = \mathtt{0xD2511F53} \cdot c_0, \quad (h_1, l_1) = \mathtt{0xCD9E8D57} \cdot c_2,
              \quad c' = (h_1 \oplus c_1 \oplus k_0,\ l_1,\ h_0 \oplus c_3 \oplus k_1,\ l_0)

    Args:
        c0: Counter word 0 (values < 2^32), an array or an int.
        c1: Counter word 1.
        c2: Counter word 2.
        c3: Counter word 3.
        k0: Key word 0 (taken mod 2^32).
        k1: Key word 1 (taken mod 2^32).

    Returns:
        The four output words, uint64 arrays of the broadcast shape holding 32-bit values.
    """
    c0, c1, c2, c3 = (np.array(c, dtype=np.uint64) for c in np.broadcast_arrays(c0, c1, c2, c3))
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for rnd in range(10):
        if rnd:
            k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
            k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        n0 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        n2 = (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c0, c1, c2, c3 = n0, p1 & _MASK32, n2, p0 & _MASK32
    return c0, c1, c2, c3


def _bits53(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return (hi << np.uint64(21)) ^ (lo >> np.uint64(11))


def portable_log(x: np.ndarray) -> np.ndarray:
    r"""Natural log of positive normal float64 values, as csrc/common/portable_math.h computes it.

    With :math:`x = m 2^e`, :math:`m \in [\sqrt{1/2}, \sqrt{2})` and the odd atanh series to :math:`s^{25}`:

    .. math:: \log m = 2 \operatorname{atanh}(s), \quad s = \frac{m - 1}{m + 1}, \qquad
              \log x = e \ln 2_{hi} + (\log m + e \ln 2_{lo})

    Args:
        x: Positive normal values (converted to float64).

    Returns:
        log x, float64, shaped like ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    e = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    m = ((bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)).view(np.float64)
    big = m > _SQRT2
    m = np.where(big, m * 0.5, m)
    e = e + big
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    t = np.full_like(s, _LOG_COEFS[0])
    for c in _LOG_COEFS[1:]:
        t = t * s2 + c
    t = t * s2
    log_m = 2.0 * s + 2.0 * (s * t)
    ed = e.astype(np.float64)
    return ed * _LN2_HI + (log_m + ed * _LN2_LO)


def portable_sincos_2pi(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Return (sin, cos) of :math:`2 \pi u` for :math:`u = b\, 2^{-53}`, like the native code.

    4u = q + r exactly in integers (q = round(4u)), :math:`x = r \pi / 2` with :math:`|x| \le \pi/4`, Taylor
    series to :math:`x^{21}` / :math:`x^{20}`, then rotation by the quadrant q mod 4.

    Args:
        b: uint64 values in [0, 2^53).

    Returns:
        ``(sin, cos)``, float64 arrays shaped like ``b``.
    """
    b = np.asarray(b, dtype=np.uint64)
    q = ((b + np.uint64(1 << 50)) >> np.uint64(51)).astype(np.int64)
    r = (b.astype(np.int64) - (q << 51)).astype(np.float64) * 2.0**-51
    x = r * _PIO2_HI + r * _PIO2_LO
    x2 = x * x
    s = np.full_like(x, _SIN_COEFS[0])
    for c in _SIN_COEFS[1:]:
        s = s * x2 + c
    sin_x = x - x * (x2 * s)
    c = np.full_like(x, _COS_COEFS[0])
    for k in _COS_COEFS[1:]:
        c = c * x2 + k
    cos_x = 1.0 + x2 * c
    quad = q & 3
    sin_out = np.select([quad == 0, quad == 1, quad == 2], [sin_x, cos_x, -sin_x], -cos_x)
    cos_out = np.select([quad == 0, quad == 1, quad == 2], [cos_x, -sin_x, -cos_x], sin_x)
    return sin_out, cos_out


def _split_ids(sample_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    ids = sample_ids.detach().cpu().numpy().astype(np.uint64)
    return ids & _MASK32, ids >> np.uint64(32)


def probes(sample_ids: torch.Tensor, num_probes: int, dim: int, *, seed: int, probe_offset: int = 0,
           distribution: str = "rademacher", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference for :func:`curvfast.ops.probes` (same math, computed with numpy on the CPU).

    Args:
        sample_ids: (B,) int64 non-negative dataset indices.
        num_probes: Probes per sample.
        dim: Entries per probe.
        seed: The Philox key, in [0, 2^63).
        probe_offset: Index of the first probe.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        dtype: torch.float32 or torch.float64.

    Returns:
        The probes, (B, num_probes, dim) in ``dtype`` on sample_ids' device.
    """
    s_lo, s_hi = _split_ids(sample_ids)
    s_lo, s_hi = s_lo[:, None, None], s_hi[:, None, None]
    j = (np.uint64(probe_offset) + np.arange(num_probes, dtype=np.uint64))[None, :, None]
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    shape = (len(s_lo), num_probes, dim)
    if distribution == "rademacher":
        blocks = np.arange((dim + 127) // 128, dtype=np.uint64)[None, None, :]
        words = np.stack(philox4x32_10(blocks, j, s_lo, s_hi, k0, k1), axis=-1)
        words = np.broadcast_to(words, shape[:2] + words.shape[2:]).reshape(shape[:2] + (-1,))
        d = np.arange(dim, dtype=np.uint64)
        bits = (words[..., d // np.uint64(32)] >> (d % np.uint64(32))) & np.uint64(1)
        out = np.where(bits == 1, 1.0, -1.0)
    else:
        pairs = np.arange((dim + 1) // 2, dtype=np.uint64)[None, None, :]
        r0, r1, r2, r3 = philox4x32_10(pairs, j, s_lo, s_hi, k0, k1)
        u1 = (_bits53(r0, r1) + np.uint64(1)).astype(np.float64) * 2.0**-53
        rho = np.sqrt(-2.0 * portable_log(u1))
        sin_v, cos_v = portable_sincos_2pi(_bits53(r2, r3))
        out = np.empty(shape[:2] + (2 * pairs.shape[-1],), dtype=np.float64)
        out[..., 0::2] = rho * cos_v
        out[..., 1::2] = rho * sin_v
        out = np.broadcast_to(out[..., :dim], shape)
    out = np.array(out, dtype=np.float64).reshape(shape)  # writable copy
    return torch.from_numpy(out).to(device=sample_ids.device, dtype=dtype)


def logit_factor(logits: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor, *, num_exact: int,
                 num_tail: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Reference for :func:`curvfast.ops.logit_factor` (torch log-softmax, numpy sampling).

    The factor of the cross-entropy Hessian in logit space, with :math:`u_c = e_c - p`:

    .. math:: A = \operatorname{diag}(p) - p p^T = \sum_c p_c u_c u_c^T

    Args:
        logits: (B, C) logits z.
        labels: (B,) int64 labels in [0, C).
        sample_ids: (B,) int64 non-negative dataset indices (key the tail draws).
        num_exact: Classes kept exactly (>= C: the exact factor).
        num_tail: Stratified tail draws (>= 1 when num_exact < C).
        seed: Seed of the tail draws.

    Returns:
        ``(cotangents (B, K, C), weights (B, K), classes (B, K) int64, loss (B,))``, in the dtype of ``logits``.
    """
    B, C = logits.shape
    device, dtype = logits.device, logits.dtype
    ls = torch.log_softmax(logits.detach().double(), dim=-1)
    p = ls.exp()
    loss = -ls.gather(1, labels[:, None]).squeeze(1)
    if num_exact >= C:
        classes = torch.arange(C, device=device).expand(B, C).clone()
        weights = p
    else:
        order = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices
        tail = torch.sort(order[:, num_exact:], dim=1).values
        p_tail = p.gather(1, tail).cpu().numpy()
        cum = np.cumsum(p_tail, axis=1)  # sequential, like the native loop
        mass = cum[:, -1]
        s_lo, s_hi = _split_ids(sample_ids)
        strata = np.arange(num_tail, dtype=np.uint64)
        r0, r1, _, _ = philox4x32_10(strata[None, :], 0x7A11, s_lo[:, None], s_hi[:, None],
                                     (seed & 0xFFFFFFFF) ^ 0xA511E9B3, seed >> 32)
        u = _bits53(r0, r1).astype(np.float64) * 2.0**-53
        targets = ((strata.astype(np.float64)[None, :] + u) / float(num_tail)) * mass[:, None]
        picks = np.empty((B, num_tail), dtype=np.int64)
        for b in range(B):
            pos = np.searchsorted(cum[b], targets[b], side="right")
            positive = np.nonzero(p_tail[b] > 0)[0]
            fallback = positive[-1] if len(positive) else p_tail.shape[1] - 1
            picks[b] = np.where(pos < p_tail.shape[1], pos, fallback)
        tail_np = tail.cpu().numpy()
        sampled = torch.from_numpy(np.take_along_axis(tail_np, picks, axis=1)).to(device)
        classes = torch.cat([order[:, :num_exact], sampled], dim=1)
        w_tail = torch.from_numpy(mass / num_tail).to(device)[:, None].expand(B, num_tail)
        weights = torch.cat([p.gather(1, order[:, :num_exact]), w_tail], dim=1)
    K = classes.shape[1]
    cot = (-p)[:, None, :].expand(B, K, C).clone()
    cot.scatter_(2, classes[:, :, None], -torch.expm1(ls.gather(1, classes))[:, :, None])
    return cot.to(dtype), weights.to(dtype), classes, loss.to(dtype)


def weighted_sq_norms(vjp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Reference for :func:`curvfast.ops.weighted_sq_norms`, accumulated in float64.

    .. math:: \mathrm{out}_{bk} = w_{bk} \sum_d \mathrm{vjp}_{bkd}^2

    Args:
        vjp: (B, K, D) vectors.
        weights: (B, K) weights.

    Returns:
        (B, K) in vjp's dtype.
    """
    return (weights.double() * vjp.double().square().sum(-1)).to(vjp.dtype)


def probe_moments(probes: torch.Tensor, hvp: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Reference for :func:`curvfast.ops.probe_moments` (two-pass batch moments).

    Per (b, p), :math:`q_0 = v^T H v` and :math:`q_1 = \|Hv\|^2`; with the batch mean :math:`m_b`, the sum of
    squared deviations :math:`M_{2b}` of the P values, n = count + P and :math:`\delta = m_b - \mathrm{mean}`
    (Chan, Golub & LeVeque, 1979):

    .. math:: \mathrm{mean}' = \mathrm{mean} + \delta P / n, \qquad
              m_2' = m_2 + M_{2b} + \delta^2 \,\mathrm{count}\, P / n

    Args:
        probes: (B, P, D) probe vectors v.
        hvp: (B, P, D) the products Hv.
        mean: (B, 2) running means (columns q0, q1).
        m2: (B, 2) running sums of squared deviations.
        count: Probes merged so far.

    Returns:
        ``(mean', m2')`` in mean's dtype.
    """
    v, hv = probes.double(), hvp.double()
    q = torch.stack([(v * hv).sum(-1), hv.square().sum(-1)], dim=-1)  # (B, P, 2)
    P = q.shape[1]
    mb = q.mean(1)
    m2b = (q - mb[:, None]).square().sum(1)
    n = count + P
    delta = mb - mean.double()
    new_mean = mean.double() + delta * P / n
    new_m2 = m2.double() + m2b + delta * delta * count * P / n
    return new_mean.to(mean.dtype), new_m2.to(mean.dtype)


def patch_gram(x: torch.Tensor, mask: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int], groups: int, omega: torch.Tensor | None = None) -> torch.Tensor:
    r"""Reference for :func:`curvfast.ops.patch_gram`: the unfolded patches (float64), materialised.

    Per group j, with :math:`X_j` group j's im2col matrix of ``x``:

    .. math:: G_j = X_j^T \operatorname{diag}(m) X_j, \qquad \text{or } X_j^T \operatorname{diag}(m) X_j \Omega_j

    Args:
        x: (B, C, H, W) input, already padded.
        mask: (B, H_out, W_out) row weights.
        kernel: Kernel size (kh, kw).
        stride: The stride pair.
        dilation: The dilation pair.
        groups: The convolution's groups.
        omega: (g, d, l) sketch matrix, or None for the Gram matrix.

    Returns:
        (g, d, d), or (g, d, l) with ``omega``, float64.
    """
    patches = torch.nn.functional.unfold(x.double(), kernel, dilation=dilation, stride=stride)  # (B, C·kh·kw, L)
    batch, _, positions = patches.shape
    rows = patches.view(batch, groups, -1, positions).permute(1, 0, 3, 2).reshape(groups, batch * positions, -1)
    weighted = rows * mask.reshape(1, -1, 1).double()
    if omega is None:
        return weighted.mT @ rows
    return weighted.mT @ (rows @ omega.double())
