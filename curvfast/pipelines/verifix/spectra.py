"""Per-layer activation spectra on a dataset, streamed through forward hooks in bounded memory.

For every target layer, forward pre-hooks turn each batch's layer input into a row operator
(``patches.layer_operator``: a Conv2d's patches are never materialised, their products with the
sketch are convolutions), keep a fixed random subset of at most ``max_rows`` rows of the whole
dataset (the published cap is 50 000 per layer, not mean-centred) and feed it to a streaming
sketch (``curvfast.linalg``). The subset is drawn once from the global row ids
``sample_index · L + position``, so it does not depend on the batch size. Memory per layer is
the sketch (d² for the exact Gram route, d·l for the randomized one) plus an output-sized
tensor per batch; layers are processed a few at a time (``state_budget``) so that only their
sketches are alive. Randomized sketches with power iterations need more than one pass: the data
is streamed again.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from curvfast.curvature import unwrap_model
from curvfast.linalg import SpectrumResult, make_sketch
from curvfast.pipelines.verifix.patches import KERNELS, layer_dim, layer_groups, layer_operator, target_layers
from curvfast.errors import ConfigError, DataError, UnknownNameError, UnsupportedModelError

__all__ = ["LayerSpectrum", "RowSampler", "layer_spectra", "iter_layer_spectra", "PUBLISHED_MAX_ROWS", "DEFAULT_STATE_BUDGET"]

PUBLISHED_MAX_ROWS = 50_000
DEFAULT_STATE_BUDGET = 256 * 2**20  # bytes of sketch state alive at once (a ResNet-18's widest Gram is 170 MB)


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


def _loader(data, batch_size: int, workers: int) -> DataLoader:
    if isinstance(data, torch.Tensor):
        data = torch.utils.data.TensorDataset(data)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"data must be a tensor of inputs or a map-style Dataset (got {type(data).__name__})")
    if len(data) == 0:
        raise DataError("the dataset for the activation spectra is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=workers > 0)


def _inputs(item) -> torch.Tensor:
    return item[0] if isinstance(item, (list, tuple)) else item


def _state_bytes(module: nn.Module, rank: int | None, oversample: int, itemsize: int) -> int:
    """Upper bound on one layer's sketch state: g·d² (Gram) or g·d·2l (randomized Q and Z)."""
    d = layer_dim(module)
    width = d if rank is None else min(d, 2 * (rank + oversample))
    return layer_groups(module) * d * width * itemsize


def _layer_groups(targets: dict[str, nn.Module], budget: int | None, cost) -> list[list[str]]:
    """Consecutive target layers packed greedily so that each group's state fits ``budget`` bytes
    (a layer larger than the budget is a group of its own); None: one group of all layers."""
    if budget is None:
        return [list(targets)]
    groups, used = [[]], 0
    for name, module in targets.items():
        size = cost(module)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def layer_spectra(model: nn.Module, data, **kwargs) -> dict[str, LayerSpectrum]:
    """Every target layer's ``LayerSpectrum`` as a dict (``iter_layer_spectra`` collected); all
    layers' spectra are then alive at once."""
    return dict(iter_layer_spectra(model, data, **kwargs))


@torch.no_grad()
def iter_layer_spectra(
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
    state_budget: int | None = DEFAULT_STATE_BUDGET,
    kernel: str = "auto",
    workers: int = 0,
    progress: bool | None = None,
) -> Iterator[tuple[str, LayerSpectrum]]:
    """Stream ``data`` (a Dataset of (x, y) or a tensor of inputs) through ``model`` in eval mode and
    yield ``(name, spectrum)`` of every target layer's input rows (``route``: "auto", "gram" or
    "randomized"; ``rank`` caps the randomized route's rank, None asks for the exact spectrum).

    Layers are processed in groups whose sketch state fits ``state_budget`` bytes (None: all at
    once); each group streams the data (1 + ``power_iters`` passes for the randomized route), then
    its spectra are yielded and its sketches freed before the next group starts. Conv2d patches
    are never materialised (``ConvPatches``, products by ``kernel``: "auto", "conv" or "native").
    ``workers``: DataLoader processes reading ``data`` (kept across the passes). Argument errors are raised at the first ``next()``."""
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise ConfigError(f"max_rows must be a positive int or None for all rows (got {max_rows!r})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int (got {batch_size!r})")
    if kernel not in KERNELS:
        raise UnknownNameError(f"kernel must be one of {KERNELS} (got {kernel!r})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an int >= 0 (got {workers!r})")
    if state_budget is not None and (not isinstance(state_budget, int) or state_budget < 1):
        raise ConfigError(f"state_budget must be a positive number of bytes or None for all layers at once (got {state_budget!r})")
    model = unwrap_model(model)
    targets = target_layers(model, layers)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = _loader(data, batch_size, workers)
    samples = len(loader.dataset)
    order = {name: i for i, name in enumerate(targets)}
    itemsize = torch.empty((), dtype=dtype).element_size()
    groups = _layer_groups(targets, state_budget, lambda m: _state_bytes(m, rank, oversample, itemsize))
    was_training = model.training
    model.eval()
    try:
        for number, group in enumerate(groups):
            yield from _group_spectra(
                model, {n: targets[n] for n in group}, loader, samples, order, f"layers {number + 1}/{len(groups)}",
                progress, max_rows=max_rows, route=route, rank=rank, oversample=oversample, power_iters=power_iters,
                seed=seed, dtype=dtype, device=device, kernel=kernel,
            )
    finally:
        model.train(was_training)


def _group_spectra(model, group, loader, samples, order, label, progress, *, max_rows, seed, device, kernel, **sketch_args):
    """Stream the data through ``model`` until every sketch of ``group`` is done; yield its spectra."""
    state = {"offset": 0, "batch": 0, "seen": set()}
    samplers: dict[str, RowSampler] = {}
    sketches: dict = {}
    seconds = {name: 0.0 for name in group}

    def hook_for(name: str, module: nn.Module):
        def hook(_, args):
            if name in state["seen"]:
                raise UnsupportedModelError(f"layer {name!r} runs more than once per forward (shared weights); "
                                            "Verifix needs one input per layer")
            state["seen"].add(name)
            sketch = sketches.get(name)
            if sketch is None or not sketch.done:
                start = time.perf_counter()
                x = args[0]
                if name not in samplers:
                    positions = layer_operator(module, x[:1])[1]
                    samplers[name] = RowSampler(samples, positions, max_rows, seed + 7919 * order[name])  # layer i: seed + 7919 i
                    sketches[name] = make_sketch(
                        layer_dim(module), samplers[name].kept, groups=layer_groups(module), seed=seed, device=device,
                        **sketch_args,
                    )
                keep = samplers[name].local(state["offset"], state["batch"])
                sketches[name].update(layer_operator(module, x, keep, sketch_args["dtype"], kernel)[0])
                seconds[name] += time.perf_counter() - start

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in group.items()]
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    try:
        pass_index = 0
        while pass_index == 0 or not all(s.done for s in sketches.values()):
            state["offset"] = 0
            for item in tqdm(loader, desc=f"activations ({label}, pass {pass_index + 1})", unit="batch", disable=not show):
                x = _inputs(item).to(device)
                state["batch"], state["seen"] = x.shape[0], set()
                model(x)
                state["offset"] += x.shape[0]
            missing = [n for n in group if n not in sketches]
            if missing:
                raise ConfigError(f"layers {missing} never ran in the forward pass; pass layers= with the layers the model uses")
            for name, sketch in sketches.items():
                if not sketch.done:
                    start = time.perf_counter()
                    sketch.end_pass()
                    seconds[name] += time.perf_counter() - start
            pass_index += 1
    finally:
        for h in handles:
            h.remove()
    for name, module in group.items():
        start = time.perf_counter()
        layer = LayerSpectrum(  # pop: this frame keeps no reference once the caller drops the spectrum
            name, type(module).__name__, layer_dim(module), layer_groups(module), samplers[name].total,
            sketches.pop(name).result(), 0.0,
        )
        layer.seconds = seconds[name] + time.perf_counter() - start
        yield name, layer
        del layer
