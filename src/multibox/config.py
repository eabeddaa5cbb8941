"""Run configuration: frozen dataclasses, YAML presets that mirror them 1:1, strict keys, dotted overrides.

A config is read only where things are composed (the model builder call, the training entry point); components
take explicit arguments. Presets live in ``multibox/configs/*.yaml`` (shipped with the package) and are loaded
by name (``load_config("ssd300_vgg16_voc")``) or from a path. Overrides use dotted keys: ``train.lr=0.002``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from multibox.config_checks import (
    _AT_LEAST_1,
    _NON_NEGATIVE,
    _POSITIVE,
    _UNIT,
    ConfigError,
    _build,
    _check_ranges,
    _Range,
)
from multibox.io.regular import file_kind
from multibox.user_input import parse_yaml, short

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "list_presets",
    "load_config",
]


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    Attributes:
        name: a registered builder (``multibox.list_models()``).
        num_classes: including the background; None takes it from the dataset (number of classes + 1).
        image_size: input ``(H, W)`` (or one int for square) the network and its priors are built for.
        priors: the default boxes: None for the builder's, a preset name (``voc300``, ``coco300``, ``voc512``,
            ``coco512``), ``auto`` (the builder's, refitted to the training data when they cover its boxes poorly,
            see :mod:`multibox.data.prior_fit`) or ``fit`` (search for better ones even when coverage is good).
        kwargs: further keyword arguments of the builder (e.g. ``width`` for ``ssd_tiny``).
    """

    name: str = "ssd300_vgg16"
    num_classes: int | None = None
    image_size: int | tuple[int, int] = 300
    priors: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    _SECTION: ClassVar[str] = "model"
    _RANGES: ClassVar[dict[str, _Range]] = {"num_classes": _Range(2), "image_size": _AT_LEAST_1}

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from.

    Attributes:
        kind: ``voc`` (a VOC layout at ``root``), ``coco`` (``images_dir`` + ``annotations``), ``yolo`` (a YOLO
            dataset: ``root`` is its ``data.yaml`` or a folder with ``images/`` + ``labels/``), ``sources`` (``root``
            is a dataset YAML naming several sources per split, see :mod:`multibox.data.sources`) or ``shapes``
            (the synthetic set, generated in memory).
        root: VOC root directory, YOLO dataset (folder or ``data.yaml``) or dataset YAML.
        train_split / val_split / test_split: VOC ``ImageSets/Main`` split names (YOLO, sources: the YAML's keys;
            a VOC ``train_split`` None: every annotation file);
            ``test_split`` None: no test split.
        split_file: a ``split.json`` (:mod:`multibox.data.holdout`) that divides the train split's images into
            train and val (a held-out validation set); ``val_split`` is then unused.
        classes: class names (None: collected from the annotations).
        train_images / val_images / train_annotations / val_annotations: COCO image folders and JSON files;
            test_images / test_annotations: an optional COCO test split.
        shapes_train / shapes_val: sizes of the synthetic splits; shapes_seed: their seed.
        shapes_min_size / shapes_max_size: the synthetic objects' side range, as a fraction of the image side.
        keep_difficult: keep ``difficult`` objects in training targets.
        augment: the paper's training augmentation (photometric, zoom-out, min-IoU crop, flip).
        expand_ratio: the zoom-out's largest side ratio (4 in the paper; 1 disables zoom-out).
        photometric: include the photometric distortion.
        num_workers: DataLoader workers.
        on_error: an image that cannot be read (truncated, corrupt, missing): ``skip`` it with a warning naming
            the file (the batch is one smaller; the run reports how many were skipped) or ``raise`` (stop the run).
    """

    kind: Literal["voc", "coco", "yolo", "sources", "shapes"] = "shapes"
    root: str | None = None
    train_split: str | None = "train"
    val_split: str = "test"
    test_split: str | None = None
    split_file: str | None = None
    classes: tuple[str, ...] | None = None
    train_images: str | None = None
    val_images: str | None = None
    train_annotations: str | None = None
    val_annotations: str | None = None
    test_images: str | None = None
    test_annotations: str | None = None
    shapes_train: int = 1000
    shapes_val: int = 200
    shapes_seed: int = 0
    shapes_min_size: float = 0.12
    shapes_max_size: float = 0.6
    keep_difficult: bool = False
    augment: bool = True
    expand_ratio: float = 4.0
    photometric: bool = True
    num_workers: int = 2
    on_error: Literal["skip", "raise"] = "skip"

    _SECTION: ClassVar[str] = "data"
    _RANGES: ClassVar[dict[str, _Range]] = {
        "shapes_train": _AT_LEAST_1, "shapes_val": _AT_LEAST_1, "shapes_seed": _NON_NEGATIVE,
        "shapes_min_size": _Range(0, 1, low_open=True), "shapes_max_size": _Range(0, 1, low_open=True),
        "expand_ratio": _Range(1), "num_workers": _NON_NEGATIVE,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        if self.shapes_min_size > self.shapes_max_size:
            raise ConfigError(
                f"data.shapes_min_size ({self.shapes_min_size}) must not exceed data.shapes_max_size "
                f"({self.shapes_max_size})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (defaults: the paper's VOC SSD300 recipe, §3 and §3.1).

    Attributes:
        batch_size: images per optimizer step (before accumulation).
        lr, momentum, weight_decay: SGD (1e-3, 0.9, 5e-4 in the paper).
        no_decay_bias_norm: exempt biases and normalisation weights from weight decay.
        warmup_iters, warmup_factor: linear warmup from ``lr * warmup_factor``.
        schedule: ``multistep`` (x ``gamma`` at each of ``milestones``) or ``cosine`` (to ``lr * min_lr_factor``).
        max_iters: optimizer steps; ``epochs`` instead, if set, counts passes over the data.
        grad_accum: micro-batches per optimizer step (the step divides its loss by the positives of all of them, as
            one batch of ``batch_size`` images would).
        amp: ``none``, ``bf16`` (CPU or CUDA), ``fp16`` (CUDA), or ``auto``: bf16 where the device computes it natively
            (CUDA with bf16, else fp16; CPUs with AMX or AVX512-BF16), else none (:func:`multibox.runtime.auto_amp`).
        channels_last: NHWC memory format.
        clip_grad_norm: max gradient norm, or None.
        seed: the run's seed (data order, augmentation, initialisation).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        out_dir: where checkpoints and logs go.
        log_every, ckpt_every, eval_every: in optimizer steps (0 disables checkpoints / periodic eval); every
            evaluation (on the val split, with the ``eval`` settings) is logged and ``best.pt`` keeps the best.
        init_weights: optional checkpoint or converted backbone weights to start from.
        max_minutes: a wall-clock budget for training (None: none); the schedule's end is fitted to it and the run
            stops in time with a final checkpoint (and evaluation).
        optimizer: ``sgd`` (with ``momentum``, the paper's) or ``adamw`` (``momentum`` is its beta1).
        backbone_lr_mult: the backbone's learning rate as a multiple of ``lr`` (lower it to fine-tune a pretrained
            backbone more gently than the freshly initialised extras and heads).
        freeze_bn: keep the backbone's BatchNorm layers in eval mode (their pretrained running statistics).
        freeze: module names (prefixes, e.g. ``backbone.features.stem``) whose parameters are not trained and whose
            BatchNorm layers stay in eval mode: a pretrained backbone's early, high-resolution stages, which cost
            most of the backward pass and change least in fine-tuning. An unknown name is an error.
        patience: stop when the validation mAP has not improved for this many evaluations (0: never).
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: none); the average
            is what is evaluated and saved in ``best.pt`` (``last.pt`` holds both).
    """

    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_decay_bias_norm: bool = False
    warmup_iters: int = 500
    warmup_factor: float = 1 / 3
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: tuple[int, ...] = (80_000, 100_000)
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    max_iters: int = 120_000
    epochs: int | None = None
    grad_accum: int = 1
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"
    channels_last: bool = False
    clip_grad_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/exp"
    log_every: int = 20
    ckpt_every: int = 5000
    eval_every: int = 0
    init_weights: str | None = None
    max_minutes: float | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    backbone_lr_mult: float = 1.0
    freeze_bn: bool = False
    freeze: tuple[str, ...] = ()
    patience: int = 0
    ema: float = 0.0

    _SECTION: ClassVar[str] = "train"
    _RANGES: ClassVar[dict[str, _Range]] = {
        "batch_size": _AT_LEAST_1, "lr": _POSITIVE, "momentum": _Range(0, 1, high_open=True),
        "weight_decay": _NON_NEGATIVE, "warmup_iters": _NON_NEGATIVE, "warmup_factor": _UNIT,
        "milestones": _NON_NEGATIVE, "gamma": _Range(0, 1, low_open=True), "min_lr_factor": _UNIT,
        "max_iters": _AT_LEAST_1, "epochs": _AT_LEAST_1, "grad_accum": _AT_LEAST_1, "clip_grad_norm": _POSITIVE,
        "seed": _NON_NEGATIVE, "log_every": _AT_LEAST_1, "ckpt_every": _NON_NEGATIVE, "eval_every": _NON_NEGATIVE,
        "max_minutes": _POSITIVE, "backbone_lr_mult": _NON_NEGATIVE, "patience": _NON_NEGATIVE,
        "ema": _Range(0, 1, high_open=True),
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        if not self.out_dir:
            raise ConfigError("train.out_dir must not be empty")


@dataclass(frozen=True)
class EvalConfig:
    """Post-processing and metric (ssd.pytorch's evaluation: score 0.01, NMS 0.45, top 200; VOC07 11-point).

    Attributes:
        metric: ``voc07`` (11-point), ``voc`` (area, VOC2010+) or ``coco`` (pycocotools).
        batch_size: images per forward pass.
    """

    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    pre_nms_top_k: int = 200
    top_k: int = 200
    iou_threshold: float = 0.5
    metric: Literal["voc07", "voc", "coco"] = "voc07"
    batch_size: int = 16

    _SECTION: ClassVar[str] = "eval"
    _RANGES: ClassVar[dict[str, _Range]] = {
        "score_thresh": _UNIT, "nms_thresh": _UNIT, "pre_nms_top_k": _AT_LEAST_1, "top_k": _AT_LEAST_1,
        "iou_threshold": _Range(0, 1, low_open=True), "batch_size": _AT_LEAST_1,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass(frozen=True)
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from nested mappings (None: the defaults).

    Raises:
        ConfigError: unknown keys, wrong types, values out of range, or a section that is not a mapping (the message
            names the setting).
    """
    return _build(Config, {} if data is None else data, "")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML/JSON-ready, round-trips through :func:`config_from_dict`)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def _preset_dir() -> Path:
    return Path(str(resources.files("multibox") / "configs"))


def list_presets() -> list[str]:
    """Names of the shipped YAML presets."""
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {short(dotted)}: {short(k)} is not a section")
    node[keys[-1]] = value


def _read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.is_file():
        preset = _preset_dir() / f"{name_or_path}.yaml"
        if not preset.is_file() and path.exists():  # a named pipe would block the read
            raise ConfigError(f"{path}: not a regular file: {file_kind(path.stat().st_mode)}")
        if not preset.is_file():
            presets = list_presets()
            raise FileNotFoundError(f"no config file or preset named {short(str(name_or_path))}; presets: {presets}")
        path = preset
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Notepad) is accepted
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from e
    try:
        tree = parse_yaml(text, str(path))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, train:, eval:)")
    return tree


def load_config(name_or_path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a preset by name or a YAML file by path, then apply ``key.sub=value`` overrides.

    Override values are parsed as YAML (``train.lr=2e-3``, ``model.image_size=[256,256]``, ``data.root=/x``),
    without aliases; a file's aliases may expand to at most :data:`MAX_YAML_NODES` values.

    Raises:
        FileNotFoundError: the name is neither a preset nor a file (the message lists the presets).
        ConfigError: (a ``ValueError``) the file is not UTF-8 YAML, unknown keys, wrong types, values out of range,
            or a malformed override (the message names the file or the key).
    """
    tree = _read_config_file(name_or_path) if name_or_path is not None else {}
    return config_from_dict(apply_overrides(tree, overrides))


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML, without aliases) to a config tree, in place.

    Raises:
        ConfigError: a malformed override (the message names it).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {short(item)} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"override {short(key.strip())}", aliases=False)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        _set(tree, key.strip(), value)
    return tree
