"""Graph rewrites before int8 quantization (models/fuse_int8.py) and the int8 engine, fusion and bias correction of
quantize_int8 on a small EfficientNet-Lite-like network."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multibox.models.efficientnet_lite import ConvBNAct, MBConv, pad_same
from multibox.models.fuse import fold_batch_norms
from multibox.models.fuse_int8 import (
    ConvClamp2d,
    _padded_conv,
    drop_identities,
    fold_same_padding,
    fuse_conv_clamp,
    prepare_for_int8,
)
from multibox.models.quantize import EngineBound, feature_error, int8_engine, quantize_int8

pytestmark = pytest.mark.skipif(
    torch.backends.quantized.engine not in ("x86", "fbgemm", "onednn", "qnnpack"), reason="no quantized CPU engine"
)


class LiteNet(nn.Module):
    """A small EfficientNet-Lite: "same"-padded stride-2 stem and blocks (kernels 3 and 5), a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, stride=2)
        self.block1 = MBConv(8, 8, 3, 1, 2)  # residual
        self.block2 = MBConv(8, 16, 5, 2, 3)
        self.head = ConvBNAct(16, 24, 1)

    def forward(self, x):
        """``(B, 3, H, W) -> [(B, 8, H/2, W/2), (B, 24, H/4, W/4)]``."""
        a = self.block1(self.stem(x))
        return [a, self.head(self.block2(a))]


def lite_net(seed=0):
    """``LiteNet`` in eval mode with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    net = LiteNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.5)
    return net.eval()


class Detector(nn.Module):
    """What quantize_int8 needs of an SSD: ``backbone`` and ``image_size``."""

    def __init__(self, backbone, size):
        super().__init__()
        self.backbone, self.image_size = backbone, (size, size)

    def forward(self, x):
        return self.backbone(x)


def images(n, size, seed):
    """Smooth, image-like inputs ``Tensor[n, 3, size, size]`` in about [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def call_targets(gm):
    modules = dict(gm.named_modules())
    return [type(modules[n.target]) for n in gm.graph.nodes if n.op == "call_module"]


def assert_same_outputs(a, b, atol=1e-6):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=atol)


def test_drop_identities_keeps_the_output():
    folded = fold_batch_norms(lite_net())
    gm = torch.fx.symbolic_trace(folded)
    assert nn.Identity in call_targets(gm)  # the folded BatchNorms
    drop_identities(gm)
    assert nn.Identity not in call_targets(gm)
    x = images(2, 32, seed=1)
    with torch.no_grad():
        assert_same_outputs(gm(x), folded(x), atol=0)


@pytest.mark.parametrize(("size", "grown"), [(32, 1), (33, 0)])
def test_fold_same_padding_at_a_fixed_size(size, grown):
    # Even sizes pad one pixel more after than before (a zero row/column in front of the kernel); odd sizes pad
    # symmetrically here (3x3/s2 at 33: 1 and 1; 5x5/s2 at 17: 2 and 2).
    folded = fold_batch_norms(lite_net())
    x = images(2, size, seed=2)
    gm = drop_identities(torch.fx.symbolic_trace(folded))
    assert sum(n.target is pad_same for n in gm.graph.nodes) == 2  # the stem and block2
    fold_same_padding(gm, x[:1])
    assert not any(n.target is pad_same for n in gm.graph.nodes)
    stem, dw = gm.get_submodule("stem.conv"), gm.get_submodule("block2.depthwise.conv")
    assert stem.kernel_size == (3 + grown, 3 + grown) and stem.padding == (1, 1)
    assert dw.kernel_size == (5 + grown, 5 + grown) and dw.padding == (2, 2)
    if grown:
        assert torch.equal(stem.weight[:, :, 0], torch.zeros_like(stem.weight[:, :, 0]))  # the zero row in front
    with torch.no_grad():
        assert_same_outputs(gm(x), folded(x))


def test_padded_conv_refuses_what_it_cannot_express():
    conv = nn.Conv2d(2, 2, 3, stride=2)
    assert _padded_conv(conv, ((1, 0), (0, 1))) is None  # longer before than after
    assert _padded_conv(conv, ((0, 2), (0, 1))) is None  # two more after
    assert _padded_conv(nn.Conv2d(2, 2, 3, stride=2, padding=1), ((0, 1), (0, 1))) is None  # already padded
    new = _padded_conv(conv, ((0, 1), (1, 1)))
    assert new.kernel_size == (4, 3) and new.padding == (1, 1)
    x = torch.randn(1, 2, 10, 9)
    torch.testing.assert_close(new(x), conv(F.pad(x, (1, 1, 0, 1))), rtol=0, atol=1e-6)


def test_conv_clamp_equals_conv_bn_relu6():
    block = ConvBNAct(4, 6, 3)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.conv.weight.mul_(20)  # outputs well beyond [0, 6], so the clamp matters
    block.eval()
    gm = fuse_conv_clamp(drop_identities(torch.fx.symbolic_trace(fold_batch_norms(block))))
    assert call_targets(gm) == [ConvClamp2d]
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ref, out = block(x), gm(x)
    assert float((ref == 6).float().mean()) > 0.1 and float((ref == 0).float().mean()) > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(2, 2, 1) for _ in range(4))

    def forward(self, x):
        y = torch.clamp(self.a(x), 0.0, 6.0) + F.hardtanh(self.b(x), -1.0, 1.0)
        shared = self.c(x)  # two users: not fused
        return y + F.relu6(shared) + shared + F.relu6(self.d(x))


def test_fuse_conv_clamp_functional_forms_and_shared_outputs():
    net = Functional().eval()
    gm = fuse_conv_clamp(torch.fx.symbolic_trace(net))
    kinds = {n.target: type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}
    assert kinds == {"a": ConvClamp2d, "b": ConvClamp2d, "c": nn.Conv2d, "d": ConvClamp2d}
    assert (gm.b.lo, gm.b.hi) == (-1.0, 1.0)
    x = torch.randn(3, 2, 5, 5) * 10
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="lo < hi"):
        ConvClamp2d(2, 2, 1, lo=1.0, hi=1.0)


def test_prepare_for_int8_keeps_the_function():
    net = lite_net()
    x = images(2, 32, seed=3)
    gm = prepare_for_int8(fold_batch_norms(net), x[:1])
    kinds = call_targets(gm)
    assert kinds.count(ConvClamp2d) == 6 and nn.ReLU6 not in kinds and nn.Identity not in kinds
    with torch.no_grad():
        assert_same_outputs(gm(x), net(x), atol=1e-5)


@pytest.mark.parametrize(
    ("flags", "expected"), [("fpu avx512f avx512_vnni", "onednn"), ("fpu amx_int8", "onednn"), ("fpu avx2", "x86")]
)
def test_int8_engine_follows_the_cpu_flags(tmp_path, flags, expected):
    if expected not in torch.backends.quantized.supported_engines:
        pytest.skip(f"no {expected} engine in this build")
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert int8_engine(str(info)) == expected
    assert int8_engine(str(tmp_path / "missing")) == "x86"


def quantized_lite(engine, bias_correction=True, fuse=True, calibration_seed=10):
    model = Detector(lite_net(), 32)
    q = quantize_int8(
        model, images(16, 32, seed=calibration_seed), engine=engine, fuse=fuse, bias_correction=bias_correction
    )
    return model, q


@pytest.mark.parametrize("engine", ["onednn", "x86"])
def test_int8_lite_net_agrees_with_float(engine):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"no {engine} engine in this build")
    model, q = quantized_lite(engine)
    assert isinstance(q.backbone, EngineBound) and q.backbone.engine == engine
    held_out = images(8, 32, seed=20)
    assert feature_error(model.backbone, q.backbone, held_out) < 0.05
    torch.backends.quantized.engine = "qnnpack" if engine != "qnnpack" else "x86"
    try:  # the int8 backbone runs under its own engine whatever the global setting
        with torch.inference_mode():
            other = q.backbone(held_out)
    finally:
        torch.backends.quantized.engine = "x86"
    with torch.inference_mode():
        assert_same_outputs(other, q.backbone(held_out), atol=0)


def mean_bias_error(model, q, x):
    """Mean over maps and channels of ``|mean(int8 - float)|`` per channel."""
    with torch.inference_mode():
        pairs = list(zip(q.backbone(x), model.backbone(x), strict=True))
    return sum(float((a - b).mean(dim=(0, 2, 3)).abs().mean()) for a, b in pairs) / len(pairs)


def test_bias_correction_lowers_the_mean_output_error():
    engine = int8_engine()
    model, corrected = quantized_lite(engine, bias_correction=True)
    _, plain = quantized_lite(engine, bias_correction=False)
    held_out = images(16, 32, seed=30)
    with_bc, without = mean_bias_error(model, corrected, held_out), mean_bias_error(model, plain, held_out)
    assert with_bc < 0.7 * without
    error = feature_error(model.backbone, corrected.backbone, held_out)
    assert error <= feature_error(model.backbone, plain.backbone, held_out)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="quantized engine 'nope'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_int8(Detector(lite_net(), 32), images(2, 32, seed=1), engine="nope")


def test_bias_correction_skips_maps_with_too_few_values():
    from torch.ao.nn import quantized as nnq

    from multibox.models.quantize import correct_int8_bias, quantized_engine

    engine = int8_engine()
    _, q = quantized_lite(engine, bias_correction=False)
    backbone = q.backbone.module
    names = [n for n, m in backbone.named_modules() if isinstance(m, nnq.Conv2d)]
    means = {n: torch.zeros(backbone.get_submodule(n).bias().numel()) for n in names}
    x = images(2, 32, seed=40)  # outputs of 16x16 (512 values per channel at batch 2) and 8x8 (128)
    with torch.inference_mode(), quantized_engine(engine):
        before = backbone(x)
    with quantized_engine(engine):
        assert correct_int8_bias(backbone, means, x, min_samples=10**9) == 0
        with torch.inference_mode():
            assert_same_outputs(backbone(x), before, atol=0)
        small = ["block2.depthwise.conv", "block2.project.conv", "head.conv"]  # the 8x8 outputs
        assert correct_int8_bias(backbone, means, x, min_samples=256) == len(names) - len(small)
