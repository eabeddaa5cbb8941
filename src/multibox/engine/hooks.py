"""Training hooks: progress bar, metric logs, checkpoints, periodic evaluation with the best checkpoint, time budget.

Each hook is a small :class:`~multibox.engine.trainer.Hook`; :func:`multibox.engine.train.train` composes them from
the config. Only the main process (rank 0) writes files; every process evaluates nothing but the main one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from multibox.engine.rng import capture_rng_state, restore_rng_state
from multibox.engine.trainer import Hook, Trainer
from multibox.weights.checkpoint import model_checkpoint
from multibox.weights.io import save_checkpoint

__all__ = ["Callbacks", "Checkpointer", "Evaluator", "MetricLogger", "ProgressBar", "TimeBudget"]


class ProgressBar(Hook):
    """A tqdm bar with the loss, learning rate and images/s (main process only)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.run.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.run.max_iters, initial=trainer.step, desc="train", dynamic_ncols=True)

    def after_step(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        if self.bar.total != trainer.run.max_iters:  # a time budget moved the end
            self.bar.total = trainer.run.max_iters
        last = trainer.last
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}", img_s=f"{last['img_s']:.1f}")

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricLogger(Hook):
    """Training values every ``every`` steps (and at the last) to ``metrics.jsonl``, ``results.csv`` and TensorBoard.

    ``results.csv`` has one row per logged step with a fixed set of columns (validation columns stay empty until an
    evaluation fills them); ``metrics.jsonl`` one JSON object per event. Other hooks log through :meth:`log`.
    """

    COLUMNS = ("step", "train/loss", "train/loc", "train/conf", "train/lr", "train/img_s", "train/data_wait", "val/mAP")

    def __init__(self, out_dir: Path, every: int, tensorboard: bool = True) -> None:
        self.out_dir, self.every, self.tensorboard = out_dir, every, tensorboard
        self.file: Any = None
        self.tb: Any = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.run.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.file = (self.out_dir / "metrics.jsonl").open("a")
        csv_path = self.out_dir / "results.csv"
        if not csv_path.is_file():
            csv_path.write_text(",".join(self.COLUMNS) + "\n")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` for ``step`` to every sink (main process only)."""
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        with (self.out_dir / "results.csv").open("a", newline="") as f:
            row = {"step": step, **values}
            csv.writer(f).writerow(["" if row.get(c) is None else row[c] for c in self.COLUMNS])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step % self.every == 0 or trainer.step == trainer.run.max_iters:
            self.log(trainer.step, {f"train/{k}": v for k, v in trainer.last.items()})

    def after_train(self, trainer: Trainer) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()


class Checkpointer(Hook):
    """``last.pt`` (the full training state) every ``every`` steps and when training ends without an error.

    Attributes:
        path: the last checkpoint written, or None.
    """

    def __init__(self, out_dir: Path, every: int) -> None:
        self.out_dir, self.every = out_dir, every
        self.path: Path | None = None
        self._saved_at: int | None = None

    def _save(self, trainer: Trainer) -> None:
        if trainer.run.is_main:
            self.path = save_checkpoint(self.out_dir / "last.pt", trainer.checkpoint())
        self._saved_at = trainer.step

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self._save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.failed is None and self._saved_at != trainer.step:
            self._save(trainer)


class Evaluator(Hook):
    """Validation mAP every ``every`` steps and at the end; ``best.pt`` holds the weights of the best so far.

    The evaluation runs on the main process in float32 with the model in eval mode, then puts it back in training
    mode; the random generators are saved and restored around it, so that a run with evaluations trains exactly as
    one without (and resumes bit for bit).

    Args:
        evaluate: ``evaluate(model) -> dict`` with the metric under ``key`` (e.g. a partial of
            :func:`multibox.engine.evaluate.evaluate` over the validation set).
        every: steps between evaluations (the last step is always evaluated).
        out_dir: where ``best.pt`` goes.
        logger: where the values are logged.
        key: the metric that ranks checkpoints (higher is better).

    Attributes:
        history: ``(step, metrics)`` of every evaluation.
        best: ``(step, value)`` of the best evaluation so far, or None.
        seconds: the duration of the latest evaluation.
    """

    def __init__(
        self,
        evaluate: Callable[[Any], dict[str, Any]],
        every: int,
        out_dir: Path,
        logger: MetricLogger | None = None,
        key: str = "mAP",
    ) -> None:
        self.evaluate, self.every, self.out_dir, self.logger, self.key = evaluate, every, out_dir, logger, key
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.best: tuple[int, float] | None = None
        self.seconds = 0.0
        self._done_at: int | None = None

    def _run(self, trainer: Trainer) -> None:
        if not trainer.run.is_main or self._done_at == trainer.step:
            return
        t0 = time.perf_counter()
        rng = capture_rng_state()
        try:
            metrics = dict(self.evaluate(trainer.run.model))
        finally:
            restore_rng_state(rng)
            trainer.set_train_mode()
        self.seconds = time.perf_counter() - t0
        self._done_at = trainer.step
        self.history.append((trainer.step, metrics))
        value = float(metrics.get(self.key, float("nan")))
        scalars = {f"val/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "images"}
        if self.logger is not None:
            self.logger.log(trainer.step, {**scalars, "val/seconds": self.seconds})
        if not math.isnan(value) and (self.best is None or value > self.best[1]):
            self.best = (trainer.step, value)
            run = trainer.run
            extra = {"step": trainer.step, "metrics": {self.key: value}}
            save_checkpoint(self.out_dir / "best.pt", model_checkpoint(run.model, run.classes, None, **extra))

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.failed is None:
            self._run(trainer)


class TimeBudget(Hook):
    """Stop training within a wall-clock budget, with the learning-rate schedule fitted to it.

    Every ``every`` steps the steps that fit in the remaining time are estimated from the speed so far (which
    includes the periodic evaluations), less the time of one more evaluation for the final one, and the schedule's
    end (``max_iters``, and multistep milestones in proportion) is moved there, so that a cosine schedule still
    decays to its end within the budget. It never moves past the config's ``max_iters`` (or ``epochs``). When the
    budget is spent the run stops after the current step. A resumed run continues the budget of the run it
    resumes. Time-budgeted runs are not bit-reproducible (the step count depends on the machine's speed).

    Args:
        seconds: the budget.
        every: steps between re-estimates (the first after ``min(every, 10)`` steps).
        evaluator: whose latest evaluation time is kept in reserve, if any.
    """

    def __init__(self, seconds: float, every: int = 20, evaluator: Evaluator | None = None) -> None:
        if not seconds > 0:
            raise ValueError(f"the time budget must be positive, got {seconds} s")
        self.seconds, self.every, self.evaluator = float(seconds), max(1, int(every)), evaluator
        self._first_step = 0
        self._cap = 0

    def before_train(self, trainer: Trainer) -> None:
        self._first_step = trainer.step
        self._cap = trainer.run.max_iters

    def _replan(self, trainer: Trainer) -> None:
        run, done = trainer.run, trainer.step - self._first_step
        session = time.perf_counter() - trainer.start_time
        reserve = self.evaluator.seconds if self.evaluator is not None else 0.0
        remaining = self.seconds - trainer.elapsed - reserve
        fits = trainer.step + max(0, math.floor(remaining / (session / done)))
        new_end = max(trainer.step, min(self._cap, fits))
        if new_end != run.max_iters:
            factor = run.lr_factor
            factor.milestones = [round(m * new_end / factor.max_iters) for m in factor.milestones]
            factor.max_iters = max(1, new_end)
            run.max_iters = new_end

    def after_step(self, trainer: Trainer) -> None:
        if trainer.elapsed >= self.seconds:
            trainer.request_stop(f"the time budget of {self.seconds / 60:g} min is spent")
            return
        done = trainer.step - self._first_step
        if done == min(self.every, 10) or done % self.every == 0:
            self._replan(trainer)


class Callbacks(Hook):
    """User callbacks ``fn(step, values)`` after every step (every process)."""

    def __init__(self, fns: Sequence[Callable[[int, dict[str, float]], None]]) -> None:
        self.fns = list(fns)

    def after_step(self, trainer: Trainer) -> None:
        for fn in self.fns:
            fn(trainer.step, trainer.last)
