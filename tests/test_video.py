"""Detection on videos: frames and detections agree with the model run on the decoded frames; outputs decode."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.data import ShapesDataset, eval_transform
from multibox.engine.video import detect_video, find_videos
from multibox.models import create_model
from multibox.postprocess import postprocess
from multibox.weights.checkpoint import model_checkpoint
from multibox.weights.io import save_checkpoint

av = pytest.importorskip("av")


def _write_video(path, n: int = 7, size: int = 64, fps: int = 10) -> None:
    shapes = ShapesDataset(n, size, seed=1)
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(shapes[i][0].permute(1, 2, 0).contiguous().numpy(), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def _decoded(path) -> list[torch.Tensor]:
    with av.open(str(path)) as c:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in c.decode(video=0)]


def test_video_detections_match_the_model_on_each_frame(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("ssd_tiny", 4, image_size=64, width=4).eval()
    _write_video(tmp_path / "clip.mp4")
    r = detect_video(model, tmp_path / "clip.mp4", tmp_path / "out", class_names=["a", "b", "c"], batch_size=3,
                     score_thresh=0.2, device="cpu", progress=False)  # fmt: skip
    frames = _decoded(tmp_path / "clip.mp4")
    assert r["frames"] == len(frames) == 7 and (r["width"], r["height"], r["fps"]) == (64, 64, 10.0)
    record = json.loads((tmp_path / "out" / "clip_det.json").read_text())
    assert [f["frame"] for f in record["frames"]] == list(range(7))
    assert record["frames"][3]["time"] == pytest.approx(0.3)
    pre = model.preprocess
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    with torch.inference_mode():  # the reference: one frame at a time
        for frame, got in zip(frames, record["frames"], strict=True):
            det = postprocess(model(transform(frame, *empty, None)[0][None]), model.priors, score_thresh=0.2)[0]
            det = det.to_pixels(64, 64)
            boxes = torch.tensor([d["box"] for d in got["detections"]]).reshape(-1, 4)
            assert len(got["detections"]) == len(det.scores)
            torch.testing.assert_close(boxes, det.boxes, atol=0.01, rtol=0)  # rounded to 2 decimals
            assert [d["label"] for d in got["detections"]] == det.labels.tolist()
            assert {d["class"] for d in got["detections"]} <= {"a", "b", "c"}
    annotated = _decoded(r["output"])
    assert len(annotated) == 7 and annotated[0].shape == (3, 64, 64)


def test_cli_detect_takes_videos_and_folders_of_them(tmp_path, capsys) -> None:
    model = create_model("ssd_tiny", 4, image_size=64, width=4)
    save_checkpoint(tmp_path / "m.pt", model_checkpoint(model, ["a", "b", "c"]))
    (tmp_path / "videos").mkdir()
    _write_video(tmp_path / "videos" / "one.mp4", n=3)
    _write_video(tmp_path / "videos" / "two.mov", n=2)
    videos, rest = find_videos([tmp_path / "videos", tmp_path / "x.png"])
    assert [v.name for v in videos] == ["one.mp4", "two.mov"] and rest == [tmp_path / "x.png"]
    # a picture beside the videos is detected as an image, the videos as videos
    Image.fromarray(ShapesDataset(1, 64, seed=3)[0][0].permute(1, 2, 0).numpy()).save(tmp_path / "videos" / "p.png")
    videos, rest = find_videos([tmp_path / "videos"])
    assert len(videos) == 2 and rest == [tmp_path / "videos" / "p.png"]
    args = ["detect", str(tmp_path / "videos"), "--weights", str(tmp_path / "m.pt"), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "one.mp4: 3 frames" in out and "two.mov: 2 frames" in out and "1 image processed" in out
    assert (tmp_path / "o" / "two_det.mp4").is_file() and (tmp_path / "o" / "one_det.json").is_file()
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    assert main(["detect", str(tmp_path / "bad.mp4"), "--weights", str(tmp_path / "m.pt")]) != 0
    assert "bad.mp4: cannot be read as a video" in capsys.readouterr().err
