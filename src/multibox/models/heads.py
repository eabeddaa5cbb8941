"""Prediction heads: per source map, a ``loc`` and a ``conf`` predictor, their outputs flattened prior by prior.

:class:`PredictionHead` holds what every head shares (the checks, the two lists of predictors, ``forward``); a head
says only how one predictor is built and initialised: :class:`MultiboxHead` (the paper's 3x3 convolutions) here,
:class:`~multibox.models.mobilenet.SSDLiteHead` (depthwise + pointwise) beside its backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from multibox.structures import Prediction

__all__ = ["MultiboxHead", "PredictionHead", "check_num_classes", "flatten_predictions"]


def check_num_classes(num_classes: object) -> int:
    """Validate a class count that includes the background (class 0); returns it as an int.

    Raises:
        ValueError: unless ``num_classes`` is an int >= 2 (background plus at least one object class).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an int >= 2 that counts the background as class 0 "
            f"(e.g. 21 for PASCAL VOC's 20 classes, 81 for COCO's 80), got {num_classes!r}"
        )
    return num_classes


def flatten_predictions(y: Tensor, k: int) -> Tensor:
    """``(B, A_k*K, h, w) -> (B, h*w*A_k, K)`` in ssd.pytorch's order (``permute(0, 2, 3, 1)``, then flatten)."""
    y = y.permute(0, 2, 3, 1)  # (B, A_k*K, h, w) -> (B, h, w, A_k*K)
    y = y.flatten(1, 2)  # (B, h, w, A_k*K) -> (B, h*w, A_k*K)
    y = y.unflatten(2, (-1, k))  # (B, h*w, A_k*K) -> (B, h*w, A_k, K)
    return y.flatten(1, 2)  # (B, h*w, A_k, K) -> (B, h*w*A_k, K)


class PredictionHead(nn.Module):
    """``loc[k]: C_k -> K_k * 4`` and ``conf[k]: C_k -> K_k * C`` for map ``k`` with ``K_k`` priors per cell.

    Args:
        in_channels: channels of each source map (measured on the backbone).
        boxes_per_location: priors per cell of each map (from the prior spec).
        num_classes: classes including the background.
        predictor: builds one predictor ``(in_channels, out_channels) -> module`` mapping ``Tensor[B, C_k, h, w]``
            to ``Tensor[B, out_channels, h, w]``; all ``loc`` predictors are built first, then all ``conf`` ones,
            then :meth:`init_weights` runs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_location: Sequence[int],
        num_classes: int,
        predictor: Callable[[int, int], nn.Module],
    ) -> None:
        super().__init__()
        if len(in_channels) != len(boxes_per_location):
            raise ValueError(f"{len(in_channels)} source maps but {len(boxes_per_location)} boxes-per-location entries")
        self.num_classes = check_num_classes(num_classes)
        self.boxes_per_location = [int(k) for k in boxes_per_location]
        pairs = list(zip(in_channels, self.boxes_per_location, strict=True))
        self.loc = nn.ModuleList(predictor(c, k * 4) for c, k in pairs)
        self.conf = nn.ModuleList(predictor(c, k * num_classes) for c, k in pairs)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise the predictors (each head its own way)."""
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor]) -> Prediction:
        """Predict class logits and box offsets for every prior.

        Args:
            features: the source maps ``Tensor[B, C_k, h_k, w_k]``.

        Returns:
            ``Prediction(cls_logits Tensor[B, A, num_classes], box_deltas Tensor[B, A, 4])`` with
            ``A = sum_k h_k w_k K_k`` in ssd.pytorch's order: map, row ``i``, column ``j``, prior of the cell.
        """
        if len(features) != len(self.loc):
            raise ValueError(f"the head has {len(self.loc)} predictors but got {len(features)} feature maps")
        deltas, logits = [], []
        for x, loc, conf in zip(features, self.loc, self.conf, strict=True):
            deltas.append(flatten_predictions(loc(x), 4))  # (B, K*4, h, w) -> (B, h*w*K, 4)
            logits.append(flatten_predictions(conf(x), self.num_classes))  # (B, K*C, h, w) -> (B, h*w*K, C)
        return Prediction(cls_logits=torch.cat(logits, dim=1), box_deltas=torch.cat(deltas, dim=1))


class MultiboxHead(PredictionHead):
    """One 3x3 ``loc`` and one 3x3 ``conf`` convolution per source map (§2.1; ssd.pytorch's ``multibox``).

    Args:
        in_channels: channels of each source map (measured on the backbone).
        boxes_per_location: priors per cell of each map (from the prior spec).
        num_classes: classes including the background.
        kernel_size: the predictor's kernel, 3 in the paper.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_location: Sequence[int],
        num_classes: int,
        kernel_size: int = 3,
    ) -> None:
        def conv(c: int, out: int) -> nn.Module:
            return nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2)

        super().__init__(in_channels, boxes_per_location, num_classes, conv)

    def init_weights(self) -> None:
        """Xavier-uniform weights and zero biases (ssd.pytorch ``train.py``: ``weights_init``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
