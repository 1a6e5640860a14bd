"""Scoring that cannot be fooled: a replaced image is scored again, images read as a viewer shows
them, any file name round-trips, the lock dies with its run, --overwrite removes only a run's own
files, a flipped bit in a checkpoint is refused, and mistakes give a reason and the right exit."""
import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image

import fastad
from fastad import cli
from fastad.data.images import UnreadableImageError, list_entries, load_image
from fastad.engine import load_checkpoint
from conftest import scoring_fails_on_call, train_rawpixel_run, write_gravel_pngs

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_rawpixel_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    return write_gravel_pngs(tmp_path_factory.mktemp("good"), "test", range(6))


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in sorted(source.iterdir()):
        (target / path.name).write_bytes(path.read_bytes())
    return target


def score(run_dir, images, out, *extra):
    return cli.main(["--threads", "1", "score", "--checkpoint", str(run_dir), "--images", str(images), "--out",
                     str(out), "--batch-size", str(BATCH), "--workers", "0", *extra])


def run_cli(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def csv_rows(out) -> list[list[str]]:
    with open(Path(out) / "scores.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))[1:]


def same_results(out, reference) -> None:
    assert (out / "scores.csv").read_bytes() == (reference / "scores.csv").read_bytes()
    names = sorted(os.listdir(reference / "maps"))
    assert sorted(os.listdir(out / "maps")) == names
    for name in names:
        assert np.array_equal(np.load(out / "maps" / name), np.load(reference / "maps" / name)), name


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_sbit(path: Path, sbit: bytes) -> None:
    raw = path.read_bytes()
    end = 8 + 8 + 13 + 4
    path.write_bytes(raw[:end] + png_chunk(b"sBIT", sbit) + raw[end:])


# --- 1. resume trusts content, not names -------------------------------------------------------

def test_a_replaced_image_is_scored_again_not_read_back(run_dir, good_images, tmp_path, capsys):
    folder = copy_folder(good_images, tmp_path / "line")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert score(run_dir, folder, out, "--no-overlays") == 0
    target = folder / "03.png"
    stat = target.stat()
    write_gravel_pngs(tmp_path, "test", [7])  # another picture, under the same name, same times
    os.replace(tmp_path / "00.png", target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert score(run_dir, folder, out, "--no-overlays") == 0
    captured = capsys.readouterr()
    assert "03.png" in captured.err and "changed" in captured.err
    assert score(run_dir, folder, fresh, "--no-overlays") == 0
    same_results(out, fresh)


def test_a_batch_cut_short_is_scored_again(run_dir, good_images, tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert score(run_dir, good_images, reference, "--no-overlays") == 0
    assert score(run_dir, good_images, out, "--no-overlays") == 0
    raw = (out / "scores.csv").read_bytes()
    (out / "scores.csv").write_bytes(raw[:raw.rstrip(b"\r\n").rfind(b"\r\n") + 2])  # the last batch's 2nd row lost
    capsys.readouterr()
    assert score(run_dir, good_images, out, "--no-overlays") == 0
    assert "cut short" in capsys.readouterr().err
    same_results(out, reference)


def test_the_same_folder_by_a_relative_path_resumes(run_dir, good_images, tmp_path, monkeypatch, capsys):
    folder = copy_folder(good_images, tmp_path / "line")
    monkeypatch.chdir(tmp_path)
    assert score(run_dir, "line", tmp_path / "out", "--no-overlays") == 0
    capsys.readouterr()
    assert score(run_dir, folder, tmp_path / "out", "--no-overlays") == 0
    assert "6 already done" in capsys.readouterr().out


# --- 2. and 7. images as a viewer shows them ---------------------------------------------------

def rgb(seed: int, shape=(30, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.uint8)


@pytest.mark.parametrize("orientation, shown", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                                (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, shown):
    stored = rgb(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "tagged.png", exif=exif)
    expected = torch.from_numpy(shown(stored).astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(load_image(tmp_path / "tagged.png", None), expected)
    Image.fromarray(stored).save(tmp_path / "tagged.jpg", exif=exif, quality=95)
    Image.fromarray(np.ascontiguousarray(shown(stored))).save(tmp_path / "upright.jpg", quality=95)
    sideways = load_image(tmp_path / "tagged.jpg", None)
    assert sideways.shape == expected.shape
    assert (sideways - load_image(tmp_path / "upright.jpg", None)).abs().mean() < 0.05


def png16(path: Path, values: np.ndarray, alpha: bool = False) -> None:
    """values [H, W, C] uint16 as a 16-bit colour PNG (C = 3, or 4 with alpha)."""
    height, width, channels = values.shape
    writer = png.Writer(width, height, greyscale=False, alpha=alpha, bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, values.reshape(height, width * channels).tolist())


def test_colour_images_deeper_than_8_bits_read_by_their_range(tmp_path):
    colour = rgb(1)
    Image.fromarray(colour).save(tmp_path / "rgb8.png")
    reference = load_image(tmp_path / "rgb8.png", None)
    wide = colour.astype(np.uint16)
    png16(tmp_path / "rgb16.png", wide * 257)
    png16(tmp_path / "low12.png", (wide.astype(np.int64) * 4095 // 255).astype(np.uint16))
    with_sbit(tmp_path / "low12.png", bytes([12, 12, 12]))
    png16(tmp_path / "high12.png", ((wide.astype(np.int64) * 4095 // 255) << 4).astype(np.uint16))
    with_sbit(tmp_path / "high12.png", bytes([12, 12, 12]))
    png16(tmp_path / "rgba16.png", np.concatenate([wide * 257, np.full((*wide.shape[:2], 1), 1234, np.uint16)], 2),
          alpha=True)
    tifffile.imwrite(tmp_path / "rgb16.tiff", wide * 257, photometric="rgb")
    for name, tolerance in (("rgb16.png", 1e-6), ("low12.png", 5e-4), ("high12.png", 5e-4), ("rgba16.png", 1e-6),
                            ("rgb16.tiff", 1e-6)):
        image = load_image(tmp_path / name, None)
        assert image.shape == (3, 30, 40) and image.dtype == torch.float32, name
        assert (image - reference).abs().max() <= tolerance, f"{name}: {(image - reference).abs().max()}"
    assert torch.allclose(load_image(tmp_path / "rgb16.png", 64), load_image(tmp_path / "rgb8.png", 64),
                          atol=1 / 255 + 1e-6)


def test_folder_entries_that_are_not_images_are_listed_with_a_reason(tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    Image.fromarray(rgb(0)).save(folder / "a.png")
    Image.fromarray(rgb(0)).save(folder / "b.gif")
    (folder / "sub").mkdir()
    (folder / "dead.png").symlink_to(tmp_path / "nowhere.png")
    images, ignored = list_entries(folder)
    assert [p.name for p in images] == ["a.png"]
    reasons = {Path(p).name: why for p, why in ignored}
    assert sorted(reasons) == ["b.gif", "dead.png", "sub"]
    assert "folder" in reasons["sub"] and "link" in reasons["dead.png"] and ".gif" in reasons["b.gif"]


# --- 3. any file name round-trips --------------------------------------------------------------

ODD_NAMES = ["line\nbreak.png", "para\u2028sep.png", "carriage\rreturn.png", 'quote"d.png', "com,ma.png",
             "next\x85line.png", "sp ace.png", os.fsdecode(b"caf\xe9-latin1.png")]


def test_any_file_name_round_trips_through_scores_maps_and_resume(run_dir, good_images, tmp_path, monkeypatch,
                                                                  capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    sources = sorted(good_images.iterdir())
    try:
        for name, source in zip(ODD_NAMES, sources + sources):
            (folder / name).write_bytes(source.read_bytes())
    except (OSError, UnicodeEncodeError) as error:
        pytest.skip(f"this file system refuses such names: {error}")
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert score(run_dir, folder, reference) == 0
    rows = csv_rows(reference)
    assert sorted(Path(row[0]).name for row in rows) == sorted(ODD_NAMES)
    assert len(os.listdir(reference / "maps")) == len(ODD_NAMES) == len(os.listdir(reference / "overlays"))
    with scoring_fails_on_call(monkeypatch, 3):
        assert score(run_dir, folder, out) == 1
    capsys.readouterr()
    assert score(run_dir, folder, out) == 0
    assert "4 already done" in capsys.readouterr().out
    same_results(out, reference)
    assert score(run_dir, folder, out) == 0  # a finished run read back again
    assert f"{len(ODD_NAMES)} already done" in capsys.readouterr().out


# --- 4. the lock dies with its run -------------------------------------------------------------

SLOW_SCORER = """
import sys, time
from fastad.engine import scorer
score = scorer.Scorer.score
def slow(self, images):
    time.sleep(0.5)
    return score(self, images)
scorer.Scorer.score = slow
from fastad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_restart_right_after_kill_9_gets_the_lock(run_dir, good_images, tmp_path, capsys):
    out = tmp_path / "out"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCORER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(script), "--threads", "1", "score", "--checkpoint", str(run_dir), "--images",
               str(good_images), "--out", str(out), "--batch-size", "1", "--workers", "2", "--no-overlays"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "scores.csv").is_file() and len((out / "scores.csv").read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    capsys.readouterr()
    assert score(run_dir, good_images, out, "--no-overlays", "--batch-size", "1") == 0, capsys.readouterr().err
    assert len(csv_rows(out)) == 6


# --- 5. --overwrite removes only what a run recorded as its own --------------------------------

def test_overwrite_keeps_files_no_fastad_run_recorded(run_dir, good_images, tmp_path, capsys):
    out = tmp_path / "mine"
    for name in ("maps", "overlays", "parts"):
        (out / name).mkdir(parents=True)
        (out / name / "precious.txt").write_text("mine")
    assert score(run_dir, good_images, out, "--overwrite") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maps" in err and "run.json" in err
    assert all((out / name / "precious.txt").read_text() == "mine" for name in ("maps", "overlays", "parts"))
    run = tmp_path / "run"
    run.mkdir()
    for path in run_dir.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    assert run_cli(["eval", "--checkpoint", str(run), "--data", "builtin:gravel", "--overlays"]) == 0
    pictures = sorted(os.listdir(run / "overlays"))
    assert pictures
    assert score(run_dir, good_images, run, "--overwrite") == 1
    assert sorted(os.listdir(run / "overlays")) == pictures
    scored = tmp_path / "scored"
    assert score(run_dir, good_images, scored, "--no-overlays") == 0
    (scored / "overlays").mkdir()
    (scored / "overlays" / "notes.txt").write_text("mine")
    recorded = json.loads((scored / "run.json").read_text())["owns"]
    assert "scores.csv" in recorded and "maps" in recorded
    assert score(run_dir, good_images, scored, "--overwrite", "--batch-size", "3") == 1  # would write into it
    assert score(run_dir, good_images, scored, "--overwrite", "--batch-size", "3", "--no-overlays") == 0
    assert (scored / "overlays" / "notes.txt").read_text() == "mine" and len(csv_rows(scored)) == 6


# --- 6. a checkpoint that proves itself ----------------------------------------------------------

def test_one_flipped_bit_anywhere_in_a_checkpoint_is_refused(run_dir, tmp_path):
    raw = bytearray((run_dir / "checkpoint.safetensors").read_bytes())
    header_end = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, header_end, 60).tolist()) | set(rng.integers(header_end, len(raw), 40)
                                                                            .tolist()) | {len(raw) - 1, header_end})
    path = tmp_path / "flipped.safetensors"
    for position in positions:
        bit = 1 << int(rng.integers(0, 8))
        flipped = bytearray(raw)
        flipped[position] ^= bit
        path.write_bytes(bytes(flipped))
        with pytest.raises((ValueError, FileNotFoundError)) as raised:
            load_checkpoint(path)
        message = str(raised.value)
        assert str(path) in message and "\n" not in message, (position, message)
        if position >= header_end:
            assert ("model.memory_bank.bank" in message or "generator" in message) and "digest" in message, message


def test_an_old_checkpoint_without_digests_loads_and_says_so(run_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as f:
        header = json.loads(f.metadata()["fastad"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = {k: v for k, v in header.items() if k not in ("tensor_digests", "header_digest")}
    header["format"] = 1
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"fastad": json.dumps(header)})
    with pytest.warns(UserWarning, match="no digest"):
        loaded = load_checkpoint(tmp_path / "old.safetensors")
    assert loaded.verified is False and load_checkpoint(run_dir).verified is True
    assert torch.equal(loaded.model.memory_bank.bank, load_checkpoint(run_dir).model.memory_bank.bank)


# --- 8. and 9. no footguns, an exit code automation can trust -----------------------------------

def test_a_count_of_one_where_a_fraction_is_meant_is_refused(tmp_path, capsys):
    argv = ["train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", str(tmp_path / "r"), "--set",
            "coreset=1"]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "coreset" in err and "1.0" in err and len(err.splitlines()) == 1


def test_float_images_outside_0_1_are_refused(run_dir):
    scorer = fastad.Scorer(run_dir)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        scorer.score(torch.rand(1, 3, 64, 64) * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scorer.score(torch.full((1, 3, 64, 64), float("nan")))
    assert scorer.score(torch.rand(1, 3, 64, 64)).image_scores.shape == (1,)


def test_nothing_scored_is_a_failure_with_the_reason(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    ignored = tmp_path / "ignored"
    ignored.mkdir()
    Image.fromarray(rgb(0)).save(ignored / "a.gif")
    (ignored / "sub").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.png").write_bytes(b"not a png")
    for folder, reason in ((empty, "empty"), (ignored, "2 ignored"), (broken, "2 unreadable")):
        assert score(run_dir, folder, tmp_path / f"out_{folder.name}") == 1, folder
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "no image" in err and str(folder) in err and reason in err, err


def test_ignored_entries_are_counted_in_the_summary(run_dir, good_images, tmp_path, capsys):
    folder = copy_folder(good_images, tmp_path / "line")
    Image.fromarray(rgb(0)).save(folder / "z.gif")
    assert score(run_dir, folder, tmp_path / "out", "--no-overlays") == 0
    assert "1 ignored" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [["--workers", "-1"], ["--device", "nonsense"], ["--precision", "fp16"],
                                   ["--cuda-graphs"]])
def test_command_line_mistakes_exit_2(run_dir, good_images, tmp_path, capsys, extra):
    assert run_cli(["score", "--checkpoint", str(run_dir), "--images", str(good_images), "--out",
                    str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and extra[0] in err, err


def test_train_mistakes_exit_2(tmp_path, capsys):
    for extra in (["--steps", "-3"], ["--steps", "2.5"], ["--device", "nonsense"]):
        argv = ["train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", str(tmp_path / "r"), *extra]
        assert run_cli(argv) == 2, extra
        assert extra[0] in capsys.readouterr().err


def test_a_short_write_names_the_file_and_says_the_disk_may_be_full(run_dir, good_images, tmp_path, monkeypatch,
                                                                   capsys):
    def short_write(*args, **kwargs):
        raise OSError("65536 requested and 55264 written")

    monkeypatch.setattr(np, "save", short_write)
    assert score(run_dir, good_images, tmp_path / "full") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Errno None" not in err and str(tmp_path / "full" / "maps") in err and "disk" in err, err


def test_a_read_only_output_folder_is_named(run_dir, good_images, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert score(run_dir, good_images, out) == 1
    finally:
        out.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "ermission denied" in err, err
