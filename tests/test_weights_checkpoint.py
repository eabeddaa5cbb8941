"""The checkpoint format (multibox.weights.checkpoint): written once, read in the current layout, old files too."""

import pytest
import torch

from multibox import create_model
from multibox.runtime import load_detector
from multibox.weights.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    model_checkpoint,
    read_checkpoint,
    upgrade_checkpoint,
)
from multibox.weights.io import CheckpointError, load_checkpoint, save_checkpoint


def _tiny():
    torch.manual_seed(0)
    return create_model("ssd_tiny", 3, image_size=64, width=4).eval()


def test_a_written_checkpoint_has_every_documented_field_of_the_current_version(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / "m.pt", model_checkpoint(model, ["a", "b"], {"seed": 1}, step=7))
    raw = load_checkpoint(path)
    assert raw["format_version"] == CHECKPOINT_VERSION == 2
    assert set(raw) <= set(Checkpoint.__annotations__)  # nothing written that the schema does not document
    assert raw["classes"] == ["a", "b"] and raw["config"] == {"seed": 1} and raw["step"] == 7
    assert raw["preprocess"] == {"image_size": [64, 64], "mean": list(model.preprocess.mean),
                                 "std": list(model.preprocess.std)}  # fmt: skip
    read = read_checkpoint(path)  # the current layout needs no upgrade: the same entries
    assert set(read) == set(raw) and all(read[k] is raw[k] or read[k] == raw[k] for k in raw if k != "model")
    assert all(torch.equal(read["model"][k], v) for k, v in raw["model"].items())


def test_a_version_0_checkpoint_of_this_project_still_loads(tmp_path):
    """The first layout: no format_version, no checksum, no top-level preprocess, no classes."""
    model = _tiny()
    old = {"model": model.state_dict(), "model_args": model.config_dict()}
    torch.save(old, tmp_path / "v0.pt")
    ckpt = read_checkpoint(tmp_path / "v0.pt")
    assert ckpt["format_version"] == CHECKPOINT_VERSION and ckpt["classes"] == []
    assert ckpt["preprocess"] == model.config_dict()["preprocess"]
    rebuilt, classes = load_detector(tmp_path / "v0.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), rebuilt.eval()(x), strict=True))
    assert classes == []


def test_upgrade_refuses_what_it_cannot_read():
    model = _tiny()
    good = model_checkpoint(model, ["a", "b"])
    with pytest.raises(CheckpointError, match=r"x\.pt: not a multibox checkpoint: it has no 'model_args'"):
        upgrade_checkpoint({"model": good["model"]}, "x.pt")
    with pytest.raises(CheckpointError, match=r"y\.pt: checkpoint format version 3 is newer .* \(2\)"):
        upgrade_checkpoint({**good, "format_version": 3}, "y.pt")
    with pytest.raises(CheckpointError, match="version 'two'"):
        upgrade_checkpoint({**good, "format_version": "two"}, "z.pt")
    assert upgrade_checkpoint(good) is not good  # a new dict: the caller's is untouched
