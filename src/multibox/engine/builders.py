"""Composition from a config: datasets, the model, the optimizer. The only place configs are read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from multibox.config import DataConfig, ModelConfig, TrainConfig
from multibox.engine.checkpoint import CheckpointError
from multibox.user_input import short

__all__ = [
    "build_dataset",
    "build_model",
    "build_optimizer",
    "has_test_split",
    "load_model_state",
    "model_from_checkpoint",
    "resolve_device",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU.

    Raises:
        ValueError: not a device name, or ``cuda`` on a machine without a usable GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {short(name)} is not a device name; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; use cpu or auto")
    return device


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


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild a model from a checkpoint written by :func:`multibox.train` and load its weights.

    Args:
        ckpt: the loaded checkpoint.
        source: its file, for messages.

    Raises:
        CheckpointError: (a ``ValueError``) not a multibox checkpoint, or its weights do not fit the model it names
            (the message names the first key that differs and both shapes).
    """
    from multibox.models import create_model_from_config

    if "model_args" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{source}: not a multibox checkpoint: it has no 'model_args'/'model' entries (convert it first: "
            "multibox convert)"
        )
    model = create_model_from_config(ckpt["model_args"])
    load_model_state(model, ckpt["model"], str(source))
    return model


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
