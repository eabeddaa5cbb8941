"""Detection on image files (``multibox detect``) and model summaries (``multibox info``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multibox.files import DetectionResults, OnError, find_images, run_detection
from multibox.postprocess import postprocess
from multibox.runtime import Runner, fastest_path, load_detector, prepare, resolve_device
from multibox.structures import Detections

__all__ = ["detect", "model_info"]


def _model_and_names(weights: str | Path | nn.Module, class_names: Sequence[str] | None) -> tuple[nn.Module, list[str]]:
    """The detector (loaded from a checkpoint unless given) and its class names, ``class_names`` overriding."""
    if isinstance(weights, nn.Module):
        model, names = weights, list(class_names or [])
    else:
        model, names = load_detector(weights)
    return model, (list(class_names) if class_names is not None else names)


def _batch_detector(
    model: nn.Module, device: str, fast: bool, post: dict[str, Any]
) -> Callable[[list[torch.Tensor]], list[tuple[int, int, Detections]]]:
    """Put ``model`` in eval mode on ``device``; a function from a list of ``uint8 Tensor[3, H, W]`` images to
    ``(width, height, detections in pixels on the CPU)`` per image, post-processed with ``post``."""
    from multibox.data import eval_transform

    dev = resolve_device(device)
    model.eval().to(dev)
    pre = model.preprocess
    runner = prepare(model, dev, fastest_path(dev)) if fast else Runner(model)
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)

    def detect_batch(images: list[torch.Tensor]) -> list[tuple[int, int, Detections]]:
        batch = torch.stack([transform(im, empty_boxes, empty_labels, None)[0] for im in images]).to(dev)
        pred = runner(batch)
        dets = postprocess(pred, model.priors.to(dev), **post)
        out = []
        for im, d in zip(images, dets, strict=True):
            h, w = im.shape[-2:]
            out.append((w, h, Detections(*(t.cpu() for t in d.to_pixels(h, w)))))
        return out

    return detect_batch


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
    on_error: OnError = "skip",
) -> DetectionResults:
    """Detect objects in image files, in batches; a file that cannot be read is skipped with a warning.

    Args:
        weights: a checkpoint path (or an already built model).
        inputs: image files and/or folders of images (walked recursively; see :mod:`multibox.files` for what is
            read, what is reported as skipped and what is ignored).
        out_dir: writes ``detections.json``, ``skipped.json`` (when some input was skipped) and, with ``draw``, one
            annotated picture per image at its path relative to the folder it was found in (``a/x.jpg`` ->
            ``a/x_det.jpg``).
        class_names: overrides the checkpoint's class names.
        batch_size: images per forward pass.
        score_thresh: the lowest score reported.
        fast: run the fastest eager path (:func:`multibox.runtime.fastest_path`: BatchNorm folded, channels_last,
            bf16 autocast where the CPU computes bf16 natively); check it with ``multibox bench`` first.
        on_error: ``skip`` an unreadable input with a :class:`~multibox.files.SkippedInputWarning`, or ``raise``
            :class:`~multibox.files.BadInputError`.

    Returns:
        Per image ``{"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels of the original
        image), "score", "label", "class"}], "output"}`` (a :class:`~multibox.files.DetectionResults` list whose
        ``skipped`` lists the inputs skipped and why).

    Raises:
        FileNotFoundError: no image file among ``inputs``.
        ValueError: ``batch_size`` < 1 or ``score_thresh`` outside [0, 1].
    """
    from multibox.data import read_image

    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    found = find_images(inputs, exclude=out_dir)
    model, names = _model_and_names(weights, class_names)
    post = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "top_k": top_k}
    detect_batch = _batch_detector(model, device, fast, post)
    return run_detection(
        found, read_image, detect_batch, batch_size=batch_size, names=names, out_dir=out_dir, draw=draw,
        score_thresh=score_thresh, on_error=on_error,
    )  # fmt: skip


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
