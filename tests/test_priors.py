import math

import pytest
import torch

from multibox.priors import (
    COCO300,
    COCO512,
    VOC300,
    VOC512,
    PriorSpec,
    boxes_per_location,
    caffe_sizes,
    default_boxes,
    paper_scales,
)
from ssd_pytorch_reference import COCO_CFG, VOC_CFG, ssd_pytorch_priorbox

MAPS300 = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
MAPS512 = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_presets_are_the_published_numbers():
    assert VOC300.min_sizes == (30, 60, 111, 162, 213, 264) and VOC300.max_sizes == (60, 111, 162, 213, 264, 315)
    assert COCO300.min_sizes == (21, 45, 99, 153, 207, 261) and COCO300.max_sizes == (45, 99, 153, 207, 261, 315)
    assert VOC512.min_sizes == pytest.approx((35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8))
    assert VOC512.max_sizes == pytest.approx((76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6))
    assert COCO512.min_sizes == pytest.approx((20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8))
    assert COCO512.max_sizes == pytest.approx((51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72))


@pytest.mark.parametrize(("spec", "cfg"), [(VOC300, VOC_CFG), (COCO300, COCO_CFG)])
def test_ssd300_priors_equal_ssd_pytorch(spec, cfg):
    ours = spec.generate(300, MAPS300)
    ref = ssd_pytorch_priorbox(cfg)
    assert ours.shape == ref.shape == (8732, 4)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_prior_counts():
    assert VOC300.boxes_per_location == [4, 6, 6, 6, 4, 4]
    assert VOC512.boxes_per_location == [4, 6, 6, 6, 6, 4, 4]
    assert VOC512.generate(512, MAPS512).shape == (24564, 4)
    assert boxes_per_location([[2], [2, 3]], with_max_size=False) == [3, 5]


def test_first_priors_of_a_small_map_by_hand():
    # 2x2 map on a 100x100 image, s=20 px, s'=sqrt(20*40) px, ratio 2: step 50 -> centres 0.25 and 0.75.
    p = default_boxes(100, [(2, 2)], [20], [40], [[2]], clip=False)
    r2 = math.sqrt(2)
    s2 = math.sqrt(800) / 100
    expected = torch.tensor(
        [
            [0.25, 0.25, 0.2, 0.2],
            [0.25, 0.25, s2, s2],
            [0.25, 0.25, 0.2 * r2, 0.2 / r2],
            [0.25, 0.25, 0.2 / r2, 0.2 * r2],
            [0.75, 0.25, 0.2, 0.2],  # row 0, column 1: x moves first
        ]
    )
    assert p.shape == (16, 4)
    torch.testing.assert_close(p[:5], expected)
    torch.testing.assert_close(p[8, :2], torch.tensor([0.25, 0.75]))  # row 1, column 0


def test_non_square_priors_are_square_in_pixels():
    p = default_boxes((200, 400), [(2, 4)], [40], None, [[]], clip=False)
    assert p.shape == (8, 4)
    torch.testing.assert_close(p[0], torch.tensor([0.125, 0.25, 0.1, 0.2]))  # 40 px wide of 400, high of 200
    torch.testing.assert_close(p[:4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_one_by_one_map_and_clipping():
    p = default_boxes(300, [(1, 1)], [264], [315], [[2]])
    assert p.shape == (4, 4)
    assert (p >= 0).all() and (p <= 1).all()
    unclipped = default_boxes(300, [(1, 1)], [264], [315], [[2]], clip=False)
    assert unclipped[2, 2] > 1  # 264 * sqrt(2) / 300 = 1.2445...
    torch.testing.assert_close(unclipped[2, 2], torch.tensor(264 * math.sqrt(2) / 300))


def test_spec_at_other_sizes_scales_sizes_and_derives_steps():
    p = VOC300.generate(600, [(m[0] * 2, m[1] * 2) for m in MAPS300])
    # first prior: centre (0.5 / 76), size 60 px of 600
    torch.testing.assert_close(p[0], torch.tensor([0.5 / 76, 0.5 / 76, 0.1, 0.1]))
    q = VOC300.generate((300, 450), [(38, 57), (19, 29), (10, 15), (5, 8), (3, 4), (1, 2)])
    torch.testing.assert_close(q[0], torch.tensor([0.5 / 57, 0.5 / 38, 30 / 450, 30 / 300]))


def test_paper_scales_and_caffe_sizes():
    assert paper_scales(6) == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9])
    assert paper_scales(1, 0.3) == [0.3]
    assert caffe_sizes(300, 6, 20, 90, 10) == ((30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="feature maps"):
        default_boxes(300, [(2, 2)], [1, 2], None, [[2]])
    with pytest.raises(ValueError, match="at least 1x1"):
        default_boxes(300, [(0, 2)], [1], None, [[2]])
    with pytest.raises(ValueError, match="source maps"):
        VOC300.generate(300, MAPS300[:5])
    with pytest.raises(ValueError, match="positive"):
        PriorSpec(300, (30,), None, ((0.0,),))
