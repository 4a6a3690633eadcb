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

The published code (Efstathia-Soufleri/PKD, ``COVIAR_backbone/wise_ucf101_kinetics_pretrained.py``) differs in
four ways, each available here: it fits each prefix by 500 full-batch SGD steps at learning rate 0.1 from
w = 1 (``solver="sgd"``: the subgradient sign(w) for the L1 term, as autograd gives for ``torch.norm(w, p=1)``);
its first exit is the raw logits of the first IC (``first_exit="raw"``); it tests the confidence of the
prefix *mean* ``softmax(sum_j w_j z_j / k)`` with a strict ``> tau`` (``published_test=True``); and a clip no
prefix of 1 .. K-1 exits is decided by a weighted sum of the three stream heads instead of the K-th
prefix (``fallback``; the published weights are constants written into the script for UCF-101, so
curvfast fits them on the same logits).
"""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["WISE_SOLVERS", "FIRST_EXITS", "PUBLISHED_SGD", "wise_objective", "fit_prefix_weights", "sgd_prefix_weights",
           "fit_wise", "wise_early_exit", "wise_sweep"]

WISE_SOLVERS = ("fista", "sgd")
FIRST_EXITS = ("fitted", "raw")
PUBLISHED_SGD = {"steps": 500, "lr": 0.1, "start": 1.0}  # wise_ucf101_kinetics_pretrained.py: iterations, SGD lr, w init


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


def sgd_prefix_weights(logits: np.ndarray, labels: np.ndarray, alpha: float = 0.0, steps: int = 500, lr: float = 0.1,
                       start: float = 1.0) -> np.ndarray:
    """The published solver for one prefix: ``steps`` full-batch (sub)gradient steps
    ``w <- w - lr * (grad CE(w) + alpha * sign(w))`` from ``w = start`` (all ones); logits (N, K, C) -> w (K,).

    Raises:
        ConfigError: ``alpha`` < 0, ``steps`` < 1 or ``lr`` <= 0.
        DataError: ``logits`` is not (N, K, C) with N = len(labels).
    """
    if alpha < 0 or steps < 1 or not lr > 0:
        raise ConfigError(f"need alpha >= 0, steps >= 1 and lr > 0 (got {alpha}, {steps}, {lr})")
    logits, labels = _centre(logits), np.asarray(labels, np.int64)
    if logits.ndim != 3 or len(labels) != len(logits):
        raise DataError(f"logits must be (N, K, C) with N = len(labels) (got {logits.shape}, {labels.shape})")
    w = np.full(logits.shape[1], float(start))
    for _ in range(steps):
        _, grad = wise_objective(w, logits, labels, alpha)
        w = w - lr * (grad + alpha * np.sign(w))
    return w


def fit_wise(logits: np.ndarray, labels: np.ndarray, alpha: float = 0.1, free_exits: int = 5, solver: str = "fista",
             first_exit: str = "fitted") -> list[np.ndarray]:
    """Weights of every prefix: ``[w^(1) (1,), w^(2) (2,), ..., w^(K) (K,)]``; the prefixes of at most
    ``free_exits`` exits are fitted without the L1 term (the published schedule: 5 and 0.1).

    Args:
        logits: (N, K, C) exit logits of the fitting clips, in WISE's exit order.
        labels: (N,) their labels.
        alpha: the L1 weight of the longer prefixes.
        free_exits: prefixes of at most this many exits get no L1 term.
        solver: ``"fista"`` (:func:`fit_prefix_weights`, the exact minimiser) or ``"sgd"`` (the published
            :func:`sgd_prefix_weights` with ``PUBLISHED_SGD``).
        first_exit: ``"fitted"`` (w^(1) fitted like every prefix) or ``"raw"`` (w^(1) = 1: the first exit's raw
            logits, as published).

    Raises:
        ConfigError: ``free_exits`` < 0.
        UnknownNameError: ``solver`` or ``first_exit`` is not a known name.
    """
    if free_exits < 0:
        raise ConfigError(f"free_exits must be >= 0 (got {free_exits})")
    if solver not in WISE_SOLVERS or first_exit not in FIRST_EXITS:
        raise UnknownNameError(f"solver must be one of {WISE_SOLVERS} and first_exit one of {FIRST_EXITS} "
                               f"(got {solver!r}, {first_exit!r})")

    def one(k: int) -> np.ndarray:
        if k == 0 and first_exit == "raw":
            return np.ones(1)
        a = 0.0 if k < free_exits else alpha
        sub = logits[:, : k + 1]
        return fit_prefix_weights(sub, labels, a) if solver == "fista" else sgd_prefix_weights(sub, labels, a, **PUBLISHED_SGD)

    return [one(k) for k in range(logits.shape[1])]


def wise_early_exit(logits: np.ndarray, weights: list[np.ndarray], tau: float, published_test: bool = False,
                    fallback: tuple[list[int], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (N,) and the prefix index (N,, 0-based) at which each clip stopped.

    Args:
        logits: (N, K, C) exit logits in WISE's order.
        weights: the K prefixes' weights (:func:`fit_wise`).
        tau: the confidence threshold.
        published_test: False: prefix k answers when ``max softmax(sum_j w_j z_j) >= tau``; True: the published
            test ``max softmax(sum_j w_j z_j / k) > tau``.
        fallback: None: the last prefix answers every clip no earlier prefix did; ``(exits, w)``: the published
            rule, prefixes 1 .. K-1 are tested and the rest take ``argmax sum_i w_i z_{exits_i}`` (the stream
            heads), at the cost of all K exits.
    """
    logits = _centre(logits)
    n, last = len(logits), len(weights) - 1
    pred, stop = np.zeros(n, np.int64), np.full(n, last)
    done = np.zeros(n, bool)
    for k, w in enumerate(weights):
        combined = np.einsum("nkc,k->nc", logits[:, : k + 1], w)
        if k == last and fallback is not None:
            exits, w_heads = fallback
            pred[~done] = np.einsum("nkc,k->nc", logits[~done][:, exits], np.asarray(w_heads)).argmax(1)
            break
        confidence = np.exp(_log_softmax(combined / (k + 1) if published_test else combined).max(1))
        passed = confidence > tau if published_test else confidence >= tau
        now = ~done & (passed | (k == last))
        pred[now], stop[now] = combined[now].argmax(1), k
        done |= now
    return pred, stop


def wise_sweep(logits: np.ndarray, labels: np.ndarray, weights: list[np.ndarray], cumulative_macs: np.ndarray,
               taus, published_test: bool = False, fallback: tuple[list[int], np.ndarray] | None = None) -> list[dict]:
    """Accuracy and mean MACs per clip of the early exit (:func:`wise_early_exit`) at each threshold in ``taus``."""
    rows = []
    for tau in taus:
        pred, stop = wise_early_exit(logits, weights, float(tau), published_test, fallback)
        rows.append({"tau": float(tau), "accuracy": float((pred == labels).mean()),
                     "macs": float(np.asarray(cumulative_macs)[stop].mean()),
                     "mean_exits": float(stop.mean() + 1)})
    return rows
