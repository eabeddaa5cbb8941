import math
import warnings

import pytest
import torch

from multibox import create_model
from multibox.data import ShapesDataset
from multibox.engine.bench import bench_model, format_table, matmul_peak_gflops, path_agreement
from multibox.structures import Detections


def test_path_agreement_by_hand():
    ref = [
        Detections(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.9, 0.8]), torch.tensor([1, 2]))
    ]
    assert path_agreement(ref, ref) == 1.0
    # the candidate finds one of the two objects: AP 1 for class 1, 0 for class 2
    half = [Detections(ref[0].boxes[:1], ref[0].scores[:1], ref[0].labels[:1])]
    assert path_agreement(ref, half) == 0.5
    # a class only the candidate detects has no AP: left out of the mean, without an evaluation's warning
    extra = [Detections(torch.cat((ref[0].boxes, ref[0].boxes[:1] + 40)), torch.tensor([0.9, 0.8, 0.7]),
                        torch.tensor([1, 2, 3]))]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert path_agreement(ref, extra) == 1.0
        assert path_agreement(extra, ref) == pytest.approx(2 / 3)  # the reference's class-3 object is missed
    # nothing above min_score -> the 10 x images best reference boxes over all images are the objects
    low = [Detections(ref[0].boxes, torch.tensor([0.1, 0.05]), ref[0].labels)]
    assert path_agreement(low, low) == 1.0
    # an untrained model's many low scores, interleaved across images: a path still agrees with itself exactly
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 80
    scores = torch.rand(2, 30, generator=g).sort(descending=True).values * 0.2
    labels = torch.randint(1, 3, (2, 30), generator=g)
    many = [Detections(torch.cat((xy[i], xy[i] + 15), 1), scores[i], labels[i]) for i in range(2)]
    assert path_agreement(many, many) == 1.0
    assert path_agreement(many, [many[0], Detections(many[1].boxes[:0], many[1].scores[:0], many[1].labels[:0])]) < 0.8


def test_bench_rows_for_a_tiny_model():
    model = create_model("ssd_tiny", 4, image_size=64, width=4)
    ds = ShapesDataset(2, 80, seed=1)
    images = torch.stack([ds[i][0] for i in range(2)])
    rows = bench_model(model, images, batch_sizes=(1, 2), paths=["fp32", "channels_last"], repeat=2, warmup=1,
                       gflops_per_image=0.01)  # fmt: skip
    assert [(r.path, r.batch) for r in rows] == [("fp32", 1), ("fp32", 2), ("channels_last", 1), ("channels_last", 2)]
    assert all(r.total_ms > 0 and r.img_s > 0 and r.gflops > 0 for r in rows)
    assert rows[0].agreement == 1.0
    assert rows[2].agreement > 0.9  # the same arithmetic in another memory layout
    table = format_table(rows, {"fp32": 1.0})
    assert "channels_last" in table and "matmul peak: fp32 1 GFLOP/s" in table


def test_matmul_peak_is_positive():
    assert math.isfinite(matmul_peak_gflops(n=256)) and matmul_peak_gflops(n=256) > 0


def test_bench_onnxruntime_path():
    pytest.importorskip("onnxruntime")
    from multibox.runtime import available_paths

    assert available_paths(torch.device("cpu"), onnx=True)[-1] == "onnxruntime"
    model = create_model("ssd_tiny", 4, image_size=64, width=4)
    ds = ShapesDataset(2, 80, seed=1)
    images = torch.stack([ds[i][0] for i in range(2)])
    rows = bench_model(model, images, batch_sizes=(2,), paths=["fp32", "onnxruntime"], repeat=2, warmup=1)
    assert [r.path for r in rows] == ["fp32", "onnxruntime"]
    assert rows[1].net_ms > 0 and rows[1].agreement > 0.9  # the same network in another runtime
