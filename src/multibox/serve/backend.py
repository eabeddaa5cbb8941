"""A checkpoint or an exported ONNX file as a batch detector for the server.

This is the server's only door into the inference runtime (:mod:`multibox.runtime`: loading a detector,
preparing its fast path, running it): a backend's ``prepare`` turns one decoded image into the network's input (on
a request's thread), its ``run`` takes a batch of them (on the inference thread) and returns detections in each
image's pixels.

``fast`` on a checkpoint picks the first path that agrees with float32 on synthetic images (VOC AP of the path's
detections against fp32's, :func:`multibox.engine.bench.path_agreement`, at least :data:`MIN_AGREEMENT`): the int8
backbone on the CPU, then :func:`multibox.runtime.fastest_path` (bf16 autocast where the device computes bf16
natively, AMP on CUDA, else channels_last with BatchNorm folded); float32 when none agrees.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from multibox.engine.bench import path_agreement
from multibox.postprocess import postprocess
from multibox.runtime import Runner, fastest_path, load_detector, prepare, resolve_device
from multibox.structures import Detections

__all__ = ["MIN_AGREEMENT", "Backend", "ModelInfo", "OnnxBackend", "TorchBackend", "choose_fast_path", "load_backend"]

#: The lowest agreement with float32 (VOC AP of a path's detections against fp32's) a fast path must reach.
MIN_AGREEMENT = 0.95


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` reports.

    Attributes:
        name: the model's registry name.
        classes: foreground class names (label ``k`` is ``classes[k - 1]``).
        input_size: the network's input ``(H, W)``.
        runtime: how it runs, e.g. ``"torch bf16 cpu"`` or ``"onnxruntime CPUExecutionProvider"``.
        source: the checkpoint or ONNX file.
        min_score: the lowest score threshold the runtime can honour (an ONNX graph's baked one).
        max_detections: the most detections per image it can return.
        agreement: the fast path's agreement with float32 (None when not measured).
    """

    name: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    runtime: str
    source: str
    min_score: float = 0.0
    max_detections: int = 200
    agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain types."""
        return {"name": self.name, "classes": list(self.classes), "input_size": list(self.input_size),
                "runtime": self.runtime, "source": self.source, "min_score": self.min_score,
                "max_detections": self.max_detections, "agreement": self.agreement}  # fmt: skip


class Backend(Protocol):
    """A detector the server can batch."""

    info: ModelInfo

    def prepare(self, image: Tensor) -> Any:
        """The network's input for one ``uint8 Tensor[3, H, W]`` image."""

    def run(
        self, inputs: Sequence[Any], sizes: Sequence[tuple[int, int]], score: float, top_k: int
    ) -> list[Detections]:
        """Detections (boxes xyxy in the pixels of images of ``sizes = (H, W)``, scores > ``score``, at most
        ``top_k`` per image, by decreasing score) for prepared ``inputs``."""


_EMPTY_BOXES, _EMPTY_LABELS = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)


def _synthetic_inputs(model: nn.Module, n: int, seed: int) -> Tensor:
    """``n`` synthetic-shapes images as the network's normalised input ``Tensor[n, 3, H, W]``."""
    from multibox.data import ShapesDataset, eval_transform

    pre = model.preprocess
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    shapes = ShapesDataset(n, tuple(pre.image_size), seed=seed)
    return torch.stack([transform(shapes[i][0], _EMPTY_BOXES, _EMPTY_LABELS, None)[0] for i in range(n)])


def _detections(runner: Runner, x: Tensor, priors: Tensor) -> list[Detections]:
    with torch.inference_mode():
        dets = postprocess(runner(x), priors)
    return [Detections(d.boxes.float().cpu(), d.scores.float().cpu(), d.labels.cpu()) for d in dets]


def choose_fast_path(model: nn.Module, device: torch.device) -> tuple[Runner, float | None]:
    """``(runner, agreement with fp32)``: the first of int8 (CPU) and the device's fastest path
    (:func:`multibox.runtime.fastest_path`: bf16 where native, else channels_last) that agrees with fp32 on
    synthetic images; the fp32 model itself (agreement None) when none does."""
    model = model.to(device).eval()
    check = _synthetic_inputs(model, 16, seed=123).to(device)
    priors = model.priors.to(device)
    reference = _detections(Runner(model), check, priors)
    candidates = ["int8", fastest_path(device)] if device.type == "cpu" else [fastest_path(device)]
    for path in candidates:
        try:
            calibration = _synthetic_inputs(model, 32, seed=321) if path == "int8" else None
            runner = prepare(model, device, path, calibration)
        except ValueError as e:  # e.g. the int8 quantization guard
            warnings.warn(f"serve: not using the {path} path: {e}", stacklevel=2)
            continue
        agreement = path_agreement(reference, _detections(runner, check, priors))
        if agreement >= MIN_AGREEMENT:
            return runner, agreement
        warnings.warn(f"serve: the {path} path agrees with fp32 at {agreement:.3f} < {MIN_AGREEMENT}; not using it",
                      stacklevel=2)  # fmt: skip
    return Runner(model), None


class TorchBackend:
    """A multibox checkpoint on torch.

    Args:
        weights: the checkpoint.
        device: ``auto``, ``cpu``, ``cuda``...
        fast: choose a fast path (see the module docstring); else float32 as trained.
        nms_thresh: NMS IoU threshold (as ``multibox detect``).
    """

    def __init__(self, weights: str | Path, device: str = "auto", fast: bool = False, nms_thresh: float = 0.45) -> None:
        from multibox.data import eval_transform

        model, classes = load_detector(weights)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.priors = self.model.priors.to(self.device)
        self.nms_thresh = nms_thresh
        self.runner, agreement = choose_fast_path(self.model, self.device) if fast else (Runner(self.model), None)
        pre = self.model.preprocess
        self.transform = eval_transform(pre.image_size, pre.mean, pre.std)
        self.info = ModelInfo(
            name=str(getattr(self.model, "name", "")), classes=tuple(classes), input_size=tuple(pre.image_size),
            runtime=f"torch {self.runner.path} {self.device}", source=str(weights), agreement=agreement,
        )  # fmt: skip

    def prepare(self, image: Tensor) -> Tensor:
        """The normalised input ``float Tensor[3, H', W']`` of a ``uint8 Tensor[3, H, W]`` image."""
        return self.transform(image, _EMPTY_BOXES, _EMPTY_LABELS, None)[0]

    @torch.inference_mode()
    def run(self, inputs: Sequence[Tensor], sizes: Sequence[tuple[int, int]], score: float, top_k: int) -> list:
        """See :class:`Backend`."""
        pred = self.runner(torch.stack(list(inputs)).to(self.device))
        dets = postprocess(pred, self.priors, score_thresh=score, nms_thresh=self.nms_thresh, top_k=top_k)
        out = []
        for d, (h, w) in zip(dets, sizes, strict=True):
            d = Detections(d.boxes.float().cpu(), d.scores.float().cpu(), d.labels.cpu())
            out.append(d.to_pixels(h, w))
        return out


class OnnxBackend:
    """A file written by ``multibox export`` (with post-processing) on onnxruntime's CPU provider."""

    def __init__(self, path: str | Path) -> None:
        from multibox.onnx_runtime import OnnxDetector

        self.detector = OnnxDetector(path)
        meta = self.detector.meta
        self.info = ModelInfo(
            name=meta.model, classes=meta.class_names, input_size=meta.image_size,
            runtime=f"onnxruntime {self.detector.session.get_providers()[0]}", source=str(path),
            min_score=meta.score_thresh, max_detections=meta.top_k,
        )  # fmt: skip

    def prepare(self, image: Tensor) -> np.ndarray:
        """The normalised input ``float32 [3, H', W']`` of a ``uint8 Tensor[3, H, W]`` image."""
        return self.detector.preprocess(image.permute(1, 2, 0).numpy())  # (3, H, W) -> (H, W, 3) view

    def run(self, inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], score: float, top_k: int) -> list:
        """See :class:`Backend` (a fixed-batch graph runs the batch in chunks of its size, the last one padded)."""
        step = self.detector.fixed_batch or len(inputs)
        out = []
        for start in range(0, len(inputs), step):
            chunk = np.stack(inputs[start : start + step])
            n_real = len(chunk)
            if n_real < step:
                chunk = np.concatenate([chunk, np.zeros((step - n_real, *chunk.shape[1:]), np.float32)])
            y = self.detector(chunk)
            for i, (h, w) in enumerate(sizes[start : start + n_real]):
                n = int(y["num_detections"][i])
                scores = y["scores"][i, :n]
                keep = np.flatnonzero(scores > score)[:top_k]  # the graph sorts by score
                boxes = y["boxes"][i, :n][keep] * np.asarray([w, h, w, h], np.float32)
                labels = y["labels"][i, :n][keep].astype(np.int64)
                out.append(
                    Detections(torch.from_numpy(boxes), torch.from_numpy(scores[keep]), torch.from_numpy(labels))
                )
        return out


def load_backend(weights: str | Path | None = None, onnx: str | Path | None = None, device: str = "auto",
                 fast: bool = False) -> TorchBackend | OnnxBackend:  # fmt: skip
    """The backend for a checkpoint (``weights``) or an exported file (``onnx``), exactly one of them.

    Raises:
        ValueError: neither or both given; CheckpointError / OnnxModelError: the file is unusable.
    """
    if (weights is None) == (onnx is None):
        raise ValueError("give exactly one of a checkpoint (--weights) or an ONNX file (--onnx)")
    if onnx is not None:
        return OnnxBackend(onnx)
    return TorchBackend(weights, device=device, fast=fast)  # type: ignore[arg-type]
