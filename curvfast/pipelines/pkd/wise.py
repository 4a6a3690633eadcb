"""WISE: weighted ensembles of exit prefixes with a confidence-thresholded early exit.

Exits are ordered residual -> MV -> I-frame (12 in all). For each prefix length k = 1 .. K, one
scalar weight per exit in the prefix is learned on training logits z_{n,j} (clip n, exit j):

    w^(k) = argmin_w  (1/N) sum_n CE( sum_{j<=k} w_j z_{n,j}, y_n ) + alpha_k ||w||_1 ,

with the published schedule alpha_k = 0 for the prefixes of the first ``free_exits`` = 5 exits and
alpha_k = alpha = 0.1 for longer ones (``fit_wise(..., alpha, free_exits)``).

The objective is convex in w (a linear model in the weights, cross-entropy, L1), and is solved
by FISTA with soft-thresholding, so weights the data do not support are exactly zero. The
smooth part has Hessian (1/N) sum_n Z_n A_n Z_n^T with A_n = diag(p_n) - p_n p_n^T, whose top
eigenvalue is at most 1/2; FISTA's step 1/L uses L = 0.5 lambda_max((1/N) sum_n Z_n Z_n^T), with
logits centred over classes first (CE is blind to a per-exit constant shift).

At inference a clip walks the prefixes k = 1, 2, ... and stops at the first whose combined
softmax has max probability >= tau (published tau ~ 0.999999); the last prefix always answers.
Its compute is the cumulative MACs of the exits it ran.
"""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError, DataError

__all__ = ["wise_objective", "fit_prefix_weights", "fit_wise", "wise_early_exit", "wise_sweep"]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _centre(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    return logits - logits.mean(axis=-1, keepdims=True)


def wise_objective(w: np.ndarray, logits: np.ndarray, labels: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """Value of the WISE objective at ``w`` (K,) for logits (N, K, C), and the gradient of its smooth
    (cross-entropy) part."""
    logp = _log_softmax(np.einsum("nkc,k->nc", logits, w))
    n = len(labels)
    value = -logp[np.arange(n), labels].mean() + alpha * np.abs(w).sum()
    residual = np.exp(logp)
    residual[np.arange(n), labels] -= 1.0
    grad = np.einsum("nc,nkc->k", residual, logits) / n
    return float(value), grad


def fit_prefix_weights(logits: np.ndarray, labels: np.ndarray, alpha: float = 1e-3, max_iter: int = 5000,
                       tol: float = 1e-9) -> np.ndarray:
    """FISTA (with adaptive restart) for the weights of one prefix; logits (N, K, C) -> w (K,)."""
    if alpha < 0:
        raise ConfigError(f"alpha must be >= 0 (got {alpha})")
    logits, labels = _centre(logits), np.asarray(labels, np.int64)
    if logits.ndim != 3 or len(labels) != len(logits):
        raise DataError(f"logits must be (N, K, C) with N = len(labels) (got {logits.shape}, {labels.shape})")
    gram = np.einsum("nkc,njc->kj", logits, logits) / len(labels)
    step = 1.0 / max(0.5 * np.linalg.eigvalsh(gram)[-1], 1e-12)
    w = np.zeros(logits.shape[1])
    v, t = w.copy(), 1.0
    for _ in range(max_iter):
        _, grad = wise_objective(v, logits, labels, alpha)
        u = v - step * grad
        w_next = np.sign(u) * np.maximum(np.abs(u) - step * alpha, 0.0)  # prox of step * alpha ||.||_1
        if np.dot(v - w_next, w_next - w) > 0:  # momentum points uphill: restart
            t = 1.0
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        v = w_next + (t - 1) / t_next * (w_next - w)
        if np.linalg.norm(w_next - w) <= tol * max(1.0, np.linalg.norm(w)):
            return w_next
        w, t = w_next, t_next
    return w


def fit_wise(logits: np.ndarray, labels: np.ndarray, alpha: float = 0.1, free_exits: int = 5) -> list[np.ndarray]:
    """Weights of every prefix: ``[w^(1) (1,), w^(2) (2,), ..., w^(K) (K,)]``; the prefixes of at most
    ``free_exits`` exits are fitted without the L1 term (the published schedule: 5 and 0.1)."""
    if free_exits < 0:
        raise ConfigError(f"free_exits must be >= 0 (got {free_exits})")
    return [fit_prefix_weights(logits[:, : k + 1], labels, 0.0 if k < free_exits else alpha) for k in range(logits.shape[1])]


def wise_early_exit(logits: np.ndarray, weights: list[np.ndarray], tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (N,) and the prefix index (N,, 0-based) at which each clip stopped."""
    logits = _centre(logits)
    n = len(logits)
    pred, stop = np.zeros(n, np.int64), np.full(n, len(weights) - 1)
    done = np.zeros(n, bool)
    for k, w in enumerate(weights):
        logp = _log_softmax(np.einsum("nkc,k->nc", logits[:, : k + 1], w))
        now = ~done & ((np.exp(logp.max(1)) >= tau) | (k == len(weights) - 1))
        pred[now], stop[now] = logp[now].argmax(1), k
        done |= now
    return pred, stop


def wise_sweep(logits: np.ndarray, labels: np.ndarray, weights: list[np.ndarray], cumulative_macs: np.ndarray,
               taus) -> list[dict]:
    """Accuracy and mean MACs per clip of the early exit at each threshold in ``taus``."""
    rows = []
    for tau in taus:
        pred, stop = wise_early_exit(logits, weights, float(tau))
        rows.append({"tau": float(tau), "accuracy": float((pred == labels).mean()),
                     "macs": float(np.asarray(cumulative_macs)[stop].mean()),
                     "mean_exits": float(stop.mean() + 1)})
    return rows
