"""fit_prior_spec: the paper's family of specs, keeping good priors, fitting poorly covered data, the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from multibox.data.anchors import anchor_coverage
from multibox.data.prior_fit import MIN_GAIN, fit_prior_spec, prior_spec_family
from multibox.models.mobilenet import SSDLITE320
from multibox.priors import VOC300

SSDLITE_MAPS = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def boxes_of(wh: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Boxes ``(w, h)`` at random centres inside the image, xyxy in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    centre = wh / 2 + torch.rand(wh.shape, generator=g) * (1 - wh)
    return torch.cat((centre - wh / 2, centre + wh / 2), dim=1)


def test_family_contains_ssdlite_and_follows_the_structure():
    spec = prior_spec_family(SSDLITE320, 0.2, 0.95, (2.0, 3.0))
    # eq. 4 with s_min 0.2, s_max 0.95 over 6 maps: 0.2, 0.35, ..., 0.95; s_7 = min(1, 1.1) = 1 -> torchvision's.
    torch.testing.assert_close(torch.tensor(spec.min_sizes), torch.tensor(SSDLITE320.min_sizes))
    torch.testing.assert_close(torch.tensor(spec.max_sizes), torch.tensor(SSDLITE320.max_sizes))
    assert spec.aspect_ratios == SSDLITE320.aspect_ratios and spec.clip == SSDLITE320.clip
    # VOC300 has 4-prior maps (one ratio) and 6-prior maps (two): each keeps its count, with the first ratios.
    voc = prior_spec_family(VOC300, 0.1, 0.9, (1.5, 4.0))
    assert voc.boxes_per_location == VOC300.boxes_per_location
    assert voc.aspect_ratios[0] == (1.5,) and voc.aspect_ratios[1] == (1.5, 4.0)
    assert voc.min_sizes[0] == pytest.approx(30.0) and voc.max_sizes[-1] == pytest.approx(300.0)
    assert voc.steps is None  # derived from the measured maps
    with pytest.raises(ValueError, match="s_min <= s_max"):
        prior_spec_family(VOC300, 0.5, 0.2, (2.0, 3.0))
    with pytest.raises(ValueError, match="2 aspect ratios"):
        prior_spec_family(SSDLITE320, 0.2, 0.9, (2.0,))


def test_good_coverage_keeps_the_models_priors():
    priors = SSDLITE320.generate((320, 320), SSDLITE_MAPS)
    # Boxes equal to priors (cxcywh -> xyxy): every one is covered with IoU 1.
    chosen = priors[torch.arange(0, len(priors), 97)]
    boxes = torch.cat((chosen[:, :2] - chosen[:, 2:] / 2, chosen[:, :2] + chosen[:, 2:] / 2), dim=1)
    labels = torch.ones(len(boxes), dtype=torch.long)
    fit = fit_prior_spec([boxes], [labels], ["a"], SSDLITE320, (320, 320), SSDLITE_MAPS)
    assert not fit.changed and fit.spec is SSDLITE320 and fit.after is fit.before
    assert fit.before.covered == 1.0 and "covered" in fit.reason
    assert "kept" in str(fit)


def test_small_objects_get_smaller_priors_and_the_report_says_why():
    small = boxes_of(torch.full((300, 2), 0.06))  # 19 px at 320: below SSDLite's smallest prior (64 px)
    big = boxes_of(torch.full((100, 2), 0.5), seed=1)
    labels = [torch.ones(300, dtype=torch.long), torch.full((100,), 2, dtype=torch.long)]
    fit = fit_prior_spec([small, big], labels, ["tiny", "big"], SSDLITE320, (320, 320), SSDLITE_MAPS)
    assert fit.changed
    assert fit.before.per_class["tiny"][1] < 0.05 and fit.before.per_class["big"][1] == 1.0
    assert fit.after.per_class["tiny"][1] > 0.5 and fit.after.per_class["big"][1] > 0.9
    assert fit.spec.min_sizes[0] < 30  # the smallest prior moved down to the small boxes (19 px)
    assert fit.spec.boxes_per_location == SSDLITE320.boxes_per_location  # the head is unchanged
    assert "'tiny'" in fit.reason and "300 small boxes" in fit.reason
    # The reported coverage is the coverage of the returned spec's priors.
    again = anchor_coverage([small, big], labels, fit.spec.generate((320, 320), SSDLITE_MAPS), ["tiny", "big"])
    assert again.covered == fit.after.covered
    report = fit.to_dict()
    assert report["changed"] and json.loads(json.dumps(report))["before"]["per_class"]["tiny"]["boxes"] == 300


def test_elongated_boxes_get_matching_aspect_ratios():
    wh = torch.tensor([[0.05, 0.5]]).repeat(200, 1)  # 1:10, far beyond SSDLite's 1:3
    fit = fit_prior_spec([boxes_of(wh)], [torch.ones(200, dtype=torch.long)], ["pole"], SSDLITE320, (320, 320),
                         SSDLITE_MAPS)  # fmt: skip
    assert fit.changed and fit.before.covered == 0.0 and fit.after.covered > 0.5
    assert max(fit.spec.aspect_ratios[0]) >= 4.0


def test_force_still_needs_a_clear_gain_and_no_boxes_is_an_error():
    priors = SSDLITE320.generate((320, 320), SSDLITE_MAPS)
    chosen = priors[torch.arange(0, len(priors), 97)]
    boxes = torch.cat((chosen[:, :2] - chosen[:, 2:] / 2, chosen[:, :2] + chosen[:, 2:] / 2), dim=1)
    fit = fit_prior_spec([boxes], [torch.ones(len(boxes), dtype=torch.long)], ["a"], SSDLITE320, (320, 320),
                         SSDLITE_MAPS, force=True)  # fmt: skip
    assert not fit.changed and f"{MIN_GAIN}" in fit.reason  # IoU-1 coverage cannot be beaten by MIN_GAIN
    with pytest.raises(ValueError, match="no boxes"):
        fit_prior_spec([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], ["a"], SSDLITE320, (320, 320),
                       SSDLITE_MAPS)  # fmt: skip


def test_training_with_auto_priors_stores_the_fitted_spec(tmp_path):
    from multibox.config import load_config
    from multibox.engine.train import train
    from multibox.weights.checkpoint import model_from_checkpoint
    from multibox.weights.io import load_checkpoint
    from test_engine import tiny_overrides

    sets = tiny_overrides(tmp_path, **{"model.priors": "auto", "data.shapes_train": 40})
    sets += ["data.kind=shapes"]
    cfg = load_config("ssd_tiny_shapes", sets)
    notes: list[str] = []
    result = train(cfg, progress=False, log=notes.append)
    report = json.loads((tmp_path / "priors.json").read_text())
    ckpt = load_checkpoint(result.checkpoint)
    spec = ckpt["model_args"]["overrides"].get("prior_spec")
    assert notes and notes[0].startswith("default boxes:")
    if report["changed"]:
        assert spec is not None and spec["min_sizes"] == report["spec"]["min_sizes"]
    else:
        assert spec is None
    model = model_from_checkpoint(ckpt)
    assert model.prior_spec.min_sizes == tuple(report["spec"]["min_sizes"])
