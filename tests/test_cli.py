import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multibox.cli import EXAMPLES, build_parser, main
from test_engine import tiny_overrides

VERBS = ["demo", "train", "eval", "detect", "export", "convert", "info", "scan", "anchors", "bench", "report", "serve"]


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_help_shows_an_example(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"multibox {verb}" in out
    assert verb in EXAMPLES


def test_every_verb_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    assert sorted(sub.choices) == sorted(VERBS)


def test_info_prints_the_ssd300_numbers(capsys):
    assert main(["info", "ssd300_vgg16", "--num-classes", "21"]) == 0
    out = capsys.readouterr().out
    assert "priors        8732" in out and "38x38 19x19 10x10 5x5 3x3 1x1" in out
    assert "parameters    26,285,486" in out


def test_train_eval_detect_smoke(tmp_path, capsys):
    args = ["train", "ssd_tiny_shapes", "--no-progress"]
    for kv in tiny_overrides(tmp_path / "run", steps=1, **{"data.shapes_train": 8, "data.shapes_val": 4}):
        args += ["--set", kv]
    assert main(args) == 0
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "ev")]) == 0
    assert "mAP" in capsys.readouterr().out
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt"), "--fast"]) == 0
    assert "mAP" in capsys.readouterr().out
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt"), "--int8", "4"]) == 0
    assert "mAP" in capsys.readouterr().out
    from PIL import Image

    Image.new("RGB", (50, 40), (90, 120, 30)).save(tmp_path / "a.jpg")
    assert (
        main(
            [
                "detect",
                str(tmp_path / "a.jpg"),
                "--weights",
                str(tmp_path / "run" / "last.pt"),
                "--out",
                str(tmp_path / "d"),
                "--fast",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "d" / "detections.json").read_text())[0]["width"] == 50


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "missing.jpg"), "--weights", str(tmp_path / "w.pt")]) == 3  # a bad file
    assert "error" in capsys.readouterr().err
    assert main(["train", "no_such_preset"]) == 3  # neither a file nor a preset
    assert main(["info", "no_such_model"]) == 2  # a bad argument


def test_python_m_multibox_runs():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "multibox", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_anchors_and_scan_on_a_written_shapes_set(tmp_path, capsys):
    from multibox.data import ShapesDataset, write_voc

    write_voc(ShapesDataset(12, 96, seed=3), tmp_path / "voc", "train")
    assert main(["scan", str(tmp_path / "voc")]) == 0
    assert main(["anchors", str(tmp_path / "voc"), "--model", "ssd_tiny", "--image-size", "96", "--clusters", "3"]) == 0
    out = capsys.readouterr().out
    assert "ssd_tiny" in out and "circle" in out


def test_demo_trains_evaluates_draws_and_says_its_precision(tmp_path, capsys):
    import torch

    from multibox.runtime import auto_amp

    out = tmp_path / "demo"
    sets = ["data.shapes_train=16", "data.shapes_val=8", "train.batch_size=4", "train.warmup_iters=1"]
    args = ["demo", "--iters", "2", "--no-progress", "--out", str(out)]
    assert main([*args, *(x for kv in sets for x in ("--set", kv))]) == 0
    lines = capsys.readouterr().out.splitlines()
    s = json.loads((out / "summary.json").read_text())
    assert s["train_steps"] == 2 and s["val_images"] == 8 and s["train_amp"] == auto_amp(torch.device("cpu"))
    assert lines[0] == (
        f"demo: VOC07 mAP@0.5 = {s['mAP_voc07']:.4f} (area AP {s['mAP_area']:.4f}) on 8 held-out images"
    )
    assert lines[1].startswith(f"      trained 2 steps in {s['train_seconds']} s (")
    assert f"img/s, amp {s['train_amp']}, " in lines[1]
    assert json.loads((out / "metrics.json").read_text())["mAP"] == pytest.approx(s["mAP_voc07"])
    for name in ("last.pt", "pr_curves.png", "detections.png"):
        assert (out / name).stat().st_size > 0
