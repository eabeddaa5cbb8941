"""ONNX export of an SSD, with or without post-processing, checked against onnxruntime.

:func:`export_onnx` writes a graph that takes a normalised float image batch ``images [B, 3, H, W]`` and returns
either padded detections ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``, ``num_detections [B]`` with the
semantics of :func:`multibox.postprocess` (see :mod:`multibox.export_graph` for how, and for the caveats), or the
raw ``cls_logits [B, A, C]`` and ``box_deltas [B, A, 4]``. The preprocessing, class names and post-processing
parameters go into the file's ``metadata_props`` (:func:`onnx_metadata`), so that :mod:`multibox.onnx_runtime`
can run it with onnxruntime alone. After writing, the file is run by onnxruntime on a sample and compared with
PyTorch: with post-processing against :func:`multibox.postprocess` itself, up to the choices that tied scores leave
open (:func:`multibox.export_graph.verify_detections`).

Exporter: torch 2.13 still ships the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), and that
is the one used here. It needs no extra package and supports the custom ``symbolic`` that emits
``NonMaxSuppression``. torch marks it deprecated (the ``DeprecationWarning`` is silenced here); the
``dynamo=True`` exporter would need ``onnxscript`` and a custom op with a translation table instead.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multibox.boxes import DEFAULT_VARIANCES, clip_boxes, decode
from multibox.export_graph import DETECTION_OUTPUTS, RAW_OUTPUTS, DetectionGraph, RawGraph, verify_detections
from multibox.files import writing
from multibox.onnx_runtime import ExportMismatchError, compare_detections

__all__ = [
    "ExportMismatchError",
    "ExportResult",
    "check_onnx",
    "export_checkpoint",
    "export_onnx",
    "onnx_metadata",
    "onnx_session",
    "pad_detections",
    "random_sample",
    "run_onnx",
]

# Raw outputs must agree as |onnxruntime - torch| <= RAW_ATOL + RAW_RTOL |torch|.
RAW_ATOL = 1e-4
RAW_RTOL = 1e-4


@dataclass
class ExportResult:
    """What :func:`export_onnx` did.

    Attributes:
        path: the ONNX file.
        image_size: the graph's input ``(H, W)``.
        with_postprocess: whether the graph ends in detections (else raw outputs).
        export_seconds: time spent in ``torch.onnx.export`` and writing the metadata.
        size_bytes: the file's size.
        max_abs_diff: per output, the largest ``|onnxruntime - torch|`` on the check sample (empty without check).
        checked_batches: the batch sizes of the check.
        metadata: the ``metadata_props`` written.
    """

    path: Path
    image_size: tuple[int, int]
    with_postprocess: bool
    export_seconds: float
    size_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    checked_batches: tuple[int, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the CLI."""
        text = (
            f"{self.path} ({self.size_bytes / 2**20:.1f} MiB, {'detections' if self.with_postprocess else 'raw'} "
            f"outputs, input {self.image_size[0]}x{self.image_size[1]}) exported in {self.export_seconds:.2f} s"
        )
        if self.max_abs_diff:
            diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
            text += f"; onnxruntime vs torch on batches {list(self.checked_batches)}: max |diff| {diffs}"
        return text


def _at_size(model: nn.Module, image_size: int | Sequence[int] | None) -> nn.Module:
    """``model`` itself, or the same weights rebuilt through the registry for another input size."""
    from multibox.preprocess import to_hw

    if image_size is None or to_hw(image_size) == tuple(model.image_size):
        return model
    name = getattr(model, "name", None)
    if not name:
        raise ValueError(
            f"cannot export {type(model).__name__} at {image_size}: it was not built by a registered builder, so it "
            f"cannot be rebuilt for another size; build it at that size instead"
        )
    from multibox.models import create_model

    other = create_model(name, model.num_classes, **{**model.overrides, "image_size": to_hw(image_size)})
    other.load_state_dict(model.state_dict())
    return other.to(next(model.parameters()).device)


def onnx_metadata(
    model: nn.Module,
    *,
    with_postprocess: bool,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: JSON values that a runtime needs to use the graph alone.

    Keys: ``multibox_format`` (``"1"``), ``model``, ``num_classes``, ``image_size`` ``[H, W]``, ``mean`` and
    ``std`` (RGB, 0-255 units: the input is ``(rgb - mean) / std`` after a bilinear resize to ``image_size``),
    ``class_names`` (foreground classes, label ``i`` is ``class_names[i - 1]``), ``with_postprocess``,
    ``outputs``, and the post-processing ``score_thresh``, ``nms_thresh``, ``pre_nms_top_k``, ``top_k``,
    ``variances``.
    """
    names = list(class_names) if class_names is not None else []
    if names and len(names) != model.num_classes - 1:
        raise ValueError(
            f"{len(names)} class names for a model with {model.num_classes - 1} foreground classes "
            f"(num_classes {model.num_classes} includes the background)"
        )
    pre = model.preprocess
    meta: dict[str, Any] = {
        "multibox_format": 1,
        "model": getattr(model, "name", None) or type(model).__name__,
        "num_classes": model.num_classes,
        "image_size": list(pre.image_size),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "class_names": names,
        "with_postprocess": with_postprocess,
        "outputs": list(DETECTION_OUTPUTS if with_postprocess else RAW_OUTPUTS),
        "score_thresh": score_thresh,
        "nms_thresh": nms_thresh,
        "pre_nms_top_k": pre_nms_top_k,
        "top_k": top_k,
        "variances": list(DEFAULT_VARIANCES),
    }
    return {k: json.dumps(v) for k, v in meta.items()}


def _check_args(score_thresh: float, nms_thresh: float, pre_nms_top_k: int, top_k: int, opset: int) -> None:
    if not 0.0 <= score_thresh < 1.0:
        raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
    if not 0.0 <= nms_thresh <= 1.0:  # onnxruntime rejects an IoU threshold outside [0, 1]
        raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
    if pre_nms_top_k < 1 or top_k < 1:
        raise ValueError(f"pre_nms_top_k and top_k must be >= 1, got {pre_nms_top_k} and {top_k}")
    if opset < 13:  # the head's unflatten needs 13; NonMaxSuppression with thresholds and TopK need 11
        raise ValueError(f"opset must be >= 13 (tested: 13, 17, 18, 20), got {opset}")


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'multibox[export]'") from e
    return onnx


def _trace_sample(net: nn.Module, sample: Tensor | None) -> Tensor:
    """``sample`` as float on the model's device (random pixels if None); a ValueError if not ``[B, 3, H, W]``."""
    h, w = net.image_size
    sample = random_sample(net, 1) if sample is None else sample.to(next(net.parameters()).device, torch.float32)
    if sample.dim() != 4 or tuple(sample.shape[1:]) != (3, h, w):
        raise ValueError(f"sample must be [B, 3, {h}, {w}], got {list(sample.shape)}")
    return sample


def _trace(
    graph: nn.Module, sample: Tensor, path: Path, *, opset: int, outputs: Sequence[str], dynamic_batch: bool
) -> None:
    """Trace ``graph`` on ``sample`` into ``path`` with the TorchScript exporter, its known warnings silenced."""
    with warnings.catch_warnings(), torch.no_grad(), writing(path, "ONNX model"):
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # clip_boxes' x[..., 0::2]
        torch.onnx.export(
            graph,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ("images", *outputs)} if dynamic_batch else None,
            do_constant_folding=True,
        )


def _write_metadata(onnx: Any, path: Path, metadata: dict[str, str]) -> None:
    """Replace the file's ``metadata_props`` with ``metadata`` and set its doc string."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"{json.loads(metadata['model'])} exported by multibox.export_onnx"
    with writing(path, "ONNX model"):
        onnx.save(proto, str(path))


def _export_file(
    onnx: Any,
    graph: nn.Module,
    sample: Tensor,
    path: Path,
    metadata: dict[str, str],
    *,
    opset: int,
    dynamic_batch: bool,
    image_size: tuple[int, int],
    with_postprocess: bool,
) -> ExportResult:
    """Trace ``graph`` into ``path``, write ``metadata`` into it; the result, timed, before any check."""
    outputs = DETECTION_OUTPUTS if with_postprocess else RAW_OUTPUTS
    start = time.perf_counter()
    _trace(graph, sample, path, opset=opset, outputs=outputs, dynamic_batch=dynamic_batch)
    _write_metadata(onnx, path, metadata)
    return ExportResult(
        path=path,
        image_size=image_size,
        with_postprocess=with_postprocess,
        export_seconds=time.perf_counter() - start,
        size_bytes=path.stat().st_size,
        metadata=metadata,
    )


def _check_export(result: ExportResult, graph: nn.Module, net: nn.Module, sample: Tensor, dynamic_batch: bool) -> None:
    """Compare onnxruntime with PyTorch on ``sample`` (and a batch of another size if dynamic); fill ``result``."""
    graph.eval()  # the exporter restores the wrapper's mode, train() included
    batches = [sample] + ([random_sample(net, sample.shape[0] + 1, seed=1)] if dynamic_batch else [])
    result.max_abs_diff = check_onnx(result.path, graph, batches)
    result.checked_batches = tuple(int(b.shape[0]) for b in batches)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    with_postprocess: bool = True,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
    class_names: Sequence[str] | None = None,
    check: bool = True,
    sample: Tensor | None = None,
) -> ExportResult:
    """Export an SSD to ONNX, write its preprocessing into the metadata, and check it against onnxruntime.

    Args:
        model: an :class:`~multibox.models.SSD` (it is put in eval mode; its weights are not changed).
        path: the ``.onnx`` file to write (folders are created).
        image_size: the graph's input ``(H, W)`` (an int: square); None for the model's own. Another size rebuilds
            the model through the registry with the same weights (the priors depend on the size).
        opset: the ONNX opset, at least 13.
        dynamic_batch: leave the batch dimension free (else it is fixed to the check sample's, 1 by default).
        with_postprocess: end the graph in padded detections (see the module docstring); else raw outputs.
        score_thresh, nms_thresh, pre_nms_top_k, top_k: the post-processing, as :func:`multibox.postprocess`.
        class_names: foreground class names for the metadata (``num_classes - 1`` of them).
        check: run onnxruntime and PyTorch on ``sample`` (and, with a dynamic batch, on a batch of another size)
            and compare; a mismatch raises :class:`ExportMismatchError`.
        sample: ``Tensor[B, 3, H, W]`` normalised images for tracing and the check; None for random pixels.

    Returns:
        An :class:`ExportResult` with the time, file size and the largest differences found by the check.

    Raises:
        ValueError: bad arguments, or a ``sample`` of the wrong shape.
        ExportMismatchError: onnxruntime disagrees with PyTorch.
        ImportError: ``onnx`` (or, with ``check``, ``onnxruntime``) is not installed.
    """
    onnx = _import_onnx()
    _check_args(score_thresh, nms_thresh, pre_nms_top_k, top_k, opset)
    net = _at_size(model, image_size)
    h, w = net.image_size
    sample = _trace_sample(net, sample)
    post = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "pre_nms_top_k": pre_nms_top_k, "top_k": top_k}
    metadata = onnx_metadata(net, with_postprocess=with_postprocess, class_names=class_names, **post)
    graph = (DetectionGraph(net, **post) if with_postprocess else RawGraph(net)).eval()
    path = Path(path)
    with writing(path, "ONNX model"):
        path.parent.mkdir(parents=True, exist_ok=True)
    was_training = net.training
    try:
        result = _export_file(onnx, graph, sample, path, metadata, opset=opset, dynamic_batch=dynamic_batch,
                              image_size=(h, w), with_postprocess=with_postprocess)  # fmt: skip
        if check:
            _check_export(result, graph, net, sample, dynamic_batch)
    finally:
        net.train(was_training)
    return result


def export_checkpoint(weights: str | Path, out: str | Path, **kwargs: Any) -> ExportResult:
    """:func:`export_onnx` of a multibox checkpoint (``.pt`` or ``.safetensors``), with its class names.

    Args:
        weights: the checkpoint; it must hold the model's build arguments (see :func:`multibox.engine.builders.
            model_from_checkpoint`).
        out: the ``.onnx`` file to write.
        **kwargs: passed to :func:`export_onnx` (``class_names`` defaults to the checkpoint's).
    """
    from multibox.runtime import load_detector

    model, classes = load_detector(weights)
    kwargs.setdefault("class_names", classes or None)
    return export_onnx(model, out, **kwargs)


def random_sample(model: nn.Module, batch_size: int, seed: int = 0) -> Tensor:
    """``Tensor[B, 3, H, W]``: uniform random RGB pixels at the model's size, normalised with its preprocessing."""
    h, w = model.image_size
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch_size, 3, h, w, generator=g) * 255
    return model.preprocess.normalize(pixels).to(next(model.parameters()).device)


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("running an ONNX model needs 'onnxruntime': pip install 'multibox[export]'") from e
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of an onnxruntime session (or a file's) for ``images [B, 3, H, W]``, by name."""
    if isinstance(session, str | Path):
        session = onnx_session(session)
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": np.asarray(images, np.float32)}), strict=True))


def check_onnx(path: str | Path, graph: nn.Module, batches: Sequence[Tensor]) -> dict[str, float]:
    """Compare onnxruntime with PyTorch on each batch of normalised images; the largest difference per output.

    Args:
        path: the ONNX file.
        graph: the exported :class:`~multibox.export_graph.DetectionGraph` or :class:`~multibox.export_graph.RawGraph`.
            With post-processing the reference is :func:`multibox.postprocess` itself (not the traced module),
            compared by :func:`~multibox.onnx_runtime.compare_detections` (boxes within 1e-4, scores within 1e-5,
            the same labels, tied scores in any order). Where that fails, onnxruntime's detections pass only if
            they are an output the post-processing allows on torch's scores and boxes under another order of tied
            scores (:func:`~multibox.export_graph.verify_detections`: which tied candidates fill the last places of
            a top-k and which of two tied overlapping boxes NMS keeps are free; everything else is checked).
            Raw outputs must agree within ``1e-4 + 1e-4 |torch|``.
        batches: ``Tensor[B, 3, H, W]`` each.

    Raises:
        ExportMismatchError: they differ beyond the tolerances.
    """
    session = onnx_session(path)
    diffs: dict[str, float] = {}
    for images in batches:
        got = run_onnx(session, images)
        with torch.no_grad():
            if isinstance(graph, DetectionGraph):
                new = _check_detections(graph, images, got)
            else:
                new = _check_raw(graph, images, got)
        for key, value in new.items():
            diffs[key] = max(diffs.get(key, 0.0), value)
    return diffs


def _check_detections(graph: DetectionGraph, images: Tensor, got: dict[str, np.ndarray]) -> dict[str, float]:
    """:func:`multibox.postprocess`'s detections against ``got``; where they differ, whether ``got`` is an output
    that ties allow (:func:`~multibox.export_graph.verify_detections`)."""
    from multibox.postprocess import postprocess

    net = graph.model
    pred = net(images)
    ref = pad_detections(postprocess(pred, net.priors, **graph.kwargs), graph.kwargs["top_k"])
    try:
        return compare_detections(ref, got)
    except ExportMismatchError as e:
        probs = torch.softmax(pred.cls_logits.float(), dim=-1)  # (B, A, C)
        boxes = clip_boxes(decode(pred.box_deltas.float(), net.priors.float(), DEFAULT_VARIANCES))  # (B, A, 4)
        try:
            return verify_detections(probs, boxes, got, **graph.kwargs)
        except ExportMismatchError as tied:
            raise ExportMismatchError(f"{tied} (compared as a list: {e})") from e


def _check_raw(graph: nn.Module, images: Tensor, got: dict[str, np.ndarray]) -> dict[str, float]:
    diffs = {}
    for name, value in zip(RAW_OUTPUTS, graph(images), strict=True):
        ref = value.cpu().numpy()
        if got[name].shape != ref.shape:
            raise ExportMismatchError(f"{name} is {list(got[name].shape)} in onnxruntime, {list(ref.shape)} in torch")
        err = np.abs(got[name] - ref)
        diffs[name] = float(err.max()) if err.size else 0.0
        if not np.all(err <= RAW_ATOL + RAW_RTOL * np.abs(ref)):
            raise ExportMismatchError(f"onnxruntime's {name} differs from torch's by up to {diffs[name]:.3g}")
    return diffs


def pad_detections(dets: Sequence[Any], top_k: int) -> dict[str, np.ndarray]:
    """A list of :class:`~multibox.structures.Detections` as the padded arrays of a graph with post-processing."""
    b = len(dets)
    out = {
        "boxes": np.zeros((b, top_k, 4), np.float32),
        "scores": np.zeros((b, top_k), np.float32),
        "labels": np.zeros((b, top_k), np.int64),
        "num_detections": np.zeros((b,), np.int64),
    }
    for i, d in enumerate(dets):
        n = min(len(d.scores), top_k)
        out["boxes"][i, :n] = d.boxes[:n].cpu().numpy()
        out["scores"][i, :n] = d.scores[:n].cpu().numpy()
        out["labels"][i, :n] = d.labels[:n].cpu().numpy()
        out["num_detections"][i] = n
    return out
