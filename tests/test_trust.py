"""Scoring a production line you can trust: a bad file never aborts a run, an interrupted run
resumes to the same bytes, an output folder holds one run, files respect the umask, mistakes get
one clear line, and a tampered checkpoint is refused naming the file and the tensor."""
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import fastad
from fastad import cli
from fastad.data.images import UnreadableImageError, load_image
from fastad.engine import load_checkpoint, train
from fastad.engine.run_folder import RunFolderBusy, locked
from fastad.models import create_model
from conftest import scoring_fails_on_call, train_rawpixel_run, write_gravel_pngs

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained raw-pixel kNN checkpoint (no optimizer steps: only its memory bank)."""
    return train_rawpixel_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    """Eight small builtin gravel test images as 8-bit PNGs."""
    return write_gravel_pngs(tmp_path_factory.mktemp("good"), "test", range(8))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def random_idat_png(path, size: int = 48, seed: int = 0) -> None:
    """A PNG whose header and chunk CRCs are valid but whose image data is random bytes."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    data = np.random.default_rng(seed).integers(0, 256, 3 * size * size, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
                     + png_chunk(b"IEND", b""))


def truncated_jpeg(path, source) -> None:
    """The first third of a JPEG of `source`."""
    Image.open(source).convert("RGB").save(path, format="JPEG")
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 3])


def gray16_png(path, values: np.ndarray, sbit: int | None = None) -> None:
    """values [H, W] uint16 as a 16-bit gray PNG, with an sBIT chunk when sbit is given."""
    Image.fromarray(values.astype(np.uint16)).save(path)
    if sbit is not None:
        raw = path.read_bytes()
        end = 8 + 8 + 13 + 4  # signature, IHDR
        path.write_bytes(raw[:end] + png_chunk(b"sBIT", bytes([sbit])) + raw[end:])


def score(run_dir, images, out, *extra):
    return cli.main(["--threads", "1", "score", "--checkpoint", str(run_dir), "--images", str(images), "--out",
                     str(out), "--batch-size", str(BATCH), "--workers", "0", *extra])


def rows_by_name(out) -> dict[str, str]:
    rows = (Path(out) / "scores.csv").read_text().splitlines()[1:]
    return {Path(row.split(",")[0]).name: row.split(",")[1] for row in rows}


# --- a bad file is one image, not the run -------------------------------------------------------

def test_bad_files_among_good_ones_are_skipped_and_the_rest_score_as_alone(run_dir, good_images, tmp_path,
                                                                           capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in good_images.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    random_idat_png(mixed / "02b_random_idat.png")
    truncated_jpeg(mixed / "05b_truncated.jpg", good_images / "05.png")
    with pytest.raises(UnreadableImageError, match="02b_random_idat"):
        load_image(mixed / "02b_random_idat.png")
    for folder, out in ((good_images, tmp_path / "alone"), (mixed, tmp_path / "mixed_out")):
        assert score(run_dir, folder, out, "--no-overlays") == 0
    captured = capsys.readouterr()
    assert "02b_random_idat.png" in captured.err and "05b_truncated.jpg" in captured.err
    assert "2 skipped" in captured.out.splitlines()[-1]
    alone, mixed_rows = rows_by_name(tmp_path / "alone"), rows_by_name(tmp_path / "mixed_out")
    assert len(alone) == 8 and mixed_rows == alone  # every good image, and its score to the last digit
    alone_maps, mixed_maps = maps_by_image(tmp_path / "alone"), maps_by_image(tmp_path / "mixed_out")
    assert sorted(alone_maps) == sorted(mixed_maps) and len(alone_maps) == 8
    for name, path in alone_maps.items():
        assert np.array_equal(np.load(path), np.load(mixed_maps[name])), name


def maps_by_image(out) -> dict[str, Path]:
    """{image stem: map file} (a map's name is <dataset position>_<folder>_<stem>.npy)."""
    return {path.stem.rsplit("_", 1)[-1]: path for path in (Path(out) / "maps").iterdir()}


def test_train_and_eval_skip_undecodable_files(tmp_path, good_images, capsys):
    normal = tmp_path / "normal"
    normal.mkdir()
    for path in sorted(good_images.iterdir())[:3]:
        (normal / path.name).write_bytes(path.read_bytes())
    random_idat_png(normal / "01b_bad.png")
    data = f"folder:normal={normal},test={good_images}"
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "rawpixel", "--data", data, "--out", str(run)]) == 0
    assert "01b_bad.png" in capsys.readouterr().err
    random_idat_png(tmp_path / "bad_test.png")
    record = fastad.engine.pipeline.evaluate(fastad.Scorer(run), data, progress=False)
    assert record["n_images"] == 8 and record["skipped"] == 0


def test_16_bit_and_12_bit_pngs_and_float_tiffs_read_by_their_range(tmp_path, run_dir):
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    Image.fromarray(gray8).save(tmp_path / "gray8.png")
    gray16_png(tmp_path / "gray16.png", gray8.astype(np.uint16) * 257)
    gray16_png(tmp_path / "low12.png", gray8.astype(np.int64) * 4095 // 255, sbit=12)   # 12 bits, low-aligned
    gray16_png(tmp_path / "high12.png", (gray8.astype(np.int64) * 4095 // 255) << 4, sbit=12)  # spec-aligned
    Image.fromarray(gray8.astype(np.float32) / 255).save(tmp_path / "float.tiff")
    reference = load_image(tmp_path / "gray8.png", None)
    for name, tolerance in (("gray16.png", 1e-6), ("float.tiff", 1e-6), ("low12.png", 5e-4), ("high12.png", 5e-4)):
        image = load_image(tmp_path / name, None)
        assert image.shape == (3, 40, 40) and image.dtype == torch.float32, name
        assert torch.allclose(image, reference, atol=tolerance), f"{name}: {(image - reference).abs().max()}"
    resized = load_image(tmp_path / "gray16.png", 64)
    assert torch.allclose(resized, load_image(tmp_path / "gray8.png", 64), atol=1 / 255 + 1e-6)  # 8-bit resize rounds
    scorer = fastad.Scorer(run_dir)
    scores = scorer.score(torch.stack([load_image(tmp_path / n, 64) for n in ("gray8.png", "gray16.png")]))
    assert torch.allclose(scores.image_scores[0], scores.image_scores[1], rtol=1e-4)
    Image.fromarray(np.full((8, 8), 3.0, dtype=np.float32)).save(tmp_path / "hot.tiff")
    with pytest.raises(UnreadableImageError, match=r"hot.tiff.*\[0, 1\]"):
        load_image(tmp_path / "hot.tiff")


# --- interrupted runs resume to the same bytes --------------------------------------------------

SLOW_SCORER = """
import sys, time
from fastad.engine import scorer
score = scorer.Scorer.score
def slow(self, images):
    time.sleep(0.4)
    return score(self, images)
scorer.Scorer.score = slow
from fastad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def assert_same_run(out, reference):
    assert (out / "scores.csv").read_bytes() == (reference / "scores.csv").read_bytes()
    names = sorted(p.name for p in (reference / "maps").iterdir())
    assert sorted(p.name for p in (out / "maps").iterdir()) == names
    for name in names:
        assert np.array_equal(np.load(out / "maps" / name), np.load(reference / "maps" / name)), name
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_killed_score_resumes_bit_for_bit(run_dir, good_images, tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert score(run_dir, good_images, reference, "--no-overlays") == 0
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCORER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(script), "--threads", "1", "score", "--checkpoint", str(run_dir), "--images",
               str(good_images), "--out", str(out), "--batch-size", str(BATCH), "--workers", "0", "--no-overlays"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        csv_file = out / "scores.csv"
        if csv_file.is_file() and len(csv_file.read_bytes().splitlines()) >= 1 + BATCH:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len((out / "scores.csv").read_bytes().splitlines()) - 1
    assert 0 < written < 8, f"the run was killed after {written} of 8 rows"
    capsys.readouterr()
    assert score(run_dir, good_images, out, "--no-overlays") == 0
    done = int(capsys.readouterr().out.split("(")[1].split()[0])
    assert done == written and done % BATCH == 0  # finished images were read back, not rescored
    assert_same_run(out, reference)


def test_a_run_failing_mid_way_resumes_after_a_half_written_row(run_dir, good_images, tmp_path, monkeypatch,
                                                                capsys):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert score(run_dir, good_images, reference, "--no-overlays") == 0
    with scoring_fails_on_call(monkeypatch, 3):
        assert score(run_dir, good_images, out, "--no-overlays") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 2 * BATCH
    with open(out / "scores.csv", "ab") as f:
        f.write(str(good_images / "04.png").encode() + b",1.2")  # a row cut off by the crash
    assert score(run_dir, good_images, out, "--no-overlays") == 0
    assert_same_run(out, reference)


# --- an output folder belongs to one run --------------------------------------------------------

def test_another_runs_folder_is_refused_unless_overwrite(run_dir, good_images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted(good_images.iterdir())[:3]:
        (other / f"b{path.name}").write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert score(run_dir, good_images, out) == 0
    assert json.loads((out / "run.json").read_text())["complete"] is True
    capsys.readouterr()
    assert score(run_dir, other, out) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another run" in err and "--overwrite" in err
    assert score(run_dir, good_images, out, "--batch-size", "4") == 1  # other settings: another run too
    assert score(run_dir, other, out, "--overwrite") == 0
    assert sorted(rows_by_name(out)) == ["b00.png", "b01.png", "b02.png"]
    assert len(list((out / "maps").iterdir())) == 3 and len(list((out / "overlays").iterdir())) == 3


def test_a_concurrent_run_fails_at_once(run_dir, good_images, tmp_path, capsys):
    out = tmp_path / "out"
    with locked(out):
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()}"):
            with locked(out):
                pass
        started = time.monotonic()
        assert score(run_dir, good_images, out) == 1
        assert cli.main(["train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", str(out)]) == 1
        assert time.monotonic() - started < 30
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("in use by another fastad run" in line for line in err)
    assert not (out / "scores.csv").exists() and not (out / "checkpoint.safetensors").exists()


def test_two_concurrent_trains_cannot_both_succeed(tmp_path):
    from fastad.engine.pipeline import fit_run

    outcomes = []

    def one_train():
        try:
            fit_run("rawpixel", "builtin:gravel", tmp_path / "run", progress=False)
            outcomes.append("trained")
        except (RunFolderBusy, FileExistsError) as error:
            outcomes.append(type(error).__name__)

    threads = [threading.Thread(target=one_train) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(outcomes)[-1] == "trained" and outcomes.count("trained") == 1, outcomes


# --- files respect the umask --------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_respect_the_umask(run_dir, good_images, tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = tmp_path / "out"
        assert score(run_dir, good_images, out) == 0
        train(create_model("rawpixel"), torch.rand(2, 3, 64, 64), run_dir=tmp_path / "run", progress=False)
        fastad.data.export_mvtec("builtin:gravel", tmp_path / "export", size=32)
    finally:
        os.umask(previous)
    files = [out / "scores.csv", out / "run.json", next((out / "maps").iterdir()), next((out / "overlays").iterdir()),
             tmp_path / "run" / "checkpoint.safetensors", tmp_path / "run" / "config.json",
             next((tmp_path / "export" / "gravel" / "train" / "good").iterdir())]
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


# --- one clear line per mistake -----------------------------------------------------------------

def run_cli(argv) -> int:
    """cli.main's exit code, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_errors_are_one_line_with_exit_codes(run_dir, good_images, tmp_path, capsys, monkeypatch):
    out, run = str(tmp_path / "o"), str(tmp_path / "r")
    cases = [
        (["score", "--checkpoint", str(run_dir), "--images", str(tmp_path / "nonexist"), "--out", out], 2, "--images"),
        (["train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", run, "--checkpoint-every", "0"], 2,
         "--checkpoint-every"),
        (["train", "--model", "nope", "--data", "builtin:gravel", "--out", run], 2, "rawpixel"),
        (["train", "--model", "rawpixel", "--data", "builtin:marble", "--out", run], 2, "marble"),
        (["train", "--model", "rawpixel", "--data", "builtin:gravel", "--out", run, "--set", "pool=3"], 1, "pool"),
        (["score", "--checkpoint", str(tmp_path / "none"), "--images", str(good_images), "--out", out], 1,
         str(tmp_path / "none")),
    ]
    for argv, code, named in cases:
        result = run_cli(argv)
        err = capsys.readouterr().err.strip()
        assert result == code and len(err.splitlines()) == 1 and named in err and "Traceback" not in err, (argv, err)
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert score(run_dir, good_images, tmp_path / "full") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and str(tmp_path / "full" / "maps") in err
    monkeypatch.setenv("FASTAD_DEBUG", "1")
    assert score(run_dir, good_images, tmp_path / "full2") == 1
    assert "Traceback" in capsys.readouterr().err


# --- tampered checkpoints -----------------------------------------------------------------------

def tampered(run_dir, tmp_path, header_edit=None, tensor_edit=None) -> Path:
    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as f:
        header, tensors = json.loads(f.metadata()["fastad"]), {k: f.get_tensor(k) for k in f.keys()}
    if header_edit:
        header_edit(header)
    if tensor_edit:
        tensor_edit(tensors)
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata={"fastad": json.dumps(header)})
    return path


def test_tampered_checkpoints_are_refused_naming_file_and_what(run_dir, tmp_path):
    bank = "model.memory_bank.bank"
    cases = [
        ({"tensor_edit": lambda t: t.update({bank: t[bank][:, :-1].contiguous()})}, "memory_bank.bank"),
        ({"tensor_edit": lambda t: t.update({bank: t[bank].long()})}, "int64"),
        ({"tensor_edit": lambda t: t.update({"model.extra": torch.zeros(1)})}, "model.extra"),
        ({"header_edit": lambda h: h.pop("model")}, "'model'"),
        ({"header_edit": lambda h: h.update(model="patchcore9")}, "patchcore9"),
        ({"header_edit": lambda h: h["config"].update(pool="8")}, "config"),
        ({"header_edit": lambda h: h["config"].update(pool=3)}, "pool"),
        ({"header_edit": lambda h: h["config"].update(colour=1)}, "colour"),
    ]
    for edit, named in cases:
        path = tampered(run_dir, tmp_path, **edit)
        with pytest.raises(ValueError) as raised:
            load_checkpoint(path)
        message = str(raised.value)
        assert str(path) in message and named in message and "\n" not in message, message
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((run_dir / "checkpoint.safetensors").read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_checkpoint(corrupt)
    assert torch.equal(load_checkpoint(tampered(run_dir, tmp_path)).model.memory_bank.bank,
                       load_checkpoint(run_dir).model.memory_bank.bank)  # an untouched copy loads


def test_a_failed_append_leaves_whole_batches_only(tmp_path, monkeypatch):
    from fastad.engine.scores_folder import AppendStream, score_header

    stream = AppendStream(tmp_path / "scores.csv", score_header(None))
    stream.write("a,1\r\n")
    real = os.write

    def half_then_full(fd, data):
        real(fd, data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="scores.csv.*No space left"):
        stream.write("b,2\r\nc,3\r\n")
    monkeypatch.undo()
    stream.close()
    assert (tmp_path / "scores.csv").read_bytes() == b"path,score\r\na,1\r\n"
