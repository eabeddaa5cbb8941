import pytest
import torch

import multibox.runtime as rt
from multibox import create_model
from multibox.runtime import (
    PATHS,
    Runner,
    autocast_context,
    available_paths,
    fastest_path,
    load_detector,
    prepare,
    resolve_device,
)
from multibox.structures import Detections, Prediction

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("ssd_tiny", 3, image_size=64, width=4).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them is not a no-op
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_to_pixels_by_hand():
    det = Detections(torch.tensor([[0.1, 0.2, 0.5, 1.0]]), torch.tensor([0.7]), torch.tensor([2]))
    px = det.to_pixels(50, 200)  # height 50, width 200: x scales by 200, y by 50
    torch.testing.assert_close(px.boxes, torch.tensor([[20.0, 10.0, 100.0, 50.0]]))
    assert px.scores is det.scores and px.labels is det.labels
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)).to_pixels(3, 4)
    assert empty.boxes.shape == (0, 4)


def test_fp32_runner_is_the_model_itself(tiny):
    runner = prepare(tiny, CPU, "fp32")
    assert runner.module is tiny and not runner.channels_last and runner.path == "fp32"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = runner(x), tiny(x)
    assert isinstance(got, Prediction)
    assert torch.equal(got.cls_logits, want.cls_logits) and torch.equal(got.box_deltas, want.box_deltas)


def test_channels_last_runner_folds_batch_norm_and_agrees(tiny):
    runner = prepare(tiny, CPU, "channels_last")
    assert runner.channels_last and runner.module is not tiny
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.module.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny.modules())  # the caller's model is untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = runner(x), tiny(x)
    torch.testing.assert_close(got.cls_logits, want.cls_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.box_deltas, want.box_deltas, atol=1e-4, rtol=1e-4)


def test_bf16_runner_keeps_the_head_in_float32(tiny):
    runner = prepare(tiny, CPU, "bf16")
    assert runner.module.head_fp32 and not getattr(tiny, "head_fp32", False)
    with torch.no_grad():
        pred = runner(torch.randn(1, 3, 64, 64))
    assert pred.cls_logits.dtype == torch.float32 and pred.box_deltas.dtype == torch.float32


def test_prepare_refuses_unknown_and_misplaced_paths(tiny):
    with pytest.raises(ValueError, match="unknown inference path 'fp8'"):
        prepare(tiny, CPU, "fp8")
    with pytest.raises(ValueError, match="unknown inference path 'onnxruntime'"):
        prepare(tiny, CPU, "onnxruntime")
    with pytest.raises(ValueError, match="needs calibration"):
        prepare(tiny, CPU, "int8")


def test_path_choice():
    assert fastest_path(CPU, int8=True) == "int8"
    assert fastest_path(CPU) in ("bf16", "channels_last")
    paths = available_paths(CPU, compile=True, int8=True)
    assert paths[:2] == ["fp32", "channels_last"] and "fp16" not in paths and paths[-2:] == ["compile", "int8"]
    assert set(paths) <= set(PATHS) and fastest_path(CPU) in paths


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, False),  # a Xeon without bf16 instructions: bf16 would be emulated
        ({"avx512f", "avx512_bf16", "avx512_vnni"}, True),  # AMD EPYC (Zen 4)
        ({"amx_bf16", "amx_tile", "amx_int8"}, True),  # Xeon with AMX
        (set(), False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_bf16_is_chosen_only_where_the_cpu_computes_it(monkeypatch, flags, native):
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset(flags))
    assert rt.bf16_native(CPU) is native
    assert rt.auto_amp(CPU) == ("bf16" if native else "none")
    assert rt.fastest_path(CPU) == ("bf16" if native else "channels_last")
    assert "bf16" in available_paths(CPU)  # still there to measure (oneDNN runs it either way)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert rt.bf16_native(CPU) is False and rt.auto_amp(CPU) == "none"


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16\nbugs\t\t: spectre_v1\n\nprocessor\t: 1\n")
    real_path = rt.Path
    monkeypatch.setattr(rt, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    rt.cpu_flags.cache_clear()
    try:
        assert rt.cpu_flags() == {"fpu", "sse2", "avx512_bf16"}
        cpuinfo.unlink()
        rt.cpu_flags.cache_clear()
        assert rt.cpu_flags() == frozenset()
    finally:
        rt.cpu_flags.cache_clear()


def test_cli_bench_choices_are_the_runtime_paths():
    from multibox.cli import _BENCH_PATHS  # kept literal there: the CLI starts without torch

    assert tuple(_BENCH_PATHS) == PATHS


def test_autocast_context():
    with autocast_context(CPU, "none"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_context(CPU, "fp16")


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")


def test_runner_applies_autocast_and_memory_format():
    seen = {}

    def module(x):
        seen["cl"] = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return Prediction(x.sum((2, 3))[:, None], x.mean((2, 3))[:, None])

    out = Runner(module, lambda: torch.autocast("cpu", dtype=torch.bfloat16), True, "mine")(torch.ones(1, 3, 2, 2))
    assert seen == {"cl": True, "autocast": True} and out.cls_logits.tolist() == [[[4.0, 4.0, 4.0]]]


def test_load_detector_round_trip(tmp_path, tiny):
    from multibox.weights.checkpoint import model_checkpoint
    from multibox.weights.io import save_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", model_checkpoint(tiny, ["a", "b"]))
    model, classes = load_detector(path)
    assert classes == ["a", "b"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).cls_logits, tiny(x).cls_logits)
