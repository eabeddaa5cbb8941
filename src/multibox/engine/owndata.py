"""Training on one's own data in one command: detect a dataset's format and compose a :class:`~multibox.config.Config`.

``multibox train --data PATH`` lands here. :func:`~multibox.data.formats.detect_format` says what ``PATH`` is (a
VOC folder, a COCO JSON and its image folder, a YOLO dataset, or a dataset YAML of ours,
:mod:`multibox.data.sources`) and which splits it has; :func:`plan_run` starts from the fine-tuning preset
(:data:`DEFAULT_PRESET`), takes the classes and splits from the data, makes a seeded held-out validation split when
the data has none (``split.json`` in the run folder, reusable), picks bf16/channels_last/AMP by hardware, evaluates
about once per epoch and gives the run a fresh folder
``<out>/<name>-<N>``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from multibox.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config
from multibox.data.formats import DataSource, detect_format

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_PRESET",
    "RunPlan",
    "next_run_dir",
    "open_dataset",
    "parse_duration",
    "plan_run",
]

#: The recipe a run on one's own data starts from.
DEFAULT_PRESET = "ssdlite320_efficientnet_lite0_finetune"
#: Passes over the data when neither ``--epochs`` nor ``--time`` is given.
DEFAULT_EPOCHS = 30
#: The share of the training images held out for validation when the data names no validation split.
VAL_FRACTION = 0.1


def open_dataset(path: str | Path, split: str = "train") -> Any:
    """The reader of ``split`` (``train``, ``val``, ``test``) of the dataset at ``path``, whatever its format (the
    whole training split when ``val`` is to be held out)."""
    from multibox.config import DataConfig
    from multibox.engine.builders import build_dataset

    return build_dataset(DataConfig(**detect_format(path).data), split)


def parse_duration(text: str) -> float:
    """Minutes from ``"90s"``, ``"10m"``, ``"1.5h"`` or a plain number of minutes.

    Raises:
        ValueError: not such a duration, or not positive.
    """
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    try:
        value = float(t[:-1] if scale is not None else t) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"--time {text!r}: expected a duration like 90s, 10m or 1.5h") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"--time {text!r}: must be a positive duration")
    return value


def next_run_dir(out: str | Path, name: str) -> Path:
    """The first ``<out>/<name>-<N>`` (N = 1, 2, ...) that does not exist yet: a run never overwrites another."""
    out = Path(out)
    n = 1
    while (out / f"{name}-{n}").exists():
        n += 1
    return out / f"{name}-{n}"


@dataclass
class RunPlan:
    """A composed run on one's own data.

    Attributes:
        config: the run's config (``train.out_dir`` is ``run_dir``).
        source: what the data is.
        run_dir: the run's fresh folder.
        classes: the class names read from the data.
        train_images / val_images: how many images each split has.
        split_file: the ``split.json`` of a held-out validation split, or None when the data names one.
        notes: lines for people (format, classes, splits, hardware).
    """

    config: Config
    source: DataSource
    run_dir: Path
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    split_file: Path | None = None
    notes: list[str] = field(default_factory=list)


def _holdout(config: Config, train_set: Any, run_dir: Path, reuse: str | Path | None) -> tuple[Path, int, int]:
    """Write (or copy ``reuse``) the run's ``split.json``; returns it and the train/val image counts."""
    from multibox.data.combine import image_keys
    from multibox.data.holdout import apply_split, make_split, read_split_file, write_split_file

    path = run_dir / "split.json"
    if reuse is not None:
        split = read_split_file(reuse)
        apply_split(train_set, split, "train", source=str(reuse))  # every key must be in the data
        apply_split(train_set, split, "val", source=str(reuse))
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reuse, path)
    else:
        split = make_split(image_keys(train_set), VAL_FRACTION, seed=config.train.seed)
        write_split_file(path, split)
    return path, len(split["train"]), len(split["val"])


def _plan_notes(
    config: Config,
    source: DataSource,
    classes: tuple[str, ...],
    counts: tuple[int, int],
    split_path: Path | None,
    run_dir: Path,
    dev: Any,
) -> list[str]:
    """The plan's summary for people: data, classes, image counts, model and precision, budget, run folder."""
    n_train, n_val = counts
    hold = f"held out {n_val} of the training images (seed {config.train.seed}, {split_path})" if split_path else ""
    tc = config.train
    return [
        f"data: {source.description}",
        f"classes ({len(classes)}): {', '.join(classes)}",
        f"images: train {n_train}, val {n_val}{' (' + hold + ')' if hold else ''}"
        + (", test split present" if source.has_test else ", no test split"),
        f"model: {config.model.name} at {config.model.image_size}, device {dev}, amp {tc.amp}, "
        f"channels_last {tc.channels_last}, batch {tc.batch_size}, evaluating every {tc.eval_every} steps",
        "budget: " + (f"{tc.max_minutes:g} min" if tc.max_minutes else f"{tc.epochs} epochs"),
        f"run folder: {run_dir}",
    ]


def plan_run(
    data: str | Path,
    *,
    model: str | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    image_size: int | None = None,
    device: str = "auto",
    out: str | Path = "runs",
    split_file: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    preset: str = DEFAULT_PRESET,
) -> RunPlan:
    """Compose a training run on the dataset at ``data`` (see the module docstring).

    Args:
        data: the dataset (see :func:`~multibox.data.formats.detect_format`).
        model: a registered model (default the preset's); another model than the preset's drops its ``freeze`` list
            and builder arguments.
        epochs: passes over the training images.
        minutes: a wall-clock budget; the schedule is fitted to it and the run ends with a final evaluation. Neither
            given: the preset's budget (``train.max_minutes``), else :data:`DEFAULT_EPOCHS` epochs.
        image_size: the square input side (default the preset's).
        device: ``auto``, ``cpu``, ``cuda``...
        out: the folder runs go to, each in a fresh ``<name>-<N>``.
        split_file: a ``split.json`` of an earlier run to reuse (data without a validation split).
        overrides: ``section.key=value`` settings applied last (full control).
        preset: the recipe to start from.

    Raises:
        DatasetError: the data cannot be recognised or read (the message names the file).
        ConfigError: an override is malformed or out of range.
    """
    from multibox.engine.builders import build_dataset

    source = detect_format(data)
    tree, dev = _recipe(source, preset, model, image_size, device, epochs, minutes)
    run_dir = next_run_dir(out, source.name)
    tree["train"]["out_dir"] = str(run_dir)
    apply_overrides(tree, overrides)
    config = config_from_dict(tree)

    train_set = build_dataset(config.data, "train")
    classes = tuple(train_set.classes)
    split_path = None
    if source.has_val:
        n_train, n_val = len(train_set), len(build_dataset(config.data, "val", classes=classes))
    else:
        split_path, n_train, n_val = _holdout(config, train_set, run_dir, split_file)
        tree["data"]["split_file"] = str(split_path.resolve())
    batch = min(config.train.batch_size, n_train)
    tree["train"]["batch_size"] = batch
    if not any(o.startswith("train.eval_every=") for o in overrides):
        tree["train"]["eval_every"] = max(1, n_train // batch)  # about once per epoch
    config = config_from_dict(tree)
    notes = _plan_notes(config, source, classes, (n_train, n_val), split_path, run_dir, dev)
    return RunPlan(config, source, run_dir, classes, n_train, n_val, split_path, notes)


_PATH_KEYS = ("root", "train_images", "val_images", "test_images", "train_annotations", "val_annotations",
              "test_annotations")  # fmt: skip


def _recipe(
    source: DataSource,
    preset: str,
    model: str | None,
    image_size: int | None,
    device: str,
    epochs: int | None,
    minutes: float | None,
) -> tuple[dict[str, Any], torch.device]:
    """The preset's config tree with the data, the model, the hardware's precision and the budget filled in."""
    from multibox.runtime import auto_amp, resolve_device

    if epochs is not None and minutes is not None:
        raise ValueError("give a number of epochs or a time budget, not both")
    tree = config_to_dict(load_config(preset))
    if model is not None and model != tree["model"]["name"]:
        tree["model"].update(name=model, kwargs={})  # the preset's builder arguments belong to its model
        tree["train"]["freeze"] = []
    if image_size is not None:
        tree["model"]["image_size"] = image_size
    tree["model"]["num_classes"] = None
    # absolute paths: the run's config (in every checkpoint) reads the same data from any working folder
    data = {k: str(Path(v).resolve()) if k in _PATH_KEYS and v else v for k, v in source.data.items()}
    tree["data"].update({"root": None, "val_split": "val", "test_split": None, "split_file": None, **data})
    dev = resolve_device(device)
    tree["train"].update(device=device, amp=auto_amp(dev))
    if dev.type == "cuda":
        tree["train"]["channels_last"] = True
    if epochs is not None:
        tree["train"].update(epochs=epochs, max_minutes=None)
    elif minutes is not None:
        tree["train"].update(epochs=None, max_minutes=minutes)
    elif tree["train"]["max_minutes"] is None:  # the preset's own budget, else a number of epochs
        tree["train"]["epochs"] = DEFAULT_EPOCHS
    return tree, dev


@dataclass
class OwnDataResult:
    """What :func:`train_own_data` leaves behind.

    Attributes:
        plan: the composed run.
        train: the :class:`~multibox.engine.train.TrainResult`.
        weights: the checkpoint evaluated on the test split (``best.pt``, else ``last.pt``).
        test_metrics: its test-split metrics, or None when the data has no test split.
        report: the report folder's ``report.html``, or None.
    """

    plan: RunPlan
    train: Any
    weights: Path | None
    test_metrics: dict[str, Any] | None = None
    report: Path | None = None

    def summary(self) -> list[str]:
        """The end-of-run lines: best validation mAP and its step, the test mAP, where the files are."""
        r, d, ec = self.train, self.plan.run_dir, self.plan.config.eval
        what = {"voc07": "VOC07 11-point", "voc": "VOC area", "coco": "COCO"}[ec.metric]
        what += f", IoU {ec.iou_threshold:g}" if ec.metric != "coco" else ", IoU 0.5:0.95"
        lines = [f"trained {r.step} steps" + (f" (stopped early: {r.stop_reason})" if r.stop_reason else "")]
        if r.best is not None:
            lines.append(f"best validation mAP {r.best[1]:.4f} ({what}) at step {r.best[0]} -> {d / 'best.pt'}")
        if self.test_metrics is not None:
            key = "AP" if "AP" in self.test_metrics else "mAP"
            lines.append(f"test {key} {self.test_metrics[key]:.4f} on {self.test_metrics['images']} images "
                         f"({self.weights.name}) -> {d / 'test_metrics.json'}")  # fmt: skip
        lines.append(f"files: {d} (last.pt, best.pt, metrics.jsonl, results.csv, config.json"
                     + (", split.json" if self.plan.split_file else "")
                     + (f", {self.report.relative_to(d)}" if self.report else "") + ")")  # fmt: skip
        return lines


def evaluate_checkpoint(weights: Path, config: Config, split: str, out_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on ``split`` of ``config``'s data with its ``eval`` settings (float32); with ``out_dir``,
    writes ``<split>_metrics.json`` there."""
    import json
    import math

    from multibox.engine.builders import build_dataset
    from multibox.engine.evaluate import evaluate
    from multibox.runtime import resolve_device
    from multibox.weights.checkpoint import model_from_checkpoint
    from multibox.weights.io import load_checkpoint

    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt, weights)
    dataset = build_dataset(config.data, split, classes=tuple(ckpt["classes"]))
    ec = config.eval
    out = evaluate(model, dataset, metric=ec.metric, iou_threshold=ec.iou_threshold, class_names=list(ckpt["classes"]),
                   batch_size=ec.batch_size, device=resolve_device(config.train.device), score_thresh=ec.score_thresh,
                   nms_thresh=ec.nms_thresh, pre_nms_top_k=ec.pre_nms_top_k, top_k=ec.top_k)  # fmt: skip
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
    metrics["weights"] = str(weights)
    if out_dir is not None:
        (out_dir / f"{split}_metrics.json").write_text(json.dumps({"metric": ec.metric, **metrics}, indent=2))
    return {**out, "weights": str(weights)}


def train_own_data(plan: RunPlan, *, progress: bool = True, log: Any = print) -> OwnDataResult:
    """Train ``plan``'s run, then evaluate its best checkpoint on the test split (when there is one) and write the
    report folder (:func:`multibox.engine.report.build_report`, on the validation split).

    Args:
        plan: from :func:`plan_run`.
        progress: show the progress bar.
        log: receives the human-readable lines (None: silent).
    """
    import yaml

    from multibox.engine.builders import has_test_split
    from multibox.engine.train import train

    say = log or (lambda _line: None)
    for line in plan.notes:
        say(line)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(plan.config), sort_keys=False))
    result = train(plan.config, progress=progress, log=log)
    best, last = plan.run_dir / "best.pt", plan.run_dir / "last.pt"
    weights = best if best.is_file() else last if last.is_file() else None
    out = OwnDataResult(plan, result, weights)
    if weights is not None and has_test_split(plan.config.data):
        out.test_metrics = evaluate_checkpoint(weights, plan.config, "test", plan.run_dir)
    if weights is not None:
        from multibox.engine.report import build_report

        out.report = build_report(plan.run_dir, weights=weights, device=plan.config.train.device)
    return out
