"""Running an exported detector with onnxruntime alone: NumPy and Pillow, no torch (``multibox detect --onnx``).

The ONNX file written by :func:`multibox.export_onnx` carries what is needed to use it in its ``metadata_props``
(:func:`read_metadata`): the input size, the RGB mean and std in 0-255 units, the class names and the
post-processing it was exported with. Images are prepared as :func:`multibox.data.eval_transform` prepares them
for the PyTorch model: decoded upright (EXIF orientation applied) as RGB, resized bilinearly with antialiasing to
the input size in ``uint8`` (Pillow's filter, which torch's ``antialias=True`` bilinear ``uint8`` resize follows to
within one level), then ``(x - mean) / std``.

This module must stay importable without torch: it imports NumPy, Pillow and (when a model is loaded)
onnxruntime only.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from multibox.files import DetectionResults, OnError, find_images, run_detection
from multibox.io.integrity import image_problem
from multibox.io.pillow_open import open_image
from multibox.io.regular import file_kind, read_bytes

__all__ = [
    "ExportMismatchError",
    "OnnxDetector",
    "OnnxMetadata",
    "OnnxModelError",
    "compare_detections",
    "detect_onnx",
    "prepare_image",
    "read_image_array",
    "read_metadata",
]

# Default tolerances of compare_detections: boxes are in [0, 1], scores are probabilities.
BOX_ATOL = 1e-4
SCORE_ATOL = 1e-5


class ExportMismatchError(ValueError):
    """onnxruntime's outputs differ from PyTorch's."""


class OnnxModelError(ValueError):
    """An ONNX file that cannot be used for detection (unreadable, no multibox metadata, raw outputs); the message
    names the file."""


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (see :func:`multibox.export.onnx_metadata`).

    Attributes:
        image_size: input ``(H, W)``.
        mean: RGB mean, 0-255 units.
        std: RGB std, 0-255 units.
        class_names: foreground class names; label ``i`` is ``class_names[i - 1]`` (may be empty).
        num_classes: classes including the background.
        with_postprocess: whether the graph returns detections (else raw outputs).
        score_thresh, nms_thresh, pre_nms_top_k, top_k: the post-processing baked into the graph.
        model: the model's registry name.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    num_classes: int
    with_postprocess: bool
    score_thresh: float
    nms_thresh: float
    pre_nms_top_k: int
    top_k: int
    model: str


_METADATA_KEYS = (
    "image_size", "mean", "std", "num_classes", "with_postprocess", "score_thresh", "top_k",
    "class_names", "nms_thresh", "pre_nms_top_k", "model",
)  # fmt: skip


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in values)
    return a, b, c


def read_metadata(props: Mapping[str, str], source: str = "the ONNX file") -> OnnxMetadata:
    """Parse the ``metadata_props`` (``{key: JSON}``) of a file exported by :func:`multibox.export_onnx`.

    Raises:
        OnnxModelError: (a ``ValueError``) a key is missing or malformed (the message names ``source`` and the key).
    """
    required = ("image_size", "mean", "std", "num_classes", "with_postprocess", "score_thresh", "top_k")
    missing = [k for k in required if k not in props]
    if missing:
        raise OnnxModelError(
            f"{source} has no multibox metadata {missing}: export it with `multibox export` (or "
            f"multibox.export_onnx), which records the preprocessing the model needs"
        )
    try:
        v = {k: json.loads(props[k]) for k in _METADATA_KEYS if k in props}
        h, w = (int(s) for s in v["image_size"])
        return OnnxMetadata(
            image_size=(h, w),
            mean=_three(v["mean"]),
            std=_three(v["std"]),
            class_names=tuple(str(c) for c in v.get("class_names", [])),
            num_classes=int(v["num_classes"]),
            with_postprocess=bool(v["with_postprocess"]),
            score_thresh=float(v["score_thresh"]),
            nms_thresh=float(v.get("nms_thresh", "nan")),
            pre_nms_top_k=int(v.get("pre_nms_top_k", 0)),
            top_k=int(v["top_k"]),
            model=str(v.get("model", "")),
        )
    except (ValueError, TypeError) as e:
        raise OnnxModelError(f"{source}: malformed multibox metadata ({e})") from e


def read_image_array(path: str | Path) -> np.ndarray:
    """Decode an image file as an upright RGB ``uint8`` array ``[H, W, 3]``, as :func:`multibox.data.read_image`.

    EXIF orientation is applied; grayscale, palette, RGBA (alpha dropped) and CMYK go through Pillow's RGB
    conversion; 16-bit grayscale is scaled to 8 bits, float grayscale from [0, 1] or 0-255. (The same rules as
    ``multibox.data.image_io``, which cannot be imported without torch.)

    Only regular files are opened, and a JPEG or PNG is checked for truncation and corruption first
    (:mod:`multibox.io`, as the torch readers do).

    Raises:
        OSError: the file is missing, not a regular file, truncated, corrupt or not an image (the message names the
            file and the reason).
    """
    try:
        data = read_bytes(path)  # regular files only
        problem = image_problem(data)
        if problem is not None:
            raise OSError(problem)
        with open_image(io.BytesIO(data), path) as img:
            img.load()
            with contextlib.suppress(Exception):  # a corrupt EXIF block must not make the image unreadable
                img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale: scale to 8 bits
                a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
                a = ((a * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(a[:, :, None], 3, axis=2)
            if img.mode == "F":  # float grayscale: [0, 1] or 0-255
                f = np.asarray(img, dtype=np.float32)
                f = np.clip(np.nan_to_num(f) * (255.0 if np.nanmax(f, initial=0.0) <= 1.0 else 1.0), 0, 255)
                return np.repeat(f.round().astype(np.uint8)[:, :, None], 3, axis=2)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise OSError(f"{path}: cannot decode image: {reason}") from exc


def prepare_image(
    image: np.ndarray, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """An RGB image ``[H, W, 3]`` (uint8 or float, 0-255) as the network's input ``[3, H', W']`` float32.

    Bilinear, antialiased resize to ``image_size`` ``(H', W')`` (skipped at that size), then ``(x - mean) / std``:
    :func:`multibox.data.eval_transform` without torch. A ``uint8`` image is resized in ``uint8`` by Pillow, whose
    filter torch's ``uint8`` resize follows (their fixed-point roundings at most one level apart); a float image in
    float (Pillow's ``"F"`` mode, torch's float filter).
    """
    h, w = image_size
    if image.shape[:2] != (h, w) and image.dtype == np.uint8:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").resize((w, h), Image.BILINEAR))
    x = image.astype(np.float32)
    if x.shape[:2] != (h, w):
        channels = [
            Image.fromarray(np.ascontiguousarray(x[:, :, c]), "F").resize((w, h), Image.BILINEAR) for c in range(3)
        ]
        x = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


class _Detections(NamedTuple):
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class OnnxDetector:
    """An exported detector on onnxruntime, with the preprocessing from its metadata.

    Args:
        path: a ``.onnx`` file written by :func:`multibox.export_onnx` with post-processing.
        providers: onnxruntime execution providers (default: the CPU).

    Attributes:
        meta: the file's :class:`OnnxMetadata`.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("running an ONNX model needs 'onnxruntime': pip install 'multibox[export]'") from e
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():  # a named pipe would block onnxruntime's read
            raise OnnxModelError(f"{self.path}: not a regular file: {file_kind(self.path.stat().st_mode)}")
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        if not self.meta.with_postprocess:
            raise OnnxModelError(
                f"{self.path} returns raw outputs (exported without post-processing); detection needs a model "
                f"exported with it (the default of `multibox export`)"
            )
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        #: The batch size the graph was exported with if it is fixed (``dynamic_batch=False``), else None.
        self.fixed_batch: int | None = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """An RGB ``[H, W, 3]`` image as the network's ``[3, H', W']`` input (see :func:`prepare_image`)."""
        return prepare_image(image, self.meta.image_size, self.meta.mean, self.meta.std)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``batch [B, 3, H, W]`` (normalised, float32): ``{"boxes", "scores", "labels", "num_detections"}``."""
        outputs = self.session.run(self.output_names, {self.input_name: np.asarray(batch, np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))


def detect_onnx(
    model: str | Path | OnnxDetector,
    inputs: Sequence[str | Path],
    *,
    out_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 8,
    score_thresh: float = 0.3,
    draw: bool = True,
    on_error: OnError = "skip",
) -> DetectionResults:
    """Detect objects in image files with an exported model, like :func:`multibox.engine.inference.detect`.

    Args:
        model: the ``.onnx`` file (or an :class:`OnnxDetector`).
        inputs: image files and/or folders of images (see :mod:`multibox.files`).
        out_dir: writes ``detections.json``, ``skipped.json`` (when some input was skipped) and, with ``draw``, one
            annotated picture per image.
        class_names: overrides the names in the file's metadata.
        batch_size: images per run (a graph exported with a fixed batch size runs with that one).
        score_thresh: the lowest score reported (strictly above, as :func:`multibox.postprocess`); the graph
            itself already dropped scores at or below its exported ``score_thresh``.
        on_error: ``skip`` an unreadable input with a warning, or ``raise``.

    Returns:
        Per image ``{"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels of the original
        image), "score", "label", "class"}], "output"}``, and ``skipped`` (a :class:`~multibox.files.DetectionResults`).
    """
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    found = find_images(inputs, exclude=out_dir)
    det = model if isinstance(model, OnnxDetector) else OnnxDetector(model)
    names = list(class_names) if class_names is not None else list(det.meta.class_names)
    if score_thresh < det.meta.score_thresh:
        warnings.warn(
            f"score_thresh {score_thresh} is below the {det.meta.score_thresh} {det.path} was exported with; "
            f"lower scores are not in the graph's output",
            stacklevel=2,
        )

    def detect_batch(images: list[np.ndarray]) -> list[tuple[int, int, _Detections]]:
        batch = np.stack([det.preprocess(im) for im in images])
        if det.fixed_batch and len(images) < det.fixed_batch:  # pad the last chunk of a fixed-batch graph
            batch = np.concatenate([batch, np.zeros((det.fixed_batch - len(images), *batch.shape[1:]), np.float32)])
        y = det(batch)
        out = []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            n = int(y["num_detections"][i])
            scores = y["scores"][i, :n]
            sel = scores > score_thresh
            boxes = y["boxes"][i, :n][sel] * np.asarray([w, h, w, h], np.float32)
            out.append((w, h, _Detections(boxes, scores[sel], y["labels"][i, :n][sel])))
        return out

    return run_detection(
        found, read_image_array, detect_batch, batch_size=det.fixed_batch or batch_size, names=names,
        out_dir=out_dir, draw=draw, score_thresh=score_thresh, on_error=on_error,
    )  # fmt: skip


def compare_detections(
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    box_atol: float = BOX_ATOL,
    score_atol: float = SCORE_ATOL,
) -> dict[str, float]:
    """Check that two sets of padded detections agree, allowing for the order of equal scores.

    Per image the numbers of detections must be equal and every reference detection must be matched, one to one,
    by a detection with the same label, a score within ``score_atol`` and a box within ``box_atol`` (greedily,
    the closest box first), so that detections with tied scores may come in any order. Padded slots of ``got``
    must be zeros.

    Args:
        ref: ``{"boxes" [B, K, 4], "scores" [B, K], "labels" [B, K], "num_detections" [B]}``.
        got: the same for the runtime under test.
        box_atol: largest coordinate difference of matched boxes.
        score_atol: largest score difference of matched detections.

    Returns:
        ``{"boxes": ..., "scores": ...}``: the largest absolute differences between matched detections.

    Raises:
        ExportMismatchError: with the first disagreement found.
    """
    for key in ("boxes", "scores", "labels", "num_detections"):
        if np.shape(ref[key]) != np.shape(got[key]):
            raise ExportMismatchError(f"{key}: shape {list(np.shape(got[key]))}, expected {list(np.shape(ref[key]))}")
    worst = {"boxes": 0.0, "scores": 0.0}
    counts = zip(np.asarray(ref["num_detections"]).tolist(), np.asarray(got["num_detections"]).tolist(), strict=True)
    for i, (n_ref, n_got) in enumerate(counts):
        if n_ref != n_got:
            raise ExportMismatchError(f"image {i}: {n_got} detections, expected {n_ref}")
        rb, rs, rl = ref["boxes"][i, :n_ref], ref["scores"][i, :n_ref], ref["labels"][i, :n_ref]
        gb, gs, gl = got["boxes"][i, :n_got], got["scores"][i, :n_got], got["labels"][i, :n_got]
        free = np.ones(n_got, dtype=bool)
        for j in range(n_ref):
            box_err = np.abs(gb - rb[j]).max(axis=1)  # (n_got,)
            score_err = np.abs(gs - rs[j])
            ok = free & (gl == rl[j]) & (score_err <= score_atol) & (box_err <= box_atol)
            if not ok.any():
                raise ExportMismatchError(
                    f"image {i}: detection {j} (label {int(rl[j])}, score {float(rs[j]):.6f}, box "
                    f"{np.round(rb[j], 5).tolist()}) has no counterpart within box {box_atol:g} / score {score_atol:g}"
                )
            m = int(np.flatnonzero(ok)[np.argmin(box_err[ok])])
            free[m] = False
            worst["boxes"] = max(worst["boxes"], float(box_err[m]))
            worst["scores"] = max(worst["scores"], float(score_err[m]))
        pads = (got["boxes"][i, n_got:], got["scores"][i, n_got:], got["labels"][i, n_got:])
        if any(np.any(p != 0) for p in pads):
            raise ExportMismatchError(f"image {i}: the padded slots after {n_got} detections are not zero")
    return worst
