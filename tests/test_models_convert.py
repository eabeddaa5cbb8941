"""Tests of the torchvision ImageNet converters of the light backbones (``load_torchvision_mobilenet_v3_large``,
``load_torchvision_resnet50``).

The state dicts are built here with torchvision's exact key names and shapes, written from the papers' layer tables
(MobileNetV3 Table 1, ResNet Table 1); after loading, the backbones' feature maps must equal a functional forward
pass that reads those keys directly, i.e. the same weights wired up by hand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multibox.models import create_model
from multibox.models.mobilenet import MobileNetV3Backbone
from multibox.models.resnet import ResNet50Backbone
from multibox.weights.imagenet import load_torchvision_mobilenet_v3_large, load_torchvision_resnet50

# MobileNetV3-Large, Table 1 of Howard et al. 2019: (kernel, expansion, out, SE, hard-swish, stride).
TABLE1 = [(3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1), (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1),
          (5, 120, 40, 1, 0, 1), (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
          (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1), (5, 672, 160, 1, 1, 2),
          (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1)]  # fmt: skip
SQUEEZE = {72: 24, 120: 32, 480: 120, 672: 168, 960: 240}  # torchvision: _make_divisible(expansion // 4, 8)
BN_STATS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _bn_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{s}": (() if s == "num_batches_tracked" else (c,)) for s in BN_STATS}


def torchvision_mobilenet_v3_large_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision ``mobilenet_v3_large().state_dict()`` names and shapes, written from Table 1."""
    shapes = {"features.0.0.weight": (16, 3, 3, 3), **_bn_keys("features.0.1", 16)}
    cin = 16
    for n, (k, exp, out, se, _, _) in enumerate(TABLE1, start=1):
        m = 0
        if exp != cin:
            shapes |= {f"features.{n}.block.0.0.weight": (exp, cin, 1, 1), **_bn_keys(f"features.{n}.block.0.1", exp)}
            m = 1
        shapes |= {f"features.{n}.block.{m}.0.weight": (exp, 1, k, k), **_bn_keys(f"features.{n}.block.{m}.1", exp)}
        if se:
            m, sq = m + 1, SQUEEZE[exp]
            p = f"features.{n}.block.{m}"
            shapes |= {f"{p}.fc1.weight": (sq, exp, 1, 1), f"{p}.fc1.bias": (sq,), f"{p}.fc2.weight": (exp, sq, 1, 1),
                       f"{p}.fc2.bias": (exp,)}  # fmt: skip
        m += 1
        shapes |= {f"features.{n}.block.{m}.0.weight": (out, exp, 1, 1), **_bn_keys(f"features.{n}.block.{m}.1", out)}
        cin = out
    shapes |= {"features.16.0.weight": (960, 160, 1, 1), **_bn_keys("features.16.1", 960)}
    shapes |= {"classifier.0.weight": (1280, 960), "classifier.0.bias": (1280,), "classifier.3.weight": (1000, 1280),
               "classifier.3.bias": (1000,)}  # fmt: skip
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Weights that keep activations O(1) through a deep net: He-scaled convs, BN stats near (0, 1)."""
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = torch.randn(shape) * 0.1
        elif len(shape) == 1:  # BN weight
            state[key] = torch.rand(shape) + 0.5
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape) * math.sqrt(1.0 / fan_in)
    return state


def _bn(x: Tensor, sd: dict[str, Tensor], p: str, eps: float) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, eps)  # fmt: skip


def mobilenet_reference(sd: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """C4 (the 13th bneck's expansion) and C5 computed from torchvision's keys with functional ops."""

    def cba(x: Tensor, p: str, stride: int = 1, groups: int = 1, act: Callable | None = None) -> Tensor:
        w = sd[f"{p}.0.weight"]
        y = _bn(F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), sd, f"{p}.1", 1e-3)
        return act(y) if act is not None else y

    x = cba(x, "features.0", stride=2, act=F.hardswish)
    cin, c4 = 16, None
    for n, (_, exp, out, se, hs, stride) in enumerate(TABLE1, start=1):
        act, inp, m = (F.hardswish if hs else F.relu), x, 0
        if exp != cin:
            x, m = cba(x, f"features.{n}.block.0", act=act), 1
            if n == 13:
                c4 = x
        x = cba(x, f"features.{n}.block.{m}", stride=stride, groups=exp, act=act)
        if se:
            m += 1
            p = f"features.{n}.block.{m}"
            s = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), sd[f"{p}.fc1.weight"], sd[f"{p}.fc1.bias"]))
            x = x * F.hardsigmoid(F.conv2d(s, sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"]))
        x = cba(x, f"features.{n}.block.{m + 1}")
        x = x + inp if stride == 1 and cin == out else x
        cin = out
    assert c4 is not None
    return c4, cba(x, "features.16", act=F.hardswish)


def test_mobilenet_converter_loads_torchvision_keys_and_matches_a_functional_reference() -> None:
    shapes = torchvision_mobilenet_v3_large_shapes()
    # 46 conv + BN pairs (stem, 14 expansions, 15 depthwise, 15 projections, last conv) of 6 tensors; 8 SE blocks.
    assert len([k for k in shapes if k.startswith("features.")]) == 46 * 6 + 8 * 4
    state = _random_state(shapes)
    model = create_model("ssdlite320_mobilenet_v3", 3, image_size=96, reduce_tail=False).eval()
    report = load_torchvision_mobilenet_v3_large(model, state)
    assert report.ignored == [k for k in shapes if k.startswith("classifier.")]
    assert report.loaded == [k for k in shapes if k.startswith("features.")]
    backbone = model.backbone.state_dict()
    for key in report.loaded:
        assert torch.equal(backbone[key], state[key]), key
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        sources = model.backbone(x)
    c4, c5 = mobilenet_reference(state, x)
    assert c4.shape == (2, 672, 6, 6) and c5.shape == (2, 960, 3, 3)
    torch.testing.assert_close(sources[0], c4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sources[1], c5, rtol=1e-4, atol=1e-4)


def torchvision_resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision ``resnet50().state_dict()`` names and shapes (He et al. 2016, Table 1; v1.5)."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64)}
    cin = 64
    for layer, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            shapes |= {f"{p}.conv1.weight": (width, cin, 1, 1), **_bn_keys(f"{p}.bn1", width)}
            shapes |= {f"{p}.conv2.weight": (width, width, 3, 3), **_bn_keys(f"{p}.bn2", width)}
            shapes |= {f"{p}.conv3.weight": (4 * width, width, 1, 1), **_bn_keys(f"{p}.bn3", 4 * width)}
            if b == 0:
                shapes |= {
                    f"{p}.downsample.0.weight": (4 * width, cin, 1, 1),
                    **_bn_keys(f"{p}.downsample.1", 4 * width),
                }
            cin = 4 * width
    return shapes | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


def resnet_conv4_reference(sd: dict[str, Tensor], x: Tensor) -> Tensor:
    """conv4_x with NVIDIA's stride-1 first block, computed from torchvision's keys with functional ops."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], None, 2, 3), sd, "bn1", 1e-5))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer, blocks, stride in [(1, 3, 1), (2, 4, 2), (3, 6, 1)]:
        for b in range(blocks):
            p, s = f"layer{layer}.{b}", stride if b == 0 else 1
            y = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1", 1e-5))
            y = F.relu(_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], None, s, 1), sd, f"{p}.bn2", 1e-5))
            y = _bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3", 1e-5)
            if b == 0:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], None, s), sd, f"{p}.downsample.1", 1e-5)
            x = F.relu(y + x)
    return x


def test_resnet_converter_loads_torchvision_keys_and_matches_a_functional_reference() -> None:
    shapes = torchvision_resnet50_shapes()
    state = _random_state(shapes)
    backbone = ResNet50Backbone().eval()
    report = load_torchvision_resnet50(backbone, state)
    assert report.ignored == [k for k in shapes if k.startswith(("layer4.", "fc."))]
    assert report.loaded == [k for k in shapes if k not in report.ignored]
    own = backbone.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in report.loaded)
    x = torch.randn(1, 3, 257, 257)  # the smallest input the extras accept
    with torch.no_grad():
        conv4 = backbone(x)[0]
    expected = resnet_conv4_reference(state, x)
    assert conv4.shape == expected.shape == (1, 1024, 33, 33)
    torch.testing.assert_close(conv4, expected, rtol=1e-4, atol=1e-4)


def test_converters_reject_bad_state_dicts_and_leave_the_model_untouched() -> None:
    mobilenet = torchvision_mobilenet_v3_large_shapes()
    state = {k: torch.zeros(s) for k, s in mobilenet.items()}
    backbone = MobileNetV3Backbone(reduce_tail=False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    truncated = dict(itertools.islice(state.items(), 100))  # up to features.6.block.0.1.weight
    absent = [k for k in list(state)[100:] if k.startswith("features.") and not k.endswith("num_batches_tracked")]
    needed = 46 * 5 + 8 * 4  # without the batch counters, which may be absent
    message = rf"lacks {len(absent)} of the {needed} tensors .*: features\.6\.block\.0\.1\.bias \(120,\); features\.6"
    with pytest.raises(ValueError, match=message):
        load_torchvision_mobilenet_v3_large(backbone, truncated)
    bad = {**state, "features.4.block.1.0.weight": torch.zeros(72, 1, 3, 3)}  # a 5x5 depthwise conv in Table 1
    with pytest.raises(
        ValueError, match=r"features\.4\.block\.1\.0\.weight: expected \(72, 1, 5, 5\), found \(72, 1, 3, 3\)"
    ):
        load_torchvision_mobilenet_v3_large(backbone, bad)
    with pytest.raises(
        ValueError, match=r"'backbone\.features\.0\.0\.weight' is not a torchvision mobilenet_v3_large key"
    ):
        load_torchvision_mobilenet_v3_large(backbone, {f"backbone.{k}": v for k, v in state.items()})
    with pytest.raises(ValueError, match="unwrapped"):
        load_torchvision_mobilenet_v3_large(backbone, {"model": state})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"features\.13\.block\.3\.0\.weight: expected \(80, 672, 1, 1\), found "
                       r"\(160, 672, 1, 1\).*reduce_tail=False"):  # fmt: skip
        load_torchvision_mobilenet_v3_large(MobileNetV3Backbone(reduce_tail=True), state)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    resnet = {k: torch.zeros(s) for k, s in torchvision_resnet50_shapes().items()}
    needed = 1 + 4 + 13 * (3 + 3 * 4) + 3 * (1 + 4)  # conv1, bn1, 13 bottlenecks, 3 projections (no batch counts)
    with pytest.raises(ValueError, match=rf"lacks 4 of the {needed} tensors .* layer3\.5\.bn3\.running_var \(1024,\)"):
        load_torchvision_resnet50(
            ResNet50Backbone(), {k: v for k, v in resnet.items() if not k.startswith("layer3.5.bn3")}
        )
    with pytest.raises(ValueError, match=r"conv1\.weight: expected \(64, 3, 7, 7\), found \(64, 3, 3, 3\)"):
        load_torchvision_resnet50(ResNet50Backbone(), {**resnet, "conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(TypeError, match="ssd300_resnet50"):
        load_torchvision_resnet50(MobileNetV3Backbone(), resnet)  # type: ignore[arg-type]
