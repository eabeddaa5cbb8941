"""CUDA code paths: the same results as on the CPU, AMP training, the benchmark's GPU paths.

Every test here skips cleanly on a machine without CUDA (CI's and this project's development machines); run them
on a GPU with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from multibox import create_model, multibox_loss, postprocess
from multibox.boxes import box_iou
from multibox.matching import match, pad_targets
from multibox.nms import nms, nms_padded
from multibox.structures import Prediction

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def random_prediction(seed: int, b: int = 4, c: int = 21):
    model = create_model("ssd300_vgg16", c)
    g = torch.Generator().manual_seed(seed)
    a = model.priors.shape[0]
    logits = torch.randn(b, a, c, generator=g) * 2
    logits[..., 0] += 3.0
    return Prediction(logits, torch.randn(b, a, 4, generator=g) * 0.5), model.priors


def test_nms_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 0.8
    boxes = torch.cat((xy, xy + torch.rand(300, 2, generator=g) * 0.3), 1)
    scores = torch.rand(300, generator=g)
    assert nms(boxes.to(CUDA), scores.to(CUDA), 0.45).cpu().tolist() == nms(boxes, scores, 0.45).tolist()
    padded = boxes.view(3, 100, 4)
    valid = torch.rand(3, 100, generator=g) > 0.1
    assert torch.equal(nms_padded(padded.to(CUDA), valid.to(CUDA), 0.5).cpu(), nms_padded(padded, valid, 0.5))


def test_postprocess_on_cuda_equals_cpu():
    pred, priors = random_prediction(1)
    cpu = postprocess(pred, priors)
    gpu = postprocess(Prediction(pred.cls_logits.to(CUDA), pred.box_deltas.to(CUDA)), priors.to(CUDA))
    for c, g in zip(cpu, gpu, strict=True):
        assert g.boxes.device.type == "cuda"
        assert len(c.scores) == len(g.scores)
        torch.testing.assert_close(g.scores.cpu(), c.scores, rtol=1e-5, atol=1e-6)
        # the same detections (order may differ only among equal scores)
        assert sorted(g.labels.cpu().tolist()) == sorted(c.labels.tolist())
        assert (box_iou(g.boxes.cpu(), c.boxes).amax(1) > 0.999).all()


def test_matching_and_loss_on_cuda_equal_cpu():
    pred, priors = random_prediction(2)
    targets = [
        (torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), torch.tensor([3, 7])),
        (torch.tensor([[0.2, 0.3, 0.6, 0.9]]), torch.tensor([12])),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
        (torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([20])),
    ]
    boxes, _, valid = pad_targets(targets)
    m_cpu = match(boxes, valid, priors)
    m_gpu = match(boxes.to(CUDA), valid.to(CUDA), priors.to(CUDA))
    assert torch.equal(m_gpu.positive.cpu(), m_cpu.positive)
    assert torch.equal(m_gpu.gt_index.cpu()[m_cpu.positive], m_cpu.gt_index[m_cpu.positive])
    cpu = multibox_loss(pred, targets, priors)
    gpu_targets = [(b.to(CUDA), lb.to(CUDA)) for b, lb in targets]
    gpu = multibox_loss(Prediction(pred.cls_logits.to(CUDA), pred.box_deltas.to(CUDA)), gpu_targets, priors.to(CUDA))
    for key in ("loc", "conf", "total"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-4, atol=1e-5)
    assert int(gpu["num_pos"]) == int(cpu["num_pos"])


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_two_step_amp_training_on_cuda(tmp_path, amp):
    from multibox.config import load_config
    from multibox.engine.train import train
    from multibox.weights.io import load_checkpoint

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from test_engine import tiny_overrides

    sets = tiny_overrides(tmp_path, **{"train.device": "cuda", "train.amp": amp, "train.channels_last": True})
    result = train(load_config("ssd_tiny_shapes", sets), progress=False)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.last_loss.values())
    ckpt = load_checkpoint(result.checkpoint)  # saved from the GPU, loads on the CPU
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # the GradScaler state travels only when it is used


def test_bench_gpu_paths():
    from multibox.data import ShapesDataset
    from multibox.engine.bench import bench_model
    from multibox.runtime import available_paths

    paths = available_paths(CUDA)
    assert "fp16" in paths
    model = create_model("ssd_tiny", 4, image_size=64, width=4)
    ds = ShapesDataset(2, 80, seed=1)
    images = torch.stack([ds[i][0] for i in range(2)])
    rows = bench_model(model, images, batch_sizes=(2,), paths=paths, device=CUDA, repeat=2, warmup=1)
    assert [r.path for r in rows] == paths
    assert all(r.total_ms > 0 and r.img_s > 0 for r in rows)
    assert rows[0].agreement == 1.0
