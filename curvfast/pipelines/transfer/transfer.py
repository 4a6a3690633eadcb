"""Transfer counts N_{s->t}(eps), the saturating fit N(eps) ~ a(1 - e^{b eps}), and the TREND metric.

For a source s and target t, the pool P_{st} is the set of test images that **both** models
classify correctly. With x'_s(eps) the attack made on s at radius eps,

    N_{s->t}(eps) = #{x in P_{st} : s(x'_s) != y  and  t(x'_s) != y}      (fools s and transfers)
    N_{s->s|t}(eps) = #{x in P_{st} : s(x'_s) != y}                     (fools s)

Both counts use the same pool, so N_{s->t} <= N_{s->s|t} and the ratio is the fraction of
successful attacks on s that also fool t. Each count curve is fitted with
N(eps) = a (1 - exp(b eps)), 0 <= a <= |P_{st}|, b <= 0, and the metric is the ratio of the
*fitted* curves at eps* (8/255 by default):

    T_{s->t} = [a_{st} (1 - exp(b_{st} eps*))] / [a_{ss} (1 - exp(b_{ss} eps*))].

The published code computes ``a_st*(1-exp(b_st*eps))/a_ss*(1-exp(b_ss*eps))``, which by Python's
left-to-right precedence *multiplies* by the denominator's (1 - e^{b eps}) factor; curvfast divides
by the whole fitted denominator.

The published denominator (``fit_calc_TM.py``: the fit of the source's own count, ``exp_coef[j, j]``) is
counted over another pool: N_{s->s}(eps) = #{x in P_s : s(x'_s) != y}, P_s the images s alone classifies
correctly. ``self_count="source"`` selects it; the default ``"pair"`` keeps both counts on P_{st}.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import torch

from curvfast.errors import DataError, UnknownNameError

__all__ = [
    "Fit", "saturating", "fit_saturating", "transfer_metric", "predictions_under_attack",
    "pair_counts", "SELF_COUNTS", "denominator_counts", "transfer_matrix", "pair_groups",
]

SELF_COUNTS = ("pair", "source")


@dataclass(frozen=True)
class Fit:
    """N(eps) = a (1 - exp(b eps)); ``rmse`` of the fit in counts; ``pool`` the bound on a."""

    a: float
    b: float
    rmse: float
    pool: int

    def __call__(self, eps) -> np.ndarray:
        return saturating(np.asarray(eps, dtype=np.float64), self.a, self.b)

    def to_dict(self) -> dict:
        return asdict(self)


def saturating(eps: np.ndarray, a: float, b: float) -> np.ndarray:
    """a (1 - exp(b eps)), written with expm1 so small b eps keeps its precision."""
    return -a * np.expm1(b * eps)


def fit_saturating(eps, counts, pool: int | None = None) -> Fit:
    """Least-squares fit of N(eps) = a (1 - e^{b eps}) with 0 <= a <= pool and b <= 0.

    ``pool`` (the number of images the counts are drawn from; default: no bound) caps the plateau a.
    All-zero counts give a = b = 0 (nothing transfers at any eps).
    """
    from scipy.optimize import curve_fit

    eps = np.asarray(eps, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if eps.shape != counts.shape or eps.ndim != 1 or len(eps) < 2:
        raise DataError(f"eps and counts must be 1-D of the same length >= 2 (got {eps.shape} and {counts.shape})")
    if (eps < 0).any() or not np.isfinite(counts).all() or (counts < 0).any():
        raise DataError("eps must be >= 0 and counts finite and >= 0")
    cap = float(pool) if pool is not None else np.inf
    if counts.max() == 0:
        return Fit(0.0, 0.0, 0.0, -1 if pool is None else int(pool))
    top = counts.max()
    half = eps[np.argmax(counts >= top / 2)]  # first eps reaching half the plateau
    b0 = -np.log(2) / half if half > 0 else -1.0 / eps[eps > 0].min()
    a0 = min(top * 1.05, cap) if np.isfinite(cap) else top * 1.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariance warnings: only the parameters are used
        (a, b), _ = curve_fit(
            saturating, eps, counts, p0=(a0, b0), bounds=([0.0, -np.inf], [cap if np.isfinite(cap) else np.inf, 0.0]),
            method="trf", max_nfev=20000,
        )
    rmse = float(np.sqrt(np.mean((saturating(eps, a, b) - counts) ** 2)))
    return Fit(float(a), float(b), rmse, -1 if pool is None else int(pool))


def transfer_metric(fit_st: Fit, fit_ss: Fit, eps: float = 8 / 255) -> float:
    """T_{s->t} = N_hat_{s->t}(eps) / N_hat_{s->s}(eps), the ratio of the two fitted curves at eps.
    NaN when the fitted self-count is 0 (the attack on s never succeeds)."""
    numerator, denominator = float(fit_st(eps)), float(fit_ss(eps))
    return numerator / denominator if denominator > 0 else float("nan")


@torch.no_grad()
def predictions_under_attack(models: list[torch.nn.Module], adversarial: list[torch.Tensor], batch_size: int = 512) -> np.ndarray:
    """Predicted labels of every model on every adversarial batch: int array (len(adversarial), M, N)."""
    out = np.empty((len(adversarial), len(models), len(adversarial[0]) if adversarial else 0), dtype=np.int64)
    for k, x in enumerate(adversarial):
        for m, model in enumerate(models):
            out[k, m] = torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)]).cpu().numpy()
    return out


def pair_counts(correct: np.ndarray, fooled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transfer counts from boolean outcomes.

    correct: (M, N) model m classifies clean image n correctly. fooled: (S=M, E, T=M, N) the attack
    made on source s at the e-th eps fools target t on image n.
    Returns N_st (S, T, E), N_ss_given_t (S, T, E) and the pool sizes |P_st| (S, T).
    """
    correct = np.asarray(correct, dtype=bool)
    fooled = np.asarray(fooled, dtype=bool)
    m = correct.shape[0]
    if fooled.ndim != 4 or fooled.shape[0] != m or fooled.shape[2] != m or fooled.shape[3] != correct.shape[1]:
        raise DataError(f"fooled must have shape (M, E, M, N) = ({m}, E, {m}, {correct.shape[1]}) (got {fooled.shape})")
    pool = correct[:, None, :] & correct[None, :, :]                            # (S, T, N)
    self_fooled = fooled[np.arange(m), :, np.arange(m), :]                        # (S, E, N)
    both = self_fooled[:, :, None, :] & fooled                                    # (S, E, T, N)
    n_st = (both & pool[:, None]).sum(-1).transpose(0, 2, 1)                      # (S, T, E)
    n_ss = (self_fooled[:, :, None, :] & pool[:, None]).sum(-1).transpose(0, 2, 1)
    return n_st, n_ss, pool.sum(-1)


def denominator_counts(n_st, n_ss, pool, self_count: str = "pair") -> tuple[np.ndarray, np.ndarray]:
    """The counts the metric divides by, and their pools, both shaped like ``n_ss`` and ``pool``.

    ``"pair"``: N_{s->s|t} over P_{st} (``n_ss`` and ``pool`` themselves). ``"source"`` (the published
    ``fit_calc_TM.py``, which divides by the fit of the source's own transfer count): N_{s->s} over P_s,
    the images s classifies correctly, the same for every target t; it is ``n_st[s, s]`` with pool
    ``pool[s, s]``.
    """
    if self_count == "pair":
        return np.asarray(n_ss), np.asarray(pool)
    if self_count != "source":
        raise UnknownNameError(f"self_count must be one of {SELF_COUNTS} (got {self_count!r})")
    own = np.arange(n_st.shape[0])
    counts = np.broadcast_to(n_st[own, own][:, None, :], np.shape(n_ss)).copy()
    return counts, np.broadcast_to(np.asarray(pool)[own, own][:, None], np.shape(pool)).copy()


def transfer_matrix(eps, n_st, n_ss, pool, metric_eps: float = 8 / 255, self_count: str = "pair"):
    """Fit every (s, t) count curve and return (metric matrix (S, T), fits_st, fits_ss) with the
    fits as nested lists of ``Fit``; ``fits_ss`` are the fits of the denominator that ``self_count``
    names (:func:`denominator_counts`). The diagonal is 1 wherever s can be fooled at all."""
    n_ss, den_pool = denominator_counts(n_st, n_ss, pool, self_count)
    s_count, t_count = n_st.shape[:2]
    metric = np.full((s_count, t_count), np.nan)
    fits_st = [[None] * t_count for _ in range(s_count)]
    fits_ss = [[None] * t_count for _ in range(s_count)]
    for s in range(s_count):
        for t in range(t_count):
            fits_st[s][t] = fit_saturating(eps, n_st[s, t], int(pool[s, t]))
            fits_ss[s][t] = fit_saturating(eps, n_ss[s, t], int(den_pool[s, t]))
            metric[s, t] = transfer_metric(fits_st[s][t], fits_ss[s][t], metric_eps)
    return metric, fits_st, fits_ss


def pair_groups(specs) -> dict[str, list[tuple[int, int]]]:
    """Ordered pairs (s, t), s != t, grouped by the single factor in which the two specs differ
    (``seed``, ``architecture``, ``input_quantisation`` ...); pairs differing in several factors go
    to ``several``."""
    groups: dict[str, list[tuple[int, int]]] = {}
    factors = [spec.factors() for spec in specs]
    for i, j in combinations(range(len(specs)), 2):
        differ = [k for k in factors[i] if factors[i][k] != factors[j][k]]
        key = differ[0] if len(differ) == 1 else "several"
        groups.setdefault(key, []).extend([(i, j), (j, i)])
    return groups
