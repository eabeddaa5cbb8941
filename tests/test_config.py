import pytest

from multibox.config import Config, config_from_dict, config_to_dict, list_presets, load_config


def test_presets_load_and_round_trip():
    assert {"ssd300_vgg16_voc", "ssd512_vgg16_voc", "ssd300_vgg16_coco", "ssd_tiny_shapes"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert isinstance(cfg, Config)
        assert config_from_dict(config_to_dict(cfg)) == cfg


def test_paper_recipe_in_voc300_preset():
    t = load_config("ssd300_vgg16_voc").train
    assert (t.lr, t.batch_size, t.max_iters, t.milestones, t.momentum, t.weight_decay) == (
        1e-3, 32, 120_000, (80_000, 100_000), 0.9, 5e-4,
    )  # fmt: skip


def test_overrides_parse_yaml_values():
    cfg = load_config("ssd_tiny_shapes", ["train.lr=0.002", "model.image_size=[96,128]", "data.root=/x/y"])
    assert cfg.train.lr == 0.002 and cfg.model.image_size == (96, 128) and cfg.data.root == "/x/y"
    assert cfg.train.milestones == (80_000, 100_000)  # untouched default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], r"unknown key\(s\) \['lrr'\]"),
        (["bogus.x=1"], r"unknown key\(s\) \['bogus'\]"),
        (["train.lr=fast"], "train.lr: expected a number"),
        (["train.amp=fp8"], "train.amp: 'fp8' is not one of"),
        (["train.batch_size=2.5"], "train.batch_size: expected an integer"),
        (["train.lr"], "must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("ssd_tiny_shapes", overrides)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(top)


def test_exponent_floats_are_numbers():
    assert load_config("ssd_tiny_shapes", ["train.lr=1e-3"]).train.lr == 0.001


def test_finetune_preset_freezes_the_backbones_early_stages_only():
    from multibox.engine.run import freeze_modules
    from multibox.models import create_model

    cfg = load_config("ssdlite320_efficientnet_lite0_finetune")
    model = create_model(cfg.model.name, num_classes=3, pretrained=False, **cfg.model.kwargs)
    total = sum(1 for _ in model.parameters())
    frozen = freeze_modules(model, cfg.train.freeze)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert 0 < frozen < total and trainable >= {"backbone", "head"}
    frozen_names = [n for n, p in model.named_parameters() if not p.requires_grad]
    early = ("backbone.features.stem.", *(f"backbone.features.stages.{i}." for i in range(3)))
    assert frozen_names and all(n.startswith(early) for n in frozen_names)
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith(early))
    assert (cfg.train.max_minutes, cfg.model.priors, cfg.train.optimizer) == (10, "auto", "adamw")
    assert cfg.model.kwargs == {"stride8": True} and model.feature_maps[0] == (40, 40)
