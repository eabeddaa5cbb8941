"""The key renamer: weights laid out by another library mapped onto ours, key by key, shape by shape.

Two forms. The ImageNet backbone loaders (:mod:`multibox.weights.imagenet`,
:func:`multibox.models.efficientnet_lite.load_imagenet_efficientnet_lite`) describe a layout as a ``rename``
function from a source key to a backbone key (None: deliberately not used, e.g. the classifier) and the backbone
keys that must be filled; :func:`load_renamed` checks everything before it copies anything, so a failed load leaves
the model untouched. The detector converters (:mod:`multibox.weights.ssd_pytorch`,
:mod:`multibox.weights.torchvision`) give a full ``{source key: our key}`` mapping to :func:`remap_state_dict`
and return a :class:`Converted`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "ConversionError",
    "Converted",
    "LoadReport",
    "classes_from_conf",
    "flip_input_channels",
    "keys_seen",
    "load_renamed",
    "remap_state_dict",
    "state_shapes",
    "strip_module_prefix",
]

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


class ConversionError(ValueError):
    """A source state dict does not have the layout or the shapes a converter expects."""


@dataclass
class Converted:
    """The result of a converter.

    Attributes:
        state_dict: multibox keys -> tensors (a full model's, or ``backbone.features.*`` only for a base).
        model: the multibox model with the weights loaded (None for a base-only conversion).
        mean: the RGB mean (0-255 units) the weights expect.
        std: the RGB std (0-255 units) the weights expect.
        classes: foreground class names, when known.
        source: the layout converted from.
        notes: what the user should know (preprocessing, priors).
    """

    state_dict: dict[str, Tensor]
    model: nn.Module | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: list[str] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def checkpoint(self) -> dict[str, Any]:
        """A multibox checkpoint: ``model``, ``preprocess``, ``source`` and, for a full model, ``model_args`` and
        ``classes`` (so that ``multibox detect/eval/export --weights`` can rebuild it); a base-only one loads as
        ``train.init_weights``."""
        ckpt: dict[str, Any] = {
            "model": self.state_dict,
            "preprocess": {"mean": list(self.mean), "std": list(self.std)},
            "source": self.source,
        }
        if self.model is not None:
            ckpt["model_args"] = self.model.config_dict()
            ckpt["preprocess"]["image_size"] = list(self.model.image_size)
            ckpt["classes"] = list(self.classes)
        return ckpt


def state_shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{prefix + key: shape}`` of a module's state dict."""
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def remap_state_dict(
    source: Mapping[str, Tensor],
    mapping: Mapping[str, str],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> dict[str, Tensor]:
    """``{mapping[k]: source[k]}``, checking keys and shapes; errors name the source key and both shapes."""
    missing = [k for k in mapping if k not in source]
    if missing:
        raise ConversionError(
            f"{what}: {len(missing)} of {len(mapping)} expected keys are missing, e.g. {missing[:4]} "
            f"(a truncated file, or another architecture)"
        )
    unexpected = sorted(k for k in source if k not in mapping and not ignore(k))
    if unexpected:
        raise ConversionError(
            f"{what}: {len(unexpected)} unexpected keys, e.g. {unexpected[:4]} (another architecture or size?)"
        )
    out = {}
    for src, dst in mapping.items():
        tensor = source[src]
        if not isinstance(tensor, Tensor):
            raise ConversionError(f"{what}: {src} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[dst]):
            raise ConversionError(
                f"{what}: {src} has shape {list(tensor.shape)}, expected {list(expected[dst])} (for {dst})"
            )
        out[dst] = tensor.detach().clone()
    return out


def strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a ``module.`` prefix left by ``nn.DataParallel`` (on every key, or none)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def flip_input_channels(sd: dict[str, Tensor], key: str, input_order: str) -> None:
    """For ``input_order="bgr"``, reverse the input channels of the convolution ``sd[key]`` (in place)."""
    if input_order not in ("rgb", "bgr"):
        raise ValueError(f"input_order must be 'rgb' or 'bgr', got {input_order!r}")
    if input_order == "bgr":  # weights for B, G, R inputs -> weights for R, G, B inputs
        sd[key] = sd[key].flip(1).contiguous()


def classes_from_conf(sd: Mapping[str, Tensor], key: str, boxes: int, what: str, num_classes: int | None) -> int:
    """The class count a ``conf`` conv encodes (``boxes * C`` outputs), checked against ``num_classes``."""
    if key not in sd:
        raise ConversionError(f"{what}: missing {key} (a truncated file, or another architecture)")
    out = int(sd[key].shape[0])
    if out % boxes:
        raise ConversionError(f"{what}: {key} has {out} outputs, not a multiple of its {boxes} boxes per location")
    found = out // boxes
    if num_classes is not None and found != num_classes:
        raise ConversionError(
            f"{what}: {key} has shape {list(sd[key].shape)} = {boxes} boxes x {found} classes, but num_classes="
            f"{num_classes} was asked (num_classes counts the background)"
        )
    if found < 2:
        raise ConversionError(f"{what}: {key} encodes {found} class(es); at least 2 (background + 1) are needed")
    return found


def keys_seen(keys: Iterable[str], count: int = 6) -> str:
    """``"saw N keys: [first few sorted]"`` for error messages."""
    names = sorted(keys)
    return f"saw {len(names)} keys: {names[:count]}{' ...' if len(names) > count else ''}"
