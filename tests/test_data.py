"""fastad.data: the builtin texture dataset, MVTec and folder readers, specs, export and the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastad.data import (BuiltinDataset, FolderDataset, MVTecDataset, SkippedImageWarning, UnreadableImageError,
                         export_mvtec, load_image, load_mask, open_dataset, parse_spec, summarize)
from fastad.data.defects import DEFECTS

REPO = Path(__file__).resolve().parents[1]


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_builtin_is_deterministic_under_a_seed():
    a, b = BuiltinDataset("brick", "test", seed=3), BuiltinDataset("brick", "test", seed=3)
    assert a.boxes == b.boxes and a.defect_of == b.defect_of
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa.image, sb.image) and torch.equal(sa.mask, sb.mask) and sa.defect == sb.defect
    other = BuiltinDataset("brick", "test", seed=4)
    assert other.boxes != a.boxes


def test_builtin_train_and_test_come_from_disjoint_halves():
    train, test = BuiltinDataset("grass", "train"), BuiltinDataset("grass", "test")
    assert len(train) == 40 and len(test) == 20
    assert all(top + h <= 256 for top, _, h, _ in train.boxes)
    assert all(top >= 256 and top + h <= 512 for top, _, h, _ in test.boxes)
    assert all(left >= 0 and left + w <= 512 for _, left, _, w in train.boxes + test.boxes)
    sample = train[0]
    assert sample.image.shape == (3, 256, 256) and sample.image.dtype == torch.float32
    assert sample.mask.shape == (256, 256) and sample.mask.dtype == torch.bool and not sample.mask.any()
    assert 0 <= float(sample.image.min()) and float(sample.image.max()) <= 1 and sample.label == 0


@pytest.mark.parametrize("texture", ["brick", "gravel"])
def test_builtin_half_defective_every_type_exact_masks(texture):
    test = BuiltinDataset(texture, "test", seed=1)
    samples = [test[i] for i in range(len(test))]
    assert sum(s.label for s in samples) == len(test) // 2
    assert {s.defect for s in samples if s.label} == set(DEFECTS)
    for i, s in enumerate(samples):
        clean = test.clean_image(i)
        changed = (s.image != clean).any(0)
        assert not (changed & ~s.mask).any(), f"{s.defect}: pixels outside the mask changed"
        if s.label:
            assert s.mask.sum() >= 50 and (changed & s.mask).sum() >= 0.95 * s.mask.sum(), s.defect
        else:
            assert s.defect == "good" and not s.mask.any() and torch.equal(s.image, clean)


def test_export_then_mvtec_reader_round_trip(tmp_path):
    result = export_mvtec("builtin:brick", tmp_path, seed=2)
    assert result["train"] == 40 and result["test"] == 20 and result["anomalous"] == 10 and result["skipped"] == []
    assert not list(tmp_path.rglob("*.tmp"))
    root = tmp_path / "brick"
    assert (root / "train/good/000.png").is_file() and (root / "ground_truth/scratch/000_mask.png").is_file()
    mask_values = np.unique(np.asarray(Image.open(root / "ground_truth/hole/000_mask.png")))
    assert set(mask_values.tolist()) == {0, 255}
    for split in ("train", "test"):
        source, read = BuiltinDataset("brick", split, seed=2), MVTecDataset(tmp_path, "brick", split)
        assert len(read) == len(source) and read.skipped == []
        by_defect = {}
        for i in range(len(source)):
            by_defect.setdefault(source.defect_of[i], []).append(source[i])
        read_by_defect = {}
        for j in range(len(read)):
            s = read[j]
            read_by_defect.setdefault(s.defect, []).append(s)
        assert by_defect.keys() == read_by_defect.keys()
        for defect, originals in by_defect.items():
            for original, back in zip(originals, read_by_defect[defect]):
                assert (original.image - back.image).abs().max() <= 0.5 / 255 + 1e-6
                assert torch.equal(original.mask, back.mask) and back.label == original.label
    with pytest.raises(FileExistsError, match="brick"):
        export_mvtec("builtin:brick", tmp_path)


def test_corrupt_png_is_reported_by_path_and_skipped(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cat"
    for i in range(3):
        _png(root / "train/good" / f"{i:03d}.png", rng.integers(0, 255, (40, 50, 3)))
    bad = root / "train/good/001.png"
    bad.write_bytes(os.urandom(500))
    truncated = root / "train/good/002.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    _png(root / "test/good/000.png", rng.integers(0, 255, (40, 50)))
    _png(root / "test/crack/000.png", rng.integers(0, 255, (40, 50)))
    _png(root / "ground_truth/crack/000_mask.png", np.where(np.arange(50) < 10, 255, 0)[None].repeat(40, 0))
    _png(root / "test/crack/001.png", rng.integers(0, 255, (40, 50)))  # no mask
    with pytest.warns(SkippedImageWarning) as record:
        train = MVTecDataset(tmp_path, "cat", "train", size=32)
    assert [str(bad) in str(w.message) for w in record] == [True, False]
    assert str(truncated) in str(record[1].message)
    assert [p for p, _ in train.skipped] == [str(bad), str(truncated)] and len(train) == 1
    assert train[0].image.shape == (3, 32, 32) and train[0].path.endswith("000.png")
    assert "1 images" in summarize(train) and "2 skipped" in summarize(train)
    with pytest.warns(SkippedImageWarning, match="mask"):
        test = MVTecDataset(tmp_path, "cat", "test", size=None)
    assert len(test) == 2 and test.skipped[0][0].endswith("crack/001.png")
    crack = next(test[i] for i in range(2) if test[i].defect == "crack")
    assert crack.label == 1 and crack.image.shape == (3, 40, 50) and int(crack.mask.sum()) == 400
    with pytest.raises(UnreadableImageError, match="001.png"):
        load_image(bad)


def test_folder_reader_with_and_without_masks(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(2):
        _png(tmp_path / "normal" / f"n{i}.png", rng.integers(0, 255, (30, 30, 3)))
    for name in ("a", "b", "c"):
        _png(tmp_path / "test" / f"{name}.png", rng.integers(0, 255, (30, 30)))
    square = np.zeros((30, 30)); square[5:10, 5:10] = 255
    _png(tmp_path / "masks/a_mask.png", square)
    _png(tmp_path / "masks/b.png", np.zeros((30, 30)))
    (tmp_path / "test/notes.txt").write_text("not an image")
    train = FolderDataset(tmp_path / "normal", tmp_path / "test", "train", size=16)
    assert len(train) == 2 and all(train[i].label == 0 and train[i].image.shape == (3, 16, 16) for i in range(2))
    test = FolderDataset(tmp_path / "normal", tmp_path / "test", "test", masks_dir=tmp_path / "masks", size=None)
    samples = {Path(test[i].path).stem: test[i] for i in range(len(test))}
    assert samples["a"].label == 1 and samples["a"].defect == "defect" and int(samples["a"].mask.sum()) == 25
    assert samples["b"].label == 0 and samples["c"].label == 0 and not samples["c"].mask.any()
    assert test.labels() == [1, 0, 0]
    unlabelled = FolderDataset(tmp_path / "normal", tmp_path / "test", "test")
    assert unlabelled.labels() == [-1, -1, -1] and unlabelled[0].defect == "unknown"
    spec = f"folder:normal={tmp_path / 'normal'},test={tmp_path / 'test'},masks={tmp_path / 'masks'}"
    assert len(open_dataset(spec, "test")) == 3
    result = export_mvtec(spec, tmp_path / "out", size=16)
    assert result["defects"] == {"defect": 1, "good": 2}
    with pytest.raises(ValueError, match="unlabelled"):
        export_mvtec(f"folder:normal={tmp_path / 'normal'},test={tmp_path / 'test'}", tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="masks_dir"):
        FolderDataset(tmp_path / "normal", tmp_path / "test", "test", masks_dir=tmp_path / "nowhere")


def test_load_mask_binarises_and_resizes_nearest(tmp_path):
    values = np.array([[0, 127], [128, 255]])
    _png(tmp_path / "m.png", values)
    assert load_mask(tmp_path / "m.png", None).tolist() == [[False, False], [True, True]]
    assert load_mask(tmp_path / "m.png", 4).tolist()[0] == [False, False, False, False]


@pytest.mark.parametrize("spec, message", [
    ("brick", "spec must be"),
    ("builtin:", "spec must be"),
    ("builtin:marble", "builtin texture must be one of"),
    ("mnist:x", "spec kind must be builtin, mvtec or folder"),
    ("folder:normal=a", "needs test=DIR"),
    ("folder:normal=a,test=b,extra=c", "normal=DIR, test=DIR or masks=DIR"),
    ("folder:normal=a,normal=b,test=c", "twice"),
])
def test_spec_errors_say_what_was_expected(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_spec_parsing():
    assert parse_spec("builtin:gravel") == ("builtin", {"texture": "gravel"})
    assert parse_spec("mvtec:/data/mvtec/bottle/") == ("mvtec", {"root": "/data/mvtec", "category": "bottle"})
    assert parse_spec("folder:test=t,normal=n") == ("folder", {"masks_dir": None, "test_dir": "t", "normal_dir": "n"})
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset("builtin:brick", "val")
    with pytest.raises(ValueError, match="size must be"):
        open_dataset("builtin:brick", "train", size=0)


def test_cli_data_export(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "fastad", "data", "export", "builtin:brick", str(tmp_path), "--size", "64"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "40 train, 20 test" in done.stdout and "0 skipped" in done.stdout
    read = open_dataset(f"mvtec:{tmp_path}/brick", "test", size=64)
    assert len(read) == 20 and sum(read.labels()) == 10 and read[0].image.shape == (3, 64, 64)
