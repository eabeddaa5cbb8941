"""Drawing detections on images (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # torch is imported only to convert a tensor: drawing works without it (multibox.onnx_runtime)
    import torch

    from multibox.structures import Detections

__all__ = ["PALETTE", "draw_detections", "image_grid", "to_pil"]

#: Distinct colours per class label (cycled).
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]  # fmt: skip


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A uint8 ``Tensor[3, H, W]`` RGB (or a uint8 array ``[H, W, 3]`` RGB, or a PIL image) as a PIL RGB image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    import torch

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 Tensor[3, H, W], got {image.dtype} {tuple(image.shape)}")
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")


def draw_detections(
    image: torch.Tensor | np.ndarray | Image.Image,
    det: Detections,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    line_width: int = 2,
) -> Image.Image:
    """Draw boxes (pixels of ``image``) with ``class score`` captions; returns a new PIL image.

    Args:
        image: the original image.
        det: detections with boxes in the image's pixels; labels >= 1 index ``class_names[label - 1]``.
        class_names: foreground class names.
        score_thresh: detections below are not drawn.
        line_width: box outline width in pixels.
    """
    img = to_pil(image).copy()
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        if score < score_thresh:
            continue
        color = PALETTE[(label - 1) % len(PALETTE)]
        name = class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)
        draw.rectangle(box, outline=color, width=line_width)
        text = f"{name} {score:.2f}"
        tx, ty = box[0], max(0.0, box[1] - 11)
        tw = draw.textlength(text, font=font)
        draw.rectangle((tx, ty, tx + tw + 2, ty + 11), fill=color)
        draw.text((tx + 1, ty), text, fill=(0, 0, 0), font=font)
    return img


def image_grid(images: Sequence[Image.Image], columns: int = 4, path: str | Path | None = None) -> Image.Image:
    """Tile images (resized to the first one's size) into a grid; optionally save it."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (w * min(columns, len(images)), h * rows), (255, 255, 255))
    for k, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((k % columns) * w, (k // columns) * h))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
    return grid
