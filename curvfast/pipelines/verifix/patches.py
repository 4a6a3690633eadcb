"""The rows a Conv2d / Linear layer multiplies its weight with (its im2col patches).

For a Conv2d with weight W (C_out, C_in/g, kh, kw) and g groups, the output at one position is
W_j · p for the patch p of the (padded) input under the kernel window, with the layer's own
stride, padding (including ``padding="same"`` and non-zero padding modes) and dilation. The
patch of group j holds that group's C_in/g input channels, ordered like ``W.reshape(C_out, -1)``:
channel-major, then kernel row, then kernel column. So for every layer

    layer(x) - bias  ==  rows(x) @ W_flatᵀ   (per group),

which is what makes W ← W·P act on exactly the directions of those rows. A Linear layer's rows
are its input vectors (all leading dimensions flattened).

``layer_rows`` materialises the patches with ``F.unfold`` (the reference). ``ConvPatches`` never
does: with x the padded input and Ω a (d x l) matrix per group reshaped as l filters of the layer's
geometry, the products the spectra need are convolutions (Tropp, Yurtsever, Udell & Cevher 2017
stream exactly these sketches):

    X Ω        = conv2d(x, Ω)                                  (l output channels per group)
    Xᵀ Y       = conv2d_weight(x, grad_output=Y)               (the weight gradient)
    Xᵀ X Ω     = conv2d_weight(x, conv2d(x, Ω))
    Xᵀ X       = [conv2d_weight(x, grad_output=V_ab)]_ab       (V_ab: x shifted by kernel offset (a, b))

where V_ab = x[:, :, a·δ_h :: s_h, b·δ_w :: s_w] (cropped to the output size) is the column block
of X at kernel offset (a, b), a strided view of the input. A row subset is a 0/1 mask on the output
positions (Xᵀ diag(m) X). Extra memory is one output-sized tensor per call, never B·L·d.

``kernel="native"`` computes the same two products with the fused native op
(``curvfast.ops.patch_gram_add_``: im2col of 256/512-row tiles into a small buffer, then BLAS GEMMs
on the tile, only the Gram's blocks on and above the diagonal), in memory O(tile·d). Which is
faster depends on the layer (docs/verifix.md, "Native fused op"): the framework's convolutions
for the float32 layers, the native op for the float64 ones on a CPU core, which ``kernel="auto"`` picks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from curvfast import ops
from curvfast.linalg import DenseRows
from curvfast.errors import UnknownNameError, UnsupportedModelError

__all__ = ["SUPPORTED_LAYERS", "KERNELS", "ConvPatches", "layer_operator", "layer_groups", "layer_dim", "layer_rows", "flat_weight",
           "set_flat_weight", "target_layers"]

SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear)


def layer_groups(module: nn.Module) -> int:
    """The layer's weight groups: a Conv2d's ``groups`` (each group has its own patch matrix), 1 for Linear."""
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


# A float32 weight gradient accumulates its sum over positions in float32, with an error that grows
# with the number of positions summed; partial sums over at most this many positions are added in
# float64 (docs/verifix.md, "Precision": 51 200 positions per sum put projectors 3.6e-3 off, 1 024 ~1e-4).
FLOAT32_POSITIONS_PER_SUM = 256
# Layers whose products are computed in float64 whatever the input's dtype: narrow ones (d <= 256:
# a ResNet's stem and 1x1 shortcuts, where float64 costs < 0.01 s per 50 images and raw pixels'
# large common mean cost float32 5e-5 of projector accuracy) and those with <= 64 output positions
# per sample (a CIFAR ResNet's last two stages, where float64 measured within 1.25x of float32 in
# 256-position chunks: oneDNN's float32 weight gradient gains little on an 8x8 or 4x4 output).
FLOAT64_MAX_DIM = 256
FLOAT64_MAX_POSITIONS = 64
# How ConvPatches computes its products: per layer the one measured faster on a CPU core (native
# for the float64 layers, conv for float32), the framework's convolutions, or the fused native op.
KERNELS = ("auto", "conv", "native")


class ConvPatches:
    """Row operator (``curvfast.linalg`` protocol) of a Conv2d's patch matrix X (g, B·L, d) on the
    input ``x``, computed with convolutions and never materialised. ``keep``: the indices of the rows
    (sample-major, then output position) to use; None for all. Products are added into the caller's
    (float64) accumulator. The convolutions run in ``x``'s dtype, or in float64 for the layers of
    ``FLOAT64_MAX_DIM`` / ``FLOAT64_MAX_POSITIONS``; below float64 they are computed in chunks of
    at most ``FLOAT32_POSITIONS_PER_SUM`` output positions (whole samples). ``kernel``: "conv"
    (the framework's convolutions), "native" (the fused ``curvfast.ops.patch_gram_add_``, which
    tiles float32 rows by 256 itself) or "auto" (native when the products run in float64 on the CPU
    and the extension is loaded, else conv)."""

    def __init__(self, module: nn.Conv2d, x: torch.Tensor, keep: torch.Tensor | None = None, kernel: str = "auto"):
        if kernel not in KERNELS:
            raise UnknownNameError(f"kernel must be one of {KERNELS} (got {kernel!r})")
        self.x = _padded(module, x.unsqueeze(0) if x.ndim == 3 else x)
        batch, _, height, width = self.x.shape
        self.kernel, self.stride, self.dilation = module.kernel_size, module.stride, module.dilation
        self.groups, self.dim = module.groups, module.weight[0].numel()
        self.out_size = tuple(
            (n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip((height, width), self.kernel, self.stride, self.dilation)
        )
        positions = self.out_size[0] * self.out_size[1]
        if self.dim <= FLOAT64_MAX_DIM or positions <= FLOAT64_MAX_POSITIONS:
            self.x = self.x.double()
        if keep is None:
            mask = torch.ones(batch * positions, dtype=self.x.dtype, device=self.x.device)
        else:
            mask = torch.zeros(batch * positions, dtype=self.x.dtype, device=self.x.device)
            mask[keep.to(self.x.device)] = 1
        self.mask = mask.view(batch, 1, *self.out_size)
        self.rows = batch * positions if keep is None else len(keep)
        exact = self.x.dtype == torch.float64
        self.chunk = batch if exact else max(1, FLOAT32_POSITIONS_PER_SUM // positions)
        # auto: native where it measured faster (float64 products on a CPU core); the conv route elsewhere
        # (float32, CUDA: not measured) and when the extension is not loaded (the op's fallback unfolds)
        cpu_native = exact and self.x.device.type == "cpu" and ops.native_available()
        self.native = kernel == "native" or (kernel == "auto" and cpu_native)

    def _native_add(self, acc: torch.Tensor, omega: torch.Tensor | None = None) -> None:
        """acc += Xᵀ diag(m) X (Ω) by the fused native op (into acc itself when it is float64 and contiguous)."""
        args = (self.x.detach(), self.mask[:, 0], self.kernel, self.stride, self.dilation, self.groups, omega)
        if acc.dtype == torch.float64 and acc.is_contiguous():
            ops.patch_gram_add_(acc, *args)
        else:
            acc.add_(ops.patch_gram(*args).to(acc.dtype))

    def _chunks(self):
        """(input, mask) of consecutive sample chunks."""
        for i in range(0, self.x.shape[0], self.chunk):
            yield self.x[i : i + self.chunk], self.mask[i : i + self.chunk]

    def _conv(self, x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, filters, stride=self.stride, dilation=self.dilation, groups=self.groups)

    def _weight_grad(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """Xᵀ Y per group as (g, d, l) for Y = ``grad_output`` (B, g·l, H_out, W_out)."""
        shape = (grad_output.shape[1], x.shape[1] // self.groups, *self.kernel)
        w = conv2d_weight(x, shape, grad_output, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return w.reshape(self.groups, -1, self.dim).mT

    def energy(self) -> torch.Tensor:
        """‖X‖_F² per group: the squared input summed over each window (a conv with all-one filters)."""
        ones = self.x.new_ones(self.groups, self.x.shape[1] // self.groups, *self.kernel)
        return sum((self._conv(x.square(), ones) * m).sum(dim=(0, 2, 3)).double() for x, m in self._chunks())

    def add_gram_to(self, gram: torch.Tensor) -> None:
        """G += Xᵀ diag(m) X, one kernel offset (a, b) at a time: the rows of G at that offset are the
        weight gradient for the grad-output V_ab, the input's strided view under that offset. G is
        symmetric, so only the columns at kernel rows a' >= a are computed (a weight gradient of the
        input cropped by a rows, for the kernel's last kh - a rows: (kh+1)/(2kh) of the products) and
        the blocks at a' > a are also added transposed. With the native kernel: ``_native_add``."""
        if self.native:
            self._native_add(gram)
            return
        kh, kw = self.kernel
        (sh, sw), (dh, dw), (oh, ow) = self.stride, self.dilation, self.out_size
        cg = self.x.shape[1] // self.groups
        blocks = gram.view(self.groups, cg, kh, kw, cg, kh, kw)  # G[(c, a, b), (c', a', b')] per group
        for x, m in self._chunks():
            for a in range(kh):
                for b in range(kw):
                    view = x[:, :, a * dh : a * dh + sh * (oh - 1) + 1 : sh, b * dw : b * dw + sw * (ow - 1) + 1 : sw]
                    shape = (self.groups * cg, cg, kh - a, kw)
                    w = conv2d_weight(x[:, :, a * dh :], shape, view * m, stride=self.stride, dilation=self.dilation, groups=self.groups)
                    w = w.view(self.groups, cg, cg, kh - a, kw).to(gram.dtype)  # G[(c, a, b), (c', a' >= a, b')]
                    blocks[:, :, a, b, :, a:].add_(w)
                    blocks[:, :, a + 1 :, :, :, a, b].add_(w[:, :, :, 1:].permute(0, 2, 3, 4, 1))

    def add_gram_times_to(self, z: torch.Tensor, q: torch.Tensor) -> None:
        """Z += Xᵀ diag(m) (X Q): Q (g, d, l) as g·l filters, one conv forward and one weight gradient
        (with the native kernel: ``_native_add`` with Ω = Q)."""
        if self.native:
            self._native_add(z, q)
            return
        filters = q.mT.reshape(-1, self.x.shape[1] // self.groups, *self.kernel).to(self.x.dtype)
        for x, m in self._chunks():
            z.add_(self._weight_grad(x, self._conv(x, filters) * m).to(z.dtype))


def layer_operator(module: nn.Module, x: torch.Tensor, keep: torch.Tensor | None = None, dtype: torch.dtype = torch.float64,
                   kernel: str = "auto"):
    """The row operator of the layer's input ``x`` without unfold, restricted to the rows ``keep``
    (None: all) and the rows per sample L: ``ConvPatches`` (products in ``x``'s dtype by ``kernel``)
    for a Conv2d, ``DenseRows`` of the input vectors in ``dtype`` for a Linear layer."""
    if isinstance(module, nn.Conv2d):
        op = ConvPatches(module, x, keep, kernel)
        return op, op.out_size[0] * op.out_size[1]
    rows, positions = layer_rows(module, x)
    rows = rows if keep is None else rows[:, keep.to(rows.device)]
    return DenseRows(rows.to(dtype)), positions


def flat_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (g, C_out/g, d): the matrix that multiplies each row."""
    g = layer_groups(module)
    return module.weight.detach().reshape(g, module.weight.shape[0] // g, -1)


def set_flat_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Write ``w`` (groups, out/groups, d), the layout of :func:`flat_weight`, back into the layer's weight."""
    with torch.no_grad():
        module.weight.copy_(w.reshape(module.weight.shape).to(module.weight.dtype))


def target_layers(model: nn.Module, names: list[str] | None = None) -> dict[str, nn.Module]:
    """Every Conv2d and Linear layer by qualified name (or only ``names``). Other conv types
    (Conv1d/3d, transposed) are not handled and are left out."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)}
    if names is None:
        if not layers:
            raise UnsupportedModelError("the model has no Conv2d or Linear layer for Verifix to correct")
        return layers
    missing = [n for n in names if n not in layers]
    if missing:
        raise UnknownNameError(f"layers {missing} are not Conv2d/Linear layers of the model; choose from {list(layers)}")
    return {n: layers[n] for n in names}
