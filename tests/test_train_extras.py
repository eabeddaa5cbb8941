"""EMA of the weights and early stopping: hand-computed averages, a fake evaluation history, and real runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from multibox.config import load_config
from multibox.engine import hooks as H
from multibox.engine.train import train
from multibox.weights.io import load_checkpoint
from test_engine import tiny_overrides


def _fake_trainer(model: nn.Module, resume_state: dict | None = None) -> SimpleNamespace:
    run = SimpleNamespace(model=model, resume_state=resume_state or {})
    return SimpleNamespace(run=run, extra_state={}, step=0, stop_reason=None)


def test_ema_average_by_hand() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    trainer = _fake_trainer(model)
    ema = H.EMA(decay=0.5)
    ema.before_train(trainer)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    ema.after_step(trainer)  # n=1: d = min(0.5, 2/11) = 2/11 -> 2/11 * 1 + 9/11 * 3
    expected = 2 / 11 * 1 + 9 / 11 * 3
    assert ema.model[0].weight.item() == pytest.approx(expected, abs=1e-6)
    assert ema.model[1].num_batches_tracked.item() == 7  # integer buffers are copied
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    ema.after_step(trainer)  # n=2: d = min(0.5, 3/12) = 0.25
    assert ema.model[0].weight.item() == pytest.approx(0.25 * expected + 0.75 * 5, abs=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())
    state = trainer.extra_state["ema"]()
    assert state["updates"] == 2
    restored = H.EMA(0.5)
    restored.before_train(_fake_trainer(model, {"ema": state}))
    assert restored.updates == 2 and torch.equal(restored.model[0].weight, ema.model[0].weight)
    with pytest.raises(ValueError, match="decay"):
        H.EMA(1.0)


class _History:
    key = "mAP"

    def __init__(self) -> None:
        self.history: list = []
        self.best = None

    def add(self, step: int, value: float) -> None:
        self.history.append((step, {"mAP": value}))
        if self.best is None or value > self.best[1]:
            self.best = (step, value)


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    ev = _History()
    stop = H.EarlyStopping(ev, patience=2)
    trainer = SimpleNamespace(stop_reason=None)
    trainer.request_stop = lambda reason: setattr(trainer, "stop_reason", reason)
    for step, value in [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.3)]:  # 0.3 again is no improvement
        ev.add(step, value)
        stop.after_step(trainer)
        if step < 4:
            assert trainer.stop_reason is None
    assert stop.stale == 2 and "patience 2" in trainer.stop_reason and "best at step 2" in trainer.stop_reason
    stop.after_step(trainer)  # no new evaluation: nothing recounted
    assert stop.stale == 2
    with pytest.raises(ValueError, match="patience"):
        H.EarlyStopping(ev, 0)


def test_patience_stops_a_run_that_does_not_improve(tmp_path) -> None:
    sets = {"train.eval_every": 1, "train.patience": 2, "train.lr": 1e-12, "train.warmup_iters": 0}
    result = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path, steps=50, **sets)), progress=False)
    # the weights barely move (only BatchNorm statistics): the run stops two evaluations after its best
    best_step, best_value = result.best
    assert result.step == best_step + 2 < 50 and "patience 2" in result.stop_reason
    assert [s for s, _ in result.evaluations] == list(range(1, result.step + 1))
    assert all(m["mAP"] <= best_value for s, m in result.evaluations if s > best_step)


def test_ema_is_evaluated_saved_and_resumed(tmp_path) -> None:
    import shutil

    sets = {"train.eval_every": 2, "train.ema": 0.9}
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "a", steps=4, **sets))

    def keep_step_2(step: int, _values: dict) -> None:
        if step == 2:  # last.pt of step 2 (the checkpointer runs before the callbacks)
            shutil.copyfile(tmp_path / "a" / "last.pt", tmp_path / "mid.pt")

    result = train(cfg, progress=False, callbacks=[keep_step_2])
    last, best = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(result.best_checkpoint)
    assert last["ema"]["updates"] == 4 and load_checkpoint(tmp_path / "mid.pt")["ema"]["updates"] == 2
    saved = last["ema"]["model"] if result.best[0] == 4 else None
    if saved is not None:  # best.pt holds the average, not the raw weights
        assert all(torch.equal(best["model"][k], v) for k, v in saved.items())
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    # resumed from step 2, the average ends where the uninterrupted run's did
    again = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "b", steps=4, **sets))
    train(again, resume=tmp_path / "mid.pt", progress=False)
    resumed = load_checkpoint(tmp_path / "b" / "last.pt")["ema"]
    assert resumed["updates"] == 4
    assert all(torch.equal(resumed["model"][k], v) for k, v in last["ema"]["model"].items())
