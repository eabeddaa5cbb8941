"""The NamedTuples that travel between the model, the loss and post-processing."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Detections", "Prediction"]


class Prediction(NamedTuple):
    """Raw network output, the same in train and eval mode.

    Attributes:
        cls_logits: ``Tensor[B, A, C]`` class logits per prior; class 0 is the background.
        box_deltas: ``Tensor[B, A, 4]`` encoded offsets per prior (see :func:`multibox.boxes.encode`).
    """

    cls_logits: Tensor
    box_deltas: Tensor


class Detections(NamedTuple):
    """The detections of one image, sorted by descending score.

    Attributes:
        boxes: ``Tensor[N, 4]`` xyxy, relative to the input ([0, 1]) unless a caller rescaled them.
        scores: ``Tensor[N]`` class probabilities.
        labels: ``Tensor[N]`` int64 class indices >= 1 (0 is the background).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def to_pixels(self, height: int, width: int) -> Detections:
        """These detections with boxes in [0, 1] mapped to pixels of an image of ``height x width``."""
        scale = torch.tensor([width, height, width, height], dtype=self.boxes.dtype, device=self.boxes.device)
        return Detections(self.boxes * scale, self.scores, self.labels)
