"""Detection on image files (``multibox detect``) and model summaries (``multibox info``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multibox.engine.builders import model_from_checkpoint, resolve_device
from multibox.engine.checkpoint import load_checkpoint
from multibox.onnx_runtime import IMAGE_SUFFIXES, detection_record, expand_inputs
from multibox.postprocess import postprocess
from multibox.structures import Detections

__all__ = ["IMAGE_SUFFIXES", "detect", "expand_inputs", "load_detector", "model_info"]


def load_detector(weights: str | Path) -> tuple[nn.Module, list[str]]:
    """A model and its class names from a multibox checkpoint."""
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt)
    classes = list(ckpt.get("classes", []))
    return model, classes


@torch.inference_mode()
def detect(
    weights: str | Path | nn.Module,
    inputs: Sequence[str | Path],
    *,
    out_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 8,
    score_thresh: float = 0.3,
    nms_thresh: float = 0.45,
    top_k: int = 200,
    device: str = "auto",
    draw: bool = True,
    fast: bool = False,
) -> list[dict[str, Any]]:
    """Detect objects in image files, in batches.

    Args:
        weights: a checkpoint path (or an already built model).
        inputs: image files and/or folders of images.
        out_dir: writes ``detections.json`` and, with ``draw``, one annotated image per input.
        class_names: overrides the checkpoint's class names.
        batch_size: images per forward pass.
        score_thresh: the lowest score reported.
        fast: run the fastest eager path (:func:`multibox.engine.bench.fast_path`: BatchNorm folded, channels_last,
            bf16 autocast where supported); check it with ``multibox bench`` first.

    Returns:
        Per image ``{"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels of the original
        image), "score", "label", "class"}]}``.
    """
    from multibox.data import eval_transform, read_image
    from multibox.engine.evaluate import scale_detections
    from multibox.viz import draw_detections

    if isinstance(weights, nn.Module):
        model, names = weights, list(class_names or [])
    else:
        model, names = load_detector(weights)
    names = list(class_names) if class_names is not None else names
    dev = resolve_device(device)
    model.eval().to(dev)
    pre = model.preprocess
    net, ctx, channels_last = model, nullcontext, False
    if fast:
        from multibox.engine.bench import fast_path

        net, ctx, channels_last, _ = fast_path(model, dev)
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    files = expand_inputs(inputs)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = [read_image(f) for f in chunk]
        empty = torch.zeros(0, 4)
        batch = torch.stack([transform(im, empty, torch.zeros(0, dtype=torch.int64), None)[0] for im in images])
        batch = batch.to(dev)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with ctx():
            pred = net(batch)
        dets = postprocess(pred, model.priors.to(dev), score_thresh=score_thresh, nms_thresh=nms_thresh, top_k=top_k)
        for f, im, d in zip(chunk, images, dets, strict=True):
            h, w = im.shape[-2:]
            px = Detections(*(t.cpu() for t in scale_detections(d, h, w)))
            results.append(detection_record(f, w, h, px, names))
            if out is not None and draw:
                draw_detections(im, px, names, score_thresh).save(out / f"{f.stem}_det.jpg", quality=90)
    if out is not None:
        (out / "detections.json").write_text(json.dumps(results, indent=2))
    return results


def model_info(model: nn.Module) -> dict[str, Any]:
    """Parameters, priors, source feature maps and a FLOPs estimate (2 x multiply-adds of convs and linears)."""
    flops = 0

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            flops += 2 * k * out.numel() // out.shape[0]
        elif isinstance(mod, nn.Linear):
            flops += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    h, w = model.preprocess.image_size
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, h, w, device=model.priors.device))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "priors": int(model.priors.shape[0]),
        "feature_maps": [list(f) for f in model.feature_maps],
        "image_size": [h, w],
        "num_classes": model.num_classes,
        "gflops": flops / 1e9,
    }
