"""Distributed training: two CPU processes (gloo) with a global batch of B step as one process with a batch of B."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from multibox.config import load_config
from multibox.engine.run import build_run
from multibox.engine.train import train
from multibox.weights.io import load_checkpoint
from test_engine import tiny_overrides

# BatchNorm in eval mode (every BatchNorm of ssd_tiny is in its backbone): batch statistics would differ between a
# batch of B and two of B / 2, which is DDP without SyncBatchNorm, not what this test is about. float32, no AMP.
SETTINGS = {"train.freeze_bn": True, "train.amp": "none", "train.lr": 0.02, "train.ckpt_every": 0}


def _config(out: Path, **extra: object):
    return load_config("ssd_tiny_shapes", tiny_overrides(out, steps=3, **SETTINGS, **extra))


def _worker(rank: int, world: int, port: int, out: str, extra: dict | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    train(_config(Path(out), **(extra or {})), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, grad_accum) -> None:
    """Also with two micro-batches of one image per process: the step divides by the positives of all four."""
    single = train(_config(tmp_path / "one"), progress=False)
    extra = {"train.grad_accum": grad_accum}
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two"), extra), nprocs=2, join=True)
    a = load_checkpoint(single.checkpoint)
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    # the comparison is not vacuous: three steps moved the weights far more than the tolerance
    init = build_run(_config(tmp_path / "init")).model.state_dict()
    assert max(float((a["model"][k].float() - init[k].float()).abs().max()) for k in init) > 1e-2


def test_grad_accum_steps_as_one_batch_of_the_same_images(tmp_path) -> None:
    """grad_accum=4 micro-batches of 2 images step as one batch of 8: the loss of an optimizer step is divided by the
    positives of all its micro-batches, not averaged over micro-batches divided by their own positives."""
    overrides = {**SETTINGS, "train.batch_size": 8}
    one = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "one", steps=2, **overrides)), progress=False)
    accum = {**overrides, "train.grad_accum": 4}
    four = train(load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "four", steps=2, **accum)), progress=False)
    a, b = load_checkpoint(one.checkpoint), load_checkpoint(four.checkpoint)
    assert a["step"] == b["step"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    init = build_run(_config(tmp_path / "init")).model.state_dict()
    assert max(float((a["model"][k].float() - init[k].float()).abs().max()) for k in init) > 1e-2
