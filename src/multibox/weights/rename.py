"""Loading ImageNet classifier weights laid out by another library into a backbone, key by key, shape by shape.

The converters (:func:`multibox.models.mobilenet.load_torchvision_mobilenet_v3_large`,
:func:`multibox.models.resnet.load_torchvision_resnet50`) describe a layout as a ``rename`` function from a source
key to a backbone key (None: deliberately not used, e.g. the classifier) and the backbone keys that must be filled.
:func:`load_renamed` checks everything before it copies anything, so a failed load leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_renamed"]

# Buffers that some checkpoints lack (saved before BatchNorm counted its batches); ours are kept when absent.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_SHOWN = 8  # how many offending keys an error message lists


class LoadReport(NamedTuple):
    """What a converter did.

    Attributes:
        loaded: the source keys copied into the model, in source order.
        ignored: the source keys deliberately left out (classifier, unused stages), in source order.
    """

    loaded: list[str]
    ignored: list[str]


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_SHOWN])
    return shown + (f"; ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def load_renamed(
    target: nn.Module,
    state_dict: Mapping[str, Tensor],
    rename: Callable[[str], str | None],
    required: Collection[str],
    source: str,
) -> LoadReport:
    """Copy ``state_dict`` into ``target`` after renaming its keys; check names and shapes first.

    Args:
        target: the module to fill (its ``state_dict()`` keys are the names ``rename`` produces).
        state_dict: the source weights, e.g. ``torch.load("mobilenet_v3_large-8738ca79.pth")``.
        rename: source key -> target key, or None for a key to ignore; raises ValueError for a key that does
            not belong to the source layout.
        required: the target keys the source must provide (``*.num_batches_tracked`` may be absent).
        source: the layout's name for error messages, e.g. ``"torchvision mobilenet_v3_large"``.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: for a key outside the layout, a shape mismatch (naming the key, the expected and the found
            shape), or missing keys (naming them); nothing is copied then.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(
            f"expected a {source} state dict (a mapping of names to tensors); a checkpoint that wraps one "
            f"(e.g. under 'model' or 'state_dict') must be unwrapped first"
        )
    own = target.state_dict()
    loaded, ignored, mismatched, pairs = [], [], [], []
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            ignored.append(key)
            continue
        if new not in own or new not in required:
            raise ValueError(f"{source} key {key!r} has no place in this model (it would go to {new!r})")
        if tuple(value.shape) != tuple(own[new].shape):
            mismatched.append(f"{key}: expected {tuple(own[new].shape)}, found {tuple(value.shape)}")
        pairs.append((new, value))
        loaded.append(key)
    if mismatched:
        raise ValueError(f"{len(mismatched)} {source} tensor(s) do not fit this model: {_listing(mismatched)}")
    given = {new for new, _ in pairs}
    needed = [k for k in required if not k.endswith(_OPTIONAL_SUFFIXES)]
    missing = [k for k in needed if k not in given]
    if missing:
        expected = [f"{k} {tuple(own[k].shape)}" for k in missing]
        raise ValueError(
            f"the {source} state dict lacks {len(missing)} of the {len(needed)} tensors this backbone needs "
            f"(truncated, or another architecture?): {_listing(expected)}"
        )
    with torch.no_grad():
        for new, value in pairs:
            own[new].copy_(value)  # state_dict() tensors share storage with the parameters and buffers
    return LoadReport(loaded, ignored)
