"""Augmentation: property tests (hypothesis) and hand-computed cases."""

from __future__ import annotations

import colorsys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multibox.boxes import box_iou
from multibox.data import (
    Compose,
    Expand,
    HorizontalFlip,
    LimitSize,
    MinIoURandomCrop,
    Normalize,
    PhotometricDistort,
    Resize,
    ToFloat,
    ToRelative,
    ZoomCropResize,
    eval_transform,
    train_transform,
)
from multibox.data.photometric import adjust_saturation_hue, hsv_to_rgb, rgb_to_hsv

MEAN = (123.0, 117.0, 104.0)
STD = (58.0, 57.0, 57.0)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def samples(draw, max_side: int = 48, max_boxes: int = 5):
    """``(uint8 image [3, H, W], valid pixel boxes inside it [N, 4], labels arange(N) + 1, seed)``."""
    h = draw(st.integers(4, max_side))
    w = draw(st.integers(4, max_side))
    n = draw(st.integers(0, max_boxes))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w - 1, allow_nan=False))
        y1 = draw(st.floats(0, h - 1, allow_nan=False))
        x2 = draw(st.floats(x1 + 0.5, w, allow_nan=False))
        y2 = draw(st.floats(y1 + 0.5, h, allow_nan=False))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**31))
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.arange(1, n + 1), seed


TRANSFORMS = {
    "photometric": lambda: PhotometricDistort(p=1.0),
    "expand": lambda: Expand(MEAN, 4.0, p=1.0),
    "crop": lambda: MinIoURandomCrop(),
    "zoom_crop_resize": lambda: ZoomCropResize(
        PhotometricDistort(p=0.9), Expand(MEAN, 3.0, p=0.7), MinIoURandomCrop(), (17, 23)
    ),
    "flip": lambda: HorizontalFlip(p=1.0),
    "resize": lambda: Resize((17, 23)),
    "limit": lambda: LimitSize(20),
    "normalize": lambda: Compose([ToFloat(), Normalize(MEAN, STD)]),
}


def _assert_valid(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, relative: bool = False) -> None:
    assert image.dim() == 3 and image.shape[0] == 3
    assert boxes.shape == (labels.shape[0], 4)
    h, w = (1.0, 1.0) if relative else (image.shape[1], image.shape[2])
    tol = 1e-4 * max(h, w)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), boxes
    assert (boxes >= -tol).all() and (boxes[:, 2] <= w + tol).all() and (boxes[:, 3] <= h + tol).all(), (boxes, h, w)


@pytest.mark.parametrize("name", list(TRANSFORMS))
@SETTINGS
@given(sample=samples())
def test_boxes_stay_valid_inside_and_aligned(name, sample) -> None:
    image, boxes, labels, seed = sample
    out_image, out_boxes, out_labels = TRANSFORMS[name]()(image, boxes, labels, torch.Generator().manual_seed(seed))
    _assert_valid(out_image, out_boxes, out_labels)
    # Labels are the original rows' labels (arange + 1), in order, without repeats.
    assert out_labels.tolist() == sorted(set(out_labels.tolist()))
    assert set(out_labels.tolist()) <= set(labels.tolist())
    if name not in ("crop", "zoom_crop_resize"):
        assert torch.equal(out_labels, labels)  # only the crop drops boxes


@SETTINGS
@given(sample=samples())
def test_crop_keeps_boxes_aligned_with_their_originals(sample) -> None:
    image, boxes, labels, seed = sample
    crop = MinIoURandomCrop()
    window, _ = crop.sample_window(image.shape[2], image.shape[1], boxes, torch.Generator().manual_seed(seed))
    out_image, out_boxes, out_labels = crop(image, boxes, labels, torch.Generator().manual_seed(seed))
    if window is None:
        assert out_image is image and torch.equal(out_boxes, boxes)
        return
    x1, y1, x2, y2 = window
    assert out_image.shape == (3, y2 - y1, x2 - x1)
    assert torch.equal(out_image, image[:, y1:y2, x1:x2])
    for box, label in zip(out_boxes, out_labels, strict=True):
        original = boxes[label - 1]
        expected = torch.stack(
            (
                original[0].clamp(x1, x2) - x1,
                original[1].clamp(y1, y2) - y1,
                original[2].clamp(x1, x2) - x1,
                original[3].clamp(y1, y2) - y1,
            )
        )
        torch.testing.assert_close(box, expected)
        centre = (original[:2] + original[2:]) / 2
        assert x1 < centre[0] < x2 and y1 < centre[1] < y2


@SETTINGS
@given(sample=samples(max_boxes=6))
def test_crop_respects_the_chosen_min_iou(sample) -> None:
    image, boxes, labels, seed = sample
    crop = MinIoURandomCrop()
    window, min_iou = crop.sample_window(image.shape[2], image.shape[1], boxes, torch.Generator().manual_seed(seed))
    if window is None or len(boxes) == 0:
        return
    _, _, kept = crop(image, boxes, labels, torch.Generator().manual_seed(seed))
    assert len(kept) >= 1  # at least one centre inside
    iou = box_iou(boxes[kept - 1].double(), torch.tensor([window], dtype=torch.float64))[:, 0]
    assert iou.max() >= min_iou


def test_crop_modes_include_half_iou_and_whole_image() -> None:
    crop = MinIoURandomCrop()
    assert crop.modes[0] is None and 0.5 in crop.modes and crop.modes[-1] == float("-inf") and len(crop.modes) == 7
    # Over many draws, every mode shows up, 0.5 included.
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    seen = {crop.sample_window(40, 40, boxes, torch.Generator().manual_seed(s))[1] for s in range(200)}
    assert {None, 0.1, 0.3, 0.5, 0.7, 0.9, float("-inf")} <= seen


def test_crop_falls_back_to_whole_image_when_impossible() -> None:
    # A tiny box in a large image can never have IoU >= 0.9 with a patch of >= 0.3 of each side.
    crop = MinIoURandomCrop(min_ious=(0.9,))
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    tried = 0
    for seed in range(40):
        window, mode = crop.sample_window(100, 100, boxes, torch.Generator().manual_seed(seed))
        if mode == 0.9:
            assert window is None
            assert crop(image, boxes, torch.tensor([1]), torch.Generator().manual_seed(seed))[0] is image
            tried += 1
    assert tried > 0


@SETTINGS
@given(sample=samples())
def test_flip_twice_is_identity(sample) -> None:
    image, boxes, labels, _ = sample
    flip = HorizontalFlip(p=1.0)
    once = flip(image, boxes, labels)
    twice = flip(*once)
    assert torch.equal(twice[0], image) and torch.equal(twice[2], labels)
    torch.testing.assert_close(twice[1], boxes, atol=1e-4, rtol=0)
    assert not torch.equal(once[0], image) or image.shape[2] == 1 or torch.equal(image, image.flip(-1))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_image_without_boxes_passes_every_transform(name) -> None:
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    for seed in range(10):
        out = TRANSFORMS[name]()(
            image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.Generator().manual_seed(seed)
        )
        assert out[1].shape == (0, 4) and out[2].shape == (0,)


@pytest.mark.parametrize("build", [train_transform, eval_transform])
@SETTINGS
@given(sample=samples())
def test_pipelines_output_normalised_image_and_relative_boxes(build, sample) -> None:
    image, boxes, labels, seed = sample
    transform = build((32, 48), MEAN, STD)
    out_image, out_boxes, out_labels = transform(image, boxes, labels, torch.Generator().manual_seed(seed))
    assert out_image.shape == (3, 32, 48) and out_image.dtype == torch.float32
    # Normalised 0-255 values stay within (0 - mean) / std .. (255 - mean) / std.
    assert out_image.min() >= (0 - max(MEAN)) / min(STD) - 1e-3 and out_image.max() <= 255 / min(STD) + 1e-3
    _assert_valid(out_image, out_boxes, out_labels, relative=True)


def test_eval_transform_by_hand() -> None:
    image = torch.full((3, 20, 40), 123, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 15.0]])
    out_image, out_boxes, out_labels = eval_transform(10, (123, 123, 123), (2, 2, 2))(image, boxes, torch.tensor([4]))
    assert out_image.shape == (3, 10, 10)
    torch.testing.assert_close(out_image, torch.zeros(3, 10, 10), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_boxes, torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert out_labels.tolist() == [4]


def test_same_generator_seed_same_augmentation() -> None:
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    boxes = torch.tensor([[5.0, 5.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]])
    labels = torch.tensor([1, 2])
    transform = train_transform(64, MEAN, STD)
    a = transform(image, boxes, labels, torch.Generator().manual_seed(3))
    b = transform(image, boxes, labels, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    outs = {transform(image, boxes, labels, torch.Generator().manual_seed(s))[0].sum().item() for s in range(5)}
    assert len(outs) > 1


def test_expand_places_image_on_mean_canvas() -> None:
    image = torch.randint(0, 256, (3, 10, 20)).float()
    boxes = torch.tensor([[2.0, 3.0, 8.0, 9.0]])
    canvas, moved, _ = Expand(MEAN, 3.0, p=1.0)(image, boxes, torch.tensor([1]), torch.Generator().manual_seed(1))
    dx, dy = int(moved[0, 0] - 2), int(moved[0, 1] - 3)
    assert torch.equal(canvas[:, dy : dy + 10, dx : dx + 20], image)
    rest = canvas.clone()
    rest[:, dy : dy + 10, dx : dx + 20] = torch.tensor(MEAN).view(3, 1, 1)
    assert torch.equal(rest, torch.tensor(MEAN).view(3, 1, 1).expand_as(canvas))
    assert canvas.shape[1] >= 10 and canvas.shape[1] / 10 <= 3 and canvas.shape[2] / 20 <= 3


def test_resize_and_to_relative_scale_boxes() -> None:
    image = torch.zeros(3, 10, 20)
    boxes = torch.tensor([[2.0, 4.0, 10.0, 10.0]])
    out, resized, _ = Resize((5, 5))(image, boxes, torch.tensor([1]))
    torch.testing.assert_close(resized, torch.tensor([[0.5, 2.0, 2.5, 5.0]]))
    _, rel, _ = ToRelative()(out, resized, torch.tensor([1]))
    torch.testing.assert_close(rel, torch.tensor([[0.1, 0.4, 0.5, 1.0]]))


def test_hsv_against_colorsys() -> None:
    rgb = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    rgb[:, 0, 0] = 0.5  # gray
    rgb[:, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    hsv = rgb_to_hsv(rgb)
    expected = torch.tensor([[colorsys.rgb_to_hsv(*rgb[:, i, j].tolist()) for j in range(9)] for i in range(7)])
    torch.testing.assert_close(hsv, expected.permute(2, 0, 1).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("saturation", "hue"), [(1.4, None), (0.5, None), (None, 17.0), (None, -18.0), (1.5, 9.0), (0.7, -3.0)]
)
def test_fused_saturation_hue_equals_hsv_round_trip(saturation, hue) -> None:
    rgb = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255
    rgb[:, :2] = 80.0  # gray rows
    hsv = rgb_to_hsv(rgb / 255)
    if saturation is not None:
        hsv[1] = (hsv[1] * saturation).clamp(0, 1)
    if hue is not None:
        hsv[0] = torch.remainder(hsv[0] + hue / 360, 1)
    torch.testing.assert_close(adjust_saturation_hue(rgb, saturation, hue), hsv_to_rgb(hsv) * 255, atol=2e-3, rtol=0)


def test_photometric_stays_in_range_and_changes_the_image() -> None:
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    distort = PhotometricDistort(p=1.0)
    changed = 0
    for seed in range(10):
        out, _, _ = distort(image, torch.zeros(0, 4), torch.zeros(0), torch.Generator().manual_seed(seed))
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
        changed += not torch.allclose(out, image.float())
    assert changed == 10


@SETTINGS
@given(sample=samples(max_side=40), with_expand=st.booleans())
def test_zoom_crop_resize_boxes_equal_the_literal_sequence(sample, with_expand) -> None:
    # Same draws in the same order as PhotometricDistort, Expand, MinIoURandomCrop, Resize in sequence: the same
    # boxes and labels, bit for bit.
    image, boxes, labels, seed = sample
    photometric, crop = PhotometricDistort(p=0.9), MinIoURandomCrop()
    expand = Expand(MEAN, 3.0, p=0.7) if with_expand else None
    steps = [photometric, *([expand] if expand else []), crop, Resize((24, 40))]
    ref = Compose(steps)(image, boxes, labels, torch.Generator().manual_seed(seed))
    got = ZoomCropResize(photometric, expand, crop, (24, 40))(image, boxes, labels, torch.Generator().manual_seed(seed))
    assert got[0].shape == ref[0].shape == (3, 24, 40) and got[0].dtype == torch.float32
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])


def test_zoom_crop_resize_distorts_like_the_sequence_where_the_order_does_not_matter() -> None:
    # Brightness, contrast, an identity saturation, a zero hue turn and channel orders commute with a resize whose
    # weights sum to 1 as long as nothing clamps (values 60-190): distorting after the resize is then the literal
    # sequence's result, up to the uint8 resize's fixed-point weights and rounding (about one level).
    image = torch.randint(60, 190, (3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    boxes, labels = torch.tensor([[10.0, 12.0, 60.0, 50.0]]), torch.tensor([1])
    photometric = PhotometricDistort(brightness=20.0, contrast=(0.9, 1.1), saturation=(1.0, 1.0), hue=0.0, p=1.0)
    crop = MinIoURandomCrop()
    step = ZoomCropResize(photometric, None, crop, (24, 40))
    literal = Compose([photometric, crop, Resize((24, 40))])
    for seed in range(10):
        got = step(image, boxes, labels, torch.Generator().manual_seed(seed))[0]
        ref = literal(image, boxes, labels, torch.Generator().manual_seed(seed))[0]
        assert (got - ref).abs().max() < 1.5 and (got - ref).abs().mean() < 0.4, seed


def _extent(mask: torch.Tensor) -> list[int]:
    """xyxy pixel extent of the True pixels of ``mask [H, W]``."""
    ys, xs = mask.nonzero(as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("expand_p", [0.0, 1.0])
def test_zoom_crop_resize_pixels_by_reference(expand_p) -> None:
    # Without a distortion the output is the literal sequence's: the same pixels when the patch holds no fill; with
    # fill, the photo is resized at the same scale but placed at a whole output pixel (at most half a pixel off) and
    # not blended with the fill at its border. A smooth photo (a 2x3 random image upsampled) keeps those apart.
    low = torch.rand(1, 3, 2, 3, generator=torch.Generator().manual_seed(2)) * 255
    image = torch.nn.functional.interpolate(low, size=(90, 120), mode="bilinear")[0].round().to(torch.uint8)
    boxes, labels = torch.tensor([[10.0, 12.0, 70.0, 80.0]]), torch.tensor([1])
    zoom, crop = Expand(MEAN, 3.0, p=expand_p), MinIoURandomCrop()
    step = ZoomCropResize(None, zoom, crop, (32, 40))
    literal = Compose([zoom, crop, Resize((32, 40))])
    fill = torch.tensor(MEAN).view(3, 1, 1)
    checked = 0
    for seed in range(20):
        got, got_boxes, _ = step(image, boxes, labels, torch.Generator().manual_seed(seed))
        ref, ref_boxes, _ = literal(image, boxes, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(got_boxes, ref_boxes)
        if expand_p == 0.0:
            assert torch.equal(got, ref), seed  # both resize the same uint8 patch
            continue
        photo, ref_photo = ~(got == fill).all(0), ((ref - fill).abs() > 0.5).any(0)
        if not photo.any():
            continue
        # The photo covers the same pixels (the reference blends its border into the fill over up to 2 pixels) ...
        assert max(abs(a - b) for a, b in zip(_extent(photo), _extent(ref_photo), strict=True)) <= 2, seed
        # ... with the same content inside (the reference's blended border band left out).
        inner = photo & ~(torch.nn.functional.max_pool2d((~photo)[None].float(), 5, 1, 2)[0] > 0)
        if inner.any():
            assert (got - ref).abs().amax(0)[inner].float().mean() < 8, seed
            checked += 1
    assert expand_p == 0.0 or checked > 5


def test_zoom_crop_resize_distorts_the_photo_not_the_fill(monkeypatch) -> None:
    # The reference runs the same draws with the distortion replaced by the identity, so it shows the same patch.
    image = torch.full((3, 60, 60), 200, dtype=torch.uint8)
    step = ZoomCropResize(
        PhotometricDistort(p=1.0, brightness=60.0), Expand(MEAN, 4.0, p=1.0), MinIoURandomCrop(min_ious=()), (24, 24)
    )
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    fill_seen = photo_seen = 0
    for seed in range(30):
        got = step(image, *empty, torch.Generator().manual_seed(seed))[0]
        with monkeypatch.context() as m:
            m.setattr(PhotometricDistort, "apply", staticmethod(lambda x, params: x.float().clone()))
            ref = step(image, *empty, torch.Generator().manual_seed(seed))[0]
        is_fill = (ref == torch.tensor(MEAN).view(3, 1, 1)).all(0)  # the fill is the exact (unrounded) mean
        assert torch.equal(got[:, is_fill], ref[:, is_fill]), seed
        inside = ~is_fill
        fill_seen += int(is_fill.sum())
        photo_seen += int(inside.any() and (got[:, inside] != ref[:, inside]).any())
    assert fill_seen > 0 and photo_seen > 0  # both cases occurred, and the photo was distorted


def test_train_transform_without_zoom_or_distortion_is_the_plain_sequence() -> None:
    g = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[5.0, 6.0, 30.0, 40.0], [40.0, 10.0, 75.0, 55.0]])
    labels = torch.tensor([1, 2])
    fused = train_transform(64, MEAN, STD, expand_ratio=1.0, photometric=False)
    plain = Compose([MinIoURandomCrop(), Resize((64, 64)), HorizontalFlip(), Normalize(MEAN, STD), ToRelative()])
    for seed in range(20):
        a = fused(image, boxes, labels, torch.Generator().manual_seed(seed))
        b = plain(image, boxes, labels, torch.Generator().manual_seed(seed))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), seed
