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


def _step_positives(local: int, world: int, device: torch.device) -> float:
    """The loss normaliser of one optimizer step: the positives of all its micro-batches on all processes (at least
    1). The paper's ``N`` is the batch's number of positives; the batch of an optimizer step is every micro-batch of
    every process."""
    if world == 1:
        return float(max(local, 1))
    import torch.distributed as dist

    total = torch.tensor(float(local), device=device)
    dist.all_reduce(total)
    return float(total.clamp(min=1))


def _rescale_grads(model: nn.Module, factor: float) -> None:
    """Multiply the gradients accumulated so far by ``factor`` (a new normaliser for what was already summed)."""
    if factor != 1.0:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)


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
        extra_state: name -> function returning more state that hooks keep in ``last.pt`` (e.g. the EMA weights;
            given back on resume as ``run.resume_state[name]``).
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
        self.extra_state: dict[str, Any] = {}
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

    def _next_batch(self) -> tuple[torch.Tensor, list[dict[str, Any]], float]:
        """The next micro-batch on the run's device: images, targets and the seconds waited for it."""
        run = self.run
        t_wait = time.perf_counter()
        batch = next(self._batches)
        while batch is None:  # every image of the micro-batch was unreadable and skipped (the reader warned)
            self.skipped_images += run.micro_batch
            batch = next(self._batches)
        images, items = batch
        self.skipped_images += run.micro_batch - images.shape[0]
        wait = time.perf_counter() - t_wait
        images = images.to(run.device, non_blocking=True)
        if run.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, items, wait

    def _forward_loss(self, images: torch.Tensor, items: list[dict[str, Any]], sync: bool) -> dict[str, torch.Tensor]:
        """The micro-batch's losses (divided by its own positives); raises :class:`NonFiniteLossError`.

        Without ``sync`` the forward runs under DDP's ``no_sync`` (the gradients stay local until the last
        micro-batch).
        """
        run = self.run
        targets = [(t["boxes"].to(run.device), t["labels"].to(run.device)) for t in items]
        no_sync = run.train_model.no_sync() if not sync else nullcontext()
        with no_sync, autocast_context(run.device, run.amp):
            pred = run.train_model(images)
        losses = multibox_loss(pred, targets, run.priors)
        if not torch.isfinite(losses["total"]):
            ids = [t.get("image_id") for t in items]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (loc={float(losses['loc'].detach())}, "
                f"conf={float(losses['conf'].detach())}); images of the batch: {ids}. "
                "Check these annotations (`multibox scan`) or lower train.lr"
            )
        return losses

    def _accumulate(self, sums: dict[str, float]) -> float:
        """Forward and backward over the step's ``grad_accum`` micro-batches; returns the seconds waited for data.

        The step's loss is the sum over its micro-batches (and processes) divided by all their positives, as one
        batch of ``train.batch_size`` images would be. That number is known only after the last micro-batch, so the
        gradients summed so far are kept divided by the positives seen so far and rescaled as more arrive; the last
        micro-batch of a DDP run uses every process's positives (DDP then averages over the processes).
        ``sums`` receives the step's losses of this process.
        """
        run, accum = self.run, self.run.config.train.grad_accum
        positives, wait = 0, 0.0
        for k in range(accum):
            last = k == accum - 1
            images, items, w = self._next_batch()
            losses = self._forward_loss(images, items, sync=last or run.world == 1)
            n = int(losses["num_pos"])
            before, positives = max(positives, 1), positives + n
            norm = _step_positives(positives, run.world, run.device) / run.world if last else float(max(positives, 1))
            _rescale_grads(run.model, before / norm)
            run.scaler.scale(losses["total"] * (max(n, 1) / norm)).backward()
            for key, name in (("loss", "total"), ("loc", "loc"), ("conf", "conf")):
                sums[key] += float(losses[name].detach()) * max(n, 1)
            wait += w
            self.seen += images.shape[0] * run.world
        for key in sums:
            sums[key] /= max(positives, 1)
        return wait

    def run_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches: forward, loss, backward, clip, update, schedule.

        Returns:
            The step's losses, learning rate, images per second and data-wait fraction.
        """
        run, tc = self.run, self.run.config.train
        run.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loc": 0.0, "conf": 0.0}
        t0 = time.perf_counter()
        wait = self._accumulate(sums)
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
            **{name: fn() for name, fn in self.extra_state.items()},
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
