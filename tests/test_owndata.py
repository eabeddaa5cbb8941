"""Training on one's own data: format detection, the held-out split, the composed config and the one-line CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.config import load_config
from multibox.data import ShapesDataset, write_voc
from multibox.data.checks import DatasetError
from multibox.data.combine import DetectionConcat
from multibox.data.formats import detect_format
from multibox.data.holdout import apply_split, make_split, read_split_file
from multibox.data.yolo import write_yolo
from multibox.engine.builders import build_dataset
from multibox.engine.owndata import DEFAULT_PRESET, next_run_dir, parse_duration, plan_run


def _voc(root: Path, n_train: int = 12, n_test: int = 0, seed: int = 1) -> Path:
    write_voc(ShapesDataset(n_train, 64, seed=seed), root, "train")
    if n_test:
        write_voc(ShapesDataset(n_test, 64, seed=seed + 100), root, "test")
    return root


def _coco(root: Path, n: int = 5, split: str = "train") -> Path:
    shapes = ShapesDataset(n, 64, seed=3 if split == "train" else 4)
    (root / split).mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        image, target = shapes[i]
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            bbox = [x1, y1, x2 - x1, y2 - y1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label, "bbox": bbox,
                         "area": bbox[2] * bbox[3], "iscrowd": 0})  # fmt: skip
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(shapes.classes)]
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_detect_voc_with_and_without_splits(tmp_path) -> None:
    src = detect_format(_voc(tmp_path / "cards", n_test=3))
    assert (src.format, src.name, src.has_val, src.has_test) == ("voc", "cards", False, True)
    assert src.data["train_split"] == "train" and src.data["test_split"] == "test"
    write_voc(ShapesDataset(2, 64, seed=9), tmp_path / "cards", "val")
    src = detect_format(tmp_path / "cards")
    assert src.has_val and src.data["val_split"] == "val"


def test_detect_coco_finds_images_and_val(tmp_path) -> None:
    train_json = _coco(tmp_path)
    src = detect_format(train_json)
    assert src.format == "coco" and not src.has_val
    assert Path(src.data["train_images"]) == tmp_path / "train"
    _coco(tmp_path, n=2, split="val")
    src = detect_format(train_json)
    assert src.has_val and Path(src.data["val_images"]) == tmp_path / "val"
    assert len(build_dataset(plan_run(train_json, model="ssd_tiny", out=tmp_path / "r").config.data, "val")) == 2


def test_detect_yolo_yaml_and_folder(tmp_path) -> None:
    write_yolo(ShapesDataset(4, 64, seed=1), tmp_path / "y", "train")
    write_yolo(ShapesDataset(2, 64, seed=2), tmp_path / "y", "val")
    for path in (tmp_path / "y", tmp_path / "y" / "data.yaml"):
        src = detect_format(path)
        assert (src.format, src.has_val, src.has_test) == ("yolo", True, False)
    (tmp_path / "y" / "data.yaml").unlink()
    (tmp_path / "y" / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    src = detect_format(tmp_path / "y")
    assert src.format == "yolo" and src.has_val


def test_yolo_without_val_gets_a_holdout(tmp_path) -> None:
    write_yolo(ShapesDataset(10, 64, seed=1), tmp_path / "y", "train")
    plan = plan_run(tmp_path / "y" / "data.yaml", model="ssd_tiny", out=tmp_path / "runs")
    assert plan.source.format == "yolo" and (plan.train_images, plan.val_images) == (9, 1)
    val = build_dataset(plan.config.data, "val")
    assert val.image_ids == read_split_file(plan.split_file)["val"] and val.image_ids[0].startswith("train/")
    assert Path(plan.config.data.root).is_absolute() and Path(plan.config.data.split_file).is_absolute()


def test_detect_sources_yaml_concatenates_roots(tmp_path) -> None:
    _voc(tmp_path / "a", n_train=3, seed=1)
    _voc(tmp_path / "b", n_train=4, seed=2)
    (tmp_path / "ds.yaml").write_text(
        "train:\n  - {voc: a, split: train}\n  - {voc: b, split: train}\nval: {voc: a, split: train}\n"
    )
    src = detect_format(tmp_path / "ds.yaml")
    assert (src.format, src.has_val) == ("sources", True)
    cfg = plan_run(tmp_path / "ds.yaml", model="ssd_tiny", out=tmp_path / "runs").config
    train = build_dataset(cfg.data, "train")
    assert isinstance(train, DetectionConcat) and len(train) == 7
    assert train.get_target(3)["image_id"] == "1:" + str(ShapesDataset(4, 64, seed=2)[0][1]["image_id"])


def test_detect_unknown_layout_names_the_path(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "x")):
        detect_format(tmp_path / "x")
    with pytest.raises(DatasetError, match="no such"):
        detect_format(tmp_path / "missing")


def test_make_split_is_deterministic_and_order_free() -> None:
    keys = [f"img{i:03d}" for i in range(25)]
    a = make_split(keys, 0.1, seed=0)
    assert a == make_split(list(reversed(keys)), 0.1, seed=0)
    assert len(a["val"]) == 2 and len(a["train"]) == 23  # round(2.5) == 2
    assert sorted(a["train"] + a["val"]) == keys
    assert make_split(keys, 0.1, seed=1)["val"] != a["val"]
    assert len(make_split(keys[:3], 0.1)["val"]) == 1  # at least one image
    with pytest.raises(ValueError, match="at least 2"):
        make_split(keys[:1])


def test_holdout_written_and_reused(tmp_path) -> None:
    data = _voc(tmp_path / "d")
    plan = plan_run(data, model="ssd_tiny", out=tmp_path / "runs")
    assert plan.run_dir == tmp_path / "runs" / "d-1" and plan.split_file == plan.run_dir / "split.json"
    split = read_split_file(plan.split_file)
    assert (plan.train_images, plan.val_images) == (11, 1) == (len(split["train"]), len(split["val"]))
    val = build_dataset(plan.config.data, "val")
    assert val.image_ids == split["val"]
    assert set(build_dataset(plan.config.data, "train").image_ids).isdisjoint(val.image_ids)
    plan.run_dir.mkdir(exist_ok=True)
    # a second run gets its own folder and the same split; a split file given is reused as is
    again = plan_run(data, model="ssd_tiny", out=tmp_path / "runs")
    assert again.run_dir.name == "d-2" and read_split_file(again.split_file) == split
    custom = {"train": split["train"][1:], "val": split["val"] + split["train"][:1]}
    (tmp_path / "mine.json").write_text(json.dumps(custom))
    reused = plan_run(data, model="ssd_tiny", out=tmp_path / "runs", split_file=tmp_path / "mine.json")
    assert read_split_file(reused.split_file) == custom and reused.val_images == 2


def test_split_naming_other_images_is_an_error(tmp_path) -> None:
    dataset = build_dataset(plan_run(_voc(tmp_path / "d"), model="ssd_tiny", out=tmp_path).config.data, "train")
    with pytest.raises(DatasetError, match="not in"):
        apply_split(dataset, {"train": ["nope"], "val": []}, "train", source="s.json")


def test_plan_takes_classes_and_recipe(tmp_path) -> None:
    plan = plan_run(_voc(tmp_path / "d"), minutes=2.0, out=tmp_path / "runs")
    cfg = plan.config
    assert cfg.model.name == "ssdlite320_efficientnet_lite0" and cfg.model.num_classes is None
    assert cfg.model.kwargs == load_config(DEFAULT_PRESET).model.kwargs
    assert plan.classes == ("circle", "square", "triangle")
    assert cfg.train.max_minutes == 2.0 and cfg.train.epochs is None and cfg.train.optimizer == "adamw"
    assert cfg.train.freeze and cfg.train.batch_size == 11 and cfg.train.eval_every == 1
    tiny = plan_run(tmp_path / "d", model="ssd_tiny", image_size=96, epochs=3, out=tmp_path / "runs",
                    overrides=("train.lr=0.01",)).config  # fmt: skip
    assert (tiny.model.name, tiny.model.image_size, tiny.train.freeze, tiny.train.epochs) == ("ssd_tiny", 96, (), 3)
    assert tiny.model.kwargs == {}  # the preset's builder arguments (stride8) belong to its model
    assert tiny.train.max_minutes is None  # epochs replace the preset's time budget
    default = plan_run(tmp_path / "d", out=tmp_path / "runs").config.train
    assert default.max_minutes == load_config(DEFAULT_PRESET).train.max_minutes and default.epochs is None
    assert tiny.train.lr == 0.01


def test_parse_duration_and_run_dirs(tmp_path) -> None:
    assert parse_duration("90s") == 1.5 and parse_duration("10m") == 10 and parse_duration("1.5h") == 90
    assert parse_duration("3") == 3
    for bad in ("abc", "-1m", "0"):
        with pytest.raises(ValueError, match="--time"):
            parse_duration(bad)
    (tmp_path / "x-1").mkdir()
    (tmp_path / "x-3").mkdir()
    assert next_run_dir(tmp_path, "x") == tmp_path / "x-2"


def test_cli_train_on_a_voc_folder_end_to_end(tmp_path, capsys) -> None:
    data = _voc(tmp_path / "mini", n_train=12, n_test=4)
    args = ["train", "--data", str(data), "--model", "ssd_tiny", "--imgsz", "64", "--epochs", "2",
            "--out", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "mini-1"
    assert "data: Pascal VOC folder" in out and "classes (3): circle, square, triangle" in out
    assert "best validation mAP" in out and "test mAP" in out
    for name in (
        "best.pt",
        "last.pt",
        "split.json",
        "test_metrics.json",
        "results.csv",
        "config.yaml",
        "report/report.html",
    ):
        assert (run / name).is_file(), name
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["images"] == 4 and 0.0 <= test["mAP"] <= 1.0 and test["weights"].endswith("best.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["classes"] == ["circle", "square", "triangle"]
    # the positional may be the dataset folder; a second run never overwrites the first
    assert main(["train", str(data), "--model", "ssd_tiny", "--imgsz", "64", "--time", "20s",
                 "--out", str(tmp_path / "runs"), "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "runs" / "mini-2" / "best.pt").is_file()


def test_cli_train_option_mixups_are_one_line_errors(tmp_path, capsys) -> None:
    assert main(["train", "ssd_tiny_shapes", "--epochs", "3"]) != 0
    assert "--epochs go with --data" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nothing")]) != 0
    assert "no such file or folder" in capsys.readouterr().err
