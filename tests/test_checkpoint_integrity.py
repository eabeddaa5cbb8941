"""Checkpoints that are corrupt, non-finite, of another shape, old, malicious, half-written or written to a full disk:
each refused (or loaded) with the exact outcome, and nothing in a file ever runs."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.files import OutputWriteError
from multibox.models import create_model
from multibox.weights.checkpoint import model_checkpoint, model_from_checkpoint
from multibox.weights.io import ORPHAN_AGE_S, CheckpointError, load_checkpoint, save_checkpoint, state_dict_sha256
from test_engine import tiny_overrides

SRC = Path(__file__).resolve().parents[1] / "src"


def _tiny(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("ssd_tiny", num_classes, image_size=64, width=4).eval()


def _saved(tmp_path: Path, model: torch.nn.Module | None = None, name: str = "last.pt") -> Path:
    model = model if model is not None else _tiny()
    return save_checkpoint(tmp_path / name, model_checkpoint(model, ["circle", "square"][: model.num_classes - 1]))


def test_sha256_is_over_names_dtypes_shapes_and_bytes_in_name_order():
    state = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([[3]], dtype=torch.int64)}
    reference = hashlib.sha256(
        b"a\0"
        + b"torch.int64[1, 1]\0"
        + struct.pack("<q", 3)
        + b"b\0"
        + b"torch.float32[2]\0"
        + struct.pack("<2f", 1, 2)
    ).hexdigest()
    assert state_dict_sha256(state) == reference
    changed = [
        {"b": torch.tensor([1.0, 2.0]), "c": state["a"]},  # a name
        {"b": torch.tensor([1.0, 2.0], dtype=torch.float64), "a": state["a"]},  # a dtype
        {"b": torch.tensor([[1.0, 2.0]]), "a": state["a"]},  # a shape, same bytes
        {"b": torch.tensor([1.0, 2.0000002]), "a": state["a"]},  # one bit
    ]
    assert len({state_dict_sha256(s) for s in changed} | {reference}) == 5


def test_sixteen_flipped_bytes_in_a_tensor_are_refused(tmp_path, capsys):
    model = _tiny()
    path = _saved(tmp_path, model)
    weight = model.state_dict()["head.conf.0.weight"]
    raw = bytearray(path.read_bytes())
    at = raw.find(weight.numpy().tobytes()[:64])
    assert at > 0
    for k in range(at + 8, at + 24):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))
    # torch's zip reader does not notice (no CRC check on load): the weights come back changed, silently.
    plain = torch.load(path, weights_only=True)
    assert not torch.equal(plain["model"]["head.conf.0.weight"], weight)
    with pytest.raises(CheckpointError, match="corrupt: its weights do not match the checksum") as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(path))
    assert main(["eval", "--weights", str(path)]) == 3
    assert capsys.readouterr().err.startswith(f"multibox eval: error: {path}: corrupt")
    assert load_checkpoint(path, verify=False)["model"]["head.conf.0.weight"].shape == weight.shape  # opt-out


def test_a_weight_changed_after_saving_fails_the_checksum(tmp_path):
    path = _saved(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["head.loc.1.bias"][0] += 1e-3
    torch.save(ckpt, path)  # rewritten with the old checksum
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad):
    model = _tiny()
    with torch.no_grad():
        model.head.conf[2].bias[1:3] = bad
    path = _saved(tmp_path, model)  # the checksum is right: only the values are bad
    n = model.head.conf[2].bias.numel()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: weight head.conf.2.bias has 2 NaN/infinite value(s) of {n}")


def test_all_nan_weights_are_refused_at_the_command_line(tmp_path, capsys):
    """The issue's case: every weight NaN (a diverged run's last save); refused naming the first tensor, exit 3."""
    model = _tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = _saved(tmp_path, model)
    first, tensor = next((k, v) for k, v in model.state_dict().items() if v.is_floating_point())
    message = f"{path}: weight {first} has {tensor.numel()} NaN/infinite value(s) of {tensor.numel()}: the model "
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(message) and "use an earlier checkpoint" in str(e.value)
    Image.new("RGB", (20, 20)).save(tmp_path / "p.jpg")
    assert main(["detect", str(tmp_path / "p.jpg"), "--weights", str(path), "--out", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err == f"multibox detect: error: {e.value}\n"
    assert not (tmp_path / "o" / "detections.json").exists()


def test_another_class_count_names_the_key_and_both_shapes(tmp_path, capsys):
    five, three = _tiny(5), _tiny(3)
    ckpt = model_checkpoint(five, ["a", "b", "c", "d"])
    ckpt["model_args"] = three.config_dict()  # the state of a 5-class model under a 3-class model's arguments
    path = save_checkpoint(tmp_path / "mixed.pt", ckpt)
    theirs, ours = (
        list(five.state_dict()["head.conf.0.weight"].shape),
        list(three.state_dict()["head.conf.0.weight"].shape),
    )
    assert theirs != ours
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(load_checkpoint(path), path)
    n = sum(five.state_dict()[k].shape != v.shape for k, v in three.state_dict().items())
    assert str(e.value) == (
        f"{path}: weights do not fit the model: head.conf.0.weight is {theirs} in the file but {ours} in the model "
        f"(another number of classes?); {n} tensor(s) differ"
    )
    Image.new("RGB", (20, 20)).save(tmp_path / "p.jpg")
    assert main(["detect", str(tmp_path / "p.jpg"), "--weights", str(path), "--out", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err == f"multibox detect: error: {e.value}\n"
    # Fine-tuning from weights of another class count (train.init_weights): the same message, not torch's traceback.
    args = ["train", "ssd_tiny_shapes", "--no-progress"]
    for kv in tiny_overrides(tmp_path / "run", **{"train.init_weights": str(path)}):
        args += ["--set", kv]
    assert main(args) == 3
    line = capsys.readouterr().err
    assert line.startswith(f"multibox train: error: {path}: weights do not fit the model: head.conf.0.weight is ")


def test_resuming_from_weights_without_a_training_state_says_what_to_do(tmp_path, capsys):
    """--resume of a best.pt or converted weights (no optimizer, scheduler, step): it was a KeyError, exit 70."""
    model = _tiny(4)
    path = save_checkpoint(tmp_path / "best.pt", model_checkpoint(model, ["circle", "square", "triangle"]))
    args = ["train", "ssd_tiny_shapes", "--no-progress"]
    for kv in tiny_overrides(tmp_path / "run", **{"train.amp": "none", "train.channels_last": False}):
        args += ["--set", kv]
    assert main([*args, "--resume", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"multibox train: error: {path}: cannot resume from it: it holds model weights without a training state (no "
        f"optimizer, scheduler, step, rng); resume from a run's last.pt, or start from these weights with --set "
        f"train.init_weights={path}\n"
    )
    assert main([*args, "--set", f"train.init_weights={path}"]) == 0  # the advice works
    assert main([*args, "--resume", str(tmp_path / "run" / "last.pt"), "--set", "train.max_iters=3"]) == 0


def test_a_checkpoint_from_before_the_checksum_still_loads(tmp_path):
    model = _tiny()
    old = {"model": model.state_dict(), "model_args": model.config_dict(), "classes": ["circle", "square"]}
    torch.save(old, tmp_path / "old.pt")  # the old way: no format_version, no model_sha256
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert "model_sha256" not in ckpt and "format_version" not in ckpt
    rebuilt = model_from_checkpoint(ckpt).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), rebuilt(x), strict=True))


class _RunsACommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _RunsACommand(f"touch {marker}")
    torch.save({"model": {}, "payload": evil}, tmp_path / "evil.pt")  # torch's zip container
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"payload": evil}, protocol=2))  # a bare pickle
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: refused: it asks to call posix.system when loaded")
        assert "nothing in this file was run" in str(e.value)
        assert main(["eval", "--weights", str(tmp_path / name)]) == 3
        assert "refused" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "cannot be read as a torch checkpoint"),
        (b"PK\x03\x04 half a zip", "cannot be read as a torch checkpoint"),
        (b"model: weights\n", "cannot be read as a torch checkpoint: not a pickle of tensors and plain values"),
    ],
)
def test_unreadable_files(tmp_path, content, words):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(tmp_path / "x.pt")


def test_truncated_and_non_dict_checkpoints(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pt: cannot be read as a torch checkpoint"):
        load_checkpoint(tmp_path / "half.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt: expected a dict checkpoint, got Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "disk full (No space left on device)"),
        (errno.EDQUOT, "disk full (Disk quota exceeded)"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code, reason):
    import multibox.weights.io as C

    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    before = path.read_bytes()

    def failing(obj, f):
        f.write(b"\0" * 4096)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(C.torch, "save", failing)
    with pytest.raises(OutputWriteError) as e:
        save_checkpoint(path, {"step": 2})
    assert isinstance(e.value, OSError) and e.value.errno == code
    assert str(e.value) == f"cannot write checkpoint {path}: {reason}; the previous last.pt is intact"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_named_pipe_given_as_checkpoint_is_refused_not_waited_on(tmp_path, capsys):
    import contextlib
    import threading

    fifo = tmp_path / "w.pt"
    os.mkfifo(fifo)

    def release() -> None:  # should a read block on it (the bug), end it so that the test fails instead of hanging
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(10.0, release)
    timer.start()
    try:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(fifo)
        assert str(e.value) == f"{fifo}: cannot be read as a checkpoint: not a regular file: a named pipe (FIFO)"
        assert main(["eval", "--weights", str(fifo)]) == 3
        assert capsys.readouterr().err == f"multibox eval: error: {e.value}\n"
    finally:
        timer.cancel()
    with pytest.raises(CheckpointError, match="not a regular file: a directory"):
        load_checkpoint(tmp_path)


def test_a_failed_safetensors_write_names_the_file(tmp_path, monkeypatch, capsys):
    import safetensors
    import safetensors.torch

    ckpt = _saved(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    out = tmp_path / "file" / "w.safetensors"
    assert main(["convert", str(ckpt), "--to-safetensors", "--out", str(out)]) == 5
    assert capsys.readouterr().err == (
        f"multibox convert: error: cannot write safetensors file {out}: {tmp_path / 'file'} is a file, not a folder\n"
    )

    def failing(tensors, filename, metadata=None):  # what safetensors raises for a failed write: not an OSError
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    out = tmp_path / "w.safetensors"
    assert main(["convert", str(ckpt), "--to-safetensors", "--out", str(out)]) == 5
    assert capsys.readouterr().err == (
        f"multibox convert: error: cannot write safetensors file {out}: Error while serializing: I/O error: No space "
        "left on device (os error 28)\n"
    )


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_orphan_temporary_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    host, old = socket.gethostname(), time.time() - ORPHAN_AGE_S - 60
    names = {
        f".last.pt~{host}~{_dead_pid()}~a1b2c3.tmp": False,  # a dead writer on this host: orphan
        f".last.pt~{host}~{os.getppid()}~d4e5f6.tmp": True,  # a live process: maybe writing now
        f".last.pt~{host}~{os.getpid()}~g7h8i9.tmp": True,  # this process's own
        f".last.pt~otherhost~{os.getpid()}~j0k1.tmp": True,  # another host, recent: cannot tell
        ".last.pt~otherhost~12~old1.tmp": False,  # another host, old
        ".last.pt.x7y8z9.tmp": True,  # the older naming, recent
        ".last.pt.oldold.tmp": False,  # the older naming, old
        ".best.pt.oldold.tmp": True,  # another target
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    for name in (".last.pt~otherhost~12~old1.tmp", ".last.pt.oldold.tmp", ".best.pt.oldold.tmp"):
        os.utime(tmp_path / name, (old, old))
    with pytest.warns(UserWarning, match=r"removed 3 temporary file\(s\) of interrupted writes of .*last\.pt"):
        save_checkpoint(tmp_path / "last.pt", {"step": 1})
    kept = {p.name for p in tmp_path.iterdir()} - {"last.pt"}
    assert kept == {name for name, keep in names.items() if keep}


KILLED_WRITER = """
import sys, time
import torch
import multibox.weights.io as C
C.save_checkpoint(sys.argv[1], {"step": 1})
def slow(obj, f):
    f.write(b"x" * 100_000); f.flush()
    print("writing", flush=True)
    time.sleep(60)
C.torch.save = slow
C.save_checkpoint(sys.argv[1], {"step": 2})
"""


def test_a_killed_write_leaves_the_previous_checkpoint_and_its_orphan_is_removed_later(tmp_path):
    path = tmp_path / "last.pt"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    orphans = list(tmp_path.glob(".last.pt~*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size == 100_000
    assert orphans[0].name.startswith(f".last.pt~{socket.gethostname()}~{writer.pid}~")
    assert load_checkpoint(path)["step"] == 1  # the previous one, whole
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        save_checkpoint(path, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and load_checkpoint(path)["step"] == 3


class _InterruptedFile:
    """A file that Ctrl-C interrupts after ``limit`` bytes, as SIGINT does during a real write."""

    def __init__(self, f, limit: int) -> None:
        self._f, self._left = f, limit

    def write(self, data) -> int:
        if self._left < len(data):
            raise KeyboardInterrupt
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def test_ctrl_c_inside_torch_save_is_a_keyboard_interrupt_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    """SIGINT inside torch.save: its zip writer's exit then fails ("unexpected pos ...") with the Ctrl-C as context;
    save_checkpoint raises the Ctrl-C itself (CI once saw exit 70 from this), removes its temporary file, and the
    previous checkpoint is whole."""
    import multibox.weights.io as wio

    path = _saved(tmp_path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(wio.os, "fdopen", lambda fd, mode: _InterruptedFile(real_fdopen(fd, mode), 5000))
    with pytest.raises(KeyboardInterrupt) as e:
        save_checkpoint(path, model_checkpoint(_tiny(), ["circle", "square"]))
    assert isinstance(e.value.__context__, RuntimeError)  # what torch raised on the way out of its writer
    assert "unexpected pos" in str(e.value.__context__)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and path.read_bytes() == before
