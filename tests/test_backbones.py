"""The backbone zoo: EfficientNet-Lite logits against the reference package (and a stored fixture),
taps against the whole classifier, the ResNet entries, and the errors of bad names and files."""
import importlib.util
from pathlib import Path

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fastad.models.components import zoo
from fastad.models.components.zoo import BACKBONES, build_backbone, lite_classifier, packaged_weights

FIXTURE = Path(__file__).parent / "fixtures" / "backbones" / "efficientnet_lite_logits.safetensors"
PHOTOS = ("chelsea", "coffee", "rocket")
#: the network's input side (the reference package's image_size)
SIDES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
#: ImageNet classes the photos are (lite0 puts them first; lite1/2 agree on the first two)
CLASSES = {"chelsea": (285, 281), "coffee": (967,), "rocket": (657, 744)}
LITES = [pytest.param(name, marks=pytest.mark.skipif(
    importlib.util.find_spec(BACKBONES[name].module) is None, reason=f"needs {BACKBONES[name].package}"))
    for name in SIDES]
requires_reference = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                                        reason="needs the reference package efficientnet-lite-pytorch")


def photos(side: int, spec) -> torch.Tensor:
    """The photos centre-cropped square, resized to side, normalised as the weights expect."""
    out = []
    for name in PHOTOS:
        x = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float()[None] / 255
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return (torch.cat(out) - mean) / std


@pytest.fixture(scope="module")
def logits():
    """name -> (our logits, the stored reference logits) of the three photos."""
    cache = {}

    def get(name):
        if name not in cache:
            with torch.no_grad():
                cache[name] = lite_classifier(name)(photos(SIDES[name], BACKBONES[name])), load_file(FIXTURE)[name]
        return cache[name]
    return get


@pytest.mark.parametrize("name", LITES)
def test_logits_match_the_stored_reference(name, logits):
    ours, stored = logits(name)
    assert (ours - stored).abs().max() <= 1e-4
    top = ours.argmax(1).tolist()
    assert top[0] in CLASSES["chelsea"] and top[1] in CLASSES["coffee"]
    if name == "efficientnet_lite0":
        assert top[2] in CLASSES["rocket"]


@requires_reference
@pytest.mark.parametrize("name", LITES)
def test_logits_match_the_reference_package(name, logits):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(packaged_weights(BACKBONES[name])))
    with torch.no_grad():
        expected = reference.eval()(photos(SIDES[name], BACKBONES[name]))
    assert (logits(name)[0] - expected).abs().max() <= 1e-4


def test_taps_are_the_classifiers_stage_outputs():
    spec = BACKBONES["efficientnet_lite0"]
    net = build_backbone("efficientnet_lite0", taps=tuple(spec.taps))
    images = torch.rand(2, 3, 96, 128)
    classifier, seen = lite_classifier("efficientnet_lite0"), []
    hooks = [classifier.blocks[i].register_forward_hook(lambda m, a, out: seen.append(out)) for i in (0, 1, 2, 4, 6)]
    with torch.no_grad():
        maps = net(images)
        classifier((images - 0.5) / 0.5)
    for hook in hooks:
        hook.remove()
    for (tap, (stride, channels)), expected in zip(spec.taps.items(), seen):
        assert maps[tap].shape == (2, channels, 96 // stride, 128 // stride)
        torch.testing.assert_close(maps[tap], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_random_weights_follow_the_seed_and_tap_channels(name):
    spec, taps = BACKBONES[name], BACKBONES[name].default_taps
    a, b, c = (build_backbone(name, taps, weights="random", seed=s) for s in (0, 0, 1))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first, again, other = a(images), b(images), c(images)
    for tap in taps:
        stride, channels = spec.taps[tap]
        assert first[tap].shape == (1, channels, 64 // stride, 64 // stride)
        torch.testing.assert_close(first[tap], again[tap], rtol=0, atol=0)
    assert not torch.equal(first[taps[-1]], other[taps[-1]])
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_pretrained_differs_from_random():
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        pretrained = build_backbone("efficientnet_lite0")(images)["stride16"]
        random = build_backbone("efficientnet_lite0", weights="random")(images)["stride16"]
    assert not torch.allclose(pretrained, random)


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match="backbone must be one of efficientnet_lite0, .*resnet18.*; got 'lite9'"):
        build_backbone("lite9")


def test_bad_taps_name_the_choices():
    with pytest.raises(ValueError, match="stride4.*stride8"):
        build_backbone("efficientnet_lite0", taps=("stride16", "stride8"))


def test_resnet_has_no_packaged_weights():
    with pytest.raises(ValueError, match="resnet18 has no packaged weights: give weights=PATH"):
        build_backbone("resnet18")


def test_weights_of_another_network_name_the_keys(tmp_path):
    lite0 = {k: v.contiguous() for k, v in
             torch.load(packaged_weights(BACKBONES["efficientnet_lite0"]), weights_only=True).items()}
    other = tmp_path / "lite0.pth"   # torch.save keeps the order the in-order mapping needs
    torch.save(lite0, other)
    with pytest.raises(ValueError, match=r"lite0.pth is not a efficientnet_lite2 state_dict: 296 tensors, "
                                         r"expected 386 \(timm's keys, missing e.g. \['conv_stem.weight'"):
        build_backbone("efficientnet_lite2", weights=str(other))
    key = list(lite0)[6]
    lite0[key] = torch.zeros(7)
    torch.save(lite0, other)
    with pytest.raises(ValueError, match=rf"{key} is \(7,\) where efficientnet_lite0 has blocks.0.0.conv_dw.weight"):
        build_backbone("efficientnet_lite0", weights=str(other))
    with pytest.raises(ValueError, match="weights must be the path of a local efficientnet_lite0 weights file"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "absent.pth"))


def test_missing_weights_package_names_the_pip_command():
    spec = zoo.BackboneSpec("efficientnet_lite7", {}, (), zoo.HALF, zoo.HALF, "", "efficientnet-lite7-pytorch-model")
    with pytest.raises(ImportError, match="pip install efficientnet-lite7-pytorch-model"):
        packaged_weights(spec)


def test_weights_location_is_the_installed_file():
    assert zoo.weights_location("efficientnet_lite0").endswith(".pth")
    assert zoo.weights_location("efficientnet_lite0") == str(packaged_weights(BACKBONES["efficientnet_lite0"]))
    assert zoo.weights_location("resnet18").startswith("not found (resnet18 has no packaged weights")


def test_info_lists_every_backbone_and_its_weights_file():
    import fastad
    from fastad.info import format_info

    facts = fastad.info()
    assert list(facts["backbones"]) == list(BACKBONES)
    lite0 = facts["backbones"]["efficientnet_lite0"]
    assert lite0["taps"]["stride16"] == [16, 112] and lite0["weights"] == str(packaged_weights(BACKBONES["efficientnet_lite0"]))
    text = format_info(facts)
    assert f"  weights: {lite0['weights']}" in text and "backbone resnet18: taps layer1 (4, 64 ch)" in text
