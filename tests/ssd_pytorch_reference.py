"""ssd.pytorch's PriorBox, transcribed for tests (layers/functions/prior_box.py and data/config.py)."""

from __future__ import annotations

import math
from itertools import product

import torch
from torch import Tensor


def ssd_pytorch_priorbox(cfg: dict) -> Tensor:
    """ssd.pytorch ``PriorBox.forward``: centres from steps, ``s_k``, ``sqrt(s_k s_k+1)``, each ratio and inverse."""
    mean: list[float] = []
    for k, f in enumerate(cfg["feature_maps"]):
        for i, j in product(range(f), repeat=2):
            f_k = cfg["min_dim"] / cfg["steps"][k]
            cx = (j + 0.5) / f_k
            cy = (i + 0.5) / f_k
            s_k = cfg["min_sizes"][k] / cfg["min_dim"]
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (cfg["max_sizes"][k] / cfg["min_dim"]))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in cfg["aspect_ratios"][k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return torch.tensor(mean).view(-1, 4).clamp_(max=1, min=0)


_SSD_PYTORCH_300 = {  # ssd.pytorch data/config.py
    "feature_maps": [38, 19, 10, 5, 3, 1],
    "min_dim": 300,
    "steps": [8, 16, 32, 64, 100, 300],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
}
VOC_CFG = {**_SSD_PYTORCH_300, "min_sizes": [30, 60, 111, 162, 213, 264], "max_sizes": [60, 111, 162, 213, 264, 315]}
COCO_CFG = {**_SSD_PYTORCH_300, "min_sizes": [21, 45, 99, 153, 207, 261], "max_sizes": [45, 99, 153, 207, 261, 315]}
