"""Input, weight and activation quantisers with straight-through (BPDA) gradients.

Every quantiser q is piecewise constant, so its true derivative is zero almost everywhere and
gradient attacks on a quantised model would stall. All of them are therefore written as

    straight_through(x, q(x)) = x + (q(x) - x).detach(),

whose forward value is q(x) and whose backward is the identity: BPDA (Athalye et al., 2018)
with the identity as the differentiable approximation, a.k.a. the straight-through estimator.

Input quantisers use **per-sample** statistics: each image's own min and max, never the batch's,
so a prediction does not depend on which other images share its batch (the published code uses
batch-wide min/max for its k-bit quantiser).

Two halftone binarisers:

- ``sharpen_halftone`` (TREND's published ``Halftone2d``, the default): standardise each image,
  u = (x − mean_b)/(max_b − min_b); filter every channel with the 3x3 sharpening kernel
  K = [[−1, −2, −1], [−2, 16, −2], [−1, −2, −1]] (zero padding) and add a bias 1e-3; output
  (sign(K∗u + 1e-3) + 1)/2 ∈ {0, ½, 1} (½ only on an exact zero). Its gradient is not the identity
  but the published surrogate: the derivative of ½σ(K∗u + 1e-3) (BPDA with a sigmoid), with the
  per-sample range max_b − min_b held constant (the published code also differentiates it).
- ``halftone`` (Floyd-Steinberg error diffusion), kept as an option (``+halftonefs`` models).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from curvfast.errors import ConfigError, DataError, UnknownNameError, UnsupportedModelError

__all__ = [
    "straight_through", "quantize_uniform", "halftone", "sharpen_halftone", "HALFTONES", "InputQuantizer", "Halftone",
    "InputQuantized",
    "DoReFaWeight", "DoReFaActivation", "dorefa",
]


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value ``q``, gradient of the identity with respect to ``x`` (BPDA / STE)."""
    return x + (q - x).detach()


def _check_bits(bits, low: int, high: int, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ConfigError(f"{name} must be an int in [{low}, {high}] (got {bits!r})")
    return bits


def _sample_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample min and max over all non-batch dimensions, shaped to broadcast against ``x``."""
    if x.dim() < 2:
        raise DataError(f"input must be batched, shape (B, ...) (got shape {tuple(x.shape)})")
    flat = x.detach().flatten(1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return flat.amin(1).view(shape), flat.amax(1).view(shape)


@torch.no_grad()
def quantize_uniform(x: torch.Tensor, bits: int) -> torch.Tensor:
    """k-bit uniform quantisation with per-sample range: the interval [min_b, max_b] of sample b
    is cut into n = 2^k equal bins of width w = (max_b - min_b)/n and each value is replaced by the
    centre of its bin, min_b + (i + 1/2) w with i = min(floor((x - min_b)/w), n - 1).
    A constant image (max_b = min_b) is returned unchanged."""
    n = 2 ** _check_bits(bits, 1, 8, "bits")
    lo, hi = _sample_range(x)
    width = (hi - lo) / n
    safe = torch.where(width > 0, width, torch.ones_like(width))
    index = torch.floor((x - lo) / safe).clamp_(0, n - 1)
    return torch.where(width > 0, lo + (index + 0.5) * width, x)


@torch.no_grad()
def halftone(x: torch.Tensor) -> torch.Tensor:
    """Floyd-Steinberg error-diffusion binarisation per sample and channel.

    Each image is scaled to [0, 1] by its own min/max; pixels are visited in raster order,
    set to 1 if their value (plus the diffused error) is >= 1/2 and to 0 otherwise, and the
    error e = value - output is pushed to the unvisited neighbours with weights
    7/16 (right), 3/16 (below left), 5/16 (below), 1/16 (below right). The result takes only the
    values min_b and max_b, and its local mean follows the image's grey level.

    Vectorised by wavefronts: pixel (i, j) receives error only from pixels with a smaller
    t = 2i + j, and the pixels of one wavefront t do not feed each other, so each wavefront is one
    batched step (2H + W − 2 steps instead of H·W). Every pixel accumulates its four contributions in
    the raster order (1/16, 5/16, 3/16, then 7/16), so the result equals the raster loop bit for bit.
    """
    if x.dim() != 4:
        raise DataError(f"halftone needs images of shape (B, C, H, W) (got shape {tuple(x.shape)})")
    lo, hi = _sample_range(x)
    span = hi - lo
    value = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))
    height, width = x.shape[-2:]
    # one spare row below and one spare column on each side take the errors pushed off the image
    padded = torch.zeros(*x.shape[:2], height + 1, width + 2, dtype=value.dtype, device=value.device)
    padded[..., :height, 1:width + 1] = value
    out = torch.empty_like(value)
    for t in range(2 * (height - 1) + width):
        i = torch.arange(max(0, (t - width + 2) // 2), min(height - 1, t // 2) + 1, device=x.device)
        j = t - 2 * i
        old = padded[..., i, j + 1]
        new = (old >= 0.5).to(value.dtype)
        out[..., i, j] = new
        err = old - new
        padded[..., i + 1, j] += err * (3 / 16)
        padded[..., i + 1, j + 1] += err * (5 / 16)
        padded[..., i + 1, j + 2] += err * (1 / 16)
        padded[..., i, j + 2] += err * (7 / 16)
    return torch.where(span > 0, lo + out * span, x)


SHARPEN_KERNEL = ((-1.0, -2.0, -1.0), (-2.0, 16.0, -2.0), (-1.0, -2.0, -1.0))
SHARPEN_BIAS = 1e-3


def _sharpen_response(x: torch.Tensor) -> torch.Tensor:
    """K∗u + 1e-3 per channel, u = (x − mean_b)/(max_b − min_b) (0 for a constant image)."""
    if x.dim() != 4:
        raise DataError(f"halftone needs images of shape (B, C, H, W) (got shape {tuple(x.shape)})")
    lo, hi = _sample_range(x)
    span = hi - lo
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    u = torch.where(span > 0, (x - mean) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))
    kernel = torch.tensor(SHARPEN_KERNEL, dtype=x.dtype, device=x.device).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(u, kernel, padding=1, groups=x.shape[1]) + SHARPEN_BIAS


@torch.no_grad()
def sharpen_halftone(x: torch.Tensor) -> torch.Tensor:
    """TREND's halftone: (sign(K∗u + 1e-3) + 1)/2 (see the module docstring)."""
    return 0.5 * torch.sign(_sharpen_response(x)) + 0.5


class InputQuantizer(nn.Module):
    """k-bit per-sample input quantisation (``quantize_uniform``) with a straight-through gradient."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _check_bits(bits, 1, 8, "bits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return straight_through(x, quantize_uniform(x, self.bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


HALFTONES = ("sharpen", "floyd_steinberg")


class Halftone(nn.Module):
    """Halftone input binariser. ``"sharpen"`` (default, TREND's published one): forward
    ``sharpen_halftone``, gradient of ½σ(K∗u + 1e-3) (the published sigmoid surrogate);
    ``"floyd_steinberg"``: forward ``halftone``, straight-through gradient."""

    def __init__(self, method: str = "sharpen"):
        super().__init__()
        if method not in HALFTONES:
            raise UnknownNameError(f"halftone method must be one of {HALFTONES} (got {method!r})")
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "floyd_steinberg":
            return straight_through(x, halftone(x))
        surrogate = 0.5 * torch.sigmoid(_sharpen_response(x))
        return surrogate + (sharpen_halftone(x) - surrogate).detach()

    def extra_repr(self) -> str:
        return f"method={self.method}"


class InputQuantized(nn.Module):
    """Drop-in wrapper: ``model(quantizer(x))``. Attacks see the straight-through gradient (BPDA)."""

    def __init__(self, model: nn.Module, quantizer: nn.Module):
        super().__init__()
        self.quantizer = quantizer
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.quantizer(x))


def _quantize_unit(r: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's quantize_k on [0, 1]: round(r (2^k - 1)) / (2^k - 1), straight-through."""
    levels = 2 ** bits - 1
    return straight_through(r, torch.round(r * levels) / levels)


class DoReFaWeight(nn.Module):
    """DoReFa weight quantisation (Zhou et al., 2016), as a ``torch.nn.utils.parametrize`` map.

    k = 1: W_q = sign(W) E|W| (straight-through sign). k > 1:
    W_q = 2 quantize_k(tanh(W) / (2 max|tanh(W)|) + 1/2) - 1, where quantize_k is straight-through.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _check_bits(bits, 1, 16, "weight bits")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == 1:
            scale = w.detach().abs().mean()
            return straight_through(w, torch.where(w >= 0, scale, -scale))
        t = torch.tanh(w)
        t = t / (2 * t.detach().abs().max().clamp_min(1e-12)) + 0.5
        return 2 * _quantize_unit(t, self.bits) - 1


class DoReFaActivation(nn.Module):
    """DoReFa activation quantisation, replacing a ReLU: quantize_k(clamp(x, 0, 1)).

    The clamp keeps its true gradient (1 inside [0, 1], 0 outside); the rounding is straight-through.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _check_bits(bits, 1, 16, "activation bits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantize_unit(x.clamp(0, 1), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def dorefa(model: nn.Module, weight_bits: int | None = None, activation_bits: int | None = None) -> nn.Module:
    """Quantise ``model`` in place with DoReFa and return it.

    Weights of every Conv/Linear layer except the first and the last (kept in full precision, as in
    DoReFa-Net) get a ``DoReFaWeight`` parametrisation; every ``nn.ReLU`` module is replaced by a
    ``DoReFaActivation``. ``None`` leaves that part in full precision. Quantised models are meant
    to be trained quantised (the straight-through gradients make that possible).
    """
    if weight_bits is not None:
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
        if len(layers) < 3:
            raise UnsupportedModelError("weight quantisation keeps the first and last layers in full precision; "
                             f"the model has only {len(layers)} conv/linear layers")
        for layer in layers[1:-1]:
            parametrize.register_parametrization(layer, "weight", DoReFaWeight(weight_bits))
    if activation_bits is not None:
        relus = [(parent, name) for parent in model.modules() for name, child in parent.named_children() if isinstance(child, nn.ReLU)]
        if not relus:
            raise UnsupportedModelError("activation quantisation replaces nn.ReLU modules, and the model has none "
                             "(functional relu cannot be replaced)")
        for parent, name in relus:
            setattr(parent, name, DoReFaActivation(activation_bits))
    return model
