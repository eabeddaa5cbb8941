"""Inference-time folding of BatchNorm into the preceding convolution.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so after
a convolution it can be folded into the convolution's weights and bias:
``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``. That removes one full
pass over every activation map per BatchNorm (about a quarter of SSDLite320's CPU time).

The models here register each BatchNorm right after the convolution it normalises (``[conv, bn, act]``
sequentials, ``conv1, bn1, conv2, bn2, ...`` in ResNet's bottlenecks); :func:`fold_batch_norms` relies on that
convention, and ``tests/test_light_models.py`` checks it on every registered model by comparing outputs.
"""

from __future__ import annotations

import copy
from itertools import pairwise
from typing import TypeVar

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norms"]

M = TypeVar("M", bound=nn.Module)


def fold_batch_norms(model: M) -> M:
    """A copy of ``model`` for inference with every ``BatchNorm2d`` folded into the ``Conv2d`` registered before it.

    A BatchNorm counts as following a convolution when the two are consecutive children of the same module and
    their channel counts agree; it is then replaced by ``nn.Identity`` and the convolution gains a bias. The copy
    computes the same function as ``model.eval()`` up to float rounding, but its state dict lacks the BatchNorm
    entries: keep the original for training and checkpoints.

    Args:
        model: any module, in eval mode (the fold uses the running statistics).

    Returns:
        The folded copy, in eval mode; ``model`` is left as it was.

    Raises:
        ValueError: if ``model`` is in training mode.
    """
    if model.training:
        raise ValueError("fold_batch_norms uses the running statistics: call model.eval() first")
    folded = copy.deepcopy(model)
    for parent in list(folded.modules()):
        children = parent._modules
        for first, second in pairwise(list(children)):
            conv, bn = children[first], children[second]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and conv.out_channels == bn.num_features
            ):
                children[first] = fuse_conv_bn_eval(conv, bn)
                children[second] = nn.Identity()
    return folded
