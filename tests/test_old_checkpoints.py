"""Checkpoints written by an earlier fastad still load and score the same.

tests/fixtures/checkpoints/<model>/ holds a checkpoint of each registered model written with
fastad.engine.train by the code before the model layer was reorganised into one package per
model (commit 171766a; tests/fixtures/checkpoints/make_checkpoints.py), and expected.safetensors:
the probe images [2, 3, 64, 64] and the image_scores [2] and maps [2, 64, 64] that code gave.
UTAD's file lacks its frozen VGG-19 tensors (9 MB of a fixed seeded initialisation, vgg_weights
None): the test puts them back, bit for bit as that code wrote them, before loading.
"""
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastad.engine import load_checkpoint
from fastad.models import MODELS
from fastad.models.components.backbones import VGG19Features

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
NAMES = ("pedenet", "fcdd", "glance", "utad", "rawpixel")


def test_every_registered_model_has_a_fixture():
    assert set(NAMES) <= set(MODELS)


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
