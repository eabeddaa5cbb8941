import random

import numpy as np
import pytest
import torch

from multibox.engine.rng import capture_rng_state, restore_rng_state
from multibox.engine.schedule import LRFactor
from multibox.weights.io import load_checkpoint, save_checkpoint, save_safetensors


def test_multistep_with_warmup_by_hand():
    f = LRFactor(schedule="multistep", max_iters=120, warmup_iters=10, warmup_factor=1 / 3, milestones=(80, 100))
    assert f(0) == pytest.approx(1 / 3)
    assert f(5) == pytest.approx(1 / 3 * 0.5 + 0.5)
    assert f(10) == 1.0 and f(79) == 1.0
    assert f(80) == pytest.approx(0.1) and f(100) == pytest.approx(0.01)


def test_cosine_by_hand():
    f = LRFactor(schedule="cosine", max_iters=100, min_factor=0.1)
    assert f(0) == 1.0 and f(100) == pytest.approx(0.1) and f(50) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown schedule"):
        LRFactor(schedule="step", max_iters=1)


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # noqa: NPY002


def test_atomic_save_leaves_no_temp_and_bad_files_are_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", {"model": {"w": torch.ones(3)}, "step": 7})
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 7
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"trunc\.pt: cannot be read"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_weights_only_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused: it asks to call print when loaded"):
        load_checkpoint(tmp_path / "evil.pt")


def test_safetensors_round_trip(tmp_path):
    sd = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    path = save_safetensors(tmp_path / "w.safetensors", sd, {"model": "ssd_tiny"})
    loaded = load_checkpoint(path)
    assert loaded["metadata"] == {"model": "ssd_tiny"}
    assert all(torch.equal(loaded["model"][k], v) for k, v in sd.items())
