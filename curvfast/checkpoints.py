"""Models from checkpoints: rebuild the recorded architecture and load its weights."""
from __future__ import annotations

import os
import re

from torch import nn

from curvfast.data import get_dataset
from curvfast.errors import CheckpointError
from curvfast.io import load_checkpoint
from curvfast.models import build_model, normalized

__all__ = ["load_model", "folder_name"]


def load_model(checkpoint: str, model_name: str | None, dataset: str, root: str | None) -> nn.Module:
    """Rebuild a checkpoint's model and load its weights (``weights_only``).

    Args:
        checkpoint: The checkpoint file.
        model_name: The architecture, or None for the one the checkpoint records.
        dataset: The dataset whose classes and channels are used when the checkpoint does not record them.
        root: The dataset's folder.

    Returns:
        The model (``model_name`` or the recorded one) inside its recorded input normalisation.

    Raises:
        CheckpointError: The checkpoint is unreadable, names no model, records bad sizes, or does not fit the model.
        UnknownNameError: For an unknown architecture, dataset or normalisation.
        FileNotFoundError: When the checkpoint does not exist (``IsADirectoryError`` for a folder).
    """
    ckpt = load_checkpoint(checkpoint)
    name = model_name or ckpt.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {checkpoint!r} does not name its model; pass --model")
    sizes = {}
    for key in ("num_classes", "in_channels"):
        value = ckpt.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"checkpoint {checkpoint!r} records {key}={value!r}, which is not a positive int; "
                                  "fix the checkpoint's metadata or re-save it with save_checkpoint")
        sizes[key] = value
    if None in sizes.values():  # not recorded: the dataset's
        _, info = get_dataset(dataset, "train", root=root)
        sizes = {key: info.num_classes if key == "num_classes" else info.in_channels for key in sizes} | {
            k: v for k, v in sizes.items() if v is not None}
    model = normalized(build_model(name, sizes["num_classes"], sizes["in_channels"]), ckpt.get("normalize", "none"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {checkpoint!r} does not fit model {name!r}: "
                              f"{str(err).splitlines()[0]}") from err
    return model


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
