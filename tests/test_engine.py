"""fastad.engine: checkpoints (atomic, pickle-free, exact reload and resume), batch scoring,
metrics records, result writers, and the CLI end to end (train -> eval -> score) on the CPU."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

import fastad
from fastad import cli
from fastad.files import atomic_write
from fastad.engine import load_checkpoint, resume, train
from fastad.engine.evaluation import compute_metrics, format_table
from fastad.engine.results import mask_contour, output_name, overlay
from fastad.engine.batch_scoring import ScoredImages, score_dataset
from fastad.models import create_model

SIZE = 128
TINY = {"n_patches": 8, "n_pairs": 4, "stride": 32}


@pytest.fixture(scope="module")
def normal_images():
    train_set = fastad.data.open_dataset("builtin:brick", "train", size=SIZE)
    return torch.stack([train_set[i].image for i in range(4)])


def tiny_pedenet():
    torch.manual_seed(0)
    return create_model("pedenet", **TINY)


def test_checkpoint_reloads_bit_identical_scores(normal_images, tmp_path):
    model = tiny_pedenet()
    history = train(model, normal_images, steps=3, run_dir=tmp_path, data="builtin:brick", progress=False)
    assert [row["step"] for row in history] == [0, 1, 2]
    loaded = load_checkpoint(tmp_path)
    assert loaded.header["model"] == "pedenet" and loaded.header["config"]["stride"] == 32
    assert loaded.header["training"]["complete"] is True and loaded.header["data"] == "builtin:brick"
    assert not loaded.model.training
    assert loaded.model.memory_bank.bank.shape == model.memory_bank.bank.shape == (4 * 9, 64)
    before, after = model.score(normal_images[:2]), loaded.model.score(normal_images[:2])
    assert torch.equal(before.maps, after.maps) and torch.equal(before.image_scores, after.image_scores)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "pedenet" and config["training"]["steps"] == {"train": 3}
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:  # plain tensors, no pickle
        assert "model.memory_bank.bank" in set(f.keys())


def test_resume_continues_exactly_where_the_run_stopped(normal_images, tmp_path, monkeypatch):
    straight = tiny_pedenet()
    train(straight, normal_images, steps=4, run_dir=tmp_path / "a", checkpoint_every=2, progress=False)

    interrupted = tiny_pedenet()
    original = type(interrupted).training_loss
    calls = []

    def crash_at_step_3(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(type(interrupted), "training_loss", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, normal_images, steps=4, run_dir=tmp_path / "b", checkpoint_every=2, progress=False)
    monkeypatch.setattr(type(interrupted), "training_loss", original)
    assert load_checkpoint(tmp_path / "b").header["training"]["step"] == 2
    resumed, history = resume(tmp_path / "b", normal_images, progress=False)
    assert [row["step"] for row in history] == [0, 1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # a finished run resumes to itself
    again, _ = resume(tmp_path / "b", normal_images, progress=False)
    assert torch.equal(again.memory_bank.bank, resumed.memory_bank.bank)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "checkpoint.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(ValueError, match="not a fastad checkpoint"):
        load_checkpoint(tmp_path)


def test_non_finite_loss_stops_training(normal_images, monkeypatch):
    model = tiny_pedenet()
    monkeypatch.setattr(type(model), "training_loss", lambda self, *a: {"total": torch.tensor(float("nan"), requires_grad=True)})
    with pytest.raises(FloatingPointError, match="step 0"):
        train(model, normal_images, steps=2, progress=False)


def test_steps_argument_is_checked(normal_images):
    with pytest.raises(ValueError, match="steps"):
        train(tiny_pedenet(), normal_images, steps={"other": 3}, progress=False)


def test_score_dataset_matches_direct_scoring(normal_images):
    model = create_model("rawpixel")
    train(model, torch.stack([s.image for s in fastad.data.open_dataset("builtin:brick", "train")]), progress=False)
    test_set = fastad.data.open_dataset("builtin:brick", "test")
    seen = []
    scored = score_dataset(model.score, test_set, batch_size=6, num_workers=0, progress=False,
                           on_batch=lambda batch, result: seen.append(len(batch.paths)))
    assert seen == [6, 6, 6, 2] and len(scored.paths) == 20
    direct = model.score(torch.stack([test_set[i].image for i in range(20)]))
    torch.testing.assert_close(scored.maps, direct.maps)
    assert scored.labels.tolist() == test_set.labels()
    metrics = compute_metrics(scored)
    assert metrics["pixel_auroc"] > 0.6 and 0 <= metrics["aupro"] <= 1


def test_metrics_undefined_without_anomalies():
    scored = ScoredImages(torch.rand(3), torch.rand(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool),
                          torch.zeros(3, dtype=torch.long), ["a", "b", "c"], ["good"] * 3)
    assert compute_metrics(scored) == dict.fromkeys(("image_auroc", "pixel_auroc", "pixel_ap", "aupro"))
    assert "n/a" in format_table({"m": compute_metrics(scored)})


def test_overlay_and_names():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = True
    edge = mask_contour(mask)
    assert edge.sum() == 12 and not edge[3:5, 3:5].any()
    picture = overlay(torch.rand(3, 8, 8), torch.rand(8, 8), mask, (0.0, 1.0))
    assert picture.shape == (3, 8, 24) and picture.min() >= 0 and picture.max() <= 1
    assert torch.equal(picture[:, 2, 18], torch.tensor([0.0, 1.0, 0.0]))       # contour in green
    names = {output_name("/data/test/crack/000.png", 0), output_name("/data/test/hole/000.png", 1)}
    assert len(names) == 2


def test_cli_train_eval_score_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    settings = ["--set", "n_patches=16", "--set", "n_pairs=8", "--set", "stride=32"]
    assert cli.main(["train", "--model", "pedenet", "--data", "builtin:brick", "--out", str(run), "--steps", "3",
                     *settings]) == 0
    assert cli.main(["train", "--model", "pedenet", "--data", "builtin:brick", "--out", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"image_auroc", "pixel_auroc", "pixel_ap", "aupro", "model", "data", "n_images", "skipped"} <= set(record)
    assert record["model"] == "pedenet" and record["data"] == "builtin:brick" and record["n_images"] == 20
    assert record["pixel_auroc"] > 0.8
    assert json.loads((run / "results.json").read_text())["pixel_auroc"] == record["pixel_auroc"]

    images = tmp_path / "line"
    images.mkdir()
    test_set = fastad.data.open_dataset("builtin:brick", "test")
    for i in range(3):
        fastad.data.images.save_image(test_set[i].image, images / f"{i}.png")
    (images / "corrupt.png").write_bytes(b"not a png")
    assert cli.main(["score", "--checkpoint", str(run), "--images", str(images), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "corrupt.png" in captured.err and "1 skipped" in captured.out
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score" and len(rows) == 4
    maps = sorted((tmp_path / "out" / "maps").glob("*.npy"))
    assert len(maps) == 3 and np.load(maps[0]).shape == (256, 256)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 3
    assert all(math.isfinite(float(r.split(",")[1])) for r in rows[1:])


def test_demo_writes_results_with_baseline(tmp_path):
    from fastad import demo

    record = demo.run("builtin:brick", tmp_path, steps=1, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    for keys in (saved, saved["baseline"]):
        assert {"image_auroc", "pixel_auroc", "pixel_ap", "aupro", "model", "data", "n_images", "skipped"} <= set(keys)
    assert saved["baseline"]["model"] == "rawpixel" and saved["model"] == demo.DEFAULT_MODEL == "patchcore"
    assert record["pixel_auroc"] == saved["pixel_auroc"]
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 20


@pytest.mark.filterwarnings("ignore:PatchCore. no backbone weights")
@pytest.mark.parametrize("model_name", ["fcdd", "glance", "utad", "rawpixel", "patchcore"])
def test_cli_trains_and_evaluates_every_model(model_name, tmp_path, capsys):
    run = tmp_path / model_name
    faster = ["--set", "coreset_ratio=0.01"] if model_name == "patchcore" else []   # a 410-row bank, not 4096
    assert cli.main(["train", "--model", model_name, "--data", "builtin:gravel", "--out", str(run), "--steps", "1",
                     *faster]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == model_name and record["n_images"] == 20
    assert all(0.0 <= record[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"))
    assert ("iou" in record) == (model_name == "utad")
