"""Weight converters, tested against the source networks rebuilt here from their documented architecture.

ssd.pytorch's SSD300 is written out as in its ``ssd.py`` (``vgg``, ``add_extras``, ``multibox``, ``L2Norm`` and the
forward pass, as quoted in the seeds ``001_*`` and ``003_*``), torchvision's ``ssd300_vgg16`` as in its
``models/detection/ssd.py`` (``SSDFeatureExtractorVGG``, ``SSDScoringHead``) and ``anchor_utils.py``
(``DefaultBoxGenerator``). Their state dicts have the source keys by construction.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multibox.models import create_model
from multibox.models.vgg import SSD_PYTORCH_PREFIXES, VGG16Base
from multibox.models.zoo import resolve_prior_spec
from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD, VGG_MEAN
from multibox.priors import COCO300
from multibox.weights import (
    TORCHVISION300,
    TORCHVISION_COCO_CLASSES,
    ConversionError,
    convert_file,
    convert_imagenet_vgg16,
    convert_ssd_pytorch,
    convert_ssd_pytorch_base,
    convert_torchvision_ssd300,
    detect_layout,
    reduce_fc6,
    reduce_fc7,
)
from multibox.weights.checkpoint import model_from_checkpoint
from multibox.weights.io import load_checkpoint, save_checkpoint

# ---------------------------------------------------------------- ssd.pytorch (amdegroot), as in its ssd.py
BASE = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
EXTRAS = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]
MBOX = [4, 6, 6, 6, 4, 4]
SSD_PYTORCH_MEANS = (104, 117, 123)  # BGR, ssd.pytorch data/config.py MEANS


def vgg(cfg, i):
    layers, in_channels = [], i
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
    return [*layers, pool5, conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True)]


def add_extras(cfg, i):
    layers, in_channels, flag = [], i, False
    for k, v in enumerate(cfg):
        if in_channels != "S":
            if v == "S":
                layers += [nn.Conv2d(in_channels, cfg[k + 1], kernel_size=(1, 3)[flag], stride=2, padding=1)]
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=(1, 3)[flag])]
            flag = not flag
        in_channels = v
    return layers


class SsdPytorchL2Norm(nn.Module):
    def __init__(self, n_channels, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * torch.div(x, norm)


class SsdPytorchSSD(nn.Module):
    """ssd.pytorch's ``build_ssd('train', 300, num_classes)``; forward returns ``(loc [B, A, 4], conf [B, A, C])``."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(vgg(BASE, 3))
        self.L2Norm = SsdPytorchL2Norm(512, 20)
        self.extras = nn.ModuleList(add_extras(EXTRAS, 1024))
        loc, conf = [], []
        for k, v in enumerate([21, -2]):  # multibox(): conv4_3 and conv7
            loc += [nn.Conv2d(self.vgg[v].out_channels, MBOX[k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(self.vgg[v].out_channels, MBOX[k] * num_classes, kernel_size=3, padding=1)]
        for k, v in enumerate(self.extras[1::2], 2):
            loc += [nn.Conv2d(v.out_channels, MBOX[k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(v.out_channels, MBOX[k] * num_classes, kernel_size=3, padding=1)]
        self.loc, self.conf = nn.ModuleList(loc), nn.ModuleList(conf)

    def forward(self, x):
        sources, loc, conf = [], [], []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        for x, l, c in zip(sources, self.loc, self.conf, strict=True):
            loc.append(l(x).permute(0, 2, 3, 1).contiguous())
            conf.append(c(x).permute(0, 2, 3, 1).contiguous())
        loc = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
        conf = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
        return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, self.num_classes)


def small_init_(net):
    """Keep a random VGG's activations moderate on 0-255 inputs (the default init lets them shrink or explode)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=math.sqrt(1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return net


@pytest.fixture(scope="module")
def ssd_pytorch():
    torch.manual_seed(0)
    return small_init_(SsdPytorchSSD(21)).eval()


@pytest.fixture(scope="module")
def rgb_image():
    """A 300x300 RGB image as float 0-255 ``[1, 3, 300, 300]`` (already at the input size: no resize involved)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, 3, 300, 300), generator=g).float()


def ssd_pytorch_input(rgb, to_rgb):
    """ssd.pytorch's preprocessing: the BGR image (cv2) minus MEANS; ``pull_item`` then flips it to RGB."""
    bgr = rgb.flip(1)
    x = bgr - torch.tensor(SSD_PYTORCH_MEANS, dtype=torch.float32).view(1, 3, 1, 1)
    return x.flip(1) if to_rgb else x


def by_hand(state_dict):
    """ssd.pytorch's weights renamed to ours with SSD_PYTORCH_PREFIXES, nothing else."""
    out = {}
    for key, value in state_dict.items():
        src = next(p for p in SSD_PYTORCH_PREFIXES if key.startswith(p))
        out[SSD_PYTORCH_PREFIXES[src] + key[len(src) :]] = value
    return out


def test_ssd_pytorch_conversion_reproduces_its_outputs(ssd_pytorch, rgb_image):
    """The default: its train.py/eval.py input, BGR minus MEANS flipped to RGB by pull_item ("to rgb")."""
    with torch.no_grad():
        loc, conf = ssd_pytorch(ssd_pytorch_input(rgb_image, to_rgb=True))
        converted = convert_ssd_pytorch(ssd_pytorch.state_dict())
        model = converted.model.eval()
        assert model.mean == VGG_MEAN == (123.0, 117.0, 104.0)  # RGB order of ssd.pytorch's BGR MEANS
        pred = model(model.preprocess.normalize(rgb_image))  # our RGB image, our preprocessing
    torch.testing.assert_close(pred.box_deltas, loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred.cls_logits, conf, rtol=1e-4, atol=1e-4)
    hand = by_hand(ssd_pytorch.state_dict())  # the same weights loaded by hand
    assert hand.keys() == converted.state_dict.keys()
    assert all(torch.equal(hand[k], converted.state_dict[k]) for k in hand)
    assert len(converted.classes) == 20 and converted.checkpoint()["model_args"]["overrides"]["prior_spec"] == "voc300"


def test_ssd_pytorch_bgr_weights_get_conv1_reversed(ssd_pytorch, rgb_image):
    """input_order="bgr": weights fed BGR (its test.py/demo path) give the same conv1_1 output on our RGB input;
    everything after conv1_1 is copied unchanged, which the test above checks end to end."""
    converted = convert_ssd_pytorch(ssd_pytorch.state_dict(), input_order="bgr")
    assert torch.equal(converted.state_dict["backbone.features.0.weight"], ssd_pytorch.vgg[0].weight[:, [2, 1, 0]])
    with torch.no_grad():
        theirs = ssd_pytorch.vgg[0](ssd_pytorch_input(rgb_image, to_rgb=False))  # BGR minus (104, 117, 123)
        mine = converted.model.backbone.features[0](converted.model.preprocess.normalize(rgb_image))
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-4)
    hand = by_hand(ssd_pytorch.state_dict())
    assert all(torch.equal(hand[k], v) for k, v in converted.state_dict.items() if k != "backbone.features.0.weight")


def test_ssd_pytorch_errors_name_the_key_and_shapes(ssd_pytorch):
    sd = dict(ssd_pytorch.state_dict())
    with pytest.raises(ConversionError, match=r"conf\.0\.weight has shape \[84, 512, 3, 3\] = 4 boxes x 21 classes"):
        convert_ssd_pytorch(sd, num_classes=81)
    bad = {**sd, "conf.3.weight": torch.zeros(6 * 81, 256, 3, 3)}  # one head of another class count
    with pytest.raises(ConversionError, match=r"conf\.3\.weight has shape \[486, 256, 3, 3\], expected \[126, 256"):
        convert_ssd_pytorch(bad)
    truncated = {k: v for k, v in sd.items() if not k.startswith("extras.7")}
    with pytest.raises(ConversionError, match=r"2 of 71 expected keys are missing.*extras\.7\.weight"):
        convert_ssd_pytorch(truncated)
    with pytest.raises(ConversionError, match=r"unexpected keys.*extras\.8\.weight"):
        convert_ssd_pytorch({**sd, "extras.8.weight": torch.zeros(1)})


def test_ssd_pytorch_files_truncated_or_not(ssd_pytorch, tmp_path):
    path = tmp_path / "ssd300_mAP_77.43_v2.pth"
    torch.save(ssd_pytorch.state_dict(), path)  # ssd.pytorch saves the bare state dict
    assert detect_layout(torch.load(path, weights_only=True)) == "ssd.pytorch"
    summary = convert_file(path, tmp_path / "voc.pt")
    assert "ssd.pytorch" in summary and "voc300" in summary
    model = model_from_checkpoint(load_checkpoint(tmp_path / "voc.pt"))
    assert model.num_classes == 21 and model.num_priors == 8732
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth: cannot be read"):
        convert_file(cut, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match=r"ssd300_mAP_77\.43_v2\.pth: .*num_classes=81"):
        convert_file(path, tmp_path / "x.pt", num_classes=81)


def test_ssd_pytorch_base(ssd_pytorch, rgb_image):
    """vgg16_reducedfc.pth holds the vgg list's tensors as N.weight/N.bias; it is Caffe's BGR VGG16."""
    base = {k[len("vgg.") :]: v for k, v in ssd_pytorch.state_dict().items() if k.startswith("vgg.")}
    assert detect_layout(base) == "ssd.pytorch-base"
    converted = convert_ssd_pytorch_base(base)
    backbone = VGG16Base().eval()
    missing, unexpected = backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in converted.state_dict.items()}, strict=False
    )
    assert not unexpected and all(not k.startswith("features.") for k in missing)
    with torch.no_grad():  # block 1 (conv1_1, conv1_2, pool1); the later layers are copied unchanged
        bgr = ssd_pytorch_input(rgb_image, to_rgb=False)  # BGR minus (104, 117, 123), as Caffe's VGG16 saw images
        theirs = nn.Sequential(*ssd_pytorch.vgg[:5])(bgr)
        mine = nn.Sequential(*backbone.features[:5])(rgb_image - torch.tensor(VGG_MEAN).view(1, 3, 1, 1))
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(backbone.features[i].weight, ssd_pytorch.vgg[i].weight) for i in (2, 21, 31, 33))
    with pytest.raises(ConversionError, match=r"33\.weight has shape \[1024, 1024\], expected \[1024, 1024, 1, 1\]"):
        convert_ssd_pytorch_base({**base, "33.weight": base["33.weight"][:, :, 0, 0]})


# ---------------------------------------------------------------- torchvision ssd300_vgg16
def torchvision_vgg16_features():
    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def _block(cin, mid, cout, **kw):
    return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(True), nn.Conv2d(mid, cout, 3, **kw), nn.ReLU(True))


class TorchvisionExtractor(nn.Module):
    """torchvision's ``SSDFeatureExtractorVGG(vgg16().features, highres=False)``."""

    def __init__(self):
        super().__init__()
        backbone = torchvision_vgg16_features()
        backbone[16].ceil_mode = True  # maxpool3
        self.scale_weight = nn.Parameter(torch.ones(512) * 20)
        self.features = nn.Sequential(*backbone[:23])  # until conv4_3
        extra = nn.ModuleList(
            [
                _block(1024, 256, 512, padding=1, stride=2),
                _block(512, 128, 256, padding=1, stride=2),
                _block(256, 128, 256),
                _block(256, 128, 256),
            ]
        )
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=False),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        extra.insert(0, nn.Sequential(*backbone[23:-1], fc))  # until conv5_3, skip maxpool5
        self.extra = extra

    def forward(self, x):
        x = self.features(x)
        out = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return out


class TorchvisionHead(nn.Module):
    def __init__(self, channels, anchors, columns):
        super().__init__()
        convs = (nn.Conv2d(c, a * columns, 3, padding=1) for c, a in zip(channels, anchors, strict=True))
        self.module_list = nn.ModuleList(convs)
        self.num_columns = columns

    def forward(self, features):
        out = []
        for x, conv in zip(features, self.module_list, strict=True):
            r = conv(x)
            n, _, h, w = r.shape
            r = r.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_columns)
            out.append(r)
        return torch.cat(out, 1)


class TorchvisionSSD300(nn.Module):
    def __init__(self, num_classes=91):
        super().__init__()
        self.backbone = TorchvisionExtractor()
        channels, anchors = [512, 1024, 512, 256, 256, 256], MBOX
        self.head = nn.Module()
        self.head.classification_head = TorchvisionHead(channels, anchors, num_classes)
        self.head.regression_head = TorchvisionHead(channels, anchors, 4)

    def forward(self, x):
        features = self.backbone(x)
        return self.head.regression_head(features), self.head.classification_head(features)


def torchvision_default_boxes(size=300):
    """torchvision's ``DefaultBoxGenerator`` of ``ssd300_vgg16`` at 300x300, cxcywh (before its xyxy conversion)."""
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    steps, ratios, grids = [8, 16, 32, 64, 100, 300], [[2], [2, 3], [2, 3], [2, 3], [2], [2]], [38, 19, 10, 5, 3, 1]
    boxes = []
    for k, f in enumerate(grids):
        s, s2 = scales[k], math.sqrt(scales[k] * scales[k + 1])
        wh = [[s, s], [s2, s2]]
        for ar in ratios[k]:
            wh += [[s * math.sqrt(ar), s / math.sqrt(ar)], [s / math.sqrt(ar), s * math.sqrt(ar)]]
        wh = torch.tensor(wh).clamp(0, 1)  # clip=True clips the widths and heights
        shifts = (torch.arange(f) + 0.5) / (size / steps[k])
        cy, cx = torch.meshgrid(shifts, shifts, indexing="ij")
        centers = torch.stack((cx.reshape(-1), cy.reshape(-1)), -1).repeat_interleave(len(wh), 0)
        boxes.append(torch.cat((centers, wh.repeat(f * f, 1)), 1))
    return torch.cat(boxes)


def test_torchvision_conversion_reproduces_its_outputs():
    torch.manual_seed(2)
    tv = small_init_(TorchvisionSSD300()).eval()
    sd = tv.state_dict()
    assert detect_layout(sd) == "torchvision" and "backbone.extra.0.7.3.weight" in sd
    converted = convert_torchvision_ssd300(sd)
    model = converted.model.eval()
    assert model.num_classes == 91 and len(converted.classes) == 90 == len(TORCHVISION_COCO_CLASSES)
    assert converted.classes[0] == "person" and converted.classes[11] == "N/A" and converted.classes[89] == "toothbrush"
    # torchvision's DefaultBoxGenerator: coco300's sizes and order, centres unclipped (1.013 on the 10x10 map).
    reference = torchvision_default_boxes()
    torch.testing.assert_close(model.priors, reference, rtol=0, atol=1e-6)
    coco300 = COCO300.generate(300, model.feature_maps)
    assert (coco300 - reference).abs().amax(1).gt(1e-6).sum() == 114  # 19 cells x 6 priors
    spec = converted.checkpoint()["model_args"]["overrides"]["prior_spec"]  # the spec travels with the weights
    assert resolve_prior_spec(spec) == TORCHVISION300 and TORCHVISION300.clip == "size"
    # torchvision normalises [0, 1] RGB with mean (0.48235, 0.45882, 0.40784) and std 1/255.
    rgb01 = torch.rand(1, 3, 300, 300, generator=torch.Generator().manual_seed(3))
    tv_input = (rgb01 - torch.tensor([0.48235, 0.45882, 0.40784]).view(1, 3, 1, 1)) / (1 / 255)
    with torch.no_grad():
        reg, cls = tv(tv_input)
        pred = model(model.preprocess.normalize(rgb01 * 255))
    torch.testing.assert_close(pred.box_deltas, reg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred.cls_logits, cls, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConversionError, match=r"head\.regression_head\.module_list\.5\.bias.*missing|missing.*5\.bias"):
        convert_torchvision_ssd300({k: v for k, v in sd.items() if k != "head.regression_head.module_list.5.bias"})


# ---------------------------------------------------------------- ImageNet VGG16 -> reduced fc6/fc7
def test_fc_reduced_subsampling_indices_by_hand():
    # A small "fc6": 8 filters over 2 channels x 7 x 7 taps, each entry encoding its (filter, channel, y, x).
    o, c, y, x = torch.meshgrid(torch.arange(8), torch.arange(2), torch.arange(7), torch.arange(7), indexing="ij")
    fc6 = (o * 1000 + c * 100 + y * 10 + x).reshape(8, 2 * 49).float()
    w, b = reduce_fc6(fc6, torch.arange(8.0), channels=2)
    assert w.shape == (2, 2, 3, 3) and b.tolist() == [0.0, 4.0]
    assert w[1, 1].tolist() == [[4100, 4103, 4106], [4130, 4133, 4136], [4160, 4163, 4166]]  # filter 4, taps 0/3/6
    assert w[0, 0, 2, 1].item() == 0 * 1000 + 0 * 100 + 6 * 10 + 3
    fc7 = torch.arange(64.0).reshape(8, 8)
    w7, b7 = reduce_fc7(fc7, torch.arange(8.0))
    assert w7.shape == (2, 2, 1, 1) and w7.flatten().tolist() == [0, 4, 32, 36] and b7.tolist() == [0, 4]


def test_imagenet_vgg16_conversion():
    torch.manual_seed(4)
    features = torchvision_vgg16_features()
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    # The classifier at full size; zeros are allocated lazily, and the indices are tested by hand above.
    sd.update({"classifier.0.weight": torch.zeros(4096, 25088), "classifier.0.bias": torch.arange(4096.0)})
    sd.update({"classifier.3.weight": torch.zeros(4096, 4096), "classifier.3.bias": torch.arange(4096.0)})
    sd.update({"classifier.6.weight": torch.zeros(1000, 4096), "classifier.6.bias": torch.zeros(1000)})
    sd["classifier.0.weight"][8, 3 * 49 + 3 * 7 + 6] = 1.0  # filter 8 -> conv6 filter 2, channel 3, tap (1, 2)
    assert detect_layout(sd) == "imagenet-vgg16"
    converted = convert_imagenet_vgg16(sd)
    assert (converted.mean, converted.std) == (IMAGENET_MEAN, IMAGENET_STD)
    w6 = converted.state_dict["backbone.features.31.weight"]
    assert w6.shape == (1024, 512, 3, 3) and w6[2, 3, 1, 2] == 1.0 and w6.sum() == 1.0
    assert converted.state_dict["backbone.features.31.bias"][:3].tolist() == [0.0, 4.0, 8.0]
    assert converted.state_dict["backbone.features.33.weight"].shape == (1024, 1024, 1, 1)
    backbone = VGG16Base()
    state = {k[len("backbone.") :]: v for k, v in converted.state_dict.items()}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("features.")]
    assert torch.equal(backbone.features[28].weight, features[28].weight)  # conv5_3
    with pytest.raises(ConversionError, match="VGG16-BN"):
        convert_imagenet_vgg16({**sd, "features.1.weight": torch.ones(64)})


def tiny_checkpoint(path):
    torch.manual_seed(5)
    model = create_model("ssd_tiny", 3, image_size=64, width=4).eval()
    save_checkpoint(path, {"model": model.state_dict(), "model_args": model.config_dict(), "classes": ["a", "b"]})
    return model


def test_safetensors_round_trip(tmp_path):
    model = tiny_checkpoint(tmp_path / "last.pt")
    convert_file(tmp_path / "last.pt", tmp_path / "m.safetensors", to_safetensors=True)
    back = load_checkpoint(tmp_path / "m.safetensors")
    assert back["classes"] == ["a", "b"] and back["model_args"] == model.config_dict()
    assert len(back["model"]) == len(model.state_dict())
    rebuilt = model_from_checkpoint(back).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x).cls_logits, model(x).cls_logits)
    with pytest.raises(ConversionError, match="already a multibox"):
        convert_file(tmp_path / "last.pt", tmp_path / "x.pt")


def test_convert_cli(tmp_path, capsys):
    from multibox.cli import main

    tiny_checkpoint(tmp_path / "last.pt")
    out = str(tmp_path / "m.safetensors")
    assert main(["convert", str(tmp_path / "last.pt"), "--to-safetensors", "--out", out]) == 0
    assert "safetensors" in capsys.readouterr().out and load_checkpoint(out)["classes"] == ["a", "b"]
    assert main(["convert", str(tmp_path / "last.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "already a multibox" in capsys.readouterr().err
    assert main(["convert", out, "--from", "torchvision", "--out", str(tmp_path / "x.pt")]) == 2
    assert "already a multibox" in capsys.readouterr().err  # not torchvision's either
