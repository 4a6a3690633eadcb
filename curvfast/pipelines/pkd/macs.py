"""Multiply-accumulate counts of every exit, from torch's own FLOP counter (MACs = FLOPs / 2 of the
convolutions and matrix products; normalisation, activations and pooling are not counted).

For stream s, exit k (k = 1, 2, 3: the IC after layer k; k = 4: the head) costs

    standalone(s, k)  = backbone(stem .. layer k) + IC_k              (that exit on its own)
    increment(s, k)   = backbone(layer k only, + stem for k = 1) + IC_k
                        (running exits in order, each reusing the previous exit's features)

per segment; a clip costs ``segments`` times that. WISE evaluates exits in ``STREAM_ORDER``, stream
by stream and layer by layer, so the compute spent up to exit j is the cumulative sum of increments.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from curvfast.pipelines.pkd.networks import STREAM_CHANNELS, STREAM_ORDER

__all__ = ["count_macs", "exit_macs"]


def count_macs(fn, *inputs) -> int:
    """MACs of ``fn(*inputs)`` (one call), as counted by ``torch.utils.flop_counter``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() // 2


def exit_macs(streams: nn.ModuleDict, exits: nn.ModuleDict, frame_size: int, segments: int) -> dict[str, np.ndarray]:
    """Per-clip MACs of the 12 exits in ``STREAM_ORDER`` (residual 1-4, mv 1-4, iframe 1-4):
    ``{"standalone": (12,), "increment": (12,), "cumulative": (12,)}`` as int64."""
    standalone, increment = [], []
    for name in STREAM_ORDER:
        net, ics = streams[name], exits[name]
        modes = [(m, m.training) for m in (net, ics)]
        net.eval(), ics.eval()
        h = torch.zeros(1, STREAM_CHANNELS[name], frame_size, frame_size, device=next(net.parameters()).device)
        backbone = 0
        with torch.no_grad():
            for k, layer in enumerate(net.layers):
                block = nn.Sequential(net.stem, layer) if k == 0 else layer
                step = count_macs(block, h)
                h = block(h)
                backbone += step
                exit_cost = count_macs(ics[k], h) if k < 3 else count_macs(net.head, h)
                standalone.append(backbone + exit_cost)
                increment.append(step + exit_cost)
        for module, mode in modes:
            module.train(mode)
    standalone = np.asarray(standalone, np.int64) * segments
    increment = np.asarray(increment, np.int64) * segments
    return {"standalone": standalone, "increment": increment, "cumulative": np.cumsum(increment)}
