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


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on broadcastable arrays of 32-bit counter words; returns 4 uint64 arrays.

    Round: (hi0, lo0) = 0xD2511F53 c0, (hi1, lo1) = 0xCD9E8D57 c2,
    c' = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key gets the Weyl increments
    (0x9E3779B9, 0xBB67AE85) between rounds.
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


def _bits53(hi, lo):
    return (hi << np.uint64(21)) ^ (lo >> np.uint64(11))


def portable_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float64 values, as csrc/common/portable_math.h computes it.

    x = m 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1)/(m + 1), by the
    odd series to s^25; log x = e ln2_hi + (log m + e ln2_lo).
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


def portable_sincos_2pi(b: np.ndarray):
    """(sin, cos) of 2 pi u for u = b 2^-53, b uint64 in [0, 2^53), like the native code.

    4u = q + r exactly in integers (q = round(4u)), x = r pi/2 with |x| <= pi/4, Taylor series
    to x^21 / x^20, then rotation by the quadrant q mod 4.
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


def _split_ids(sample_ids: torch.Tensor):
    ids = sample_ids.detach().cpu().numpy().astype(np.uint64)
    return ids & _MASK32, ids >> np.uint64(32)


def probes(sample_ids, num_probes, dim, *, seed, probe_offset=0, distribution="rademacher",
           dtype=torch.float32):
    """Reference for :func:`curvfast.ops.probes` (same math, computed with numpy on the CPU)."""
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


def logit_factor(logits, labels, sample_ids, *, num_exact, num_tail=0, seed=0):
    """Reference for :func:`curvfast.ops.logit_factor` (torch log-softmax, numpy sampling)."""
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


def weighted_sq_norms(vjp, weights):
    """Reference for :func:`curvfast.ops.weighted_sq_norms`."""
    return (weights.double() * vjp.double().square().sum(-1)).to(vjp.dtype)


def probe_moments(probes, hvp, mean, m2, count):
    """Reference for :func:`curvfast.ops.probe_moments` (two-pass batch moments)."""
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


def patch_gram(x, mask, kernel, stride, dilation, groups, omega=None):
    """Reference for :func:`curvfast.ops.patch_gram`: the unfolded patches (float64), materialised."""
    patches = torch.nn.functional.unfold(x.double(), kernel, dilation=dilation, stride=stride)  # (B, C·kh·kw, L)
    batch, _, positions = patches.shape
    rows = patches.view(batch, groups, -1, positions).permute(1, 0, 3, 2).reshape(groups, batch * positions, -1)
    weighted = rows * mask.reshape(1, -1, 1).double()
    if omega is None:
        return weighted.mT @ rows
    return weighted.mT @ (rows @ omega.double())
