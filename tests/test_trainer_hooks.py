"""The trainer's hooks: periodic evaluation and best.pt, results.csv, the time budget, BatchNorm freezing, groups."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from multibox.config import config_from_dict, load_config
from multibox.engine import hooks as H
from multibox.engine.builders import build_dataset, build_optimizer
from multibox.engine.evaluate import evaluate
from multibox.engine.run import build_run
from multibox.engine.schedule import LRFactor
from multibox.engine.train import train
from multibox.weights.checkpoint import model_from_checkpoint
from multibox.weights.io import load_checkpoint
from test_engine import tiny_overrides


def test_periodic_evaluation_keeps_the_best_checkpoint_and_logs_it(tmp_path):
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path, steps=5, **{"train.eval_every": 2}))
    result = train(cfg, progress=False)
    assert [step for step, _ in result.evaluations] == [2, 4, 5]  # every 2 steps, and the last
    values = [m["mAP"] for _, m in result.evaluations]
    best_step, best_value = result.best
    assert best_value == max(values) and best_step == [2, 4, 5][values.index(best_value)]
    best = load_checkpoint(result.best_checkpoint)
    assert best["step"] == best_step and best["metrics"] == {"mAP": best_value}
    assert "optimizer" not in best and best["format_version"] == 2 and len(best["model_sha256"]) == 64
    assert config_from_dict(best["config"]) == cfg  # `multibox eval --weights best.pt` needs no --config
    # Round trip: best.pt evaluated again gives the mAP recorded for it.
    model = model_from_checkpoint(best)
    again = evaluate(model, build_dataset(cfg.data, "val", cfg.model.image_size), batch_size=8)
    assert again["mAP"] == pytest.approx(best_value, abs=1e-6)
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "val/mAP" in e] == [2, 4, 5]  # the final one logged too
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["step"] for r in rows if r["val/mAP"]] == ["2", "4", "5"]
    assert [r["step"] for r in rows if r["train/loss"]] == [str(s) for s in range(1, 6)]
    assert float(next(r for r in rows if r["step"] == "4" and r["val/mAP"])["val/mAP"]) == pytest.approx(values[1])


def test_evaluations_do_not_change_training(tmp_path):
    plain = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "a", steps=4)), progress=False)
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "b", steps=4, **{"train.eval_every": 1}))
    evaluated = train(cfg, progress=False)
    a, b = load_checkpoint(plain.checkpoint)["model"], load_checkpoint(evaluated.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_with_a_final_checkpoint(tmp_path):
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path, steps=1000, **{"train.max_minutes": 1e-6}))
    result = train(cfg, progress=False)
    assert result.step == 1 and "time budget" in result.stop_reason
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1


class _FakeRun:
    def __init__(self, max_iters: int, milestones=()) -> None:
        self.lr_factor = LRFactor(schedule="multistep", max_iters=max_iters, milestones=milestones)
        self.max_iters = max_iters
        self.elapsed_s = 0.0


class _FakeTrainer:
    def __init__(self, run: _FakeRun, step: int, elapsed: float) -> None:
        self.run, self.step, self.elapsed = run, step, elapsed
        self.start_time = 0.0
        self.stop_reason = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason


def test_time_budget_fits_the_schedule_to_the_remaining_time(monkeypatch):
    run = _FakeRun(1000, milestones=(600, 800))
    budget = H.TimeBudget(100.0, every=10)
    trainer = _FakeTrainer(run, 0, 0.0)
    budget.before_train(trainer)
    # 10 steps took 5 s: 0.5 s/step, 95 s left -> 190 more steps, 200 in all; milestones scale by 200/1000.
    monkeypatch.setattr(H.time, "perf_counter", lambda: 5.0)
    trainer.step, trainer.elapsed = 10, 5.0
    budget.after_step(trainer)
    assert run.max_iters == 200 and run.lr_factor.max_iters == 200 and run.lr_factor.milestones == [120, 160]
    # Faster later (40 steps in 10 s): 90 s left at 0.25 s/step -> 360 more, 400 in all.
    monkeypatch.setattr(H.time, "perf_counter", lambda: 10.0)
    trainer.step, trainer.elapsed = 40, 10.0
    budget.after_step(trainer)
    assert run.max_iters == 400 and run.lr_factor.milestones == [240, 320]
    # Never past the config's own end, and an evaluation's time is kept in reserve.
    evaluator = H.Evaluator(lambda m: {}, 0, None)
    evaluator.seconds = 30.0
    capped = _FakeRun(150)
    budget = H.TimeBudget(100.0, every=10, evaluator=evaluator)
    trainer = _FakeTrainer(capped, 0, 0.0)
    budget.before_train(trainer)
    monkeypatch.setattr(H.time, "perf_counter", lambda: 1.0)
    trainer.step, trainer.elapsed = 10, 1.0
    budget.after_step(trainer)  # (100 - 1 - 30) / 0.1 = 690 more steps, capped at 150
    assert capped.max_iters == 150
    trainer.elapsed = 100.0
    budget.after_step(trainer)
    assert "time budget" in trainer.stop_reason
    with pytest.raises(ValueError, match="positive"):
        H.TimeBudget(0.0)


def test_freeze_bn_keeps_the_backbone_statistics(tmp_path):
    def stats(state, prefix):
        return {k: v for k, v in state.items() if k.startswith(prefix) and "running_mean" in k}

    init = {k: v.clone() for k, v in build_run(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "a"))).model
            .state_dict().items()}  # fmt: skip
    frozen_cfg = load_config("ssd_tiny_shapes", [*tiny_overrides(tmp_path / "b"), "train.freeze_bn=true"])
    frozen = load_checkpoint(train(frozen_cfg, progress=False).checkpoint)["model"]
    free = load_checkpoint(train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "c")), progress=False)
                           .checkpoint)["model"]  # fmt: skip
    before, after, moved = stats(init, "backbone."), stats(frozen, "backbone."), stats(free, "backbone.")
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not torch.equal(before[k], moved[k]) for k in before)
    # the affine weights still learn
    affine = [k for k in frozen if k.startswith("backbone.") and k.endswith(".weight") and frozen[k].ndim == 1]
    assert affine and any(not torch.equal(init[k], frozen[k]) for k in affine)


def test_optimizer_groups_backbone_multiplier_and_adamw():
    from multibox.config import TrainConfig
    from multibox.models import create_model

    model = create_model("ssd_tiny", 4, image_size=64, width=4)
    opt = build_optimizer(model, TrainConfig(lr=0.1, backbone_lr_mult=0.25, no_decay_bias_norm=True))
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in opt.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(0.025 if in_backbone.pop() else 0.1)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 5e-4)
    assert opt.param_groups[0]["lr"] == 0.1  # the head's group first: the logged lr is the base one
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", momentum=0.8))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.999)
    assert not math.isnan(adamw.param_groups[0]["lr"])


def test_training_skips_an_unreadable_image_and_reports_it(tmp_path):
    from multibox.data import DatasetWarning, ShapesDataset, write_voc

    root = tmp_path / "voc"
    write_voc(ShapesDataset(8, 64, seed=3), root, split="train")
    bad = sorted((root / "JPEGImages").glob("*.png"))[2]
    data = bytearray(bad.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the IDAT chunk's CRC: the header reads fine, decoding finds it
    bad.write_bytes(bytes(data))
    sets = tiny_overrides(tmp_path / "run", steps=4, **{"data.kind": "voc", "data.root": str(root)})
    sets.append("data.train_split=train")
    with pytest.warns(DatasetWarning, match=bad.name):
        result = train(load_config("ssd_tiny_shapes", sets), progress=False)
    # 4 steps of 4 images over 8 images: every image is drawn twice, the bad one skipped both times
    assert result.step == 4 and result.skipped_images == 2 and result.skipped_when_built == 0
    assert torch.isfinite(torch.tensor(result.last_loss["loss"]))


def test_freeze_stops_training_the_named_modules(tmp_path):
    from multibox.engine.run import freeze_modules

    sets = [*tiny_overrides(tmp_path / "a"), "train.freeze=[backbone.base.0, backbone.base.1]"]
    cfg = load_config("ssd_tiny_shapes", sets)
    init = {k: v.clone() for k, v in build_run(cfg).model.state_dict().items()}
    after = load_checkpoint(train(cfg, progress=False).checkpoint)["model"]
    frozen = [k for k in init if k.startswith(("backbone.base.0.", "backbone.base.1."))]
    assert frozen and all(torch.equal(init[k], after[k]) for k in frozen)  # weights and BatchNorm statistics
    assert any(not torch.equal(init[k], after[k]) for k in init if k.startswith("backbone.base.2."))
    with pytest.raises(ValueError, match="no module"):
        freeze_modules(build_run(cfg).model, ("backbone.nope",))


def test_a_training_set_without_boxes_is_refused(tmp_path):
    from multibox.data import ShapesDataset, write_voc

    root = tmp_path / "voc"
    write_voc(ShapesDataset(4, 64, seed=1, min_objects=0, max_objects=0), root, split="train", classes=["circle"])
    sets = tiny_overrides(tmp_path / "run", **{"data.kind": "voc", "data.root": str(root), "data.classes": ["circle"]})
    with pytest.raises(ValueError, match=r"no image of the training set .* has a box"):
        train(load_config("ssd_tiny_shapes", [*sets, "data.train_split=train"]), progress=False)


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_vnni"}, "none"), ({"avx512_bf16"}, "bf16")])
def test_amp_auto_runs_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, flags, expected):
    """``train.amp: auto`` (the demo's and the fine-tuning preset's) is resolved for the device when the run is built;
    the checkpoint keeps the setting as written, so a resume on another machine resolves it again."""
    import multibox.runtime as rt

    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset(flags))
    seen = []
    real = rt.autocast_context
    monkeypatch.setattr("multibox.engine.trainer.autocast_context", lambda d, amp: seen.append(amp) or real(d, amp))
    lines = []
    cfg = load_config("ssd_tiny_shapes", [*tiny_overrides(tmp_path), "train.amp=auto"])
    result = train(cfg, progress=False, log=lines.append)
    assert result.amp == expected and set(seen) == {expected} and len(seen) == 2  # both steps
    assert f"train.amp auto: {expected} on cpu" in lines
    assert load_checkpoint(result.checkpoint)["config"]["train"]["amp"] == "auto"
