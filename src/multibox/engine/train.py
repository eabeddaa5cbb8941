"""``multibox train``: compose a training run, its hooks and the trainer from a config, and run it.

The pieces live in their own modules: :mod:`multibox.engine.run` builds the run (data, model with priors fitted to
the data, optimizer, schedule, resume state, DDP), :mod:`multibox.engine.trainer` steps it, and
:mod:`multibox.engine.hooks` logs, checkpoints, evaluates and keeps the time budget. Under ``torchrun``
(``WORLD_SIZE > 1``) it trains with DistributedDataParallel; only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from multibox.config import Config, config_to_dict
from multibox.engine import hooks as H
from multibox.engine.lock import RunLockedError, lock_out_dir
from multibox.engine.run import TrainingRun, build_run
from multibox.engine.trainer import Hook, NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "RunLockedError", "TrainResult", "model_args", "train"]


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    checkpoint: Path | None
    step: int
    last_loss: dict[str, float]
    images_per_second: float
    out_dir: Path
    data_wait_fraction: float = 0.0
    """The share of the run's wall time spent waiting for the next batch (the loader not keeping up)."""
    best: tuple[int, float] | None = None
    """``(step, validation mAP)`` of ``best.pt`` when the run evaluated periodically."""
    best_checkpoint: Path | None = None
    stop_reason: str | None = None
    """Why training ended before ``max_iters`` (the time budget), or None."""
    evaluations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    skipped_images: int = 0
    """Images left out of their training batches because they could not be read (``data.on_error=skip``); an image
    counts each time it is drawn."""
    skipped_when_built: int = 0
    """Training images the reader left out when it was built (unreadable or unusable files; it warned)."""
    amp: str = "none"
    """The mixed precision the steps ran in (``train.amp`` with ``auto`` resolved for the device)."""


def model_args(model: nn.Module) -> dict[str, Any]:
    """The model's build arguments as plain values (``model.config_dict()``), for a safe checkpoint."""
    return model.config_dict()


def _evaluator(run: TrainingRun, logger: H.MetricLogger, ema: H.EMA | None) -> H.Evaluator | None:
    """Periodic validation on the config's val split (``train.eval_every`` steps, and at the end)."""
    tc, ec = run.config.train, run.config.eval
    if not tc.eval_every or not run.is_main:
        return None
    from multibox.engine.builders import build_dataset
    from multibox.engine.evaluate import evaluate

    val = build_dataset(run.config.data, "val", run.config.model.image_size, classes=run.classes)
    fn = functools.partial(
        evaluate,
        dataset=val,
        metric=ec.metric,
        iou_threshold=ec.iou_threshold,
        class_names=list(run.classes),
        batch_size=ec.batch_size,
        device=run.device,
        score_thresh=ec.score_thresh,
        nms_thresh=ec.nms_thresh,
        pre_nms_top_k=ec.pre_nms_top_k,
        top_k=ec.top_k,
    )
    key = "AP" if ec.metric == "coco" else "mAP"
    model_of = (lambda trainer: ema.model) if ema is not None else None
    return H.Evaluator(fn, tc.eval_every, run.out_dir, logger, key=key, model_of=model_of)


def _write_run_files(run: TrainingRun) -> None:
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "config.json").write_text(json.dumps(config_to_dict(run.config), indent=2))
    if run.prior_fit is not None:
        (run.out_dir / "priors.json").write_text(json.dumps(run.prior_fit.to_dict(), indent=2))


def train(
    config: Config,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a detector as ``config`` says.

    Args:
        config: the run (see :mod:`multibox.config`).
        resume: a checkpoint written by a previous run of the same config to continue from (``"auto"``: the
            ``last.pt`` of ``train.out_dir`` if it exists).
        progress: show a tqdm bar with loss, lr and images/s.
        callbacks: called as ``fn(step, losses)`` after every optimizer step (rank 0 and others alike).
        log: receives human-readable notes (the default-box decision); None: they are not printed.

    Returns:
        The :class:`TrainResult`; the final checkpoint is ``<out_dir>/last.pt``, the best by validation mAP
        ``<out_dir>/best.pt`` when ``train.eval_every`` is set.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message names the step and image ids).
        RunLockedError: another training run uses ``train.out_dir`` (see :mod:`multibox.engine.lock`; under DDP
            rank 0 holds the lock).
    """
    with lock_out_dir(config.train.out_dir) if _rank() == 0 else contextlib.nullcontext():
        return _train(config, resume, progress, callbacks, log)


def _rank() -> int:
    """This process's DDP rank (before the process group exists: torchrun's ``RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _train(
    config: Config,
    resume: str | Path | None,
    progress: bool,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]],
    log: Callable[[str], None] | None,
) -> TrainResult:
    run = build_run(config, resume=resume)
    tc = config.train
    try:
        if run.is_main:
            _write_run_files(run)
            if log is not None and run.prior_fit is not None:
                log(str(run.prior_fit))
            if log is not None and tc.amp == "auto":
                log(f"train.amp auto: {run.amp} on {run.device}")
        logger = H.MetricLogger(run.out_dir, tc.log_every)
        checkpointer = H.Checkpointer(run.out_dir, tc.ckpt_every)
        ema = H.EMA(tc.ema) if tc.ema > 0 else None
        evaluator = _evaluator(run, logger, ema)
        hooks: list[Hook] = [logger, checkpointer]
        if progress:
            hooks.insert(0, H.ProgressBar())
        if ema is not None:  # before the checkpointer, whose final last.pt holds the average
            hooks.insert(hooks.index(checkpointer), ema)
        if evaluator is not None:
            hooks.append(evaluator)
            if tc.patience:
                hooks.append(H.EarlyStopping(evaluator, tc.patience))
        if tc.max_minutes is not None:
            hooks.append(H.TimeBudget(tc.max_minutes * 60, every=tc.log_every, evaluator=evaluator))
        hooks.append(H.Callbacks(callbacks))
        trainer = Trainer(run, hooks)
        trainer.train()
    finally:
        if run.owns_process_group:
            dist.destroy_process_group()
    elapsed = max(trainer.elapsed - run.elapsed_s, 1e-9)
    return TrainResult(
        checkpoint=checkpointer.path,
        step=trainer.step,
        last_loss=trainer.last,
        images_per_second=trainer.seen / elapsed,
        out_dir=run.out_dir,
        data_wait_fraction=trainer.wait_seconds / elapsed,
        best=evaluator.best if evaluator else None,
        best_checkpoint=run.out_dir / "best.pt" if evaluator and evaluator.best else None,
        stop_reason=trainer.stop_reason,
        evaluations=evaluator.history if evaluator else [],
        skipped_images=trainer.skipped_images,
        skipped_when_built=run.skipped_when_built,
        amp=run.amp,
    )
