"""The wider builtin benchmark (wide:<texture>), the val split and the subtle defect families."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastad.data import defects, open_dataset, parse_spec
from fastad.data.builtin import WIDE_TEXTURES, BuiltinDataset, WideDataset, load_wide_photo
from fastad.data.spec import FORMS


def _overlap(a, b) -> bool:
    (t1, l1, h1, w1), (t2, l2, h2, w2) = a, b
    return t1 < t2 + h2 and t2 < t1 + h1 and l1 < l2 + w2 and l2 < l1 + w1


@pytest.mark.parametrize("name", defects.SUBTLE_DEFECTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_subtle_defect_changes_only_its_mask(name, channels):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 96, 80, generator=gen)
    image = image[:1].expand(3, -1, -1).contiguous() if channels == 1 else image
    for seed in range(6):
        out, mask = getattr(defects, name)(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == image.dtype and mask.shape == (96, 80)
        assert mask.dtype == torch.bool and 0 < int(mask.sum()) < mask.numel() // 3
        assert torch.equal(out[:, ~mask], image[:, ~mask])
        changed = (out != image).any(0)[mask].float().mean()
        assert changed > 0.5, f"{name} left {1 - changed:.0%} of its mask unchanged"
        assert 0 <= float(out.min()) and float(out.max()) <= 1
        again, mask2 = getattr(defects, name)(image, np.random.default_rng(seed))
        assert torch.equal(again, out) and torch.equal(mask2, mask)


def test_subtle_defects_keep_local_brightness_where_they_claim_to():
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1))
    for name in ("local_blur", "smooth_fill", "contrast_loss"):
        out, mask = getattr(defects, name)(image, np.random.default_rng(3))
        assert abs(float(out[:, mask].mean() - image[:, mask].mean())) < 0.05, name
        assert float(out[:, mask].std()) < float(image[:, mask].std()), name
    out, mask = defects.faint_scratch(image, np.random.default_rng(4))
    step = (out - image)[:, mask].abs()
    assert float(step.max()) <= 0.12 + 1e-6


def test_family_lists_are_one_source():
    assert defects.WIDE_DEFECTS == defects.DEFECTS + defects.SUBTLE_DEFECTS
    assert len(set(defects.WIDE_DEFECTS)) == 12
    assert all(callable(getattr(defects, name)) for name in defects.WIDE_DEFECTS)
    assert "wide:<texture>" in FORMS


@pytest.mark.parametrize("texture", WIDE_TEXTURES)
def test_wide_splits_never_share_pixels(texture):
    train, val, test = (WideDataset(texture, split) for split in ("train", "val", "test"))
    _, h, w = load_wide_photo(texture).shape
    assert (len(train), len(val), len(test)) == (40, 24, 48)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not any(_overlap(x, y) for x in a.boxes for y in b.boxes), (a.split, b.split)
    assert all(t + 128 <= h // 2 for t, _, _, _ in train.boxes + val.boxes)
    assert all(t >= h // 2 and t + 128 <= h and l + 128 <= w for t, l, _, _ in test.boxes)
    assert train.labels() == [0] * 40
    for ds in (val, test):
        bad = [d for d in ds.defect_of if d != "good"]
        assert len(bad) == len(ds) // 2 and set(bad) == set(defects.WIDE_DEFECTS)


@pytest.mark.parametrize("texture", ["tissue", "coins"])
def test_wide_samples_have_exact_masks_and_are_deterministic(texture):
    ds, again = open_dataset(f"wide:{texture}", "val", size=96, seed=1), WideDataset(texture, "val", 1, 96)
    assert isinstance(ds, WideDataset)
    for i in range(len(ds)):
        sample, clean = ds[i], ds.clean_image(i)
        assert sample.image.shape == (3, 96, 96) and sample.mask.shape == (96, 96)
        assert torch.equal(sample.image[:, ~sample.mask], clean[:, ~sample.mask])
        assert bool(sample.mask.any()) == (sample.defect != "good") == (sample.label == 1)
        assert sample.path == f"wide:{texture}/val/{i:03d}"
        assert torch.equal(again[i].image, sample.image)
    if texture == "tissue":  # a colour photo stays colour
        assert not torch.equal(ds[0].image[0], ds[0].image[1])
    assert WideDataset(texture, "val", seed=2).boxes != ds.boxes


def test_builtin_spec_stays_frozen_without_val():
    with pytest.raises(ValueError, match="split must be one of"):
        BuiltinDataset("brick", "val")
    wide, old = WideDataset("brick", "train"), BuiltinDataset("brick", "train")
    assert all(left + 128 <= 512 - 192 for _, left, _, _ in wide.boxes)
    assert old.families == defects.DEFECTS and wide.families == defects.WIDE_DEFECTS


def test_wide_spec_and_bad_arguments():
    assert parse_spec("wide:moon") == ("wide", {"texture": "moon"})
    with pytest.raises(ValueError, match="wide texture must be one of"):
        parse_spec("wide:marble")
    with pytest.raises(ValueError, match="builtin texture must be one of"):
        parse_spec("builtin:moon")
    with pytest.raises(ValueError, match="split must be one of"):
        WideDataset("moon", "validation")
    with pytest.raises(ValueError, match="crop must be at most 151 for wide:coins"):
        WideDataset("coins", "train", crop=160)
    with pytest.raises(ValueError, match="n_val must be an int >= 2"):
        WideDataset("moon", "val", n_val=1)
    with pytest.raises(ValueError, match="texture must be one of"):
        load_wide_photo("marble")
