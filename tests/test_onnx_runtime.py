"""``multibox detect --onnx``: onnxruntime, NumPy and Pillow only; the same preprocessing and results as PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multibox import export_onnx
from multibox.cli import main
from multibox.data import eval_transform, read_image
from multibox.engine.bench import path_agreement
from multibox.engine.inference import detect
from multibox.models import create_model
from multibox.onnx_runtime import OnnxDetector, compare_detections, detect_onnx, prepare_image, read_image_array
from multibox.structures import Detections
from multibox.weights.io import save_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """An ssd_tiny checkpoint (as training writes it) and its ONNX export through the CLI."""
    torch.manual_seed(0)
    model = create_model("ssd_tiny", 3, image_size=(64, 96), width=4).eval()
    root = tmp_path_factory.mktemp("tiny")
    ckpt = {"model": model.state_dict(), "model_args": model.config_dict(), "classes": ["circle", "square"]}
    save_checkpoint(root / "last.pt", ckpt)
    assert main(["export", "--weights", str(root / "last.pt"), "--out", str(root / "tiny.onnx")]) == 0
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(50, 70), (64, 96), (120, 90)]):
        images.append(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images[-1])
    return model, root, images


def _save_variants(tmp_path):
    """Images in the modes read_image handles specially; returns their paths."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    paths = {}
    Image.fromarray(rgb).save(paths.setdefault("rgb", tmp_path / "rgb.png"))
    Image.fromarray(rgb[:, :, 0]).save(paths.setdefault("gray", tmp_path / "gray.png"))
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(paths.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(rgb).convert("P").save(paths.setdefault("palette", tmp_path / "p.png"))
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(paths.setdefault("gray16", tmp_path / "g16.png"))
    Image.fromarray(rgb[:, :, 1].astype(np.float32) / 255).save(paths.setdefault("float", tmp_path / "f.tiff"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(paths.setdefault("exif", tmp_path / "rot.jpg"), exif=exif.tobytes(), quality=95)
    return paths


def test_images_decode_as_read_image_does(tmp_path):
    for mode, path in _save_variants(tmp_path).items():
        ours = read_image_array(path)
        expected = read_image(path).permute(1, 2, 0).numpy()
        assert ours.dtype == np.uint8 and np.array_equal(ours, expected), mode
    assert read_image_array(tmp_path / "rot.jpg").shape == (30, 20, 3)  # upright
    with pytest.raises(OSError, match=r"missing\.png"):
        read_image_array(tmp_path / "missing.png")


@pytest.mark.parametrize("size", [(50, 70), (64, 96), (200, 150)])
def test_preprocessing_equals_eval_transform(size):
    image = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    ours = prepare_image(image, (64, 96), mean, std)
    reference = eval_transform((64, 96), mean, std)(
        torch.from_numpy(image).permute(2, 0, 1), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), None
    )[0]
    assert ours.shape == (3, 64, 96) and ours.dtype == np.float32
    # Pillow's uint8 resize vs torch's: the same filter, their fixed-point rounding at most one level apart.
    levels = np.abs(ours - reference.numpy()) * np.asarray(std, np.float32).reshape(3, 1, 1)
    assert levels.max() < 1 + 1e-3 and levels.mean() < 0.25


def _as_detections(records: list[dict]) -> Detections:
    boxes = torch.tensor([d["box"] for d in records], dtype=torch.float32).reshape(-1, 4)
    return Detections(boxes, torch.tensor([d["score"] for d in records]), torch.tensor([d["label"] for d in records]))


def test_detect_onnx_equals_detect(tiny_export):
    model, root, images = tiny_export
    ref = detect(model, images, class_names=["circle", "square"], score_thresh=0.2, device="cpu", draw=False)
    got = detect_onnx(root / "tiny.onnx", images, score_thresh=0.2, out_dir=root / "out")
    assert [r["image"] for r in got] == [r["image"] for r in ref]
    for r, g in zip(ref, got, strict=True):
        assert (r["width"], r["height"]) == (g["width"], g["height"]) and len(g["detections"]) > 0

        def padded(dets):
            return {
                "boxes": np.array([[d["box"] for d in dets]], np.float32).reshape(1, -1, 4),
                "scores": np.array([[d["score"] for d in dets]], np.float32),
                "labels": np.array([[d["label"] for d in dets]]),
                "num_detections": np.array([len(dets)]),
            }

        if (r["width"], r["height"]) == (90, 120):
            # Downscaled: the input differs by up to one level (Pillow's uint8 resize vs torch's), which moves an
            # untrained model's boxes by hundredths of a pixel and reorders its 200 near-equal detections at the cut.
            a, b = (_as_detections(x["detections"]) for x in (r, g))
            assert path_agreement([a], [b]) > 0.98
            continue
        # The JSON rounds boxes to 0.01 px and scores to 1e-4.
        compare_detections(padded(r["detections"]), padded(g["detections"]), box_atol=0.02, score_atol=2e-4)
        assert {d["class"] for d in g["detections"]} <= {"circle", "square"}
    written = json.loads((root / "out" / "detections.json").read_text())
    assert written == got and len(list((root / "out").glob("*_det.jpg"))) == 3


def test_a_fixed_batch_graph_runs_one_image_at_a_time(tiny_export, tmp_path):
    model, root, images = tiny_export
    fixed = export_onnx(model, tmp_path / "b1.onnx", dynamic_batch=False, check=False, class_names=["c", "s"])
    assert OnnxDetector(fixed.path).fixed_batch == 1 and OnnxDetector(root / "tiny.onnx").fixed_batch is None
    got = detect_onnx(fixed.path, images, batch_size=8, score_thresh=0.2, draw=False)
    ref = detect_onnx(root / "tiny.onnx", images, batch_size=8, score_thresh=0.2, draw=False)
    assert [[d["box"] for d in r["detections"]] for r in got] == [[d["box"] for d in r["detections"]] for r in ref]


def test_runs_without_torch(tiny_export, tmp_path):
    """``multibox detect --onnx`` in a Python where ``import torch`` fails."""
    _, root, images = tiny_export
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from multibox.cli import main\n"
        f"code = main(['detect', {str(images[0])!r}, '--onnx', {str(root / 'tiny.onnx')!r}, "
        f"'--out', {str(tmp_path)!r}, '--score', '0.2'])\n"
        "assert sys.modules['torch'] is None and 'multibox.engine' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "1 image processed" in proc.stdout
    assert json.loads((tmp_path / "detections.json").read_text())[0]["detections"]


def test_bad_models_give_clear_errors(tiny_export, tmp_path):
    model, _, _ = tiny_export
    raw = export_onnx(model, tmp_path / "raw.onnx", with_postprocess=False, check=False)
    with pytest.raises(ValueError, match="raw outputs"):
        OnnxDetector(raw.path)
    import onnx

    proto = onnx.load(str(raw.path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="no multibox metadata"):
        OnnxDetector(tmp_path / "bare.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxDetector(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx"):
        OnnxDetector(tmp_path / "junk.onnx")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["detect", str(tmp_path), "--onnx", str(tmp_path / "junk.onnx")]) == 3  # a bad input file


def test_read_image_array_refuses_truncated_and_corrupt_files_as_the_torch_reader_does(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(rgb).save(good)
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:-8])  # the IEND chunk's type and CRC lost: Pillow reads it silently
    crc = bytearray(data)
    crc[crc.index(b"IEND") - 5] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(crc))
    np.testing.assert_array_equal(read_image_array(good), rgb)
    for name, reason in (("cut.png", "truncated"), ("crc.png", "bad CRC")):
        with pytest.raises(OSError, match=rf"{name}: cannot decode image: .*{reason}") as info:
            read_image_array(tmp_path / name)
        with pytest.raises(OSError) as torch_info:
            read_image(tmp_path / name)
        assert str(info.value) == str(torch_info.value)  # the same message from both readers
