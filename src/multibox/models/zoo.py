"""A small registry of model builders (like torchvision ``_api.py`` and timm ``_registry.py``).

A builder is a function ``builder(num_classes, *, image_size=..., ...) -> SSD`` that spells out the paper's
defaults in its signature. ``@register_model`` records it under its function name; :func:`create_model` looks it up
by name. Every model built through a registered builder remembers its name and the arguments given explicitly, so
``model.config_dict()`` (plain lists, dicts, strings and numbers) rebuilds it with
:func:`create_model_from_config`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

from multibox.models.heads import check_num_classes
from multibox.models.ssd import BUILDER_NAME, SSD
from multibox.priors import PRIOR_PRESETS, PriorSpec

__all__ = [
    "create_model",
    "create_model_from_config",
    "list_models",
    "register_model",
    "resolve_prior_spec",
]

Builder = TypeVar("Builder", bound=Callable[..., SSD])

_REGISTRY: dict[str, Callable[..., SSD]] = {}
_CONFIG_KEYS = ("name", "num_classes", "image_size", "overrides", "preprocess")
# A builder argument that loads pretrained backbone weights: recorded always, never honoured by a rebuild.
_PRETRAINED = "pretrained"


def _to_plain(value: Any) -> Any:
    """Builder arguments as plain data: tuples become lists, a preset PriorSpec its name, another one a dict."""
    if isinstance(value, PriorSpec):
        for key, preset in PRIOR_PRESETS.items():
            if value == preset:
                return key
        return _to_plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_to_tuple(v) for v in value)
    return value


def resolve_prior_spec(spec: PriorSpec | str | Mapping[str, Any]) -> PriorSpec:
    """A :class:`~multibox.priors.PriorSpec` from itself, a preset name (``"voc300"``, ...) or its fields as a dict.

    Raises:
        ValueError: for an unknown preset name or unknown fields.
    """
    if isinstance(spec, PriorSpec):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in PRIOR_PRESETS:
            raise ValueError(f"unknown prior preset {spec!r}; known presets: {', '.join(sorted(PRIOR_PRESETS))}")
        return PRIOR_PRESETS[key]
    if isinstance(spec, Mapping):
        fields = set(inspect.signature(PriorSpec).parameters)
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"unknown PriorSpec field(s) {unknown}; fields are {sorted(fields)}")
        return PriorSpec(**{k: _to_tuple(v) for k, v in spec.items()})
    raise ValueError(f"prior_spec must be a PriorSpec, a preset name or a dict of its fields, got {type(spec)}")


def register_model(fn: Builder | None = None, *, name: str | None = None) -> Any:
    """Register a builder under ``name`` (default: the function's name). Use as ``@register_model``.

    The builder's first parameter must be ``num_classes``. The registered (and returned) function validates
    ``num_classes`` and records the name and the explicitly given arguments on the model for ``config_dict()``;
    a ``pretrained`` parameter is recorded with its value even when left at its default.

    Raises:
        ValueError: if the name is taken.
    """

    def decorate(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"a model named {key!r} is already registered")
        signature = inspect.signature(builder)
        if next(iter(signature.parameters), None) != "num_classes":
            raise TypeError(f"builder {key!r} must take num_classes as its first parameter")

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> SSD:
            bound = signature.bind(*args, **kwargs)
            check_num_classes(bound.arguments["num_classes"])
            token = BUILDER_NAME.set(key)  # the SSD the builder makes takes its name from here
            try:
                model = builder(*args, **kwargs)
            finally:
                BUILDER_NAME.reset(token)
            model.name = key
            model.overrides = {
                k: _to_plain(v) for k, v in bound.arguments.items() if k not in ("num_classes", "image_size")
            }
            if _PRETRAINED in signature.parameters:  # recorded even when defaulted: how this backbone started
                model.overrides[_PRETRAINED] = bool(
                    bound.arguments.get(_PRETRAINED, signature.parameters[_PRETRAINED].default)
                )
            return model

        _REGISTRY[key] = build
        return build  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **overrides: Any) -> SSD:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"ssd300_vgg16"``.
        num_classes: classes including the background (class 0), an int >= 2 (21 for VOC, 81 for COCO).
        **overrides: builder arguments that replace the paper's defaults, e.g. ``image_size=(300, 400)``.

    Returns:
        The model, freshly initialised; builders with a ``pretrained`` parameter (EfficientNet-Lite) load ImageNet
        backbone weights unless given ``pretrained=False``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), a bad ``num_classes``, an unknown
            override, or an input size too small for the network.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models()) or '(none)'}")
    check_num_classes(num_classes)
    builder = _REGISTRY[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; it accepts {accepted}")
    return builder(num_classes, **overrides)


def create_model_from_config(config: Mapping[str, Any]) -> SSD:
    """Rebuild a model from ``model.config_dict()`` (e.g. read back from a checkpoint).

    The rebuilt model is there to receive saved weights, so pretrained weights are never loaded: a builder with a
    ``pretrained`` parameter gets ``pretrained=False`` whatever the config records (which is how the original
    model's backbone started), and needs no weights package.

    Raises:
        ValueError: for missing or unknown keys, or anything :func:`create_model` rejects.
    """
    missing = [k for k in ("name", "num_classes", "image_size") if k not in config]
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if missing or unknown:
        raise ValueError(f"bad model config: missing keys {missing}, unknown keys {unknown}; keys are {_CONFIG_KEYS}")
    overrides = dict(config.get("overrides") or {})
    builder = _REGISTRY.get(config["name"])
    if builder is not None and _PRETRAINED in inspect.signature(builder).parameters:
        overrides[_PRETRAINED] = False
    return create_model(config["name"], config["num_classes"], image_size=tuple(config["image_size"]), **overrides)
