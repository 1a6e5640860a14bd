"""Checkpoints written by an earlier fastad still load and score the same, and loading a
checkpoint opens none of the weights files its config names.

tests/fixtures/checkpoints/<model>/ holds a checkpoint of each registered model written with
fastad.engine.train by the code before the model layer was reorganised into one package per
model (commit 171766a; tests/fixtures/checkpoints/make_checkpoints.py), and expected.safetensors:
the probe images [2, 3, 64, 64] and the image_scores [2] and maps [2, 64, 64] that code gave.
patchcore/ was written the same way by commit 894ad1a (the last before the backbone zoo, whose
backbone parameters were backbone.<name>, not backbone.net.<name>): a random resnet18 through
layer1 at 128 px, coreset 0.25 of 4 training crops, 0 steps; the make_checkpoints.py CASES entry
("patchcore", {"backbone": "resnet18", "layers": ["layer1"], "image_size": 128,
"coreset_ratio": 0.25}, 0).
UTAD's file lacks its frozen VGG-19 tensors (9 MB of a fixed seeded initialisation, vgg_weights
None): the test puts them back, bit for bit as that code wrote them, before loading.
"""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastad.engine import load_checkpoint, train
from fastad.engine.checkpoint import LEGACY_IMAGE_SCORE, build_model
from fastad.models import MODELS, create_model
from fastad.models.components.backbones import VGG19_CONVS, ResNet18, VGG19Features, vgg11_features

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
NAMES = ("pedenet", "fcdd", "glance", "utad", "rawpixel", "patchcore")


def test_every_registered_model_has_a_fixture():
    assert set(NAMES) == set(MODELS)


def _utad_checkpoint(tmp_path: Path) -> Path:
    with safe_open(str(FIXTURES / "utad" / "checkpoint-without-vgg.safetensors"), "pt") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    with pytest.warns(UserWarning, match="vgg_weights=None"):
        vgg = VGG19Features(None, seed=0)
    tensors.update({f"model.vgg.{key}": value for key, value in vgg.state_dict().items()})
    path = tmp_path / "checkpoint.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_scores_as_it_did(name, tmp_path):
    path = _utad_checkpoint(tmp_path) if name == "utad" else FIXTURES / name / "checkpoint.safetensors"
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    loaded = load_checkpoint(path)
    assert loaded.header["model"] == name and loaded.model.name == name
    result = loaded.model.score(expected["images"])
    torch.testing.assert_close(result.image_scores, expected["image_scores"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.maps, expected["maps"], rtol=1e-5, atol=1e-6)


# --- loading needs no weights file ----------------------------------------------------------------

def _resnet18_file(path: Path) -> Path:
    torch.save(ResNet18().state_dict(), path)
    return path


def _vgg19_file(path: Path) -> Path:
    convs = VGG19Features(load=False).convs
    save_file({f"features.{index}.{name}": getattr(conv, name).detach().clone()
               for conv, (index, _, _) in zip(convs, VGG19_CONVS) for name in ("weight", "bias")}, str(path))
    return path


def _vgg11_file(path: Path) -> Path:
    save_file({f"features.{key}": value for key, value in vgg11_features().state_dict().items()}, str(path))
    return path


WEIGHTED = {  # model: (config key, file writer, tiny config)
    "glance": ("teacher_weights", _resnet18_file, {"feature_dim": 16, "global_widths": [8, 8, 8, 8], "local_batch": 4,
                                                   "global_batch": 2, "stride": 16, "dad_negatives": 1}),
    "utad": ("vgg_weights", _vgg19_file, {"ie_widths": [4, 4, 4, 4], "latent_dim": 8, "ie_hidden": 16,
                                          "expert_width": 2, "detail_dim": 4, "detail_width": 2, "mlp_hidden": 8,
                                          "n_residual": 1, "batch_size": 2, "pixel_threshold_images": 2}),
    "fcdd": ("weights", _vgg11_file, {"backbone": "vgg11", "batch_size": 2, "resize": 224}),
}


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_checkpoint_loads_and_scores_without_its_weights_files(name, tmp_path):
    key, write, config = WEIGHTED[name]
    weights = write(tmp_path / ("weights.pth" if name == "glance" else "weights.safetensors"))
    torch.manual_seed(0)
    model = create_model(name, **{key: str(weights)}, **config)
    images = torch.rand(4, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    train(model, images, steps=1, run_dir=tmp_path / "run", progress=False)
    before = model.eval().score(images[:2])
    weights.rename(tmp_path / "moved")                           # scoring on a machine without the file

    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.header["config"][key] == str(weights)
    after = loaded.model.score(images[:2])
    assert torch.equal(before.maps, after.maps) and torch.equal(before.image_scores, after.image_scores)
    if name == "glance":                                         # training reads the teacher when it needs it
        with pytest.raises(ValueError, match="teacher_weights"):
            loaded.model.teacher()
        (tmp_path / "moved").rename(weights)
        assert isinstance(loaded.model.teacher(), ResNet18)


# --- one Config per model ----------------------------------------------------------------------------

#: config keys added since the fixtures were written, with the values an old header gets (the
#: backbone zoo: UTAD's old perceptual network is VGG-19, GlanceNet's old Local-Net had no teacher)
ADDED_SINCE = {"utad": {"backbone": "vgg19", "weights": None, "layers": None}, "glance": {"teacher": "none"}}


@pytest.mark.parametrize("name", NAMES)
def test_config_is_declared_once_and_checked(name):
    cls = MODELS[name]
    model = create_model(name, read_weight_files=False)
    assert list(model.config) == [f.name for f in dataclasses.fields(cls.Config)]
    assert model.config == cls.Config().as_dict()
    with pytest.raises(TypeError, match="'no_such_key'"):
        create_model(name, no_such_key=1)
    key = next(k for k, v in model.config.items() if isinstance(v, int) and not isinstance(v, bool))
    with pytest.raises(TypeError, match=key):
        create_model(name, **{key: "8"})
    with safe_open(str(FIXTURES / name / ("checkpoint-without-vgg.safetensors" if name == "utad"
                                          else "checkpoint.safetensors")), "pt") as f:
        saved = json.loads(f.metadata()["fastad"])["config"]
    legacy = {"image_score": LEGACY_IMAGE_SCORE, **saved}  # a header from before image_score loads with it
    upgraded = cls.Config.from_dict(legacy, name).as_dict()
    assert {key: upgraded[cls.Config.RENAMED.get(key, key)] for key in legacy} == legacy   # an old header round-trips
    legacy = {cls.Config.RENAMED.get(key, key): value for key, value in legacy.items()}
    added = {key: value for key, value in upgraded.items() if key not in legacy}
    assert added == ADDED_SINCE.get(name, {})       # keys added since, at the values that mean what it meant
    assert build_model(name, saved).config == upgraded
