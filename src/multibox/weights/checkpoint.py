"""The multibox checkpoint format, defined once: what a checkpoint holds, how a model is rebuilt from it.

A checkpoint is a dict of tensors and plain values (:class:`Checkpoint`), written by :func:`model_checkpoint` +
:func:`multibox.weights.io.save_checkpoint` and read by :func:`read_checkpoint`, which also accepts the older
layouts of this project (:func:`upgrade_checkpoint`). It holds the model's weights and build arguments (so that the
network is rebuilt without the config), the preprocessing and class names that travel with the weights, and, in a
``last.pt``, the training state for an exact resume.

Versions (``format_version``): 0 (absent) the first layout; 1 the same with the field; 2 adds ``model_sha256``,
checked on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from multibox.user_input import short
from multibox.weights.io import CheckpointError, load_checkpoint

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "load_model_state",
    "model_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "upgrade_checkpoint",
]

#: The version of the layout :func:`model_checkpoint` writes.
CHECKPOINT_VERSION = 2


class Checkpoint(TypedDict, total=False):
    """A multibox checkpoint. Every value is a tensor or a plain Python value (``weights_only`` loads it).

    Attributes:
        format_version: :data:`CHECKPOINT_VERSION` when written (0 when absent: the oldest files).
        model: the state dict.
        model_args: ``SSD.config_dict()``: builder name, classes, image size, explicit builder arguments and
            preprocessing; :func:`multibox.models.create_model_from_config` rebuilds the network from it.
        preprocess: ``{"image_size": [H, W], "mean": [3], "std": [3]}`` (0-255 RGB); a converted backbone-only
            file has this without ``model_args``.
        classes: the foreground class names, label ``k`` is ``classes[k - 1]``.
        model_sha256: written by :func:`~multibox.weights.io.save_checkpoint`, checked on load.
        config: the training config as plain dicts (``last.pt``).
        optimizer, scheduler, scaler, step, rng, elapsed_s: the training state of a ``last.pt``.
        metrics: the validation metric a ``best.pt`` was kept for.
        source: the layout a converted file came from.
    """

    format_version: int
    model: dict[str, torch.Tensor]
    model_args: dict[str, Any]
    preprocess: dict[str, list[float] | list[int]]
    classes: list[str]
    model_sha256: str
    config: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    step: int
    rng: dict[str, Any]
    elapsed_s: float
    metrics: dict[str, float]
    source: str


def model_checkpoint(
    model: torch.nn.Module, classes: list[str] | tuple[str, ...], config: dict[str, Any] | None = None, **extra: Any
) -> Checkpoint:
    """What inference needs of a trained model: weights, build arguments, preprocessing, class names (and config).

    Args:
        model: an SSD built by a registered builder (``model.config_dict()`` rebuilds it).
        classes: the foreground class names, label ``k`` is ``classes[k - 1]``.
        config: the training config as plain dicts, if any.
        **extra: further plain entries (the training state of a ``last.pt``, the metrics of a ``best.pt``).

    Returns:
        ``{"format_version", "model", "model_args", "preprocess", "classes", ["config"], ...}``; saving adds
        ``"model_sha256"``.
    """
    ckpt: Checkpoint = {
        "format_version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_args": model.config_dict(),
        "preprocess": model.preprocess.to_dict(),
        "classes": list(classes),
    }
    if config is not None:
        ckpt["config"] = config
    ckpt.update(extra)  # type: ignore[typeddict-item]
    return ckpt


def upgrade_checkpoint(ckpt: Mapping[str, Any], source: str | Path = "checkpoint") -> Checkpoint:
    """A loaded model checkpoint of any version of this project in the current layout (a new dict).

    Raises:
        CheckpointError: not a multibox model checkpoint (no ``model``/``model_args``), or written by a newer
            multibox (a ``format_version`` above :data:`CHECKPOINT_VERSION`).
    """
    if "model_args" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{source}: not a multibox checkpoint: it has no 'model_args'/'model' entries (convert it first: "
            "multibox convert)"
        )
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {short(version)} is newer than this multibox reads "
            f"({CHECKPOINT_VERSION}); upgrade multibox"
        )
    out: dict[str, Any] = {"classes": [], **ckpt, "format_version": CHECKPOINT_VERSION}
    if "preprocess" not in out and "preprocess" in ckpt["model_args"]:
        out["preprocess"] = ckpt["model_args"]["preprocess"]
    return out  # type: ignore[return-value]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a model checkpoint safely (checksum and finite weights checked) in the current layout.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, refused, corrupt, or not a multibox model checkpoint.
    """
    return upgrade_checkpoint(load_checkpoint(path, map_location=map_location), path)


def load_model_state(
    model: nn.Module, state: dict[str, Any], source: str, strict: bool = True
) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(state)`` with clear errors instead of torch's state-dict traceback.

    Args:
        model: the network.
        state: its weights (from ``source``).
        source: the file they come from, for messages.
        strict: every key of the model must be in ``state`` and no other (else only the shapes are checked).

    Returns:
        ``(missing, unexpected)`` keys (empty with ``strict``).

    Raises:
        CheckpointError: a tensor's shape differs (the message names the key and both shapes), or, with ``strict``,
            keys are missing or unexpected.
    """
    own = model.state_dict()
    differ = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    if differ:
        k = differ[0]
        hint = " (another number of classes?)" if ".conf." in k or k.startswith("conf") else ""
        raise CheckpointError(
            f"{source}: weights do not fit the model: {k} is {list(state[k].shape)} in the file but "
            f"{list(own[k].shape)} in the model{hint}; {len(differ)} tensor(s) differ"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source}: weights do not fit the model: missing {short(missing, 200)}, "
            f"unexpected {short(unexpected, 200)}"
        )
    return missing, unexpected


def model_from_checkpoint(ckpt: Mapping[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild a model from a checkpoint written by :func:`multibox.train` and load its weights.

    Args:
        ckpt: the loaded checkpoint.
        source: its file, for messages.

    Raises:
        CheckpointError: (a ``ValueError``) not a multibox checkpoint, or its weights do not fit the model it names
            (the message names the first key that differs and both shapes).
    """
    from multibox.models import create_model_from_config

    ckpt = upgrade_checkpoint(ckpt, source)
    model = create_model_from_config(ckpt["model_args"])
    load_model_state(model, ckpt["model"], str(source))
    return model
