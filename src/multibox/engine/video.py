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
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'multibox[video]'") from err
    from tqdm import tqdm

    from multibox.data import eval_transform
    from multibox.postprocess import postprocess
    from multibox.runtime import resolve_device
    from multibox.viz import draw_detections

    path, out = Path(path), Path(out_dir)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as a video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    fps = stream.average_rate or Fraction(25)
    dev = resolve_device(device)
    model.eval().to(dev)
    pre = model.preprocess
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    out.mkdir(parents=True, exist_ok=True)
    video_out, json_out = out / f"{path.stem}_det.mp4", out / f"{path.stem}_det.json"
    writer = None
    frames: list[dict[str, Any]] = []
    width = height = 0
    bar = tqdm(total=stream.frames or None, desc=path.name, unit="frame", disable=not progress, dynamic_ncols=True)

    def flush(batch: list[torch.Tensor]) -> None:
        nonlocal writer
        x = torch.stack([transform(f, *empty, None)[0] for f in batch]).to(dev)
        dets = postprocess(model(x), model.priors.to(dev), score_thresh=score_thresh, nms_thresh=nms_thresh,
                           top_k=top_k)  # fmt: skip
        for frame, d in zip(batch, dets, strict=True):
            d = d.to_pixels(height, width)
            d = type(d)(*(t.cpu() for t in d))
            if writer is None:
                writer = _open_writer(video_out, fps, width, height)
            _encode(*writer, draw_detections(frame, d, class_names, score_thresh=score_thresh))
            n = len(frames)
            frames.append({"frame": n, "time": round(float(n / fps), 4), "detections": _records(d, class_names)})
        bar.update(len(batch))

    try:
        batch: list[torch.Tensor] = []
        for frame in _frames(container):
            height, width = frame.shape[-2:]
            batch.append(frame)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    except av.error.FFmpegError as exc:  # a truncated or corrupt stream: keep what was decoded, say so
        warnings.warn(f"{path}: decoding stopped after {len(frames)} frame(s): {exc}", stacklevel=2)
    finally:
        bar.close()
        container.close()
        if writer is not None:
            for packet in writer[1].encode():  # flush the encoder
                writer[0].mux(packet)
            writer[0].close()
    if not frames:
        raise ValueError(f"{path}: no frame could be decoded")
    record = {"video": str(path), "fps": float(fps), "width": int(width), "height": int(height), "frames": frames}
    json_out.write_text(json.dumps(record))
    n = sum(len(f["detections"]) for f in frames)
    return {"video": str(path), "output": str(video_out), "json": str(json_out), "frames": len(frames),
            "detections": n, "fps": float(fps), "width": int(width), "height": int(height)}  # fmt: skip
