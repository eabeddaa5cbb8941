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
    "has_test_split",
]


def build_dataset(
    cfg: DataConfig,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
) -> Any:
    """The raw dataset (uint8 images, pixel boxes) of ``split`` (``train``, ``val`` or ``test``).

    Args:
        cfg: the data config; ``data.on_error`` says whether an unreadable image is skipped with a warning (its
            item is then None and the batch smaller) or stops the run. With ``data.split_file`` the train and val
            splits are the file's two parts of the training split (:mod:`multibox.data.holdout`).
        split: ``train``, ``val`` or ``test`` (see :func:`has_test_split`).
        image_size: the shapes set's image size.
        classes: the class names, in label order, to read a VOC set with (e.g. the training set's, so that a
            validation split lacking a class still numbers the others alike); default ``data.classes``.

    Raises:
        ValueError: a required path of the config is missing (the message names the key to set), or no test split.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if split == "test" and not has_test_split(cfg):
        raise ValueError("the data config names no test split (data.test_split, or data.test_images/annotations)")
    if cfg.split_file and split in ("train", "val") and cfg.kind != "shapes":
        from multibox.data.holdout import apply_split, read_split_file

        base = _read_split(cfg, "train", image_size, classes, keep_difficult=cfg.keep_difficult or split == "val")
        return apply_split(base, read_split_file(cfg.split_file), split, source=cfg.split_file)
    return _read_split(cfg, split, image_size, classes, keep_difficult=cfg.keep_difficult or split != "train")


def has_test_split(cfg: DataConfig) -> bool:
    """Whether ``cfg`` names a test split (besides train and val)."""
    if cfg.kind == "coco":
        return bool(cfg.test_images and cfg.test_annotations)
    return cfg.kind != "shapes" and cfg.test_split is not None


def _read_split(
    cfg: DataConfig,
    split: str,
    image_size: int | tuple[int, int] | None,
    classes: tuple[str, ...] | list[str] | None,
    keep_difficult: bool,
) -> Any:
    from multibox import data

    names = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}[split]
    classes = tuple(classes) if classes is not None else cfg.classes
    if cfg.kind == "shapes":
        n = cfg.shapes_train if split == "train" else cfg.shapes_val
        seed = cfg.shapes_seed if split == "train" else cfg.shapes_seed + 1_000_003
        size = image_size if image_size is not None else 128
        return data.ShapesDataset(
            num_images=n, image_size=size, seed=seed, min_size=cfg.shapes_min_size, max_size=cfg.shapes_max_size
        )
    if cfg.kind in ("voc", "yolo", "sources") and not cfg.root:
        example = {"voc": "VOCdevkit/VOC2007", "yolo": "my_data/data.yaml", "sources": "my_dataset.yaml"}[cfg.kind]
        raise ValueError(f"data.root is not set: pass --set data.root={example}")
    if cfg.kind == "voc":
        return data.VOCDetection(
            cfg.root, split=names, classes=classes, keep_difficult=keep_difficult, on_error=cfg.on_error
        )
    if cfg.kind == "yolo":
        from multibox.data.yolo import YOLODetection

        return YOLODetection(cfg.root, split=names, classes=classes, on_error=cfg.on_error)
    if cfg.kind == "sources":
        from multibox.data.sources import build_sources

        return build_sources(cfg.root, names, classes, keep_difficult=keep_difficult, on_error=cfg.on_error)
    images = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}[split]
    ann = {"train": cfg.train_annotations, "val": cfg.val_annotations, "test": cfg.test_annotations}[split]
    if not images or not ann:
        raise ValueError(f"data.{split}_images and data.{split}_annotations must be set for a COCO dataset")
    # Crowd regions are no training targets, but evaluation must see them (COCOeval ignores matches to them).
    return data.COCODetection(images, ann, include_crowd=split != "train", on_error=cfg.on_error)


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
