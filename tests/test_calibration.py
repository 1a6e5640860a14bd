"""A pass/fail decision a line can act on: the threshold at a false-reject rate, set on normal
images (fastad calibrate, or fastad train --calibration-holdout), stored in the checkpoint, and
used by score (verdict column, AnomalyResult.verdict) and eval (false-reject and miss rates)."""
import json
import warnings

import pytest
import torch
from safetensors import safe_open

import fastad
from fastad import cli
from fastad.engine import train
from fastad.engine.decision import MIN_IMAGES, calibrated_threshold, decision_rates, threshold_at
from fastad.engine.checkpoint import read_header
from fastad.engine.pipeline import load_normal_images, split_holdout
from fastad.models import create_model
from conftest import scoring_fails_on_call, train_rawpixel_run, write_gravel_pngs

BATCH = 2


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    """Twelve normal builtin gravel crops (training split, not the three trained on) as PNGs."""
    return write_gravel_pngs(tmp_path_factory.mktemp("normals"), "train", range(10, 22))


@pytest.fixture(scope="module")
def line_images(tmp_path_factory):
    """Eight builtin gravel test crops (normal and defective) as PNGs."""
    return write_gravel_pngs(tmp_path_factory.mktemp("line"), "test", range(8))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, normals):
    run = train_rawpixel_run(tmp_path_factory.mktemp("calibrated"))
    assert cli.main(["--threads", "1", "calibrate", "--checkpoint", str(run), "--images", str(normals),
                     "--false-reject", "0.1", "--batch-size", str(BATCH)]) == 0
    return run


def test_threshold_is_the_smallest_with_at_most_the_rate_above():
    scores = torch.arange(1.0, 21.0)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert threshold_at(scores, 0.1) == 18.0  # floor(0.1 * 20) = 2 above: 19 and 20
    assert threshold_at(scores, 0.149) == 18.0
    assert threshold_at(scores, 0.15) == 17.0
    tied = torch.tensor([1.0] * 8 + [5.0, 5.0, 5.0, 9.0])
    assert threshold_at(tied, 0.1) == 5.0  # one allowed above: only 9.0 is
    assert threshold_at(tied, 0.25) == 5.0  # three allowed, but 5.0 is tied three times
    assert threshold_at(tied, 0.34) == 1.0  # four allowed above


def test_too_few_images_are_refused_and_an_unresolvable_rate_warns():
    with pytest.raises(ValueError, match=f"at least {MIN_IMAGES} normal images"):
        threshold_at(torch.rand(MIN_IMAGES - 1), 0.1)
    with pytest.warns(UserWarning, match="cannot resolve a false-reject rate of 0.01"):
        assert threshold_at(torch.arange(12.0), 0.01) == 11.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threshold_at(torch.arange(12.0), 0.1)
    for bad in (0, 1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="false_reject must be a number in"):
            threshold_at(torch.arange(12.0), bad)
    with pytest.raises(ValueError, match="finite"):
        threshold_at(torch.tensor([float("nan")] + [0.0] * 11), 0.1)


def test_calibrate_stores_the_threshold_of_the_normal_scores_and_keeps_every_tensor(calibrated, normals, tmp_path):
    record = read_header(calibrated)["calibration"]
    scores = fastad.Scorer(train_rawpixel_run(tmp_path / "fresh"), batch_size=BATCH).score_folder(normals, progress=False)
    assert record["threshold"] == threshold_at(scores.image_scores, 0.1)
    assert record["n_images"] == 12 and record["false_reject"] == 0.1 and record["image_score"] == "max"
    assert record["observed_false_reject"] == pytest.approx(1 / 12)
    assert json.loads((calibrated / "config.json").read_text())["calibration"] == record
    with safe_open(str(calibrated / "checkpoint.safetensors"), "pt") as f, \
            safe_open(str(tmp_path / "fresh" / "checkpoint.safetensors"), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())


def test_verdicts_in_scores_csv_and_anomaly_result(calibrated, line_images, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["--threads", "1", "score", "--checkpoint", str(calibrated), "--images", str(line_images),
                     "--out", str(out), "--batch-size", str(BATCH), "--workers", "0", "--no-overlays"]) == 0
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,score,verdict"
    threshold = read_header(calibrated)["calibration"]["threshold"]
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 8 and {v for _, _, v in rows} <= {"ok", "defect"}
    assert all(v == ("defect" if float(s) > threshold else "ok") for _, s, v in rows)
    images = torch.stack([fastad.data.load_image(line_images / f"{i:02d}.png", 48) for i in range(8)])
    result = fastad.Scorer(calibrated).score(images)
    assert result.verdict == ["defect" if s > threshold else "ok" for s in result.image_scores.tolist()]
    assert fastad.Scorer(train_rawpixel_run(tmp_path / "plain")).score(images).verdict is None


def test_a_calibrated_score_resumes_bit_for_bit(calibrated, line_images, tmp_path, monkeypatch, capsys):
    def score(out):
        return cli.main(["--threads", "1", "score", "--checkpoint", str(calibrated), "--images", str(line_images),
                         "--out", str(out), "--batch-size", str(BATCH), "--workers", "0", "--no-overlays"])

    reference, out = tmp_path / "reference", tmp_path / "out"
    assert score(reference) == 0
    with scoring_fails_on_call(monkeypatch, 3):
        assert score(out) == 1
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 2 * BATCH
    capsys.readouterr()
    assert score(out) == 0
    assert "4 already done" in capsys.readouterr().out
    assert (out / "scores.csv").read_bytes() == (reference / "scores.csv").read_bytes()


def test_train_holdout_calibrates_and_eval_reports_the_decision_rates(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["--threads", "1", "train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", str(run),
                     "--set", "stride=32", "--calibration-holdout", "0.25", "--false-reject", "0.1"]) == 0
    assert "image-score threshold" in capsys.readouterr().out
    header = read_header(run)
    record = header["calibration"]
    assert record["n_images"] == 10 and header["calibration_holdout"]["fraction"] == 0.25
    images = load_normal_images("builtin:gravel", 256)[0]
    kept, held = split_holdout(images, 0.25, 0)
    assert kept.shape[0] == 30 and held.shape[0] == 10
    assert record["threshold"] == threshold_at(fastad.Scorer(run).score(held).image_scores, 0.1)
    bank = fastad.engine.load_checkpoint(run).model.memory_bank.bank
    assert bank.shape[0] == 30 * 49  # trained on the 30 kept images only (7 x 7 patches at stride 32)
    assert cli.main(["--threads", "1", "eval", "--checkpoint", str(run), "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)["decision"]
    test_set = fastad.data.open_dataset("builtin:gravel", "test", size=256)
    scored = fastad.Scorer(run).score_dataset(test_set, progress=False)
    assert decision == decision_rates(scored.image_scores, scored.labels, record["threshold"])
    assert decision["false_reject"] is not None and decision["miss_rate"] is not None


def test_decision_rates_count_above_as_rejected():
    scores, labels = torch.tensor([0.1, 0.5, 0.9, 0.4, 0.6, 2.0]), torch.tensor([0, 0, 0, 1, 1, -1])
    assert decision_rates(scores, labels, 0.5) == {"threshold": 0.5, "false_reject": pytest.approx(1 / 3),
                                                   "miss_rate": 0.5}
    assert decision_rates(scores[:3], labels[:3], 0.5)["miss_rate"] is None


def test_bad_calibration_input_is_one_clear_error(tmp_path, normals, capsys):
    run = train_rawpixel_run(tmp_path / "run")
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(normals.iterdir())[:MIN_IMAGES - 1]:
        (few / path.name).write_bytes(path.read_bytes())
    assert cli.main(["calibrate", "--checkpoint", str(run), "--images", str(few)]) == 1
    assert f"at least {MIN_IMAGES} normal images, got {MIN_IMAGES - 1}" in capsys.readouterr().err
    assert "calibration" not in read_header(run)
    assert cli.main(["calibrate", "--checkpoint", str(tmp_path / "typo"), "--images", str(normals)]) == 1
    assert "found nothing at" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    with pytest.raises(ValueError, match="calibration_holdout 0.1 of 40 normal images holds out 4"):
        split_holdout(torch.zeros(40, 3, 4, 4), 0.1, 0)
    with pytest.raises(ValueError, match="finite number 'threshold'"):
        calibrated_threshold({"calibration": {"threshold": "high"}})
    assert calibrated_threshold({}) is None


def test_image_score_setting_picks_the_rule_and_old_checkpoints_keep_max(tmp_path):
    from fastad.engine.checkpoint import model_from_state
    from fastad.metrics.image_score import image_score

    images = torch.stack([fastad.data.open_dataset("builtin:gravel", "test", size=64)[i].image for i in range(4)])
    train_images = torch.stack([fastad.data.open_dataset("builtin:gravel", "train", size=64)[i].image
                                for i in range(3)])
    plain = create_model("rawpixel")
    train(plain, train_images, progress=False)
    result = plain.score(images)
    assert torch.equal(result.image_scores, result.maps.flatten(1).amax(1))
    smoothed = model_from_state("rawpixel", {"image_score": "smooth_top1"}, plain.state_dict())
    assert torch.allclose(smoothed.score(images).image_scores, image_score(result.maps, "smooth_top1"))
    with pytest.raises(ValueError, match="image_score must be one of"):
        create_model("rawpixel", image_score="norm_max")  # needs reference maps: a study rule only
    legacy = {k: v for k, v in plain.config.items() if k != "image_score"}
    assert model_from_state("rawpixel", legacy, plain.state_dict()).config["image_score"] == "max"
