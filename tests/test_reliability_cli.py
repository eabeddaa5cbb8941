"""What bad input gets at the command line: generated bad settings, arguments, image files, training failures and
colliding runs, each with its exact outcome (exit code, message key words, warnings) and never a traceback.

Most cases run ``multibox.cli.main`` in this process; a few run ``python -m multibox`` to show that nothing but the
one-line message reaches stderr.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multibox.cli import ExitCode, main
from multibox.cli_errors import describe
from multibox.config import ConfigError, load_config
from multibox.engine.lock import LOCK_NAME, RunLockedError, lock_out_dir
from multibox.models import create_model
from multibox.weights.checkpoint import model_checkpoint
from multibox.weights.io import save_checkpoint
from test_engine import tiny_overrides

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def _train_args(out: Path, **extra: object) -> list[str]:
    args = ["train", "ssd_tiny_shapes", "--no-progress"]
    for kv in tiny_overrides(out, steps=2, **{"train.amp": "none", "train.channels_last": False, **extra}):
        args += ["--set", kv]
    return args


def _error_line(capsys: pytest.CaptureFixture[str], verb: str) -> str:
    """The one message line on stderr (after any warnings), checked for the shape every error message has."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(f"multibox {verb}: warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"multibox {verb}: ")
    return lines[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ssd_tiny checkpoint (2 classes, 64 px), written as training writes one."""
    torch.manual_seed(0)
    model = create_model("ssd_tiny", 3, image_size=64, width=4).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model_checkpoint(model, ["circle", "square"]))
    return path


# --- settings (--set / config files): ConfigError, exit 2 ------------------------------------------------------------

BAD_SETTINGS = [
    ("train.clip_grad_norm=-1", "train.clip_grad_norm must be > 0, got -1.0"),
    ("train.warmup_iters=-5", "train.warmup_iters must be >= 0, got -5"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0, got -0.1"),
    ("data.expand_ratio=0.5", "data.expand_ratio must be >= 1, got 0.5"),
    ("data.expand_ratio=.nan", "data.expand_ratio must be a finite number, got nan"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.grad_accum=0", "train.grad_accum must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.lr=-1e-3", "train.lr must be > 0, got -0.001"),
    ("train.lr=inf", "train.lr must be a finite number, got inf"),
    ("train.max_minutes=0", "train.max_minutes must be > 0, got 0.0"),
    ("train.backbone_lr_mult=-1", "train.backbone_lr_mult must be >= 0, got -1.0"),
    ("train.momentum=1", "train.momentum must be in [0, 1), got 1.0"),
    ("train.gamma=0", "train.gamma must be in (0, 1], got 0.0"),
    ("train.milestones=[100,-1]", "train.milestones must be >= 0, got -1"),
    ("train.seed=-1", "train.seed must be >= 0, got -1"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.out_dir=''", "train.out_dir must not be empty"),
    ("eval.score_thresh=1.5", "eval.score_thresh must be in [0, 1], got 1.5"),
    ("eval.nms_thresh=-0.1", "eval.nms_thresh must be in [0, 1], got -0.1"),
    ("eval.top_k=0", "eval.top_k must be >= 1, got 0"),
    ("eval.iou_threshold=0", "eval.iou_threshold must be in (0, 1], got 0.0"),
    ("model.num_classes=1", "model.num_classes must be >= 2, got 1"),
    ("model.image_size=[0,64]", "model.image_size must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.shapes_min_size=0", "data.shapes_min_size must be in (0, 1], got 0.0"),
    ("data.shapes_max_size=0.05", "data.shapes_min_size (0.12) must not exceed data.shapes_max_size (0.05)"),
    ("train=[]", "section 'train' must be a mapping of key: value, got []"),
    ("model.kwargs={width: 4, width: 8}", "override 'model.kwargs': key 'width' appears twice in one mapping"),
    ("data=5", "section 'data' must be a mapping of key: value, got 5"),
    ("train.amp=fp8", "train.amp: 'fp8' is not one of ['none', 'bf16', 'fp16', 'auto']"),
    # 600 bytes of nested aliases: refused before anything expands them.
    ("train.lr=[" + ", ".join(f"&a{i} [" + ",".join([f"*a{i - 1}" if i else "1"] * 9) + "]" for i in range(9)) + "]",
     "override 'train.lr': YAML aliases (*name) are not allowed here"),
    ("train.lr=" + "9" * 100 + "x" * 10_000, "train.lr: expected a number, got '99999"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS, ids=[o[:24] for o, _ in BAD_SETTINGS])
def test_bad_settings_name_the_setting_and_exit_2(override, message, capsys):
    with pytest.raises(ConfigError) as e:
        load_config("ssd_tiny_shapes", [override])
    assert message in str(e.value) and len(str(e.value)) < 300
    assert main(["train", "ssd_tiny_shapes", "--set", override]) == ExitCode.USAGE == 2
    line = _error_line(capsys, "train")
    assert line == f"multibox train: error: {e.value}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ("{width: 0}", "width must be a positive int, got 0"),
        ("{mean: [.nan, 1, 1]}", "Preprocess.mean must be finite numbers, got (nan, 1.0, 1.0)"),  # was a NaN loss
        ("{std: [1, 0, 1]}", "Preprocess.std must be positive, got (1.0, 0.0, 1.0)"),
    ],
)
def test_bad_model_arguments_are_refused_before_training(kwargs, message, tmp_path, capsys):
    assert main([*_train_args(tmp_path / "run"), "--set", f"model.kwargs={kwargs}"]) == ExitCode.USAGE
    assert _error_line(capsys, "train") == f"multibox train: error: {message}"
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_config_files(tmp_path):
    bomb = "a0: &a0 [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
    )
    cases = {
        "bomb.yaml": (bomb.encode(), "YAML expands to more than 100000 values"),
        "latin1.yaml": ("train:\n  out_dir: d\u00e9j\u00e0\n".encode("latin-1"), "not UTF-8 text (byte 19)"),
        "recursive.yaml": (b"train: &t\n  x: *t\n", "a YAML alias refers to itself"),
        "deep.yaml": (b"model:\n  kwargs: " + b"[" * 60 + b"]" * 60 + b"\n", "nested more than 50 levels deep"),
        "list.yaml": (b"- 1\n", "the top level must be a mapping"),
        "section.yaml": (b"train: []\n", "section 'train' must be a mapping"),
        "dup.yaml": (b"train:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' appears twice in one mapping (again at line 3)"),
        "dup_section.yaml": (b"train: {lr: 0.1}\neval: {}\ntrain: {}\n", "key 'train' appears twice"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=re.escape(words)) as e:
            load_config(tmp_path / name)
        assert len(str(e.value)) < 400, name
        if name != "section.yaml":
            assert str(tmp_path / name) in str(e.value), name
    # A byte-order mark (Notepad's UTF-8) is accepted, and an empty section means its defaults.
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbftrain:\n  lr: 0.002\neval:\n")
    cfg = load_config(tmp_path / "bom.yaml")
    assert cfg.train.lr == 0.002 and cfg.eval == load_config(None).eval


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_named_pipe_as_config_or_onnx_model_is_refused_not_waited_on(tmp_path):
    """Run as child processes with a timeout: a regression would block on the pipe instead of failing."""
    for name in ("c.yaml", "m.onnx"):
        os.mkfifo(tmp_path / name)
    _image(tmp_path / "p.jpg", 0)
    (tmp_path / "ssd_tiny_shapes").mkdir()  # a folder named like a preset does not hide the preset
    fifo = "not a regular file: a named pipe (FIFO)"
    cases = [
        (["train", "c.yaml"], 2, f"multibox train: error: c.yaml: {fifo}"),
        (["detect", "p.jpg", "--onnx", "m.onnx"], 3, f"multibox detect: error: m.onnx: {fifo}"),
        (["train", "ssd_tiny_shapes", "--set", "train.lr=-1"], 2, "multibox train: error: train.lr must be > 0"),
    ]
    for argv, code, line in cases:
        cmd = [sys.executable, "-m", "multibox", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60)
        assert p.returncode == code and p.stderr.startswith(line) and p.stderr.count("\n") == 1, (argv, p.stderr)


# --- command-line options: argparse, exit 2 --------------------------------------------------------------------------

BAD_OPTIONS = [
    (["detect", "x.jpg", "--weights", "w.pt", "--score", "2"], "argument --score: must be in [0, 1], got '2'"),
    (["detect", "x.jpg", "--weights", "w.pt", "--score", "nan"], "argument --score: must be in [0, 1], got 'nan'"),
    (["detect", "x.jpg", "--weights", "w.pt", "--batch-size", "-1"], "argument --batch-size: must be >= 1, got -1"),
    (["detect", "x.jpg", "--weights", "w.pt", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["detect", "x.jpg", "--weights", "w.pt", "--batch-size", "two"], "argument --batch-size: expected an integer"),
    (["detect", "x.jpg", "--weights", "w.pt", "--on-error", "ignore"], "argument --on-error: invalid choice"),
    (["demo", "--iters", "0"], "argument --iters: must be >= 1, got 0"),
    (["eval", "--weights", "w.pt", "--int8", "-1"], "argument --int8: must be >= 0, got -1"),
    (["export", "--weights", "w", "--out", "o", "--score", "1.5"], "argument --score: must be in [0, 1]"),
    (["export", "--weights", "w", "--out", "o", "--nms", "-0.1"], "argument --nms: must be in [0, 1]"),
    (["export", "--weights", "w", "--out", "o", "--top-k", "0"], "argument --top-k: must be >= 1, got 0"),
    (["export", "--weights", "w", "--out", "o", "--pre-nms-top-k", "0"], "argument --pre-nms-top-k: must be >= 1"),
    (["export", "--weights", "w", "--out", "o", "--opset", "9"], "argument --opset: must be >= 13, got 9"),
    (["export", "--weights", "w", "--out", "o", "--image-size", "3", "3", "3"], "expected H or H W, got 3 values"),
    (["export", "--weights", "w", "--out", "o", "--image-size", "0"], "argument --image-size: must be >= 1, got 0"),
    (["bench", "ssd_tiny", "--batch-sizes", "1", "0"], "argument --batch-sizes: must be >= 1, got 0"),
    (["bench", "ssd_tiny", "--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    (["bench", "ssd_tiny", "--paths", "fp64"], "argument --paths: invalid choice: 'fp64'"),
    (["bench", "ssd_tiny", "--num-classes", "1"], "argument --num-classes: must be >= 2, got 1"),
    (["info", "ssd_tiny", "--num-classes", "0"], "argument --num-classes: must be >= 2, got 0"),
    (["convert", "w.pth", "--out", "o.pt", "--num-classes", "-1"], "argument --num-classes: must be >= 2, got -1"),
    (["convert", "w.pth", "--out", "o.pt", "--num-classes", "1.5"], "argument --num-classes: expected an integer"),
    (["anchors", "root", "--clusters", "0"], "argument --clusters: must be >= 1, got 0"),
    (["anchors", "root", "--priors", "voc999"], "argument --priors: invalid choice: 'voc999'"),
    (["detect", "x.jpg", "--weights", "w.pt", "--score", "9" * 5000], "argument --score: must be in [0, 1], got '999"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS, ids=[" ".join(a)[:40] for a, _ in BAD_OPTIONS])
def test_bad_options_name_the_option_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last and len(last) < 600, last


# --- detect: a bad file is skipped with a warning, the rest processed, exit 1 -------------------------------------


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with 4 good images (two x.jpg in subfolders, y.jpg beside y.png), every kind of bad file, and files
    that are ignored; returns it and ``{name: reason}`` of what must be reported as skipped."""
    root = tmp_path / "photos"
    for i, name in enumerate(["a/x.jpg", "b/x.jpg", "y.jpg", "y.png"]):
        _image(root / name, i)
    good = (root / "a" / "x.jpg").read_bytes()
    (root / "empty.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (root / "junk.png").write_bytes(b"not a picture at all")
    Image.new("RGB", (8, 8)).save(root / "anim.gif")
    (root / "notes.txt").write_text("hello")
    os.mkfifo(root / "pipe.jpg")  # would block a reader forever
    (root / "broken.jpg").symlink_to(root / "gone.jpg")
    (root / "loop").symlink_to(root / "a", target_is_directory=True)
    (root / ".hidden.jpg").write_bytes(good)  # ignored: hidden
    (root / ".git").mkdir()
    (root / ".git" / "z.jpg").write_bytes(good)  # ignored: in a hidden folder
    (root / "Thumbs.db").write_bytes(b"\0" * 10)  # ignored: a file browser's sidecar
    skipped = {
        "anim.gif": "not an image suffix", "notes.txt": "not an image suffix", "empty.jpg": "empty file",
        "pipe.jpg": "not a regular file", "broken.jpg": "broken link", "loop": "link to a folder",
        "trunc.jpg": "cannot decode", "junk.png": "cannot decode",
    }  # fmt: skip
    return root, skipped


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_detect_skips_bad_files_and_keeps_outputs_apart(runtime, messy_folder, tiny_ckpt, tmp_path, capsys):
    root, skipped = messy_folder
    if runtime == "onnx":
        model = tmp_path / "tiny.onnx"
        assert main(["export", "--weights", str(tiny_ckpt), "--out", str(model), "--no-check"]) == 0
        source = ["--onnx", str(model)]
    else:
        source = ["--weights", str(tiny_ckpt)]
    gif = Image.new("RGB", (30, 20), (200, 10, 10))
    gif.save(tmp_path / "given.gif")  # given by name: read whatever its suffix
    crc = _image(tmp_path / "crc.png", 9)
    data = bytearray(crc.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the IDAT chunk's CRC: the header and the ending are intact
    crc.write_bytes(bytes(data))
    out = tmp_path / "out"
    capsys.readouterr()
    given = [str(tmp_path / name) for name in ("given.gif", "missing.jpg", "crc.png")]
    argv = ["detect", str(root), *given, *source, "--out", str(out)]
    assert main(argv) == ExitCode.SKIPPED == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    warned = [line for line in captured.err.splitlines() if line.startswith("multibox detect: warning: ")]
    assert len(warned) == len(skipped) + 2 and all(": skipped: " in w for w in warned)
    assert f"{crc}: skipped: cannot decode (corrupt: PNG chunk IDAT at byte 33 has a bad CRC)" in warned[-1]
    assert "5 images processed" in captured.out and "10 skipped" in captured.out
    records = json.loads((out / "detections.json").read_text())
    outputs = {Path(r["image"]).relative_to(tmp_path).as_posix(): Path(r["output"]) for r in records}
    assert {k: v.relative_to(out).as_posix() for k, v in outputs.items()} == {
        "photos/a/x.jpg": "a/x_det.jpg",
        "photos/b/x.jpg": "b/x_det.jpg",
        "photos/y.jpg": "y_det.jpg",
        "photos/y.png": "y_det_2.jpg",  # same stem in one folder: numbered, not overwritten
        "given.gif": "given_det.jpg",
    }
    assert all(p.is_file() for p in outputs.values())
    by_name = {Path(s["image"]).name: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert by_name == {**skipped, "missing.jpg": "no such file or folder", "crc.png": "cannot decode"}


def test_detect_on_501_images_with_one_truncated_writes_the_500(tmp_path, tiny_ckpt, capsys):
    """The issue's case: one truncated JPEG among 501 images, read in batches of 16 (the bad one inside a batch),
    plus a PNG without its end and one with a bad CRC given by name: every good image gets its output, exit 1."""
    root = tmp_path / "many"
    for i in range(501):
        _image(root / f"{i:03d}.jpg", i, (12, 16))
    cut = root / "250.jpg"
    cut.write_bytes(cut.read_bytes()[:-10])  # the end of its scan data
    pngs = [_image(tmp_path / name, k) for k, name in enumerate(["cut.png", "crc.png"])]
    pngs[0].write_bytes(pngs[0].read_bytes()[:-12])
    data = bytearray(pngs[1].read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF
    pngs[1].write_bytes(bytes(data))
    out = tmp_path / "out"
    argv = ["detect", str(root), *map(str, pngs), "--weights", str(tiny_ckpt), "--out", str(out)]
    assert main([*argv, "--batch-size", "16", "--score", "0.9"]) == ExitCode.SKIPPED
    printed, err = capsys.readouterr()
    assert "500 images processed (" in printed and "3 skipped (3 cannot decode)" in printed
    assert err.splitlines() == [
        f"multibox detect: warning: {cut}: skipped: cannot decode (truncated: the JPEG has no end-of-image "
        "marker (EOI))",
        f"multibox detect: warning: {pngs[0]}: skipped: cannot decode (truncated: the PNG has no IEND chunk (the "
        "file ends after chunk IDAT))",
        f"multibox detect: warning: {pngs[1]}: skipped: cannot decode (corrupt: PNG chunk IDAT at byte 33 has a bad "
        "CRC)",
    ]
    records = json.loads((out / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == [f"{i:03d}.jpg" for i in range(501) if i != 250]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".jpg") == [
        f"{i:03d}_det.jpg" for i in range(501) if i != 250
    ]
    assert [s["image"] for s in json.loads((out / "skipped.json").read_text())] == [str(cut), *map(str, pngs)]


def test_detect_policy_raise_and_nothing_readable(messy_folder, tiny_ckpt, tmp_path, capsys):
    root, _ = messy_folder
    args = ["--weights", str(tiny_ckpt), "--out", str(tmp_path / "o")]
    assert main(["detect", str(root / "trunc.jpg"), *args, "--on-error", "raise"]) == ExitCode.BAD_INPUT == 3
    line = _error_line(capsys, "detect")
    assert f"{root / 'trunc.jpg'}: cannot decode (truncated: the JPEG has no end-of-image marker" in line
    assert "--on-error skip" in line
    # Only undecodable files: processed none, reported both, exit 1; nothing at all to read: exit 3.
    assert main(["detect", str(root / "trunc.jpg"), str(root / "junk.png"), *args]) == 1
    assert "0 images processed (0 detections); 2 skipped (2 cannot decode)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "detections.json").read_text()) == []
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("hello")
    assert main(["detect", str(tmp_path / "nothing"), *args]) == 3
    line = _error_line(capsys, "detect")
    assert line == f"multibox detect: error: no image files to read in {tmp_path / 'nothing'} " + (
        f"({tmp_path / 'nothing' / 'notes.txt'}: not an image suffix (.txt))"
    )


def test_detect_does_not_read_its_own_outputs(tmp_path, tiny_ckpt, capsys):
    _image(tmp_path / "in" / "p.jpg", 0)
    argv = ["detect", str(tmp_path / "in"), "--weights", str(tiny_ckpt), "--out", str(tmp_path / "in" / "det")]
    (tmp_path / "in" / "det").mkdir()
    (tmp_path / "in" / "det" / "skipped.json").write_text("[]")  # an earlier run's
    assert main(argv) == 0 and main(argv) == 0  # the second run does not read in/det/p_det.jpg
    assert not (tmp_path / "in" / "det" / "skipped.json").exists()
    assert [r["image"] for r in json.loads((tmp_path / "in" / "det" / "detections.json").read_text())] == [
        str(tmp_path / "in" / "p.jpg")
    ]


# --- training and runtime failures: one message, a code per kind ------------------------------------------------


def test_non_finite_loss_exits_4(tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", **{"train.lr": 1e20})) == ExitCode.DIVERGED == 4
    line = _error_line(capsys, "train")
    assert line.startswith("multibox train: training stopped: non-finite loss at step ")
    assert "lower train.lr" in line and "--resume auto" in line


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    import multibox.weights.io as C

    run = tmp_path / "run"
    save_checkpoint(run / "last.pt", {"step": 7})
    before = (run / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", full_disk)
    assert main(_train_args(run)) == ExitCode.WRITE_FAILED == 5
    line = _error_line(capsys, "train")
    assert f"error: cannot write checkpoint {run / 'last.pt'}: disk full (No space left on device)" in line
    assert "the previous last.pt is intact" in line
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".last.pt*.tmp"))


def test_outputs_that_cannot_be_written_name_the_file_and_exit_5(tmp_path, tiny_ckpt, capsys, monkeypatch):
    (tmp_path / "file").write_bytes(b"")
    _image(tmp_path / "p.jpg", 0)
    cases = [
        (["export", "--weights", str(tiny_ckpt), "--no-check"], tmp_path / "file" / "m.onnx", "ONNX model"),
        (["detect", str(tmp_path / "p.jpg"), "--weights", str(tiny_ckpt)], tmp_path / "file", "folder"),
    ]
    for argv, out, what in cases:
        assert main([*argv, "--out", str(out)]) == ExitCode.WRITE_FAILED
        reason = f"{tmp_path / 'file'} is a file, not a folder"
        assert _error_line(capsys, argv[0]) == f"multibox {argv[0]}: error: cannot write {what} {out}: {reason}"
    import onnx

    def full(proto, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(tiny_ckpt), "--no-check", "--out", str(out)]) == ExitCode.WRITE_FAILED
    line = _error_line(capsys, "export")
    assert line == f"multibox export: error: cannot write ONNX model {out}: disk full (No space left on device)"


def test_a_worker_error_arrives_unwrapped(tmp_path, capsys):
    """An undecodable image read in a DataLoader worker process: the original message, exit 3."""
    from multibox.data import ShapesDataset, write_voc

    write_voc(ShapesDataset(8, 64, seed=3), tmp_path / "voc", "train")
    bad = sorted((tmp_path / "voc" / "JPEGImages").iterdir())[0]
    data = bytearray(bad.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the IDAT chunk's CRC: the header reads fine, decoding finds it
    bad.write_bytes(bytes(data))
    extra = {"data.kind": "voc", "data.root": str(tmp_path / "voc"), "data.num_workers": 1, "data.train_split": "train"}
    extra["data.on_error"] = "raise"  # (the default, skip, would warn and train on without it)
    assert main(_train_args(tmp_path / "run", **extra)) == ExitCode.BAD_INPUT == 3
    line = _error_line(capsys, "train")
    assert line.startswith(f"multibox train: error: {bad}: cannot decode image: ")
    assert line.endswith("(in DataLoader worker 0)") and "Caught" not in line


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        raise OSError(f"img{i}.jpg: cannot decode image: broken data stream")


def test_describe_unwraps_dataloader_errors():
    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(OSError) as e:
        next(iter(loader))
    assert str(e.value).startswith("Caught OSError in DataLoader worker process 0")  # torch's wrapping
    assert describe(e.value, "train") == (
        3,
        "error: img0.jpg: cannot decode image: broken data stream (in DataLoader worker 0)",
    )


def test_an_error_raised_while_a_ctrl_c_was_handled_is_the_interrupt():
    """A clean-up that fails because Ctrl-C cut its work short (torch.save's writer on a half-written record) is
    reported as the interrupt (130), not as a bug (70); the same error without a Ctrl-C behind it is a bug."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 742528 vs 742416") from None
    except RuntimeError as chained:
        assert describe(chained, "train") == (130, "interrupted (continue with --resume auto from the last checkpoint)")
        assert describe(chained, "eval") == (130, "interrupted")
    code, message = describe(RuntimeError("unexpected pos 1 vs 2"), "train")
    assert code == 70 and message.startswith("internal error: RuntimeError: unexpected pos 1 vs 2")


def test_interrupt_missing_package_and_bugs(tmp_path, tiny_ckpt, capsys, monkeypatch):
    from multibox import cli
    from multibox.engine.trainer import Trainer

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run_step", interrupt)
    assert main(_train_args(tmp_path / "run")) == ExitCode.INTERRUPTED == 130
    assert _error_line(capsys, "train") == (
        "multibox train: interrupted (continue with --resume auto from the last checkpoint)"
    )

    _image(tmp_path / "p.jpg", 0)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert main(["detect", str(tmp_path / "p.jpg"), "--onnx", str(tmp_path / "m.onnx")]) == ExitCode.MISSING_PACKAGE
    line = _error_line(capsys, "detect")
    assert line.startswith("multibox detect: missing package: running an ONNX model needs 'onnxruntime'")

    def bug(a):
        return {}["oops"]

    monkeypatch.setitem(cli._HANDLERS, "info", bug)
    assert main(["info", "ssd_tiny"]) == ExitCode.INTERNAL == 70
    line = _error_line(capsys, "info")
    assert line.startswith("multibox info: internal error: KeyError: oops (at test_reliability_cli.py:")
    assert "rerun with --debug" in line
    for argv, env in (
        (["--debug", "info", "ssd_tiny"], "0"),
        (["info", "ssd_tiny", "--debug"], "0"),
        (["info", "ssd_tiny"], "1"),
    ):
        monkeypatch.setenv("MULTIBOX_DEBUG", env)
        assert main(argv) == 70
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "KeyError: 'oops'" in err, argv


# --- colliding runs: the out_dir lock --------------------------------------------------------------------------


HOLD = """
import sys, time
from multibox.engine.lock import lock_out_dir
with lock_out_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_out_dir_is_refused_and_a_dead_holder_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_train_args(run)) == ExitCode.LOCKED == 7
        line = _error_line(capsys, "train")
        assert line.startswith(f"multibox train: error: {run} is in use by another training run (pid {holder.pid} ")
        assert f" on {socket.gethostname()}, started " in line and "train.out_dir" in line
        with pytest.raises(RunLockedError), lock_out_dir(run):
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    with (
        pytest.warns(UserWarning, match=rf"taking over the lock of a run that ended .*pid {holder.pid} "),
        lock_out_dir(run),
    ):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (run / LOCK_NAME).read_text() == ""  # released: emptied, not deleted
    with lock_out_dir(run):  # a clean release leaves nothing to warn about
        pass


def test_only_rank_0_locks(monkeypatch):
    from multibox.engine.train import _rank

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _rank() == 1
    monkeypatch.setenv("RANK", "0")
    assert _rank() == 0


# --- real processes: nothing but the message reaches stderr ------------------------------------------------------


def test_python_m_multibox_prints_messages_not_tracebacks(tmp_path, messy_folder, tiny_ckpt):
    root, skipped = messy_folder

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "multibox", *argv], capture_output=True, text=True, env=ENV, timeout=120
        )

    p = run("detect", str(root), "--weights", str(tiny_ckpt), "--out", str(tmp_path / "o"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == len(skipped) and "4 images processed" in p.stdout
    p = run("train", "ssd_tiny_shapes", "--set", "train.clip_grad_norm=-1")
    assert p.returncode == 2 and p.stderr == "multibox train: error: train.clip_grad_norm must be > 0, got -1.0\n"


def test_ctrl_c_during_training_exits_130_without_a_traceback(tmp_path, capsys):
    """A real ``multibox train``: a second run on its out_dir meanwhile is refused (exit 7, its files untouched);
    Ctrl-C then ends the first with exit 130 and one line."""
    args = _train_args(tmp_path / "run", **{"train.max_iters": 100_000, "data.shapes_train": 64})
    proc = subprocess.Popen([sys.executable, "-m", "multibox", *args], stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "metrics.jsonl").is_file() or not (tmp_path / "run" / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)

    def lasting_files() -> set[str]:  # a checkpoint write in progress shows a temporary file that then goes
        return {p.name for p in (tmp_path / "run").iterdir() if not p.name.endswith(".tmp")}

    files = lasting_files()
    assert main(_train_args(tmp_path / "run")) == ExitCode.LOCKED
    line = _error_line(capsys, "train")
    assert line.startswith(
        f"multibox train: error: {tmp_path / 'run'} is in use by another training run (pid {proc.pid}"
    )
    assert files <= lasting_files()
    assert proc.poll() is None  # the first run goes on
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "multibox train: interrupted (continue with --resume auto from the last checkpoint)\n"


def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    """`multibox VERB ... | head -1`: the reader leaves while a verb still prints; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": SRC}
    script = (
        "import sys; import multibox.cli as c; "
        "c._HANDLERS['info'] = lambda a: [print('x' * 100) for _ in range(100_000)] and 0; "  # ~10 MB of output
        "sys.exit(c.main(['info', 'ssd_tiny']))"
    )
    cmd = f'{sys.executable} -c "{script}" | head -1; echo exit=${{PIPESTATUS[0]}}'
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.splitlines() == ["x" * 100, "exit=0"], done.stdout[-300:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_train_and_eval_skip_unreadable_images_and_say_so_in_the_exit_code(tmp_path, capfd, workers):
    """One image whose header is truncated (left out when the set is built) and one whose pixels fail (left out of
    its batch, in a worker process with ``workers=1``): both warned naming the file, counted, exit 1."""
    from multibox.data import ShapesDataset, write_voc

    write_voc(ShapesDataset(8, 64, seed=3), tmp_path / "voc", "train")
    cut, bad = sorted((tmp_path / "voc" / "JPEGImages").iterdir())[1:3]
    cut.write_bytes(cut.read_bytes()[:1000])  # the header check finds it: the PNG has no IEND
    data = bytearray(bad.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the IDAT chunk's CRC: found when the image is decoded
    bad.write_bytes(bytes(data))
    extra = {"data.kind": "voc", "data.root": str(tmp_path / "voc"), "data.train_split": "train"}
    extra.update({"data.val_split": "train", "data.num_workers": workers})
    assert main(_train_args(tmp_path / "run", **extra)) == ExitCode.SKIPPED == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    assert "1 training image(s) could not be used and were left out (see the warnings)" in out
    assert re.search(r"training batches left out [1-9]\d* image read\(s\) that failed", out), out
    # Distinct warnings (the bad image's repeats each time it is drawn, unless Python's registry shows it once).
    warned = list(dict.fromkeys(line for line in err.splitlines() if line.startswith("multibox train: warning: ")))
    assert len(warned) == 2, err
    assert f"skipped 1 unreadable file(s) in 1 file(s): {cut}: cannot read image header: truncated" in warned[0]
    assert f"{bad}: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad CRC" in warned[1]
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt")]) == ExitCode.SKIPPED
    out, err = capfd.readouterr()
    assert re.search(r"^images\s+6$", out, re.M), out  # 8 in the split, 2 left out
    assert "2 image(s) could not be read and were left out of the metric" in out
    assert cut.name in err and bad.name in err and "Traceback" not in err


def test_a_set_with_an_unusable_file_but_nothing_else_wrong_exits_1(tmp_path, capsys):
    """Only a file left out when the set was built (nothing fails later): still reported, still exit 1."""
    from multibox.data import ShapesDataset, write_voc

    write_voc(ShapesDataset(6, 64, seed=4), tmp_path / "voc", "train")
    (tmp_path / "voc" / "JPEGImages" / sorted((tmp_path / "voc" / "JPEGImages").iterdir())[0].name).write_bytes(b"")
    extra = {"data.kind": "voc", "data.root": str(tmp_path / "voc"), "data.train_split": "train"}
    assert main(_train_args(tmp_path / "run", **{**extra, "data.val_split": "train"})) == 1
    out = capsys.readouterr().out
    assert "1 training image(s) could not be used" in out and "image read(s)" not in out
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt")]) == 1
    assert "1 image(s) could not be read and were left out of the metric" in capsys.readouterr().out
    assert main(_train_args(tmp_path / "run2", **{**extra, "data.val_split": "train", "data.on_error": "raise"})) == 3
    assert "empty file" in capsys.readouterr().err
