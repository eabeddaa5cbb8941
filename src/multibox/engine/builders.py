"""Composition from a config: datasets, the model, the optimizer. The only place configs are read."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from multibox.config import DataConfig, ModelConfig, TrainConfig

__all__ = [
    "build_dataset",
    "build_model",
    "build_optimizer",
]


def build_dataset(
    cfg: DataConfig,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
) -> Any:
    """The raw dataset (uint8 images, pixel boxes) of ``split`` (``train`` or ``val``).

    Args:
        cfg: the data config; ``data.on_error`` says whether an unreadable image is skipped with a warning (its
            item is then None and the batch smaller) or stops the run.
        split: ``train`` or ``val``.
        image_size: the shapes set's image size.
        classes: the class names, in label order, to read a VOC set with (e.g. the training set's, so that a
            validation split lacking a class still numbers the others alike); default ``data.classes``.

    Raises:
        ValueError: a required path of the config is missing (the message names the key to set).
    """
    from multibox import data

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.kind == "shapes":
        n = cfg.shapes_train if split == "train" else cfg.shapes_val
        seed = cfg.shapes_seed if split == "train" else cfg.shapes_seed + 1_000_003
        size = image_size if image_size is not None else 128
        return data.ShapesDataset(
            num_images=n, image_size=size, seed=seed, min_size=cfg.shapes_min_size, max_size=cfg.shapes_max_size
        )
    if cfg.kind == "voc":
        if not cfg.root:
            raise ValueError("data.root is not set: pass --set data.root=/path/to/VOCdevkit/VOC2007")
        return data.VOCDetection(
            cfg.root,
            split=cfg.train_split if split == "train" else cfg.val_split,
            classes=tuple(classes) if classes is not None else cfg.classes,
            keep_difficult=cfg.keep_difficult or split == "val",
            on_error=cfg.on_error,
        )
    images = cfg.train_images if split == "train" else cfg.val_images
    ann = cfg.train_annotations if split == "train" else cfg.val_annotations
    if not images or not ann:
        raise ValueError(f"data.{split}_images and data.{split}_annotations must be set for a COCO dataset")
    # Crowd regions are no training targets, but evaluation must see them (COCOeval ignores matches to them).
    return data.COCODetection(images, ann, include_crowd=split == "val", on_error=cfg.on_error)


def build_model(cfg: ModelConfig, num_classes: int, **overrides: Any) -> nn.Module:
    """The network of ``cfg`` for ``num_classes`` (background included); ``overrides`` replace builder arguments
    (e.g. a fitted ``prior_spec``).

    ``model.priors`` ``auto``/``fit`` build the builder's own priors here; :func:`multibox.engine.run.build_run`
    fits them to the data.
    """
    from multibox.models import create_model
    from multibox.priors import PRIOR_PRESETS

    kwargs: dict[str, Any] = dict(cfg.kwargs)
    kwargs["image_size"] = cfg.image_size
    if cfg.priors is not None and cfg.priors not in ("auto", "fit"):
        if cfg.priors not in PRIOR_PRESETS:
            raise ValueError(f"model.priors {cfg.priors!r} is not one of {[*sorted(PRIOR_PRESETS), 'auto', 'fit']}")
        kwargs["prior_spec"] = PRIOR_PRESETS[cfg.priors]
    kwargs.update(overrides)
    return create_model(cfg.name, num_classes, **kwargs)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (or AdamW) over parameter groups: the backbone at ``lr * backbone_lr_mult``, the rest at
    ``lr``; with ``no_decay_bias_norm`` biases and 1-d (norm/L2Norm) weights get no weight decay."""
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in in_backbone, cfg.no_decay_bias_norm and p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    params = [
        {
            "params": ps,
            "lr": cfg.lr * (cfg.backbone_lr_mult if is_backbone else 1.0),
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
        }
        for (is_backbone, no_decay), ps in sorted(groups.items(), key=lambda kv: kv[0])  # the head first
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
