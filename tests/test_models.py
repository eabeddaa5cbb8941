"""Tests of the SSD models: registry, shapes, gradients, priors and parameter counts against ssd.pytorch by hand."""

from __future__ import annotations

import functools
import inspect
import json
import math
from itertools import product

import pytest
import torch
from torch import Tensor, nn

import multibox
from multibox.models import SSD, MultiboxHead, Preprocess, create_model, create_model_from_config, list_models
from multibox.models.ssd import _probe, measure_feature_maps, min_input_size
from multibox.models.vgg import SSD_PYTORCH_PREFIXES, VGG16_CFG, L2Norm, VGG16Base
from multibox.models.zoo import _REGISTRY
from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD, VGG_MEAN, VGG_STD
from multibox.priors import PriorSpec
from ssd_pytorch_reference import COCO_CFG, VOC_CFG, ssd_pytorch_priorbox

MODELS = list_models()
VGG_MIN = 268  # the smallest side for which conv11_2 (SSD300) / conv12_2 (SSD512) is still 1x1; derived below


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@functools.cache
def _default_and_min_side(name: str) -> tuple[tuple[int, int], int]:
    model = create_model(name, 2)
    side = min_input_size(model.backbone)
    assert side is not None
    return model.image_size, side


def _min_side(name: str) -> int:
    return _default_and_min_side(name)[1]


def _sizes(name: str) -> list[tuple[int, int]]:
    """The default size and a small non-square size for each model (SSD512 at 512 is run once, batch 1)."""
    default, m = _default_and_min_side(name)
    return [default, (m, m + 64)]


def _scratch(name: str) -> dict[str, bool]:
    """``pretrained=False`` for builders that load ImageNet weights by default (EfficientNet-Lite): the checks that
    use it are about the architecture, and ImageNet weights on ``randn * 50`` inputs saturate every ReLU6."""
    return {"pretrained": False} if "pretrained" in inspect.signature(_REGISTRY[name]).parameters else {}


def _loss(pred: multibox.Prediction) -> Tensor:
    return pred.cls_logits.square().mean() + pred.box_deltas.square().mean()


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_paper_models() -> None:
    assert {"ssd300_vgg16", "ssd512_vgg16", "ssd_tiny"} <= set(MODELS)
    assert sorted(MODELS) == MODELS
    assert multibox.create_model is create_model and multibox.list_models is list_models
    assert multibox.SSD is SSD


def test_unknown_model_name_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'ssd301'") as err:
        create_model("ssd301", 21)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "21", None, True])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2 .* background"):
        create_model("ssd_tiny", bad)  # type: ignore[arg-type]
    from multibox.models.tiny import ssd_tiny

    with pytest.raises(ValueError, match="num_classes"):
        ssd_tiny(bad)  # type: ignore[arg-type]


def test_unknown_override_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"no option\(s\) \['widht'\].*'width'"):
        create_model("ssd_tiny", 3, widht=4)


def test_unknown_prior_preset() -> None:
    with pytest.raises(ValueError, match=r"unknown prior preset 'voc301'.*coco300"):
        create_model("ssd300_vgg16", 21, prior_spec="voc301")


# ---------------------------------------------------------------------------------------------- shapes, grads


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("which", [0, 1], ids=["default_size", "non_square"])
def test_output_shapes_and_same_output_in_train_and_eval(name: str, which: int) -> None:
    size = _sizes(name)[which]
    model = create_model(name, 5, image_size=size).eval()
    has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules())
    # Batch norm in train mode needs more than one value per channel, and the last maps may be 1x1.
    batch = 1 if min(size) > 200 and not (which == 1 and has_bn) else 2
    x = torch.randn(batch, 3, *size) * 50
    with torch.no_grad():
        pred = model(x)
    num_priors = model.priors.shape[0]
    assert model.image_size == size
    assert pred.cls_logits.shape == (batch, num_priors, 5)
    assert pred.box_deltas.shape == (batch, num_priors, 4)
    assert num_priors == sum(
        h * w * k for (h, w), k in zip(model.feature_maps, model.head.boxes_per_location, strict=True)
    )
    assert torch.isfinite(pred.cls_logits).all() and torch.isfinite(pred.box_deltas).all()
    assert model.priors.shape == (num_priors, 4) and model.priors.dtype == torch.float32
    assert (model.priors >= 0).all() and (model.priors <= 1).all()
    if which == 0:
        return
    with torch.no_grad():
        if has_bn:
            again = model(x)  # eval mode is a fixed function
            torch.testing.assert_close(again.cls_logits, pred.cls_logits, rtol=0, atol=0)
            torch.testing.assert_close(again.box_deltas, pred.box_deltas, rtol=0, atol=0)
        trained = model.train()(x)
    assert trained.cls_logits.shape == pred.cls_logits.shape and trained.box_deltas.shape == pred.box_deltas.shape
    if not has_bn:
        # No batch norm, no dropout: the forward pass is one function whatever the mode.
        torch.testing.assert_close(trained.cls_logits, pred.cls_logits, rtol=0, atol=0)
        torch.testing.assert_close(trained.box_deltas, pred.box_deltas, rtol=0, atol=0)
    # With batch norm the train-mode output is normalised with batch statistics: only the shapes agree.


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    m = _min_side(name)
    model = create_model(name, 3, image_size=m, **_scratch(name)).train()
    batch = 2 if any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules()) else 1  # see above
    x = torch.randn(batch, 3, m, m) * 50
    _loss(model(x)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # A bias whose output reaches only train-mode batch norms (MobileNetV3's linear bottlenecks feed 1x1 conv + BN)
    # is absorbed by the batch mean: its train-mode gradient is exactly 0. With running statistics it must count.
    absorbed = [pname for pname, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    if absorbed:
        model.eval().zero_grad()
        _loss(model(x)).backward()
    params = dict(model.named_parameters())
    for pname in absorbed:
        assert params[pname].grad.abs().sum() > 0, pname


def test_minimum_input_sizes() -> None:
    # SSD300: conv10_2 and conv11_2 are 3x3 without padding, so conv9_2 must be >= 5, conv8_2 >= 9, conv7 >= 17,
    # conv4_3 >= 34 (pool5 is 3x3/s1/p1, pool4 2x2/s2 floors), pool3 ceils: 67 -> 34, pools 1-2 floor: 268 -> 67.
    assert _min_side("ssd300_vgg16") == VGG_MIN
    # SSD512: conv12_2 (4x4/p1) needs conv11_2 >= 2, so conv10_2 >= 3, conv9_2 >= 5: the same chain.
    assert _min_side("ssd512_vgg16") == VGG_MIN
    # ssd_tiny: six 2x poolings floor the size, so 64 is the first side whose last block map is 1x1.
    assert _min_side("ssd_tiny") == 64


@pytest.mark.parametrize(("name", "size", "minimum"), [("ssd300_vgg16", 200, 268), ("ssd512_vgg16", (300, 260), 268),
                                                       ("ssd_tiny", 32, 64), ("ssd_tiny", (128, 48), 64)])  # fmt: skip
def test_too_small_input_raises(name: str, size: int | tuple[int, int], minimum: int) -> None:
    with pytest.raises(ValueError, match=rf"too small for {name}.*at least {minimum} pixels"):
        create_model(name, 21, image_size=size)


def test_input_size_mismatch_names_the_expected_size() -> None:
    model = create_model("ssd_tiny", 3, image_size=(128, 160))
    with pytest.raises(ValueError, match=r"expects 128x160 \(HxW\) inputs, got 160x128"):
        model(torch.zeros(1, 3, 160, 128))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 128, 160))
    vgg = create_model("ssd300_vgg16", 21)
    with pytest.raises(ValueError, match=r"expects 300x300 .* got 320x320"):
        vgg(torch.zeros(1, 3, 320, 320))


@pytest.mark.parametrize("name", MODELS)
def test_shape_only_dry_run_matches_a_real_zeros_run(name: str) -> None:
    model = create_model(name, 2, image_size=_min_side(name))
    real = _probe(model.backbone, model.image_size, meta=False)
    assert [tuple(t.shape[2:]) for t in real] == model.feature_maps
    assert [t.shape[1] for t in real] == model.feature_channels


# --------------------------------------------------------------------------------------------------- priors


@pytest.mark.parametrize(("num_classes", "preset", "cfg"), [(21, None, VOC_CFG), (81, "coco300", COCO_CFG)])
def test_ssd300_priors_equal_ssd_pytorch_priorbox(num_classes: int, preset: str | None, cfg: dict) -> None:
    overrides = {} if preset is None else {"prior_spec": preset}
    model = create_model("ssd300_vgg16", num_classes, **overrides)
    expected = ssd_pytorch_priorbox(cfg)
    assert expected.shape == (8732, 4) and model.priors.shape == (8732, 4)
    torch.testing.assert_close(model.priors, expected, rtol=0, atol=1e-6)
    assert model.feature_maps == [(f, f) for f in cfg["feature_maps"]]


def test_prior_counts() -> None:
    assert create_model("ssd300_vgg16", 21).priors.shape[0] == 38**2 * 4 + (19**2 + 10**2 + 5**2) * 6 + (3**2 + 1) * 4
    assert create_model("ssd300_vgg16", 21).priors.shape[0] == 8732
    ssd512 = create_model("ssd512_vgg16", 21)
    assert ssd512.feature_maps == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert ssd512.priors.shape[0] == 64**2 * 4 + (32**2 + 16**2 + 8**2 + 4**2) * 6 + (2**2 + 1) * 4 == 24564
    tiny256 = create_model("ssd_tiny", 2, image_size=256)
    assert tiny256.feature_maps == [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    assert tiny256.priors.shape[0] == (32**2 + 16**2 + 8**2 + 4**2 + 1) * 4 == 5444
    tiny128 = create_model("ssd_tiny", 2, image_size=128)
    assert tiny128.feature_maps == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert tiny128.priors.shape[0] == (16**2 + 8**2 + 4**2 + 2**2 + 1) * 4 == 1364


@pytest.mark.parametrize(
    ("name", "size", "maps"),
    [("ssd300_vgg16", (300, 400), [(38, 50), (19, 25), (10, 13), (5, 7), (3, 5), (1, 3)]),
     ("ssd512_vgg16", (320, 480), [(40, 60), (20, 30), (10, 15), (5, 8), (3, 4), (2, 2), (1, 1)]),
     ("ssd_tiny", (128, 192), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 1)])],
)  # fmt: skip
def test_non_square_feature_maps_by_hand(name: str, size: tuple[int, int], maps: list[tuple[int, int]]) -> None:
    # VGG: pools 1, 2 floor, pool3 ceils, pool4 floors; conv8_2/conv9_2 (3x3/s2/p1) give floor((n - 1) / 2) + 1.
    model = create_model(name, 21, image_size=size)
    assert model.feature_maps == maps
    boxes = model.prior_spec.boxes_per_location
    assert model.priors.shape == (sum(h * w * k for (h, w), k in zip(maps, boxes, strict=True)), 4)


def test_first_priors_by_hand() -> None:
    ssd300 = create_model("ssd300_vgg16", 21)
    r2 = math.sqrt(2)
    # The last map (1x1, 4 priors): s = 264/300 = 0.88, sqrt(0.88 * 315/300), ratio 2 clipped at 1.
    sq = math.sqrt(0.88 * 1.05)
    last = torch.tensor([[0.5, 0.5, 0.88, 0.88], [0.5, 0.5, sq, sq], [0.5, 0.5, 1.0, 0.88 / r2],
                         [0.5, 0.5, 0.88 / r2, 1.0]])  # fmt: skip
    torch.testing.assert_close(ssd300.priors[-4:], last, rtol=0, atol=1e-6)
    # The 3x3 map (step 100): cell (0, 0) at (50, 50) px, then cell (0, 1) at (150, 50); s = 213/300 = 0.71.
    first3 = 8732 - 4 - 36
    torch.testing.assert_close(ssd300.priors[first3], torch.tensor([1 / 6, 1 / 6, 0.71, 0.71]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ssd300.priors[first3 + 4], torch.tensor([0.5, 1 / 6, 0.71, 0.71]), rtol=0, atol=1e-6)
    # ssd_tiny at 128: eq. 4 scales 0.2, 0.375, 0.55, 0.725, 0.9 (s_6 = 1.075); the 16x16 map has a pitch of 8 px.
    tiny = create_model("ssd_tiny", 2, image_size=128)
    s1, s2 = 0.2, 0.375
    first = torch.tensor([[1 / 32, 1 / 32, s1, s1], [1 / 32, 1 / 32, math.sqrt(s1 * s2), math.sqrt(s1 * s2)],
                          [1 / 32, 1 / 32, s1 * r2, s1 / r2], [1 / 32, 1 / 32, s1 / r2, s1 * r2],
                          [3 / 32, 1 / 32, s1, s1]])  # fmt: skip
    torch.testing.assert_close(tiny.priors[:5], first, rtol=0, atol=1e-6)
    sq = math.sqrt(0.9 * 1.075)
    last = torch.tensor([[0.5, 0.5, 0.9, 0.9], [0.5, 0.5, sq, sq], [0.5, 0.5, 1.0, 0.9 / r2],
                         [0.5, 0.5, 0.9 / r2, 1.0]])  # fmt: skip
    torch.testing.assert_close(tiny.priors[-4:], last, rtol=0, atol=1e-6)
    # Non-square 128x256 (HxW): the first map is 16x32; s = 0.2 * 128 = 25.6 px, square in pixels.
    wide = create_model("ssd_tiny", 2, image_size=(128, 256))
    assert wide.feature_maps[0] == (16, 32)
    torch.testing.assert_close(wide.priors[0], torch.tensor([1 / 64, 1 / 32, 0.1, 0.2]), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ ssd.pytorch equivalence


def ssd_pytorch_vgg(cfg: tuple, i: int = 3) -> list[tuple]:
    """ssd.pytorch ``vgg(cfg, 3)`` transcribed, modules written as tuples."""
    layers: list[tuple] = []
    in_channels = i
    for v in cfg:
        if v == "M":
            layers += [("pool", 2, 2, 0, False)]
        elif v == "C":
            layers += [("pool", 2, 2, 0, True)]
        else:
            layers += [("conv", in_channels, v, 3, 1, 1, 1), ("relu",)]
            in_channels = v
    pool5 = ("pool", 3, 1, 1, False)
    conv6 = ("conv", 512, 1024, 3, 1, 6, 6)
    conv7 = ("conv", 1024, 1024, 1, 1, 0, 1)
    return [*layers, pool5, conv6, ("relu",), conv7, ("relu",)]


def ssd_pytorch_add_extras(cfg: list, i: int) -> list[tuple]:
    """ssd.pytorch ``add_extras(cfg, 1024)`` transcribed."""
    layers: list[tuple] = []
    in_channels = i
    flag = False
    for k, v in enumerate(cfg):
        if in_channels != "S":
            if v == "S":
                layers += [("conv", in_channels, cfg[k + 1], (1, 3)[flag], 2, 1, 1)]
            else:
                layers += [("conv", in_channels, v, (1, 3)[flag], 1, 0, 1)]
            flag = not flag
        in_channels = v
    return layers


def _describe(m: nn.Module) -> tuple:
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0])
    if isinstance(m, nn.MaxPool2d):
        return ("pool", m.kernel_size, m.stride, m.padding, m.ceil_mode)
    assert isinstance(m, nn.ReLU)
    return ("relu",)


def test_vgg_layers_are_ssd_pytorch_layers() -> None:
    base = VGG16Base()
    assert [_describe(m) for m in base.features] == ssd_pytorch_vgg(VGG16_CFG)
    assert len(base.features) == 35
    extras_300 = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]
    assert [_describe(m) for m in base.extras] == ssd_pytorch_add_extras(extras_300, 1024)
    assert base.features[21].out_channels == 512 and base.features[33].kernel_size == (1, 1)  # conv4_3, conv7


def _ssd_pytorch_keys(num_maps: int, num_extras: int) -> list[str]:
    vgg = ssd_pytorch_vgg(VGG16_CFG)
    keys = [f"vgg.{n}.{p}" for n, layer in enumerate(vgg) if layer[0] == "conv" for p in ("weight", "bias")]
    keys += ["L2Norm.weight"]
    keys += [f"extras.{n}.{p}" for n in range(num_extras) for p in ("weight", "bias")]
    keys += [f"{h}.{n}.{p}" for h in ("loc", "conf") for n in range(num_maps) for p in ("weight", "bias")]
    return keys


def _rename(key: str) -> str:
    (old, new), = ((o, n) for o, n in SSD_PYTORCH_PREFIXES.items() if key.startswith(o))  # fmt: skip
    return new + key[len(old) :]


@pytest.mark.parametrize(("name", "num_maps", "num_extras"), [("ssd300_vgg16", 6, 8), ("ssd512_vgg16", 7, 10)])
def test_state_dict_keys_map_one_to_one_to_ssd_pytorch(name: str, num_maps: int, num_extras: int) -> None:
    state = create_model(name, 21).state_dict()
    expected = [_rename(k) for k in _ssd_pytorch_keys(num_maps, num_extras)]
    assert sorted(state) == sorted(expected)
    assert state["backbone.features.0.weight"].shape == (64, 3, 3, 3)
    assert state["backbone.features.21.weight"].shape == (512, 512, 3, 3)  # conv4_3
    assert state["backbone.features.31.weight"].shape == (1024, 512, 3, 3)  # conv6
    assert state["backbone.features.33.weight"].shape == (1024, 1024, 1, 1)  # conv7
    assert state["backbone.l2norm.weight"].shape == (512,)
    assert state["head.loc.0.weight"].shape == (16, 512, 3, 3) and state["head.conf.1.weight"].shape[:2] == (126, 1024)
    assert "priors" not in state  # derived, never stored


def _conv_params(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout + cout


def _vgg_base_params() -> int:
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512)]
    convs += [(512, 512)] * 5
    return sum(_conv_params(a, b, 3) for a, b in convs) + _conv_params(512, 1024, 3) + _conv_params(1024, 1024, 1)


def test_ssd300_parameter_count_equals_ssd_pytorch() -> None:
    extras = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 3),
              (256, 128, 1), (128, 256, 3)]  # fmt: skip
    channels, boxes, c = [512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4], 21
    heads = sum(_conv_params(ch, k * 4, 3) + _conv_params(ch, k * c, 3) for ch, k in zip(channels, boxes, strict=True))
    expected = _vgg_base_params() + 512 + sum(_conv_params(a, b, k) for a, b, k in extras) + heads
    model = create_model("ssd300_vgg16", 21)
    assert sum(p.numel() for p in model.parameters()) == expected == 26_285_486
    assert model.head.boxes_per_location == boxes and model.feature_channels == channels


def test_ssd512_parameter_count() -> None:
    extras = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 3),
              (256, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 4)]  # fmt: skip
    channels, boxes, c = [512, 1024, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4], 21
    heads = sum(_conv_params(ch, k * 4, 3) + _conv_params(ch, k * c, 3) for ch, k in zip(channels, boxes, strict=True))
    expected = _vgg_base_params() + 512 + sum(_conv_params(a, b, k) for a, b, k in extras) + heads
    assert sum(p.numel() for p in create_model("ssd512_vgg16", 21).parameters()) == expected == 27_188_676


def test_l2norm_matches_ssd_pytorch() -> None:
    norm = L2Norm(4, scale=20)
    assert torch.equal(norm.weight.detach(), torch.full((4,), 20.0)) and norm.eps == 1e-10
    x = torch.randn(2, 4, 3, 5)
    ref = norm.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * (x / (x.pow(2).sum(1, True).sqrt() + 1e-10))
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm(x).norm(dim=1), torch.full((2, 3, 5), 20.0))


# ------------------------------------------------------------------------------------------------------ head


class _TwoMaps(nn.Module):
    """A backbone whose maps are the image itself and its 2x2 average pool."""

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x, nn.functional.avg_pool2d(x, 2)]


def test_head_output_order_is_ssd_pytorch_order() -> None:
    spec = PriorSpec(4, (1.0, 2.0), None, ((2.0,), ()))  # 3 priors per cell on map 0, 1 on map 1
    model = SSD(_TwoMaps(), 3, (4, 6), spec)
    assert model.feature_maps == [(4, 6), (2, 3)] and model.head.boxes_per_location == [3, 1]
    x = torch.randn(2, 3, 4, 6)
    pred = model(x)
    # ssd.pytorch: permute(0, 2, 3, 1), flatten per map, concatenate, view(B, -1, 4) / view(B, -1, C).
    feats = _TwoMaps()(x)
    loc = torch.cat(
        [h(f).permute(0, 2, 3, 1).contiguous().view(2, -1) for f, h in zip(feats, model.head.loc, strict=True)], 1
    )
    conf = torch.cat(
        [h(f).permute(0, 2, 3, 1).contiguous().view(2, -1) for f, h in zip(feats, model.head.conf, strict=True)], 1
    )
    torch.testing.assert_close(pred.box_deltas, loc.view(2, -1, 4))
    torch.testing.assert_close(pred.cls_logits, conf.view(2, -1, 3))
    # Brute force: with a centre-tap identity on channel 0 and biases 10 k + c, box (i, j, k) has coordinate c
    # equal to x[0, i, j] + 10 k + c.
    head = MultiboxHead([3, 3], [3, 1], 3)
    with torch.no_grad():
        for conv in head.loc:
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1] = 1
            conv.bias.copy_(torch.arange(conv.out_channels) // 4 * 10 + torch.arange(conv.out_channels) % 4)
    out = head(feats).box_deltas
    a = 0
    for f, k_max in zip(feats, [3, 1], strict=True):
        for i, j, k in product(range(f.shape[2]), range(f.shape[3]), range(k_max)):
            expected = f[:, 0, i, j, None] + 10 * k + torch.arange(4)
            torch.testing.assert_close(out[:, a], expected)
            a += 1
    assert a == out.shape[1] == 4 * 6 * 3 + 2 * 3


def test_ssd_rejects_a_prior_spec_with_the_wrong_number_of_maps() -> None:
    spec = PriorSpec(4, (1.0,), None, ((2.0,),))
    with pytest.raises(ValueError, match=r"2 source maps .* describes 1"):
        SSD(_TwoMaps(), 3, 8, spec)


def test_measure_feature_maps_on_a_custom_backbone() -> None:
    assert measure_feature_maps(_TwoMaps(), (5, 7)) == ([(5, 7), (2, 3)], [3, 3])
    with pytest.raises(ValueError, match="at least 2 pixels"):
        measure_feature_maps(_TwoMaps(), (1, 7))


class _Broken(nn.Module):
    def forward(self, x: Tensor) -> list[Tensor]:
        return [x @ torch.ones(5, 5, device=x.device)]  # wrong for any width but 5


def test_a_broken_backbone_is_not_reported_as_a_too_small_input() -> None:
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        measure_feature_maps(_Broken(), (8, 8))


# ------------------------------------------------------------------------------------- preprocess and config


def test_preprocess_travels_with_the_model() -> None:
    vgg = create_model("ssd300_vgg16", 21)
    assert vgg.preprocess == Preprocess((300, 300), VGG_MEAN, VGG_STD)
    assert vgg.mean == (123.0, 117.0, 104.0) and vgg.std == (1.0, 1.0, 1.0)  # ssd.pytorch's BGR (104, 117, 123)
    tiny = create_model("ssd_tiny", 2, image_size=(128, 160))
    assert tiny.preprocess.image_size == (128, 160)
    assert tiny.mean == IMAGENET_MEAN == (123.675, 116.28, 103.53) and tiny.std == IMAGENET_STD
    assert dict(tiny.preprocess) == {"image_size": (128, 160), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    image = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = tiny.preprocess.normalize(image)
    torch.testing.assert_close(out[0, :, 0, 0], (255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocess((8, 8), (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match=r"Preprocess\.mean must be finite numbers, got \(nan, 1\.0, 1\.0\)"):
        Preprocess((8, 8), (float("nan"), 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match=r"Preprocess\.std must be finite numbers, got \(1\.0, inf, 1\.0\)"):
        Preprocess((8, 8), (0, 0, 0), (1, float("inf"), 1))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("ssd_tiny", {"image_size": (128, 192), "width": 4}), ("ssd300_vgg16", {"prior_spec": "coco300"}),
     ("ssd_tiny", {"image_size": 96, "prior_spec": PriorSpec(96, (20, 40, 60, 80, 90), None, ((2,),) * 5),
                   "mean": (1, 2, 3)})],
)  # fmt: skip
def test_config_dict_rebuilds_the_model(name: str, overrides: dict) -> None:
    model = create_model(name, 7, **overrides)
    config = json.loads(json.dumps(model.config_dict()))  # plain types only
    assert config["name"] == name and config["num_classes"] == 7
    assert "image_size" not in config["overrides"]
    rebuilt = create_model_from_config(config)
    assert rebuilt.image_size == model.image_size and rebuilt.preprocess == model.preprocess
    assert rebuilt.prior_spec == model.prior_spec
    torch.testing.assert_close(rebuilt.priors, model.priors, rtol=0, atol=0)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="unknown keys"):
        create_model_from_config({**config, "priors": "voc300"})


def test_builders_called_directly_record_their_config() -> None:
    from multibox.models.tiny import ssd_tiny

    model = ssd_tiny(4, image_size=128, width=4)
    assert model.config_dict()["overrides"] == {"width": 4}
    assert model.config_dict()["image_size"] == [128, 128]


def test_tiny_model_is_small_and_batch_norm_statistics_move_only_in_train_mode() -> None:
    model = create_model("ssd_tiny", 21, image_size=128)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(4, 3, 128, 128) * 50
    with torch.no_grad():
        model.eval()(x)
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        model.train()(x)
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_head_fp32_under_autocast():
    model = create_model("ssd_tiny", 4, image_size=64, width=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
        model.head_fp32 = True
        features = model.backbone(x)
        full = model(x)
    assert mixed.cls_logits.dtype == torch.bfloat16 and full.cls_logits.dtype == torch.float32
    with torch.no_grad():
        expected = model.head([f.float() for f in features])  # the float32 head on the bf16 features
    torch.testing.assert_close(full.cls_logits, expected.cls_logits)
    torch.testing.assert_close(full.box_deltas, expected.box_deltas)


def test_the_registry_names_the_model_its_builder_makes() -> None:
    from multibox.models.ssd import BUILDER_NAME
    from multibox.models.tiny import TinyBackbone, tiny_prior_spec

    model = create_model("ssd_tiny", 3, image_size=64, width=4)
    assert model.name == "ssd_tiny" and model.config_dict()["name"] == "ssd_tiny"
    with pytest.raises(ValueError, match="too small for ssd_tiny"):  # named during the build, before it returns
        create_model("ssd_tiny", 3, image_size=32)
    assert BUILDER_NAME.get() is None  # reset after a failed build too
    bare = SSD(TinyBackbone((4, 8, 16), (32,) * 3), 3, 64, tiny_prior_spec())  # built by hand: no registry name
    assert bare.name is None
