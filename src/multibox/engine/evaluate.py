"""Inference over a dataset and its evaluation (VOC07 11-point, VOC2010+ area, COCO)."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from multibox.postprocess import postprocess
from multibox.runtime import Runner, autocast_context, fastest_path, prepare
from multibox.structures import Detections

__all__ = [
    "EvalOutput",
    "evaluate",
    "evaluate_detections",
    "predict_dataset",
    "preprocessed_images",
]


class _EvalItems(Dataset):
    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any], int] | None:
        item = self.dataset[i]
        if item is None:  # an unreadable image the reader skipped (it warned)
            return None
        image, target = item
        h, w = image.shape[-2:]
        x, _, _ = self.transform(image, target["boxes"], target["labels"], None)
        return x, target, (int(h), int(w))


def _collate(batch: list[Any]) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]] | None:
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]


def _eval_runner(
    model: nn.Module,
    device: torch.device,
    *,
    amp: str,
    channels_last: bool,
    fast: bool,
    int8_calibration: torch.Tensor | None,
) -> Runner:
    """How :func:`predict_dataset` runs ``model`` (already in eval mode on ``device``): the fastest path (int8 with
    a calibration batch), or eager with ``amp`` autocast and optionally channels_last."""
    if fast or int8_calibration is not None:
        path = fastest_path(device, int8=int8_calibration is not None)
        return prepare(model, device, path, int8_calibration)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Runner(model, functools.partial(autocast_context, device, amp), channels_last, "eager")


@torch.inference_mode()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    fast: bool = False,
    int8_calibration: torch.Tensor | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
) -> tuple[list[Detections], list[dict[str, Any]], float]:
    """Run the model over a dataset.

    ``fast`` replaces ``amp`` and ``channels_last`` by :func:`multibox.runtime.fastest_path` (BatchNorm folded,
    channels_last, bf16 autocast where native, the head in float32); ``int8_calibration`` (normalised images,
    better not the evaluated ones) makes it the int8 backbone of :func:`multibox.models.quantize.quantize_int8`
    (CPU only).

    Returns:
        ``(detections, targets, seconds)``: per image, detections with boxes in the image's original pixels,
        the dataset's raw targets (pixel boxes, labels, ``difficult`` when present), and the wall time.
    """
    from multibox.data import eval_transform

    device = torch.device(device)
    pre = model.preprocess
    items = _EvalItems(dataset, eval_transform(pre.image_size, pre.mean, pre.std))
    loader = DataLoader(items, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    model.eval().to(device)
    runner = _eval_runner(model, device, amp=amp, channels_last=channels_last, fast=fast,
                          int8_calibration=int8_calibration)  # fmt: skip
    priors = model.priors.to(device)
    post = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "pre_nms_top_k": pre_nms_top_k, "top_k": top_k}
    dets: list[Detections] = []
    targets: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for batch in loader:
        if batch is None:
            continue
        images, tgts, sizes = batch
        pred = runner(images.to(device))
        out = postprocess(pred, priors, **post)
        for d, (h, w) in zip(out, sizes, strict=True):
            dets.append(Detections(*(t.cpu() for t in d.to_pixels(h, w))))
        targets += tgts
    return dets, targets, time.perf_counter() - t0


def preprocessed_images(model: nn.Module, dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of ``dataset`` as the model sees them at inference (``Tensor[n, 3, H, W]``), e.g. to
    calibrate :func:`multibox.models.quantize.quantize_int8`."""
    from multibox.data import eval_transform

    pre = model.preprocess
    items = _EvalItems(dataset, eval_transform(pre.image_size, pre.mean, pre.std))
    taken = [item[0] for item in (items[i] for i in range(min(n, len(items)))) if item is not None]
    if not taken:
        raise ValueError("no images to take: the dataset is empty, unreadable, or n < 1")
    return torch.stack(taken)


class EvalOutput(dict):
    """``dict`` of metric names to values, with the raw result object under ``.result``."""

    result: Any = None


def evaluate_detections(
    dets: Sequence[Detections],
    targets: Sequence[dict[str, Any]],
    *,
    metric: str = "voc07",
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
) -> EvalOutput:
    """Score detections (pixels) against raw targets; see :func:`evaluate` for the metrics and files."""
    from multibox import metrics

    out = EvalOutput()
    if metric in ("voc07", "voc"):
        gts = [
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "difficult": t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool)),
            }
            for t in targets
        ]
        result = metrics.voc_ap(dets, gts, iou_threshold=iou_threshold, use_07_metric=metric == "voc07")
        out.update(result.as_dict(class_names or None))
        out.result = result
    elif metric == "coco":
        gts = [
            {"boxes": t["boxes"], "labels": t["labels"], "iscrowd": t.get("iscrowd", torch.zeros(len(t["labels"])))}
            for t in targets
        ]
        result = metrics.coco_evaluate(dets, gts)
        out.update(result)
        out.result = result
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'voc07', 'voc' or 'coco'")
    out["images"] = len(targets)
    if out_dir is not None:
        _write(out, metric, list(class_names or []), Path(out_dir))
    return out


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    metric: str = "voc07",
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    **predict_kwargs: Any,
) -> EvalOutput:
    """Evaluate ``model`` on ``dataset``.

    Args:
        model: an SSD (its ``preprocess`` says how to prepare images).
        dataset: items ``(uint8 image, {"boxes" (pixels), "labels", optional "difficult"/"iscrowd"})``.
        metric: ``voc07`` (11-point AP, as ssd.pytorch reports), ``voc`` (area AP, VOC2010+) or ``coco``.
        iou_threshold: the VOC metrics' IoU (the devkit counts a match when IoU exceeds it).
        class_names: foreground names for the per-class table (default: ``dataset.classes``).
        out_dir: if given, writes ``metrics.json`` (and ``pr_curves.png`` for VOC metrics).
        **predict_kwargs: passed to :func:`predict_dataset` (batch_size, device, score_thresh, ...).

    Returns:
        ``{"mAP": ..., "AP/<class>": ..., "images": n, "seconds": t}`` for VOC; the 12 COCO stats for COCO.
    """
    from multibox.data.checks import skipped_when_built

    names = list(class_names if class_names is not None else getattr(dataset, "classes", []))
    dets, targets, seconds = predict_dataset(model, dataset, **predict_kwargs)
    out = evaluate_detections(
        dets, targets, metric=metric, iou_threshold=iou_threshold, class_names=names, out_dir=None
    )
    out["seconds"] = seconds
    # Unreadable images the reader skipped with a warning, when read or when built: the metric is over the others.
    skipped = len(dataset) - len(targets) + skipped_when_built(dataset)  # type: ignore[arg-type]
    if skipped:
        out["skipped"] = skipped
    if out_dir is not None:
        _write(out, metric, names, Path(out_dir))
    return out


def _write(out: EvalOutput, metric: str, class_names: Sequence[str], out_dir: Path) -> None:
    from multibox import metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
    (out_dir / "metrics.json").write_text(json.dumps({"metric": metric, **clean}, indent=2))
    if metric != "coco":
        metrics.plot_pr_curves(out.result, list(class_names) or None, out_dir / "pr_curves.png")
