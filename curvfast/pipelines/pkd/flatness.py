"""The flatness hierarchy behind PKD's teacher order, measured: tr(H) and the top eigenvalue of H, the Hessian of
each trained stream's training loss (segment-averaged cross-entropy) w.r.t. its weights, by
``curvfast.param_curvature`` (batched Hutchinson with standard errors; Lanczos).

The PKD paper motivates its order (MV head first, then the residual head, then the IC's own head) by the
I-frame network converging to a flatter minimum than the residual network, and that one to a flatter minimum
than the MV network; ``flatness_order`` derives the order from the measurement instead: the two sharpest streams
(largest mean trace over seeds), sharpest first."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from curvfast import param_curvature
from curvfast.pipelines.pkd.networks import STREAM_ORDER

__all__ = ["PUBLISHED_HIERARCHY", "stream_batches", "stream_flatness", "summarise_flatness", "flatness_order"]

PUBLISHED_HIERARCHY = ("iframe", "residual", "mv")  # flattest first, as the PKD paper states it


def stream_batches(loader, name: str, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(clips of stream name (B, S, C, H, W), labels)`` for every batch of an eval-mode clip loader, on device."""
    return [(batch[name].to(device), y.to(device)) for batch, y in loader]


def stream_flatness(stream: nn.Module, batches, probes: int, seed: int, steps: int = 20) -> dict:
    """tr(H) (Hutchinson, ``probes`` Rademacher probes, with its standard error) and the top eigenvalue (Lanczos,
    relative residual 1e-2 or ``steps`` steps) of one stream's mean cross-entropy over ``batches``."""
    trace = param_curvature(stream, batches, "trace", probes=probes, probe_batch=min(probes, 8), seed=seed)
    top = param_curvature(stream, batches, "top_eigenvalues", k=1, steps=steps, rtol=1e-2, seed=seed)
    return {"trace": trace.value, "trace_stderr": trace.stderr, "top_eigenvalue": top.value,
            "top_eigenvalue_residual": top.stderr, "lanczos_steps": top.probes, "probes": trace.probes,
            "num_params": trace.num_params, "num_samples": trace.num_samples}


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else None)


def summarise_flatness(per_seed: list[dict[str, dict]], seeds: list[int]) -> dict:
    """Per stream: the per-seed records, and the mean and standard error over seeds of the trace and top
    eigenvalue; whether the published hierarchy (trace and top eigenvalue: I-frame < residual < MV) holds for
    the means; the order it implies."""
    streams = {}
    for name in STREAM_ORDER:
        rows = [s[name] for s in per_seed]
        trace, trace_se = _mean_se([r["trace"] for r in rows])
        top, top_se = _mean_se([r["top_eigenvalue"] for r in rows])
        streams[name] = {"trace_mean": trace, "trace_se": trace_se, "top_eigenvalue_mean": top,
                         "top_eigenvalue_se": top_se, "per_seed": rows}
    flattest_first = {stat: sorted(STREAM_ORDER, key=lambda n: streams[n][f"{stat}_mean"])
                      for stat in ("trace", "top_eigenvalue")}
    return {"seeds": seeds, "streams": streams, "published_hierarchy": list(PUBLISHED_HIERARCHY),
            "flattest_first": flattest_first,
            "hierarchy_holds": {stat: order == list(PUBLISHED_HIERARCHY) for stat, order in flattest_first.items()},
            "order": list(flatness_order(streams))}


def flatness_order(streams: dict[str, dict]) -> tuple[str, str]:
    """The teacher order from the measurement: the two streams with the largest mean trace, sharpest first
    (the published order ("mv", "residual") when the published hierarchy holds)."""
    ranked = sorted(STREAM_ORDER, key=lambda n: -streams[n]["trace_mean"])
    return ranked[0], ranked[1]
