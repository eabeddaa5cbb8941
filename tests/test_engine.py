"""Training, resume, evaluation and detection end to end on tiny models (CPU, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from multibox.config import load_config
from multibox.engine.builders import build_dataset
from multibox.engine.sampling import ResumableBatchSampler
from multibox.engine.train import NonFiniteLossError, train
from multibox.weights.checkpoint import model_from_checkpoint
from multibox.weights.io import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def shared_data() -> Path | None:
    for cand in (os.environ.get("MULTIBOX_SHARED_DATA"), REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if cand and Path(cand, "cards").is_dir():
            return Path(cand)
    return None


def tiny_overrides(out: Path, steps: int = 2, **extra: object) -> list[str]:
    sets = {
        "model.image_size": 64,
        "model.kwargs": {"width": 4},
        "data.shapes_train": 16,
        "data.shapes_val": 8,
        "data.num_workers": 0,
        "train.batch_size": 4,
        "train.max_iters": steps,
        "train.warmup_iters": 1,
        "train.log_every": 1,
        "train.ckpt_every": 2,
        "train.out_dir": str(out),
        **extra,
    }
    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]


def test_sampler_resume_equals_uninterrupted_tail_and_shards_are_disjoint():
    full = ResumableBatchSampler(10, 3, seed=5)
    it = iter(full)
    stream = [next(it) for _ in range(9)]  # 3 batches per epoch -> crosses two epoch boundaries
    resumed = iter(ResumableBatchSampler(10, 3, seed=5, start_batch=4))
    assert [next(resumed) for _ in range(5)] == stream[4:]
    assert stream[0][0][0] == 0 and stream[3][0][0] == 1  # (epoch, index)
    ranks = [next(iter(ResumableBatchSampler(10, 2, seed=5, rank=r, world_size=2))) for r in range(2)]
    assert not {i for _, i in ranks[0]} & {i for _, i in ranks[1]}
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4)


def test_two_step_training_on_shapes_writes_checkpoint_and_logs(tmp_path):
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path))
    result = train(cfg, progress=False)
    assert result.step == 2 and result.checkpoint == tmp_path / "last.pt"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["step"] == 2 and ckpt["classes"] and ckpt["preprocess"]["image_size"] == [64, 64]
    model = model_from_checkpoint(ckpt)
    assert model.priors.shape[0] == ckpt["model"]["priors"].shape[0] if "priors" in ckpt["model"] else True
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(x["train/loss"])) for x in lines)
    # warmup: lr at step 1 is base * warmup_factor (0.1) then the cosine value
    assert lines[0]["train/lr"] < cfg.train.lr
    assert all(0.0 <= x["train/data_wait"] <= 1.0 for x in lines)
    assert 0.0 <= result.data_wait_fraction <= 1.0


def test_data_wait_fraction_sees_a_slow_loader(tmp_path, monkeypatch):
    import time

    from multibox.data.loader import TransformedDataset

    slow = TransformedDataset.__getitem__

    def sleepy(self, index):
        time.sleep(0.3)  # 1.2 s of loading per 4-image step vs milliseconds of compute on 64-px inputs
        return slow(self, index)

    monkeypatch.setattr(TransformedDataset, "__getitem__", sleepy)
    result = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path)), progress=False)
    assert result.data_wait_fraction > 0.5


@pytest.mark.skipif(shared_data() is None, reason="../shared/data not available")
def test_two_step_training_on_cards(tmp_path):
    sets = tiny_overrides(tmp_path, **{"data.kind": "voc", "data.root": str(shared_data() / "cards")})
    result = train(load_config("ssd_tiny_shapes", sets), progress=False)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["classes"] == ["ace", "jack", "king", "nine", "queen", "ten"]
    assert ckpt["model_args"]["num_classes"] == 7
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_loss.values())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


class _Stop(Exception):
    pass


def test_resume_is_bit_identical(tmp_path):
    full = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "full", steps=6)), progress=False)
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "part", steps=6))

    def stop_at_4(step, losses):
        if step == 4:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, progress=False, callbacks=[stop_at_4])  # checkpoint at step 4 (ckpt_every=2), then stops
    at4 = load_checkpoint(tmp_path / "part" / "last.pt")
    assert at4["step"] == 4
    resumed = train(cfg, resume=tmp_path / "part" / "last.pt", progress=False)
    assert resumed.step == 6
    a, b = weights(full.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # and the weights did change during training (the comparison is not between two untouched inits)
    assert any(not torch.equal(at4["model"][k], b[k]) for k in b)


def test_resume_after_killed_process_is_bit_identical(tmp_path):
    """A process SIGKILLed after step 3 (last checkpoint at step 2) resumes to the same weights."""
    overrides = tiny_overrides(tmp_path / "killed", steps=6)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from multibox.config import load_config
        from multibox.engine.train import train
        def killer(step, losses):
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        train(load_config("ssd_tiny_shapes", {overrides!r}), progress=False, callbacks=[killer])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 2
    assert [p.name for p in (tmp_path / "killed").glob(".*tmp")] == []  # no half-written file left behind
    resumed = train(load_config("ssd_tiny_shapes", overrides), resume="auto", progress=False)
    full = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "full", steps=6)), progress=False)
    a, b = weights(full.checkpoint), weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_names_step_and_images(tmp_path):
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path, **{"train.lr": 1e30, "train.warmup_iters": 0}))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+ .*images of the batch: \["):
        train(cfg, progress=False)


def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    overrides = tiny_overrides(out, steps=2, **{"train.batch_size": 4})
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(SRC)!r})
            from multibox.config import load_config
            from multibox.engine.train import train
            r = train(load_config("ssd_tiny_shapes", {overrides!r}), progress=False)
            print("RESULT", r.step)
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RESULT 2") == 2
    ckpt = load_checkpoint(out / "last.pt")  # written by rank 0 only
    assert ckpt["step"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logs only


def test_evaluate_and_detect_write_outputs(tmp_path):
    from multibox.engine.evaluate import evaluate
    from multibox.engine.inference import detect

    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "run"))
    train(cfg, progress=False)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    val = build_dataset(cfg.data, "val", cfg.model.image_size)
    out = evaluate(model, val, metric="voc07", out_dir=tmp_path / "eval", batch_size=4)
    assert 0.0 <= out["mAP"] <= 1.0 and out["images"] == 8
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metric"] == "voc07" and saved["images"] == 8
    assert (tmp_path / "eval" / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # detect on a known image: an image file written from the val set, boxes in its own pixels
    from PIL import Image

    img, _ = val[0]
    Image.fromarray(img.permute(1, 2, 0).numpy()).resize((96, 80)).save(tmp_path / "known.png")
    results = detect(tmp_path / "run" / "last.pt", [tmp_path / "known.png"], out_dir=tmp_path / "det", score_thresh=0.0)
    assert len(results) == 1 and results[0]["width"] == 96 and results[0]["height"] == 80
    on_disk = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert on_disk == results
    for d in results[0]["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 80 and d["class"] in val.classes
    assert (tmp_path / "det" / "known_det.jpg").is_file()


def test_fast_detect_matches_the_fp32_path(tmp_path):
    from PIL import Image

    from multibox.engine.bench import path_agreement
    from multibox.engine.inference import detect
    from multibox.structures import Detections

    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "run", steps=2))
    train(cfg, progress=False)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    val = build_dataset(cfg.data, "val", cfg.model.image_size)
    (tmp_path / "images").mkdir()  # detect walks folders recursively: not the run's files
    for i in range(3):
        Image.fromarray(val[i][0].permute(1, 2, 0).numpy()).save(tmp_path / "images" / f"im{i}.png")
    bn_before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    slow = detect(model, [tmp_path / "images"], score_thresh=0.0, draw=False)
    fast = detect(model, [tmp_path / "images"], score_thresh=0.0, draw=False, fast=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == bn_before > 0  # folded a copy
    assert [r["image"] for r in fast] == [r["image"] for r in slow]

    def as_dets(records):
        return [
            Detections(
                torch.tensor([d["box"] for d in r["detections"]]).reshape(-1, 4),
                torch.tensor([d["score"] for d in r["detections"]]),
                torch.tensor([d["label"] for d in r["detections"]], dtype=torch.int64),
            )
            for r in records
        ]

    # The same detections up to bf16 rounding of a barely trained model's near-tied scores.
    assert path_agreement(as_dets(slow), as_dets(fast)) > 0.5


def test_shapes_size_range_reaches_the_dataset():
    """data.shapes_min_size / shapes_max_size bound every synthetic box side (fractions of a 128-px image)."""
    cfg = load_config("ssd_tiny_shapes", ["data.shapes_min_size=0.03", "data.shapes_max_size=0.06"])
    ds = build_dataset(cfg.data, "train", 128)
    sides = torch.cat([(ds[i][1]["boxes"][:, 2:] - ds[i][1]["boxes"][:, :2]) for i in range(40)])
    assert sides.numel() > 0
    # A shape's box bounds its antialiased pixels: the drawn size plus at most one partly covered pixel each side.
    assert sides.max().item() <= 0.06 * 128 + 2
    assert sides.max().item() > 0.03 * 128
    default = build_dataset(load_config("ssd_tiny_shapes").data, "train", 128)
    assert max((default[i][1]["boxes"][:, 2:] - default[i][1]["boxes"][:, :2]).max().item() for i in range(40)) > 10
