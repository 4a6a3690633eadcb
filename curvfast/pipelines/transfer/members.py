"""Model specs for transfer studies: architecture x seed x optimiser x input / weight / activation
quantisation, written as short strings, e.g.

    small_cnn            full precision, seed 0, SGD
    small_cnn@1          another initialisation and data order
    small_cnn+adam       trained with Adam instead of SGD
    small_cnn+in2        2-bit per-sample input quantisation (1..8 bits)
    small_cnn+halftone   TREND's halftone input (sharpening kernel, sign; sigmoid surrogate gradient)
    small_cnn+halftonefs Floyd-Steinberg halftone input (straight-through gradient)
    small_cnn+w2a4       DoReFa 2-bit weights, 4-bit activations (w.. and a.. may come alone)
    mlp2                 the zoo's 2-hidden-layer ReLU perceptron (architecture mismatch)

Any zoo or torchvision name of ``curvfast.models.build_model`` is an architecture too. A member
sees images in [0, 1]: its input quantiser comes first, then the input normalisation (inside the
model), then the network; with ``quantize_after_normalize`` (the published order: TREND's ``trans.py``
and ``train.py`` call ``Q(normalization_function(x))``) the normalisation comes first.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from curvfast.data import DatasetInfo
from curvfast.checkpoints import model_record, save_model
from curvfast.io import load_checkpoint
from curvfast.models import Normalized
from curvfast.pipelines.common.cache import cached
from curvfast.pipelines.common.data import DataOptions, build_network, loader
from curvfast.training import TrainRecipe, evaluate, fit
from curvfast.pipelines.transfer.quantize import Halftone, InputQuantized, InputQuantizer, dorefa
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["MemberSpec", "parse_spec", "build_member", "train_member", "load_or_train"]

_OPTIMIZERS = ("sgd", "adam")
_HALFTONE_NAMES = {"sharpen": "halftone", "floyd_steinberg": "halftonefs"}
_BITS = re.compile(r"^(?:w(\d+))?(?:a(\d+))?$")


@dataclass(frozen=True)
class MemberSpec:
    """One model of a transfer study (see the module docstring for the string form)."""

    arch: str
    seed: int = 0
    optimizer: str = "sgd"
    input_bits: int | None = None  # 1..8 bits per-sample uniform quantisation
    halftone: str | None = None  # "sharpen" (TREND's) or "floyd_steinberg"
    weight_bits: int | None = None  # DoReFa, 1..16
    activation_bits: int | None = None

    @property
    def name(self) -> str:
        parts = [self.arch]
        if self.input_bits is not None:
            parts.append(f"in{self.input_bits}")
        if self.halftone is not None:
            parts.append(_HALFTONE_NAMES[self.halftone])
        if self.weight_bits is not None or self.activation_bits is not None:
            parts.append("".join(f"{k}{v}" for k, v in (("w", self.weight_bits), ("a", self.activation_bits)) if v is not None))
        if self.optimizer != "sgd":
            parts.append(self.optimizer)
        return "+".join(parts) + (f"@{self.seed}" if self.seed else "")

    def factors(self) -> dict:
        """The factors a pair of models can differ in (used to group transfer results)."""
        return {
            "architecture": self.arch, "seed": self.seed, "optimizer": self.optimizer,
            "input_quantisation": _HALFTONE_NAMES[self.halftone] if self.halftone else self.input_bits,
            "weight_activation_quantisation": (self.weight_bits, self.activation_bits),
        }


def parse_spec(text: str) -> MemberSpec:
    """Parse ``arch[+in<k>|+halftone|+halftonefs|+w<k>a<k>|+adam|+sgd][@seed]`` (a ConfigError names the bad part)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"model spec must be a non-empty string such as 'small_cnn+in2@1' (got {text!r})")
    body, _, seed_text = text.strip().partition("@")
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise ConfigError(f"model spec {text!r}: the seed after '@' must be an integer") from None
    arch, *options = body.split("+")
    fields: dict = {"arch": arch, "seed": seed}
    for opt in options:
        bits = _BITS.match(opt)
        if opt in _OPTIMIZERS:
            fields["optimizer"] = opt
        elif opt in ("halftone", "halftonefs"):
            fields["halftone"] = "sharpen" if opt == "halftone" else "floyd_steinberg"
        elif opt.startswith("in") and opt[2:].isdigit():
            fields["input_bits"] = int(opt[2:])
            if not 1 <= fields["input_bits"] <= 8:
                raise ConfigError(f"model spec {text!r}: input quantisation takes 1..8 bits (got {opt!r})")
        elif opt and bits:
            for key, value in zip(("weight_bits", "activation_bits"), bits.groups()):
                if value is not None:
                    if not 1 <= int(value) <= 16:
                        raise ConfigError(f"model spec {text!r}: DoReFa takes 1..16 bits (got {opt!r})")
                    fields[key] = int(value)
        else:
            raise UnknownNameError(
                f"model spec {text!r}: unknown option {opt!r}; use in<1-8>, halftone, halftonefs, w<k>a<k>, adam or sgd"
            )
    if fields.get("halftone") and fields.get("input_bits") is not None:
        raise ConfigError(f"model spec {text!r}: choose either halftone or in<k>, not both")
    return MemberSpec(**fields)


def build_member(spec: MemberSpec, num_classes: int, input_shape: tuple[int, ...], normalize: str = "none",
                 quantize_after_normalize: bool = False) -> nn.Module:
    """Randomly initialised model for ``spec`` (seeded by ``spec.seed``): the network inside the
    ``normalize`` normalisation (``none``, ``cifar10``, ``imagenet``, ``MEAN/STD``), quantisers attached.

    The input quantiser acts on the raw image in [0, 1], ``InputQuantized(Normalized(net))``, or with
    ``quantize_after_normalize`` on the normalised image, ``Normalized(InputQuantized(net))`` (TREND's order;
    the same model when ``normalize`` is ``none``)."""
    torch.manual_seed(spec.seed)
    model = build_network(DataOptions(normalize=normalize), spec.arch, DatasetInfo(num_classes, input_shape[0]), input_shape)
    if spec.weight_bits is not None or spec.activation_bits is not None:
        model = dorefa(model, spec.weight_bits, spec.activation_bits)
    quantizer = None
    if spec.halftone is not None:
        quantizer = Halftone(spec.halftone)
    elif spec.input_bits is not None:
        quantizer = InputQuantizer(spec.input_bits)
    if quantizer is None:
        return model
    if quantize_after_normalize and isinstance(model, Normalized):
        model.net = InputQuantized(model.net, quantizer)
        return model
    return InputQuantized(model, quantizer)


def train_member(
    model: nn.Module, spec: MemberSpec, train_set, *, epochs: int = 20, batch_size: int = 64, device: str = "cpu",
    options: DataOptions | None = None,
) -> nn.Module:
    """Train in place: SGD (lr 0.05, momentum 0.9) or Adam (lr 1e-3), weight decay 5e-4, cosine schedule;
    data order seeded by ``spec.seed``, loader workers and training augmentation from ``options``.
    Quantised members train through their straight-through gradients."""
    options = options or DataOptions()
    data = loader(train_set, options, batch_size=batch_size, device=device, shuffle=True, seed=spec.seed)
    recipe = TrainRecipe(epochs=max(1, epochs), batch_size=batch_size, seed=spec.seed, optimizer=spec.optimizer)
    return fit(model, data, recipe, device=device, batch_transform=options.batch_transform(spec.seed))


def load_or_train(
    spec: MemberSpec, train_set, test_set, num_classes: int, *, epochs: int, dataset: str,
    folder: str | None = None, device: str = "cpu", options: DataOptions | None = None, batch_size: int = 64,
    quantize_after_normalize: bool = False,
) -> tuple[nn.Module, dict]:
    """Build and train ``spec``, or load ``folder/<name>.pt`` when it was trained with the same
    spec, dataset (name, root, image size), normalisation, quantiser order, augmentation, batch size and epochs.
    Returns the eval-mode model and its info (accuracies, checkpoint)."""
    options = options or DataOptions(dataset=dataset)
    input_shape = tuple(train_set[0][0].shape)
    model = build_member(spec, num_classes, input_shape, options.normalize, quantize_after_normalize)
    meta = {"spec": spec.name, "dataset": dataset, "root": options.root, "image_size": options.image_size,
            "normalize": options.normalize, "augment": options.augment, "batch_size": batch_size, "epochs": epochs}
    if isinstance(model, Normalized) and isinstance(model.net, InputQuantized):  # only where the order changes the model
        meta["quantize_after_normalize"] = True
    path = None if folder is None else os.path.join(folder, spec.name.replace("@", "_seed") + ".pt")

    def load(file: str) -> tuple[dict, tuple[dict, dict]]:
        ckpt = load_checkpoint(file)
        return ckpt, ({k: ckpt[k] for k in ("spec", "dataset", "epochs", "train_accuracy", "test_accuracy")}, ckpt["state_dict"])

    def train() -> tuple[dict, None]:
        train_member(model, spec, train_set, epochs=epochs, batch_size=batch_size, device=device, options=options)
        return {"spec": spec.name, "dataset": dataset, "epochs": epochs,
                "train_accuracy": evaluate(model, train_set, workers=options.workers),
                "test_accuracy": evaluate(model, test_set, workers=options.workers)}, None

    quantised = [k for k in ("input_bits", "halftone", "weight_bits", "activation_bits") if getattr(spec, k) is not None]
    record = model_record(spec.arch, num_classes, input_shape[0], normalize=options.normalize, input_shape=input_shape)
    if quantised:  # rebuilt by build_member only
        record["kind"] = f"a quantised transfer member ({', '.join(quantised)}; rebuild it with transfer's build_member)"

    def save(file: str, value: tuple[dict, None], settings: dict) -> None:
        save_model(file, model, record, **(settings | value[0]))

    if path is None:
        (info, state), reused = train(), False
    else:
        (info, state), reused = cached(path, meta, train, load=load, save=save)
    if reused:
        model.load_state_dict(state)
        model.to(device)
    return model.eval(), {**info, "checkpoint": path, "trained": not reused}
