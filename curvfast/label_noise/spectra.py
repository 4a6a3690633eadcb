"""Per-layer activation spectra on a dataset, streamed through forward hooks in bounded memory.

For every target layer, forward pre-hooks turn each batch's layer input into rows
(``patches.layer_rows``), keep a fixed random subset of at most ``max_rows`` rows of the whole
dataset (the published cap is 50 000 per layer, not mean-centred), and feed them to a streaming
sketch (``curvfast.linalg``). The subset is drawn once from the global row ids
``sample_index · L + position``, so it does not depend on the batch size. Memory per layer is
the sketch (d² for the exact Gram route, d·l for the randomized one) plus one batch of rows.
Randomized sketches with power iterations need more than one pass: the data is streamed again.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..curvature.model import unwrap_model
from ..linalg import SpectrumResult, make_sketch
from .patches import layer_dim, layer_groups, layer_rows, target_layers

__all__ = ["LayerSpectrum", "RowSampler", "layer_spectra", "PUBLISHED_MAX_ROWS"]

PUBLISHED_MAX_ROWS = 50_000


@dataclass
class LayerSpectrum:
    """One layer's spectrum of its input rows plus bookkeeping for the report."""

    name: str
    kind: str
    dim: int
    groups: int
    total_rows: int
    spectrum: SpectrumResult
    seconds: float


class RowSampler:
    """A uniform subset of ``max_rows`` of the ``samples · positions`` rows, fixed by ``seed``.

    ``local(offset, batch)`` returns the indices, within the rows of samples
    ``offset .. offset+batch-1``, that belong to the subset (None: keep all rows)."""

    def __init__(self, samples: int, positions: int, max_rows: int | None, seed: int):
        total = samples * positions
        self.total = total
        self.positions = positions
        self.ids = None
        if max_rows is not None and max_rows < total:
            gen = torch.Generator().manual_seed(int(seed))
            self.ids = torch.randperm(total, generator=gen)[:max_rows].sort().values

    @property
    def kept(self) -> int:
        return self.total if self.ids is None else len(self.ids)

    def local(self, offset: int, batch: int) -> torch.Tensor | None:
        if self.ids is None:
            return None
        lo, hi = offset * self.positions, (offset + batch) * self.positions
        a, b = torch.searchsorted(self.ids, torch.tensor([lo, hi])).tolist()
        return self.ids[a:b] - lo


def _loader(data, batch_size: int) -> DataLoader:
    if isinstance(data, torch.Tensor):
        data = torch.utils.data.TensorDataset(data)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"data must be a tensor of inputs or a map-style Dataset (got {type(data).__name__})")
    if len(data) == 0:
        raise ValueError("the dataset for the activation spectra is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _inputs(item) -> torch.Tensor:
    return item[0] if isinstance(item, (list, tuple)) else item


@torch.no_grad()
def layer_spectra(
    model: nn.Module,
    data,
    *,
    layers: list[str] | None = None,
    max_rows: int | None = PUBLISHED_MAX_ROWS,
    route: str = "auto",
    rank: int | None = None,
    oversample: int = 10,
    power_iters: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> dict[str, LayerSpectrum]:
    """Stream ``data`` (a Dataset of (x, y) or a tensor of inputs) through ``model`` in eval mode and
    return the spectrum of every target layer's input rows (``route``: "auto", "gram" or
    "randomized"; ``rank`` caps the randomized route's rank, None asks for the exact spectrum)."""
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be a positive int or None for all rows (got {max_rows!r})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    model = unwrap_model(model)
    targets = target_layers(model, layers)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = _loader(data, batch_size)
    samples = len(loader.dataset)
    state = {"offset": 0, "batch": 0, "seen": set()}
    order = {name: i for i, name in enumerate(targets)}
    samplers: dict[str, RowSampler] = {}
    sketches: dict = {}
    seconds = {name: 0.0 for name in targets}

    def hook_for(name: str, module: nn.Module):
        def hook(_, args):
            if name in state["seen"]:
                raise ValueError(f"layer {name!r} runs more than once per forward (shared weights); Verifix needs one input per layer")
            state["seen"].add(name)
            sketch = sketches.get(name)
            if sketch is not None and sketch.done:
                return
            start = time.perf_counter()
            rows, positions = layer_rows(module, args[0])
            if name not in samplers:
                samplers[name] = RowSampler(samples, positions, max_rows, seed + 7919 * order[name])  # layer i: seed + 7919 i
                sketches[name] = make_sketch(
                    layer_dim(module), samplers[name].kept, route=route, rank=rank, oversample=oversample,
                    power_iters=power_iters, groups=layer_groups(module), seed=seed, dtype=dtype, device=device,
                )
            keep = samplers[name].local(state["offset"], state["batch"])
            sketches[name].update(rows if keep is None else rows[:, keep.to(rows.device)])
            seconds[name] += time.perf_counter() - start

        return hook

    was_training = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in targets.items()]
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    try:
        pass_index = 0
        while pass_index == 0 or not all(s.done for s in sketches.values()):
            state["offset"] = 0
            for item in tqdm(loader, desc=f"activations (pass {pass_index + 1})", unit="batch", disable=not show):
                x = _inputs(item).to(device)
                state["batch"], state["seen"] = x.shape[0], set()
                model(x)
                state["offset"] += x.shape[0]
            missing = [n for n in targets if n not in sketches]
            if missing:
                raise ValueError(f"layers {missing} never ran in the forward pass; pass layers= with the layers the model uses")
            for name, sketch in sketches.items():
                if not sketch.done:
                    start = time.perf_counter()
                    sketch.end_pass()
                    seconds[name] += time.perf_counter() - start
            pass_index += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, module in targets.items():
        start = time.perf_counter()
        spectrum = sketches.pop(name).result()  # free each sketch as soon as its spectrum exists
        seconds[name] += time.perf_counter() - start
        out[name] = LayerSpectrum(
            name, type(module).__name__, layer_dim(module), layer_groups(module), samplers[name].total, spectrum, seconds[name]
        )
    return out
