"""Detection on video files (``multibox detect clip.mp4``): an annotated video and per-frame JSON.

Frames are decoded and encoded with PyAV (FFmpeg bindings; ``pip install 'multibox[video]'``), detected in batches,
drawn with :func:`multibox.viz.draw_detections` and written to ``<out>/<stem>_det.mp4`` (H.264 where the FFmpeg
build has it, else MPEG-4 Part 2) at the source's frame rate, with ``<out>/<stem>_det.json``:
``{"video", "fps", "width", "height", "frames": [{"frame", "time", "detections": [{"box", "score", "label",
"class"}]}]}`` (boxes in pixels of the frame).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["VIDEO_SUFFIXES", "detect_video", "find_videos", "is_video"]

#: File suffixes read as videos (any case).
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


def is_video(path: str | Path) -> bool:
    """Whether ``path`` has a video suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def find_videos(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str | Path]]:
    """Split ``inputs`` into video files (named, or inside named folders, sorted) and the other inputs: images,
    folders without videos, and the image files of folders with videos (whose other files are then not listed)."""
    from multibox.files import IMAGE_SUFFIXES

    videos: list[Path] = []
    rest: list[str | Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            inside = [f for f in files if is_video(f)]
            videos += inside
            if not inside:
                rest.append(item)
            else:  # the folder's pictures one by one, so that its videos are not reported as skipped images
                rest += [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        elif is_video(p):
            videos.append(p)
        else:
            rest.append(item)
    return videos, rest


def _frames(container: Any) -> Iterator[torch.Tensor]:
    """The video's frames as RGB ``uint8 Tensor[3, H, W]``."""
    for frame in container.decode(video=0):
        yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _open_writer(path: Path, fps: Fraction, width: int, height: int) -> tuple[Any, Any]:
    import av

    container = av.open(str(path), mode="w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sides
    stream.pix_fmt = "yuv420p"
    return container, stream


def _encode(container: Any, stream: Any, image: Any) -> None:
    import av

    if image.size != (stream.width, stream.height):
        from PIL import Image

        canvas = Image.new("RGB", (stream.width, stream.height))
        canvas.paste(image, (0, 0))
        image = canvas
    for packet in stream.encode(av.VideoFrame.from_image(image)):
        container.mux(packet)


def _records(dets: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"box": [round(v, 2) for v in box], "score": round(score, 4), "label": label,
             "class": names[label - 1] if 0 < label <= len(names) else str(label)}
            for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(),
                                         strict=True)]  # fmt: skip


def _import_av() -> Any:
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'multibox[video]'") from err
    return av


def _open_video(av: Any, path: Path) -> Any:
    """Open ``path`` for decoding; a ValueError naming it if it is no video or has no video stream."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as a video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: has no video stream")
    return container


def _detect_batch(model: nn.Module, batch: list[torch.Tensor], transform: Any, dev: Any, height: int, width: int,
                  post: dict[str, Any]) -> list[Any]:  # fmt: skip
    """Detections in pixels of a ``height`` x ``width`` frame, on the CPU, for each frame of ``batch``."""
    from multibox.postprocess import postprocess

    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    x = torch.stack([transform(f, *empty, None)[0] for f in batch]).to(dev)
    dets = postprocess(model(x), model.priors.to(dev), **post)
    out = []
    for d in dets:
        d = d.to_pixels(height, width)
        out.append(type(d)(*(t.cpu() for t in d)))
    return out


def _prepare_model(model: nn.Module, device: str) -> tuple[Any, Any]:
    """Put ``model`` in eval mode on ``device``; return the device and the model's evaluation transform."""
    from multibox.data import eval_transform
    from multibox.runtime import resolve_device

    dev = resolve_device(device)
    model.eval().to(dev)
    pre = model.preprocess
    return dev, eval_transform(pre.image_size, pre.mean, pre.std)


def _decode_in_batches(container: Any, batch_size: int, flush: Any, size: list[int]) -> None:
    """Decode every frame, calling ``flush`` on each ``batch_size`` of them and on the rest; ``size`` is kept at
    the ``[height, width]`` of the last decoded frame."""
    batch: list[torch.Tensor] = []
    for frame in _frames(container):
        size[:] = frame.shape[-2:]
        batch.append(frame)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)


def _output_paths(out: Path, stem: str) -> tuple[Path, Path]:
    """Create ``out``; the annotated video's and the JSON's paths in it."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem}_det.mp4", out / f"{stem}_det.json"


class _VideoSink:
    """The annotated video (opened at its first frame) and the per-frame JSON records."""

    def __init__(self, path: Path, fps: Fraction, class_names: Sequence[str], score_thresh: float) -> None:
        self.path, self.fps, self.class_names, self.score_thresh = path, fps, class_names, score_thresh
        self.writer: tuple[Any, Any] | None = None
        self.frames: list[dict[str, Any]] = []

    def add(self, frame: torch.Tensor, dets: Any, height: int, width: int) -> None:
        """Draw and encode one frame and record its detections."""
        from multibox.viz import draw_detections

        if self.writer is None:
            self.writer = _open_writer(self.path, self.fps, width, height)
        _encode(*self.writer, draw_detections(frame, dets, self.class_names, score_thresh=self.score_thresh))
        n = len(self.frames)
        self.frames.append({"frame": n, "time": round(float(n / self.fps), 4),
                            "detections": _records(dets, self.class_names)})  # fmt: skip

    def close(self) -> None:
        """Flush the encoder and close the output video, if one was opened."""
        if self.writer is not None:
            for packet in self.writer[1].encode():  # flush the encoder
                self.writer[0].mux(packet)
            self.writer[0].close()


@torch.inference_mode()
def detect_video(
    model: nn.Module,
    path: str | Path,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] = (),
    batch_size: int = 8,
    score_thresh: float = 0.3,
    nms_thresh: float = 0.45,
    top_k: int = 200,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Detect objects in every frame of a video; write the annotated video and the per-frame JSON.

    Args:
        model: the detector.
        path: the video file.
        out_dir: where ``<stem>_det.mp4`` and ``<stem>_det.json`` go.
        class_names: the foreground class names.
        batch_size: frames per forward pass.
        score_thresh, nms_thresh, top_k: post-processing.
        device: where the model runs.
        progress: show a tqdm bar over the frames.

    Returns:
        ``{"video", "output", "json", "frames", "detections", "fps", "width", "height"}``.

    Raises:
        ValueError: the file cannot be opened as a video or has no video stream (the message names it).
        ImportError: PyAV is not installed (the message says which extra to install).
    """
    av = _import_av()
    from tqdm import tqdm

    path = Path(path)
    container = _open_video(av, path)
    stream = container.streams.video[0]
    fps = stream.average_rate or Fraction(25)
    dev, transform = _prepare_model(model, device)
    post = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "top_k": top_k}
    video_out, json_out = _output_paths(Path(out_dir), path.stem)
    sink = _VideoSink(video_out, fps, class_names, score_thresh)
    size = [0, 0]  # (height, width) of the last decoded frame
    bar = tqdm(total=stream.frames or None, desc=path.name, unit="frame", disable=not progress, dynamic_ncols=True)

    def flush(batch: list[torch.Tensor]) -> None:
        for frame, d in zip(batch, _detect_batch(model, batch, transform, dev, *size, post), strict=True):
            sink.add(frame, d, *size)
        bar.update(len(batch))

    try:
        _decode_in_batches(container, batch_size, flush, size)
    except av.error.FFmpegError as exc:  # a truncated or corrupt stream: keep what was decoded, say so
        warnings.warn(f"{path}: decoding stopped after {len(sink.frames)} frame(s): {exc}", stacklevel=2)
    finally:
        bar.close()
        container.close()
        sink.close()
    return _write_json(path, video_out, json_out, fps, int(size[1]), int(size[0]), sink.frames)


def _write_json(path: Path, video_out: Path, json_out: Path, fps: Fraction, width: int, height: int,
                frames: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Write the per-frame JSON; the summary :func:`detect_video` returns (a ValueError if no frame was decoded)."""
    if not frames:
        raise ValueError(f"{path}: no frame could be decoded")
    record = {"video": str(path), "fps": float(fps), "width": width, "height": height, "frames": frames}
    json_out.write_text(json.dumps(record))
    n = sum(len(f["detections"]) for f in frames)
    return {"video": str(path), "output": str(video_out), "json": str(json_out), "frames": len(frames),
            "detections": n, "fps": float(fps), "width": width, "height": height}  # fmt: skip
