"""The training loop: a :class:`Trainer` whose step does forward, backward and the optimizer update, and hooks.

Logging, checkpoints, periodic evaluation, the time budget and user callbacks are :class:`Hook` objects
(:mod:`multibox.engine.hooks`), called before the first step, after every step and after the last one (detectron2's
``SimpleTrainer.run_step`` + hooks). A hook may ask the trainer to stop (:meth:`Trainer.request_stop`); the loop then
ends after the current step and every hook's ``after_train`` still runs.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from multibox.config import config_to_dict
from multibox.engine.rng import capture_rng_state
from multibox.engine.run import TrainingRun, set_train_mode
from multibox.loss import multibox_loss
from multibox.runtime import autocast_context
from multibox.weights.checkpoint import model_checkpoint

__all__ = ["Hook", "NonFiniteLossError", "Trainer"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the images of the batch."""


class Hook:
    """Something done around the training steps; override what is needed."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once, before the first step."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after every optimizer step; ``trainer.step`` is the number of steps done, ``trainer.last`` the
        step's values (losses, lr, images/s, data wait)."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once at the end, also when training stops early or fails (``trainer.failed`` then holds the
        exception)."""


class Trainer:
    """Runs ``run`` step by step until ``run.max_iters`` or a hook's stop request.

    Attributes:
        run: the :class:`~multibox.engine.run.TrainingRun`.
        hooks: called in order.
        step: optimizer steps done so far.
        last: the values of the latest step (``loss``, ``loc``, ``conf``, ``lr``, ``img_s``, ``data_wait``).
        stop_reason: why training stopped early (None: it ran to ``max_iters``).
        failed: the exception that ended training, if any.
        seen: images processed by all processes in this session.
        skipped_images: images of this process's batches left out because they could not be read.
        wait_seconds: time spent waiting for batches in this session.
        start_time: ``time.perf_counter()`` when :meth:`train` started.
    """

    def __init__(self, run: TrainingRun, hooks: list[Hook] | tuple[Hook, ...] = ()) -> None:
        self.run = run
        self.hooks = list(hooks)
        self.step = run.step
        self.last: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.failed: BaseException | None = None
        self.seen = 0
        self.skipped_images = 0
        self.wait_seconds = 0.0
        self.start_time = time.perf_counter()
        self._batches = None

    @property
    def elapsed(self) -> float:
        """Training seconds so far, including those of the run this one resumed."""
        return self.run.elapsed_s + time.perf_counter() - self.start_time

    def request_stop(self, reason: str) -> None:
        """End training after the current step (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def set_train_mode(self) -> None:
        """The model back in training mode, with the run's BatchNorm policy (after an evaluation)."""
        tc = self.run.config.train
        set_train_mode(self.run.model, tc.freeze_bn, tc.freeze)

    def _micro_step(self, sync: bool) -> tuple[dict[str, float], int, float]:
        run, tc = self.run, self.run.config.train
        t_wait = time.perf_counter()
        batch = next(self._batches)
        while batch is None:  # every image of the micro-batch was unreadable and skipped (the reader warned)
            self.skipped_images += run.micro_batch
            batch = next(self._batches)
        images, items = batch
        self.skipped_images += run.micro_batch - images.shape[0]
        wait = time.perf_counter() - t_wait
        images = images.to(run.device, non_blocking=True)
        if tc.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [(t["boxes"].to(run.device), t["labels"].to(run.device)) for t in items]
        no_sync = run.train_model.no_sync() if not sync else nullcontext()
        with no_sync, autocast_context(run.device, tc.amp):
            pred = run.train_model(images)
        losses = multibox_loss(pred, targets, run.priors)
        if not torch.isfinite(losses["total"]):
            ids = [t.get("image_id") for t in items]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (loc={float(losses['loc'].detach())}, "
                f"conf={float(losses['conf'].detach())}); images of the batch: {ids}. "
                "Check these annotations (`multibox scan`) or lower train.lr"
            )
        run.scaler.scale(losses["total"] / tc.grad_accum).backward()
        names = (("loss", "total"), ("loc", "loc"), ("conf", "conf"))
        values = {key: float(losses[name].detach()) for key, name in names}
        return values, images.shape[0], wait

    def run_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches: forward, loss, backward, clip, update, schedule.

        Returns:
            The step's mean losses, learning rate, images per second and data-wait fraction.
        """
        run, tc = self.run, self.run.config.train
        run.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loc": 0.0, "conf": 0.0}
        t0, wait = time.perf_counter(), 0.0
        for k in range(tc.grad_accum):
            values, n, w = self._micro_step(sync=k == tc.grad_accum - 1 or run.world == 1)
            for key, v in values.items():
                sums[key] += v / tc.grad_accum
            wait += w
            self.seen += n * run.world
        if tc.clip_grad_norm is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), tc.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        dt = max(time.perf_counter() - t0, 1e-9)
        self.wait_seconds += wait
        return {**sums, "lr": run.optimizer.param_groups[0]["lr"], "img_s": tc.batch_size / dt, "data_wait": wait / dt}

    def checkpoint(self) -> dict[str, Any]:
        """The full training state at the current step (``last.pt``): weights, optimizer, schedule, RNGs."""
        run = self.run
        return model_checkpoint(
            run.model,
            run.classes,
            config_to_dict(run.config),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler.is_enabled() else {},
            step=self.step,
            rng=capture_rng_state(),
            elapsed_s=self.elapsed,
        )

    def train(self) -> None:
        """Run the hooks' ``before_train``, the steps, then every hook's ``after_train`` in reverse order (also on
        failure)."""
        self.start_time = time.perf_counter()
        self._batches = iter(self.run.loader)
        self.set_train_mode()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.run.max_iters and self.stop_reason is None:
                self.last = self.run_step()
                self.step += 1
                for hook in self.hooks:
                    hook.after_step(self)
        except BaseException as e:
            self.failed = e
            raise
        finally:
            for hook in reversed(self.hooks):  # unwound as opened: the logger, set up first, closes last
                hook.after_train(self)
