"""The rows a Conv2d / Linear layer multiplies its weight with (its im2col patches).

For a Conv2d with weight W (C_out, C_in/g, kh, kw) and g groups, the output at one position is
W_j · p for the patch p of the (padded) input under the kernel window, with the layer's own
stride, padding (including ``padding="same"`` and non-zero padding modes) and dilation. The
patch of group j holds that group's C_in/g input channels, ordered like ``W.reshape(C_out, -1)``:
channel-major, then kernel row, then kernel column. So for every layer

    layer(x) - bias  ==  rows(x) @ W_flatᵀ   (per group),

which is what makes W ← W·P act on exactly the directions of those rows. A Linear layer's rows
are its input vectors (all leading dimensions flattened).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SUPPORTED_LAYERS", "layer_groups", "layer_dim", "layer_rows", "flat_weight", "set_flat_weight", "target_layers"]

SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear)


def layer_groups(module: nn.Module) -> int:
    return module.groups if isinstance(module, nn.Conv2d) else 1


def layer_dim(module: nn.Module) -> int:
    """d_in of one group: C_in/g · kh · kw for Conv2d, in_features for Linear."""
    if isinstance(module, nn.Conv2d):
        return module.weight[0].numel()
    return module.in_features


def _padded(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input as the convolution sees it: padded exactly like ``Conv2d._conv_forward`` pads."""
    pad = module._reversed_padding_repeated_twice  # (left, right, top, bottom); also set for padding="same"
    if not any(pad):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, pad, mode=mode)


def layer_rows(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows (g, B·L, d) of the layer's input ``x`` and L, the rows per sample (output positions)."""
    if isinstance(module, nn.Conv2d):
        if x.ndim == 3:
            x = x.unsqueeze(0)
        patches = F.unfold(_padded(module, x), module.kernel_size, dilation=module.dilation, padding=0, stride=module.stride)
        b, _, positions = patches.shape
        g = module.groups
        rows = patches.view(b, g, -1, positions).permute(1, 0, 3, 2).reshape(g, b * positions, -1)
        return rows, positions
    if isinstance(module, nn.Linear):
        positions = x[0].numel() // module.in_features if x.ndim > 1 else 1
        return x.reshape(1, -1, module.in_features), positions
    raise TypeError(f"layer_rows supports {[c.__name__ for c in SUPPORTED_LAYERS]} (got {type(module).__name__})")


def flat_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (g, C_out/g, d): the matrix that multiplies each row."""
    g = layer_groups(module)
    return module.weight.detach().reshape(g, module.weight.shape[0] // g, -1)


def set_flat_weight(module: nn.Module, w: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(w.reshape(module.weight.shape).to(module.weight.dtype))


def target_layers(model: nn.Module, names: list[str] | None = None) -> dict[str, nn.Module]:
    """Every Conv2d and Linear layer by qualified name (or only ``names``). Other conv types
    (Conv1d/3d, transposed) are not handled and are left out."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)}
    if names is None:
        if not layers:
            raise ValueError("the model has no Conv2d or Linear layer for Verifix to correct")
        return layers
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(f"layers {missing} are not Conv2d/Linear layers of the model; choose from {list(layers)}")
    return {n: layers[n] for n in names}
