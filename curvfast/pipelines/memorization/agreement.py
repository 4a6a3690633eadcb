"""Agreement between two per-sample scores a and b (e.g. curvature and memorization).

- Pearson r: linear correlation of the raw values.
- Spearman ρ: Pearson r of the ranks (ties get their average rank): any monotone relation.
- Cosine similarity: aᵀb / (‖a‖‖b‖) of the raw (uncentred) vectors, the measure Garg et al.
  report against Feldman-Zhang scores; for non-negative scores it is high even for unrelated
  vectors (two independent uniform vectors give about 0.75), so read it next to Pearson.
- Top-k overlap: |top_k(a) ∩ top_k(b)| / k; unrelated scores give k/N in expectation.
- Top-k cosine: the cosine restricted to the k samples with the highest b (Garg et al.'s "top-5k"
  numbers use the top samples by memorization).

Trivial baselines (``agreement(...)["baselines"]``) put every figure in scale: the same measures
for a **constant** a (every sample the same curvature: cosine = Σb/(√N‖b‖), which is high when b
is non-negative and concentrated; correlations undefined) and for a **shuffled** a (a random
permutation of a: same values, no relation to b; mean over ``permutations`` seeded draws).
A similarity means something only by its distance from these.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from curvfast.errors import ConfigError, DataError

__all__ = ["cosine_similarity", "top_k_overlap", "agreement"]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"scores must have the same length (got {a.size} and {b.size})")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        raise DataError(f"need at least 3 samples where both scores are finite (got {int(ok.sum())})")
    return a[ok], b[ok]


def cosine_similarity(a, b) -> float | None:
    """aᵀb / (‖a‖ ‖b‖) of two score vectors; None (undefined) when either is the zero vector."""
    a, b = _pair(a, b)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else None


def top_k_overlap(a, b, k: int) -> float:
    """Fraction of the k highest-scoring samples of ``a`` that are among the k highest of ``b``."""
    a, b = _pair(a, b)
    if not 1 <= k <= a.size:
        raise ConfigError(f"k must be in [1, {a.size}] (got {k})")
    top_a = np.argsort(-a, kind="stable")[:k]
    top_b = np.argsort(-b, kind="stable")[:k]
    return float(np.intersect1d(top_a, top_b).size / k)


def _measures(a, b, top_fractions) -> dict:
    constant = bool(np.all(a == a[0]))  # correlations are undefined for a constant vector
    out = {
        "pearson": None if constant else float(pearsonr(a, b).statistic),
        "spearman": None if constant else float(spearmanr(a, b).statistic),
        "cosine": cosine_similarity(a, b),
        "samples": int(a.size),
        "top_k": [],
    }
    for f in top_fractions:
        k = max(1, int(round(f * a.size)))
        top = np.argsort(-b, kind="stable")[:k]
        out["top_k"].append({
            "fraction": f, "k": k, "overlap": None if constant else top_k_overlap(a, b, k), "chance_overlap": k / a.size,
            "cosine": cosine_similarity(a[top], b[top]) if k >= 3 else None,
        })
    return out


def _mean_of(dicts: list[dict]):
    """Element-wise mean of equally shaped measure dicts: a float measure is averaged over the dicts where it is
    defined (None where it is defined in none); other values are the first dict's."""
    first = dicts[0]
    if isinstance(first, dict):
        return {k: _mean_of([d[k] for d in dicts]) for k in first}
    if isinstance(first, list):
        return [_mean_of([d[i] for d in dicts]) for i in range(len(first))]
    defined = [v for v in dicts if isinstance(v, float)]
    if defined:
        return float(np.mean(defined))
    return None if first is None else first


def agreement(a, b, top_fractions=(0.01, 0.05, 0.1), permutations: int = 20, seed: int = 0) -> dict:
    """Pearson, Spearman, cosine, and top-k overlap / top-k cosine (k = fraction·N, top by ``b``),
    with the same measures for a constant and a shuffled ``a`` under ``"baselines"``."""
    a, b = _pair(a, b)
    out = _measures(a, b, top_fractions)
    rng = np.random.default_rng(seed)
    shuffled = _mean_of([_measures(rng.permutation(a), b, top_fractions) for _ in range(permutations)])
    out["baselines"] = {"constant": _measures(np.ones_like(a), b, top_fractions),
                        "shuffled": {**shuffled, "permutations": permutations}}
    return out
