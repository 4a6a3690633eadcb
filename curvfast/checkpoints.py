"""One checkpoint format for every command: the weights and what rebuilds their model.

A checkpoint is a weights-only ``torch.save`` of ``{"state_dict": ..., **record, **meta}``, where the record
(:func:`model_record`) names the architecture and its build arguments:

- ``format``: :data:`FORMAT`;
- ``model``: a zoo or torchvision name (:func:`curvfast.models.build_model`);
- ``num_classes``, ``in_channels``: the classifier's sizes;
- ``model_kwargs``: further build arguments (``width``, ``in_features``...);
- ``normalize``: the input normalisation inside the model (``none``, ``cifar10``, ``imagenet``, ``MEAN/STD``);
- ``batchnorm``: ``batchnorm`` (as built), or ``identity`` for a network trained with its BatchNorm layers removed
  (DP-SGD);
- ``input_shape``: ``[C, H, W]`` of the training images, where known.

:func:`load_model` (``curvfast.load_checkpoint``) rebuilds the model from the record alone; ``curvfast score``
loads it. A checkpoint written before the record existed (only ``model``, perhaps ``num_classes``) still loads,
with the dataset's sizes.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence

from torch import nn

from curvfast.errors import CheckpointError, ConfigError
from curvfast.io import load_checkpoint as read_checkpoint
from curvfast.io import save_checkpoint
from curvfast.models import build_model, normalized

__all__ = ["FORMAT", "model_record", "save_model", "load_model", "load_model_with_record", "remove_batchnorm",
           "folder_name"]

FORMAT = 1
BATCHNORM = ("batchnorm", "identity")


def model_record(model: str, num_classes: int, in_channels: int, *, normalize: str = "none",
                 model_kwargs: dict | None = None, batchnorm: str = "batchnorm",
                 input_shape: Sequence[int] | None = None) -> dict:
    """The metadata that lets :func:`load_model` rebuild a model (see the module docstring).

    Args:
        model: The architecture's name (:func:`curvfast.models.build_model`).
        num_classes: The number of logits.
        in_channels: The input channels.
        normalize: The input normalisation inside the model.
        model_kwargs: Further build arguments (``width``...): plain numbers and strings.
        batchnorm: ``batchnorm``, or ``identity`` when the BatchNorm layers were replaced by ``nn.Identity``.
        input_shape: ``(C, H, W)`` of the training images (an MLP's ``in_features`` is C*H*W).

    Returns:
        The record, a dict of plain values.

    Raises:
        ConfigError: For a ``batchnorm`` other than ``batchnorm`` / ``identity``.
    """
    if batchnorm not in BATCHNORM:
        raise ConfigError(f"batchnorm must be one of {', '.join(BATCHNORM)} (got {batchnorm!r})")
    return {"format": FORMAT, "model": model, "num_classes": int(num_classes), "in_channels": int(in_channels),
            "model_kwargs": dict(model_kwargs or {}), "normalize": normalize or "none", "batchnorm": batchnorm,
            "input_shape": None if input_shape is None else [int(d) for d in input_shape]}


def save_model(path: str, net: nn.Module, record: dict, **meta: Any) -> None:
    """Save ``net``'s weights with its ``record`` (:func:`model_record`) and ``meta`` (plain values), atomically.

    Args:
        path: The checkpoint file (its folder is created).
        net: The model, as :func:`load_model` rebuilds it from ``record`` (normalisation included).
        record: What rebuilds it.
        **meta: Anything else to keep (accuracies, seeds, training settings).
    """
    save_checkpoint(path, net, **(meta | record))


def remove_batchnorm(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``net`` by ``nn.Identity`` (in place; keeps ReLU nets piecewise linear).

    Args:
        net: The model.

    Returns:
        ``net``.
    """
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return net


def _sizes(ckpt: dict, checkpoint: str, dataset: str | None, root: str | None) -> dict:
    """``num_classes`` and ``in_channels``: recorded, else the dataset's."""
    sizes = {}
    for key in ("num_classes", "in_channels"):
        value = ckpt.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"checkpoint {checkpoint!r} records {key}={value!r}, which is not a positive int; "
                                  "fix the checkpoint's metadata or re-save it with save_model")
        sizes[key] = value
    if None in sizes.values():  # not recorded: the dataset's
        if dataset is None:
            raise CheckpointError(f"checkpoint {checkpoint!r} does not record its classes and channels; pass the "
                                  "dataset it was trained on (--dataset)")
        from curvfast.data import get_dataset

        _, info = get_dataset(dataset, "train", root=root)
        recorded = {k: v for k, v in sizes.items() if v is not None}
        sizes = {"num_classes": info.num_classes, "in_channels": info.in_channels} | recorded
    return sizes


def load_model(checkpoint: str, model_name: str | None = None, dataset: str | None = None,
               root: str | None = None) -> nn.Module:
    """Rebuild a checkpoint's model and load its weights (``weights_only``); also ``curvfast.load_checkpoint``.

    Args:
        checkpoint: The checkpoint file (any command's: ``train``, ``mia``'s shadow models, ``verifix``...).
        model_name: The architecture, or None for the one the checkpoint records.
        dataset: The dataset whose classes and channels are used when the checkpoint does not record them.
        root: The dataset's folder.

    Returns:
        The model (``model_name`` or the recorded one) inside its recorded input normalisation, in eval mode.

    Raises:
        CheckpointError: The checkpoint is unreadable, names no model, records bad sizes, or does not fit the model.
        UnknownNameError: For an unknown architecture, dataset or normalisation.
        FileNotFoundError: When the checkpoint does not exist (``IsADirectoryError`` for a folder).
    """
    return load_model_with_record(checkpoint, model_name, dataset, root)[0]


def load_model_with_record(checkpoint: str, model_name: str | None = None, dataset: str | None = None,
                           root: str | None = None) -> tuple[nn.Module, dict]:
    """:func:`load_model`, and the checkpoint's metadata (everything but its ``state_dict``).

    Args:
        checkpoint: The checkpoint file (any command's: ``train``, ``mia``'s shadow models, ``verifix``...).
        model_name: The architecture, or None for the one the checkpoint records.
        dataset: The dataset whose classes and channels are used when the checkpoint does not record them.
        root: The dataset's folder.

    Returns:
        ``(model, metadata)``.

    Raises:
        CheckpointError, UnknownNameError, FileNotFoundError: As :func:`load_model`.
    """
    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("kind") is not None:  # not one classifier (pkd's streams and exits)
        raise CheckpointError(f"checkpoint {checkpoint!r} holds {ckpt['kind']}, not one classifier; "
                              "curvfast score and load_checkpoint load classifiers only")
    name = model_name or ckpt.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {checkpoint!r} does not name its model; pass --model")
    sizes = _sizes(ckpt, checkpoint, dataset, root)
    kwargs = dict(ckpt.get("model_kwargs") or {}) if name == ckpt.get("model") else {}
    shape = ckpt.get("input_shape")
    if name in ("mlp", "mlp2") and "in_features" not in kwargs and shape:
        kwargs["in_features"] = math.prod(shape)
    net = build_model(name, sizes["num_classes"], sizes["in_channels"], **kwargs)
    if ckpt.get("batchnorm", "batchnorm") == "identity":
        remove_batchnorm(net)
    model = normalized(net, ckpt.get("normalize", "none"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        hint = "" if "format" in ckpt else "; it predates the checkpoint record (no width etc.): pass --model or " \
                                           "re-save it with curvfast.checkpoints.save_model"
        raise CheckpointError(f"checkpoint {checkpoint!r} does not fit model {name!r}: "
                              f"{str(err).splitlines()[0]} {_first_mismatch(err)}{hint}") from err
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def _first_mismatch(err: RuntimeError) -> str:
    """The first line of ``load_state_dict``'s error that names a key (its first line names none)."""
    lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
    return lines[0][:200] if lines else ""


def folder_name(checkpoint: str) -> str:
    """A model's folder name from its checkpoint's file name.

    Characters other than letters, digits, '_', '.' and '-' become '_' (so any file name works).

    Args:
        checkpoint: The checkpoint's path.

    Returns:
        The file name without its extension, sanitised, starting with a letter or digit (``m`` is prefixed when it
        would not).
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(checkpoint))[0])
    return stem if re.match(r"[A-Za-z0-9]", stem) else f"m{stem}"
