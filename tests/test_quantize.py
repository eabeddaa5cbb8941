"""int8 backbones (static post-training quantization) and the bench's int8 path."""

import warnings

import pytest
import torch
from torch import nn

from multibox import create_model
from multibox.data import ShapesDataset
from multibox.engine.bench import bench_model, path_agreement
from multibox.engine.evaluate import predict_dataset, preprocessed_images
from multibox.models.quantize import cpu_has_vnni, feature_error, int8_qconfig_mapping, quantize_int8
from multibox.runtime import available_paths, prepare

pytestmark = pytest.mark.skipif(
    torch.backends.quantized.engine not in ("x86", "fbgemm", "onednn", "qnnpack"), reason="no quantized CPU engine"
)


def shapes_images(n, size, seed):
    """``n`` shapes images, ``uint8 Tensor[n, 3, size, size]``."""
    ds = ShapesDataset(n, size, seed=seed)
    return torch.stack([ds[i][0] for i in range(n)])


def shapes_batch(model, n, seed):
    """``n`` shapes images as ``model`` sees them."""
    return preprocessed_images(model, ShapesDataset(n, model.preprocess.image_size, seed=seed), n)


def is_quantized(module):
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("ssd_tiny", 4, image_size=64, width=4).eval()


def test_int8_backbone_tracks_the_float_model(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = quantize_int8(tiny, shapes_batch(tiny, 16, seed=1))
    assert any(is_quantized(m) for m in q.backbone.modules())
    assert all(p.dtype == torch.float32 for p in q.head.parameters())  # the head stays in float32
    x = shapes_batch(tiny, 4, seed=2)  # other images than the calibration's
    with torch.inference_mode():
        ref, out = tiny(x), q(x)
        out_cl = q(x.contiguous(memory_format=torch.channels_last))
    rel = float((out.cls_logits - ref.cls_logits).norm() / ref.cls_logits.norm())
    assert 0 < rel < 0.1  # rounded, but close
    assert float((out.box_deltas - ref.box_deltas).norm() / ref.box_deltas.norm()) < 0.1
    torch.testing.assert_close(out_cl.cls_logits, out.cls_logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # the original is untouched
    assert feature_error(tiny.backbone, q.backbone, x) < 0.25


def vanishing_copy(tiny):
    """``tiny`` with activations of ~1e-12, below the smallest quantization step: int8 features would be all zero."""
    vanishing = create_model("ssd_tiny", 4, image_size=64, width=4).eval()
    vanishing.load_state_dict(tiny.state_dict())
    first = next(m for m in vanishing.backbone.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first.weight.mul_(1e-12)
        if first.bias is not None:
            first.bias.mul_(1e-12)
    return vanishing


def test_int8_refuses_features_it_cannot_represent(tiny):
    with pytest.raises(ValueError, match="not a faithful fast path"):
        quantize_int8(vanishing_copy(tiny), shapes_batch(tiny, 8, seed=1))


def test_bench_skips_a_refused_int8_path_with_a_warning(tiny):
    images = shapes_images(2, 80, seed=1)
    with pytest.warns(UserWarning, match="skipped the int8 path"):
        rows = bench_model(vanishing_copy(tiny), images, batch_sizes=(2,), paths=["fp32", "int8"], repeat=1, warmup=0)
    assert [r.path for r in rows] == ["fp32"]


def test_int8_checks_its_calibration_images(tiny):
    with pytest.raises(ValueError, match="calibration must be"):
        quantize_int8(tiny, torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match=r"Tensor\[N, 3, 64, 64\]"):
        quantize_int8(tiny, torch.zeros(2, 3, 32, 32))


def test_mobilenet_backbone_traces_for_quantization():
    # torch.fx must see every module it calls as a registered submodule (a Sequential slice is not one).
    model = create_model("ssdlite320_mobilenet_v3", 3, image_size=128).eval()
    traced = torch.fx.symbolic_trace(model.backbone)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        for a, b in zip(model.backbone(x), traced(x), strict=True):
            torch.testing.assert_close(a, b)


def test_bench_int8_path(tiny):
    assert available_paths(torch.device("cpu"), int8=True)[-1] == "int8"
    images = shapes_images(2, 80, seed=1)
    calibration = shapes_images(8, 80, seed=3)
    rows = bench_model(tiny, images, batch_sizes=(2,), paths=["fp32", "int8"], repeat=2, warmup=1,
                       calibration=calibration)  # fmt: skip
    assert [r.path for r in rows] == ["fp32", "int8"]
    assert rows[1].net_ms > 0 and rows[1].agreement is not None and 0.0 <= rows[1].agreement <= 1.0
    with pytest.raises(ValueError, match="needs calibration"):
        prepare(tiny, torch.device("cpu"), "int8")


def test_predict_dataset_runs_the_int8_backbone(tiny):
    data = ShapesDataset(6, 64, seed=4)
    calibration = preprocessed_images(tiny, ShapesDataset(8, 64, seed=5), 8)
    assert calibration.shape == (8, 3, 64, 64)
    ref, targets, _ = predict_dataset(tiny, data, batch_size=3)
    out, targets_q, _ = predict_dataset(tiny, data, batch_size=3, int8_calibration=calibration)
    assert len(out) == len(ref) == 6
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, targets_q, strict=True))
    assert all(len(d.scores) > 0 and bool((d.boxes >= 0).all()) and bool((d.boxes <= 64).all()) for d in out)
    assert path_agreement(ref, out) > 0.8  # an untrained net (near-tied scores): 0.97 with this seed
    with pytest.raises(ValueError, match="no images"):
        preprocessed_images(tiny, data, 0)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx2 avx512f avx512bw", False),
        ("fpu avx512f avx512_vnni avx512_bf16", True),
        ("fpu avx2 avx_vnni", True),
        ("fpu amx_bf16 amx_int8 amx_tile", True),
        (None, False),  # no flags line (not x86)
    ],
)
def test_cpu_has_vnni_reads_the_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    lines = ["processor\t: 0", "model name\t: Some CPU"] + ([f"flags\t\t: {flags}"] if flags else [])
    info.write_text("\n".join(lines) + "\n")
    assert cpu_has_vnni(str(info)) is expected
    assert cpu_has_vnni(str(tmp_path / "missing")) is False


def activation_range(mapping, name=None):
    """``(quant_min, quant_max)`` of the activation observer ``mapping`` gives module ``name`` (or globally)."""
    qconfig = mapping.module_name_qconfigs[name] if name else mapping.global_qconfig
    with warnings.catch_warnings():  # torch's own 7-bit observer warns that reduce_range will be deprecated
        warnings.simplefilter("ignore")
        observer = qconfig.activation()
    return observer.quant_min, observer.quant_max


def test_int8_qconfig_mapping_bits_and_float_modules(tiny, monkeypatch):
    import multibox.models.quantize as mq

    assert activation_range(int8_qconfig_mapping(tiny.backbone, "x86", eight_bit=True)) == (0, 255)
    assert activation_range(int8_qconfig_mapping(tiny.backbone, "x86", eight_bit=False)) == (0, 127)  # torch's
    for vnni, expected in [(True, (0, 255)), (False, (0, 127))]:  # the default follows the CPU
        monkeypatch.setattr(mq, "cpu_has_vnni", lambda vnni=vnni: vnni)
        assert activation_range(int8_qconfig_mapping(tiny.backbone, "x86")) == expected
    mapping = int8_qconfig_mapping(tiny.backbone, "x86", keep_float=["base.0.0"])
    assert mapping.module_name_qconfigs == {"base.0.0": None}
    assert int8_qconfig_mapping(tiny.backbone, "x86").module_name_qconfigs == {}  # nothing in float by default
    with pytest.raises(ValueError, match=r"no submodule 'base\.9'"):
        int8_qconfig_mapping(tiny.backbone, "x86", keep_float=["base.9"])


def logits_error(reference, candidate, x):
    with torch.inference_mode():
        ref, out = reference(x), candidate(x)
    return float((out.cls_logits - ref.cls_logits).norm() / ref.cls_logits.norm())


@pytest.mark.skipif(not cpu_has_vnni(), reason="8-bit activations may saturate without VNNI")
def test_eight_bit_activations_reduce_the_int8_error(tiny):
    calibration, x = shapes_batch(tiny, 16, seed=1), shapes_batch(tiny, 8, seed=2)
    seven = logits_error(tiny, quantize_int8(tiny, calibration, eight_bit=False), x)
    eight = logits_error(tiny, quantize_int8(tiny, calibration, eight_bit=True), x)
    assert 0 < eight < 0.75 * seven  # 0.030 vs 0.051 measured
    assert logits_error(tiny, quantize_int8(tiny, calibration), x) == eight  # the default on this CPU


def test_keep_float_leaves_the_stem_unquantized(tiny):
    calibration, x = shapes_batch(tiny, 16, seed=1), shapes_batch(tiny, 8, seed=2)
    q = quantize_int8(tiny, calibration, keep_float=["base.0.0"])
    stem = q.backbone.get_submodule("base.0.0")
    assert not is_quantized(stem) and stem.weight.dtype == torch.float32
    assert is_quantized(q.backbone.get_submodule("base.0.3"))  # the next convolution is int8
    assert 0 < logits_error(tiny, q, x) < 0.1
