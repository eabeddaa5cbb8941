"""``multibox demo``: train ``ssd_tiny`` on the synthetic shapes set on the CPU, evaluate, and show the results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from multibox.config import load_config
from multibox.engine.builders import build_dataset
from multibox.engine.evaluate import evaluate_detections, predict_dataset
from multibox.engine.train import train
from multibox.structures import Detections
from multibox.weights.checkpoint import model_from_checkpoint
from multibox.weights.io import load_checkpoint

__all__ = ["run_demo"]


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    max_iters: int | None = None,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and draw; no data or arguments needed.

    Args:
        out_dir: where the checkpoint, ``metrics.json``, ``pr_curves.png`` and ``detections.png`` go.
        max_iters: shorten (or lengthen) training; the preset's value by default.
        overrides: further ``section.key=value`` overrides of the ``ssd_tiny_shapes`` preset.
        progress: show the training progress bar.

    Returns:
        A summary dict (mAP by both VOC metrics, wall times, file paths), also written as ``summary.json``.
    """
    from multibox.viz import draw_detections, image_grid

    out = Path(out_dir)
    sets = [f"train.out_dir={out.as_posix()}", *overrides]
    if max_iters is not None:
        sets.append(f"train.max_iters={max_iters}")
    cfg = load_config("ssd_tiny_shapes", sets)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    result = train(cfg, progress=progress)
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(out / "last.pt")
    model = model_from_checkpoint(ckpt)
    val = build_dataset(cfg.data, "val", cfg.model.image_size)
    ev = cfg.eval
    kw = {"batch_size": ev.batch_size, "score_thresh": ev.score_thresh, "nms_thresh": ev.nms_thresh, "top_k": ev.top_k}
    t1 = time.perf_counter()
    dets, targets, _ = predict_dataset(model, val, **kw)  # one pass, both VOC metrics
    voc07 = evaluate_detections(dets, targets, metric="voc07", class_names=val.classes, out_dir=out)
    area = evaluate_detections(dets, targets, metric="voc", class_names=val.classes)
    eval_s = time.perf_counter() - t1
    shown = [Detections(*(t[d.scores >= 0.3] for t in d)) for d in dets[:8]]
    pictures = [draw_detections(val[i][0], shown[i], val.classes, 0.3) for i in range(len(shown))]
    image_grid(pictures, columns=4, path=out / "detections.png")
    summary = {
        "mAP_voc07": voc07["mAP"],
        "mAP_area": area["mAP"],
        "per_class_voc07": {k: v for k, v in voc07.items() if k.startswith("AP/")},
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "train_steps": result.step,
        "train_images_per_second": round(result.images_per_second, 1),
        "train_amp": result.amp,
        "train_data_wait_fraction": round(result.data_wait_fraction, 3),
        "val_images": len(val),
        "checkpoint": str(out / "last.pt"),
        "metrics": str(out / "metrics.json"),
        "pr_curves": str(out / "pr_curves.png"),
        "detections": str(out / "detections.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
