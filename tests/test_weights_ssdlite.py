"""torchvision ``ssdlite320_mobilenet_v3_large`` -> our ``ssdlite320_mobilenet_v3`` (``multibox convert --from
torchvision``).

torchvision is not installed here, so its module tree is assembled from our modules the way its
``models/detection/ssdlite.py`` assembles it from ``mobilenet_v3_large().features`` (which our backbone's
``features`` match tensor for tensor, see ``tests/test_models_convert.py``)::

    SSDLiteFeatureExtractorMobileNet.features = Sequential(
        Sequential(*backbone[:c4_pos], backbone[c4_pos].block[0]),   # c4_pos = 13
        Sequential(backbone[c4_pos].block[1:], *backbone[c4_pos + 1:]),
    )
    .extra = ModuleList(4 x _extra_block);  head.{classification,regression}_head.module_list = 6 x _prediction_block

so its state-dict keys come from PyTorch itself, not from a renaming written here. Which of our tensors each
torchvision key holds is read from storage identity (the assembled tree shares our modules), independently of
the converter's key mapping; the values are random and every tensor distinct.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from multibox.models import create_model
from multibox.runtime import load_detector
from multibox.weights import (
    LAYOUTS,
    TORCHVISION_COCO_CLASSES,
    ConversionError,
    convert_file,
    convert_torchvision,
    convert_torchvision_ssdlite320,
    detect_layout,
)
from multibox.weights.io import load_checkpoint

C4_POS = 13  # torchvision _mobilenet_extractor: stage_indices [0, 2, 4, 7, 13, 16] (stride-2 blocks), c4_pos = [-2]


class ScoringHead(nn.Module):
    """torchvision ``SSDScoringHead``: per map ``(N, A*K, H, W) -> (N, H*W*A, K)``, concatenated."""

    def __init__(self, module_list: nn.ModuleList, num_columns: int) -> None:
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, features: list[Tensor]) -> Tensor:
        out = []
        for x, module in zip(features, self.module_list, strict=True):
            r = module(x)
            n, _, h, w = r.shape
            out.append(r.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_columns))
        return torch.cat(out, 1)


class TorchvisionSSDLite(nn.Module):
    """torchvision's ``ssdlite320_mobilenet_v3_large`` module tree and forward (before post-processing), sharing
    the modules of ``ours``."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        features = ours.backbone.features
        self.backbone = nn.Module()
        self.backbone.features = nn.Sequential(
            nn.Sequential(*features[:C4_POS], features[C4_POS].block[0]),
            nn.Sequential(features[C4_POS].block[1:], *features[C4_POS + 1 :]),
        )
        self.backbone.extra = ours.backbone.extras
        self.head = nn.Module()
        self.head.classification_head = ScoringHead(ours.head.conf, ours.num_classes)
        self.head.regression_head = ScoringHead(ours.head.loc, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` in [-1, 1] -> ``(bbox_regression [N, A, 4], cls_logits [N, A, C])``."""
        maps = []
        for block in [*self.backbone.features, *self.backbone.extra]:
            x = block(x)
            maps.append(x)
        return self.head.regression_head(maps), self.head.classification_head(maps)


def randomize_(module: nn.Module, seed: int) -> None:
    """Distinct random values everywhere, activations O(1): He-scaled convs, BN statistics near (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 10**6, (), generator=g)))
            elif name.endswith(("running_var", "1.weight")) and t.dim() == 1:  # BatchNorm scale and variance
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1:  # biases, running means
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(1.0 / math.prod(t.shape[1:])))


def torchvision_state(reduce_tail: bool = True, seed: int = 0) -> tuple[dict[str, Tensor], dict[str, str], nn.Module]:
    """A torchvision-layout state dict with random values; torchvision key -> our key (by storage); the module."""
    ours = create_model("ssdlite320_mobilenet_v3", 91, reduce_tail=reduce_tail).eval()
    tv = TorchvisionSSDLite(ours).eval()
    randomize_(tv, seed)
    where = {t.data_ptr(): k for k, t in ours.state_dict().items()}
    theirs = tv.state_dict()
    return {k: v.clone() for k, v in theirs.items()}, {k: where[v.data_ptr()] for k, v in theirs.items()}, tv


@pytest.fixture(scope="module")
def coco_like():
    """:func:`torchvision_state` of the COCO model's architecture (91 classes, reduced tail); do not modify."""
    return torchvision_state()


# torchvision's names and shapes (COCO weights: 91 classes, reduce_tail), written from ssdlite.py / mobilenetv3.py.
TORCHVISION_KEYS = {
    "backbone.features.0.0.0.weight": (16, 3, 3, 3),  # stem
    "backbone.features.0.1.block.0.0.weight": (16, 1, 3, 3),  # bneck 1 has no expansion: block.0 is depthwise
    "backbone.features.0.12.block.2.fc2.weight": (672, 168, 1, 1),
    "backbone.features.0.13.0.weight": (672, 112, 1, 1),  # C4: bneck 13's expansion closes features.0
    "backbone.features.0.13.1.running_var": (672,),
    "backbone.features.1.0.1.0.weight": (672, 1, 5, 5),  # block[1:] keeps its names: depthwise is .1
    "backbone.features.1.0.2.fc1.weight": (168, 672, 1, 1),  # squeeze-excite .2
    "backbone.features.1.0.3.0.weight": (80, 672, 1, 1),  # projection .3 (160 // 2 with the reduced tail)
    "backbone.features.1.1.block.0.0.weight": (480, 80, 1, 1),  # bneck 14 (960 // 2)
    "backbone.features.1.3.0.weight": (480, 80, 1, 1),  # the last 1x1 conv, C5
    "backbone.extra.0.0.0.weight": (256, 480, 1, 1),
    "backbone.extra.3.2.0.weight": (128, 64, 1, 1),
    "head.classification_head.module_list.0.0.0.weight": (672, 1, 3, 3),
    "head.classification_head.module_list.0.1.weight": (6 * 91, 672, 1, 1),
    "head.regression_head.module_list.5.1.weight": (6 * 4, 128, 1, 1),
}


@pytest.mark.parametrize("reduce_tail", [True, False])
def test_every_tensor_lands_in_place_and_outputs_match(reduce_tail, coco_like):
    sd, ours_of, tv = coco_like if reduce_tail else torchvision_state(reduce_tail, seed=1)
    if reduce_tail:
        assert {k: tuple(sd[k].shape) for k in TORCHVISION_KEYS} == TORCHVISION_KEYS and len(sd) == 476
        assert not any(k.startswith(("backbone.features.1.0.0.", "backbone.features.0.13.block")) for k in sd)
    else:  # torchvision's model from an ImageNet backbone: C5 has 960 channels
        assert sd["backbone.features.1.3.0.weight"].shape == (960, 160, 1, 1)
    assert detect_layout(sd) == "torchvision"
    converted = convert_torchvision(sd)
    model = converted.model.eval()
    assert model.backbone.reduce_tail is reduce_tail and model.num_classes == 91 and model.num_priors == 3234
    assert converted.state_dict.keys() == set(ours_of.values()) and len(ours_of) == len(sd)
    assert all(torch.equal(converted.state_dict[ours_of[k]], v) for k, v in sd.items())
    assert model.mean == model.std == (127.5, 127.5, 127.5)
    assert converted.classes == list(TORCHVISION_COCO_CLASSES) and converted.source == "torchvision"
    # torchvision normalises [0, 1] RGB with mean = std = 0.5; ours takes 0-255 pixels.
    rgb01 = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reg, cls = tv((rgb01 - 0.5) / 0.5)
        pred = model(model.preprocess.normalize(rgb01 * 255))
    assert cls.shape == (1, 3234, 91) and cls.std() > 0.1  # activations neither vanished nor saturated
    torch.testing.assert_close(pred.cls_logits, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred.box_deltas, reg, rtol=1e-4, atol=1e-4)


def test_notes_name_torchvisions_postprocessing(coco_like):
    sd, _, _ = coco_like
    converted = convert_torchvision_ssdlite320({f"module.{k}": v for k, v in sd.items()})  # DataParallel prefix
    text = " ".join(converted.notes)
    for part in ("score 0.001", "300 candidates per class", "NMS 0.55", "300 detections", "reduce_tail=True"):
        assert part in text
    spec = converted.checkpoint()["model_args"]
    assert spec["name"] == "ssdlite320_mobilenet_v3" and spec["image_size"] == [320, 320]


@pytest.mark.slow
def test_file_conversion_feeds_detect_eval_export(tmp_path, coco_like):
    sd, _, tv = coco_like
    path = tmp_path / "ssdlite320_mobilenet_v3_large_coco.pth"
    torch.save(sd, path)  # torchvision's checkpoints are bare state dicts
    summary = convert_file(path, tmp_path / "lite.pt")  # layout guessed
    assert "(torchvision)" in summary and "NMS 0.55" in summary
    from multibox.cli import main

    assert main(["convert", str(path), "--from", "torchvision", "--out", str(tmp_path / "lite.safetensors")]) == 0
    image = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, cls = tv((image - 0.5) / 0.5)
    for name in ("lite.pt", "lite.safetensors"):
        model, classes = load_detector(tmp_path / name)  # what detect, eval and export --weights build from
        assert classes == list(TORCHVISION_COCO_CLASSES) and classes[0] == "person" and classes[11] == "N/A"
        with torch.no_grad():
            pred = model.eval()(model.preprocess.normalize(image * 255))
        torch.testing.assert_close(pred.cls_logits, cls, rtol=1e-4, atol=1e-4)
    assert load_checkpoint(tmp_path / "lite.pt")["preprocess"]["mean"] == [127.5] * 3


def test_wrong_names_or_shapes_are_named(coco_like):
    sd, _, _ = coco_like
    # The index shift torchvision does NOT make: block[1:] renumbered from 0.
    shifted = {}
    for k, v in sd.items():
        for m in (1, 2, 3):
            k = k.replace(f"backbone.features.1.0.{m}.", f"backbone.features.1.0.{m - 1}.")
        shifted[k] = v
    with pytest.raises(ConversionError, match=r"expected keys are missing.*backbone\.features\.1\.0\.[123]\."):
        convert_torchvision(shifted)
    bad = {**sd, "backbone.features.1.0.1.0.weight": torch.zeros(672, 1, 3, 3)}
    with pytest.raises(ConversionError, match=r"1\.0\.1\.0\.weight has shape \[672, 1, 3, 3\], expected \[672, 1, 5"):
        convert_torchvision(bad)
    with pytest.raises(ConversionError, match=r"\[546, 672, 1, 1\] = 6 boxes x 91 classes, but num_classes=81"):
        convert_torchvision(sd, num_classes=81)
    with pytest.raises(ConversionError, match=r"unexpected keys.*backbone\.extra\.4"):
        convert_torchvision({**sd, "backbone.extra.4.0.0.weight": torch.zeros(1)})


def test_unrecognised_layouts_list_the_supported_ones(tmp_path, coco_like):
    retinanet = dict.fromkeys(["backbone.body.conv1.weight", "head.classification_head.conv.0.0.weight"], torch.ones(1))
    with pytest.raises(ConversionError, match=r"ssd300_vgg16 \(has backbone\.scale_weight\), ssdlite320") as err:
        convert_torchvision(retinanet)
    assert "saw 2 keys: ['backbone.body.conv1.weight', 'head.classification_head.conv.0.0.weight']" in str(err.value)
    unknown = {f"layer{i}.weight": torch.zeros(1) for i in range(9)}
    with pytest.raises(ConversionError) as err:
        detect_layout(unknown)
    message = str(err.value)
    assert "saw 9 keys: ['layer0.weight', 'layer1.weight'" in message and "..." in message
    for name, what in LAYOUTS.items():
        assert f"\n  {name}: {what}" in message
    assert "ssdlite320_mobilenet_v3_large" in LAYOUTS["torchvision"]
    path = tmp_path / "lite.pth"
    torch.save(coco_like[0], path)
    with pytest.raises(ConversionError, match=r"lite\.pth: not 'ssd\.pytorch' weights .*look like 'torchvision'"):
        convert_file(path, tmp_path / "x.pt", layout="ssd.pytorch")
    torch.save(unknown, path)
    with pytest.raises(ConversionError, match=r"lite\.pth: not 'torchvision' weights .*supported layouts \(--from\)"):
        convert_file(path, tmp_path / "x.pt", layout="torchvision")
    with pytest.raises(ValueError, match=r"(?s)unknown layout 'caffe'; supported layouts.*\n  imagenet-vgg16: "):
        convert_file(path, tmp_path / "x.pt", layout="caffe")
