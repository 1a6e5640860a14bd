"""fastad.distributed: scoring on a local Ray cluster (2 CPUs) gives exactly the single-process
Scorer's scores folder (scores.csv with verdicts for a calibrated checkpoint, inputs.csv, maps),
survives a replica killed mid-run, and resumes as the local engine does, without rescoring."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastad
from fastad import cli
from fastad.data.images import save_image
from fastad.distributed.inputs import batches, list_inputs
from fastad.distributed.weights import pack_model, unpack_model
from fastad.engine.pipeline import calibrate_run
from fastad.models import create_model
from test_trust import random_idat_png
from test_trust_inputs import ODD_NAMES

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from fastad.distributed import replica, score_on_ray  # noqa: E402

N_IMAGES, BATCH = 10, 2
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained raw-pixel kNN checkpoint (no optimizer steps: only its memory bank)."""
    folder = tmp_path_factory.mktemp("run")
    train_set = fastad.data.open_dataset("builtin:brick", "train", size=256)
    model = create_model("rawpixel")
    fastad.engine.train(model, torch.stack([train_set[i].image for i in range(4)]), run_dir=folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """N_IMAGES builtin brick test images in one folder, a file that is no image sorted last and a
    PNG that passes the header check but fails to decode among them."""
    folder = tmp_path_factory.mktemp("images")
    test_set = fastad.data.open_dataset("builtin:brick", "test", size=128)
    for i in range(N_IMAGES):
        save_image(test_set[i].image, folder / f"{i:03d}_{test_set[i].defect}.png")
    (folder / "zz_corrupt.png").write_bytes(b"not a png")
    random_idat_png(folder / "004b_random_idat.png")
    return folder


@pytest.fixture(scope="module")
def local(run_dir, images, tmp_path_factory):
    """The single-process reference: fastad.Scorer.score_folder at the same batch size."""
    out = tmp_path_factory.mktemp("local")
    fastad.Scorer(run_dir, batch_size=BATCH).score_folder(images, out, overlays=False, num_workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def calibrated(run_dir, images, tmp_path_factory):
    """(a copy of run_dir calibrated on the images at a false-reject rate of 0.2, its local scores folder)."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(run_dir, run)
    calibrate_run(run, images, false_reject=0.2, progress=False)
    out = tmp_path_factory.mktemp("calibrated-local")
    fastad.Scorer(run, batch_size=BATCH).score_folder(images, out, overlays=False, num_workers=0, progress=False)
    return run, out


def assert_same_outputs(out, reference, inputs: bool = True):
    """out holds reference's scores.csv and maps, byte for byte, and its inputs.csv too (inputs:
    not after a file changed under a resumed run: inputs.csv logs each scoring of a position)."""
    for name in ("scores.csv",) + (("inputs.csv",) if inputs else ()):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    names = sorted(p.name for p in (reference / "maps").iterdir())
    assert len(names) == N_IMAGES and sorted(p.name for p in (out / "maps").iterdir()) == names
    for name in names:
        assert torch.equal(torch.from_numpy(np.load(out / "maps" / name)),
                           torch.from_numpy(np.load(reference / "maps" / name))), name


def test_scores_and_maps_equal_the_single_process_scorer(cluster, run_dir, images, local, tmp_path, capsys,
                                                         monkeypatch):
    put, weights_puts = ray.put, []

    def counting_put(value, *args, **kwargs):
        if isinstance(value, dict) and "tensors" in value:
            weights_puts.append(value["name"])
        return put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", counting_put)
    result = score_on_ray(run_dir, images, tmp_path, batch_size=BATCH)
    assert weights_puts == ["rawpixel"]  # the weights and memory bank went into the object store once
    assert_same_outputs(tmp_path, local)
    assert (result.scored, result.resumed) == (N_IMAGES, 0) and len(result.paths) == N_IMAGES
    assert [path for path, _ in result.skipped] == [str(images / "zz_corrupt.png"),
                                                    str(images / "004b_random_idat.png")]
    err = capsys.readouterr().err
    assert "zz_corrupt.png" in err and "004b_random_idat.png" in err
    assert not (tmp_path / "parts").exists() and not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "scores.csv").read_bytes().startswith(b"path,score\r\n")


def test_a_calibrated_checkpoint_gets_the_local_engines_verdicts(cluster, calibrated, images, tmp_path):
    run, local_out = calibrated
    result = score_on_ray(run, images, tmp_path, batch_size=BATCH)
    assert_same_outputs(tmp_path, local_out)
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score,verdict" and len(rows) == N_IMAGES + 1
    assert {row.rsplit(",", 1)[1] for row in rows[1:]} == {"ok", "defect"}
    threshold = fastad.Scorer(run).threshold
    assert sum(float(s) > threshold for s in result.image_scores) == sum(r.endswith(",defect") for r in rows)
    manifest = fastad.engine.run_folder.read_manifest(tmp_path)
    assert manifest["settings"]["threshold"] == threshold and manifest["settings"]["engine"] == "ray"
    local_settings = fastad.engine.run_folder.read_manifest(local_out)["settings"]
    assert {k: v for k, v in manifest["settings"].items() if k != "engine"} == \
        {k: v for k, v in local_settings.items() if k != "engine"}


def crashing_replica(marker, at_call: int):
    """A ScoreReplica whose first actor to reach its at_call-th call creates `marker` and exits the
    process right after writing that batch's first map (defined here, so Ray ships it by value)."""
    class CrashingReplica(replica.ScoreReplica):
        def __call__(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == at_call:
                write = replica.save_map

                def write_then_exit(*args, **kwargs):
                    write(*args, **kwargs)
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return
                    os._exit(1)

                replica.save_map = write_then_exit
            return super().__call__(batch)

    return CrashingReplica


def test_a_replica_killed_mid_run_still_scores_every_image_once(cluster, run_dir, images, local, tmp_path,
                                                               monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setattr(replica, "ScoreReplica", crashing_replica(str(marker), 2))
    out = tmp_path / "out"
    model = fastad.engine.load_checkpoint(run_dir).model  # a model object works as well as a run folder
    result = score_on_ray(model, images, out, batch_size=BATCH)
    assert marker.exists(), "no replica was killed"
    rows = (out / "scores.csv").read_text().splitlines()[1:]
    assert len(rows) == len({row.split(",")[0] for row in rows}) == N_IMAGES == len(result.paths)
    assert_same_outputs(out, local)


def cut_after(out, rows: int) -> None:
    """out as a run killed after its first `rows` scored images left it: scores.csv and
    inputs.csv hold their rows, maps/ only their maps."""
    for name in ("scores.csv", "inputs.csv"):
        lines = (out / name).read_bytes().split(b"\r\n")
        (out / name).write_bytes(b"\r\n".join(lines[:rows + 1]) + b"\r\n")
    for path in sorted((out / "maps").iterdir())[rows:]:
        path.unlink()


def test_resume_scores_only_the_unfinished_images(cluster, run_dir, images, local, tmp_path):
    first = score_on_ray(run_dir, images, tmp_path, batch_size=BATCH)
    assert (first.scored, first.resumed) == (N_IMAGES, 0)
    cut_after(tmp_path, 4)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "maps").iterdir()}
    assert len(written) == 4

    whole = score_on_ray(run_dir, images, tmp_path, batch_size=BATCH)
    assert (whole.scored, whole.resumed) == (N_IMAGES - 4, 4)
    for path in (tmp_path / "maps").iterdir():
        if path.name in written:
            assert path.stat().st_mtime_ns == written[path.name], f"{path} was rewritten"
    assert_same_outputs(tmp_path, local)  # the remaining batches line up with the local path's

    again = score_on_ray(run_dir, images, tmp_path, batch_size=BATCH, resume=False)
    assert (again.scored, again.resumed) == (N_IMAGES, 0)
    for name, mtime in written.items():
        assert (tmp_path / "maps" / name).stat().st_mtime_ns != mtime, f"resume=False did not rescore {name}"
    assert_same_outputs(tmp_path, local)
    with pytest.raises(FileExistsError, match="another run"):  # other inputs into the same folder
        score_on_ray(run_dir, list_inputs(images, 256)[0][:4], tmp_path, batch_size=BATCH)


def test_cli_engine_ray_joins_a_running_cluster(cluster, run_dir, images, local, tmp_path, capsys):
    args = ["score", "--checkpoint", str(run_dir), "--images", str(images), "--out", str(tmp_path),
            "--batch-size", str(BATCH), "--no-overlays"]
    assert cli.main(args[:-1] + ["--engine", "ray"]) == 2
    assert cli.main(args + ["--address", "auto"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--no-overlays" in err[0] and "--engine ray" in err[1]
    # a separate driver process connecting to this module's cluster by address
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "fastad", *args, "--engine", "ray", "--address", address],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scored {N_IMAGES} images on Ray (0 already done" in done.stdout
    assert "zz_corrupt.png" in done.stderr
    assert_same_outputs(tmp_path, local)


def test_packed_weights_rebuild_the_model_bit_for_bit(run_dir):
    model = fastad.engine.load_checkpoint(run_dir).model
    rebuilt = unpack_model(ray.get(ray.put(pack_model(model))) if ray.is_initialized() else pack_model(model))
    for (key, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    half = create_model("rawpixel").to(torch.bfloat16)
    half.memory_bank.bank = torch.randn(5, 192).to(torch.bfloat16)
    again = unpack_model(pack_model(half))
    assert again.memory_bank.bank.dtype == torch.bfloat16 and torch.equal(again.memory_bank.bank, half.memory_bank.bank)
    with pytest.raises(TypeError, match="model"):
        pack_model(torch.nn.Linear(2, 2))


def test_arguments_are_checked(run_dir, images, tmp_path):
    with pytest.raises(ValueError, match="device"):
        score_on_ray(run_dir, images, tmp_path, device="cuda:1")
    with pytest.raises(ValueError, match="fp16"):
        score_on_ray(run_dir, images, tmp_path, precision="fp16")
    with pytest.raises(ValueError, match="batch_size"):
        score_on_ray(run_dir, images, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="num_replicas"):
        score_on_ray(run_dir, images, tmp_path, num_replicas=0)
    with pytest.raises(ValueError, match="memory_format"):
        score_on_ray(run_dir, images, tmp_path, memory_format="nhwc")
    with pytest.raises(FileNotFoundError, match="paths_or_folder"):
        list_inputs(tmp_path / "missing", 256)
    with pytest.raises(TypeError, match="paths_or_folder"):
        list_inputs(42, 256)
    assert batches([0, 1, 2], ["a", "b", "c"], 2) == [{"indices": [0, 1], "paths": ["a", "b"]},
                                                      {"indices": [2], "paths": ["c"]}]


def test_ray_missing_is_a_clear_error(monkeypatch):
    from fastad.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"fastad\[ray\]"):
        require_ray()


def test_an_image_replaced_since_it_was_scored_is_scored_again(cluster, run_dir, images, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    score_on_ray(run_dir, folder, out, batch_size=BATCH)
    target = sorted(folder.glob("003_*.png"))[0]
    stat = target.stat()
    target.write_bytes(sorted(folder.glob("007_*.png"))[0].read_bytes())  # another picture, same name and times
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    again = score_on_ray(run_dir, folder, out, batch_size=BATCH)
    warned = [line for line in capsys.readouterr().err.splitlines() if "changed since it was scored" in line]
    assert len(warned) == 1 and target.name in warned[0]
    # from its batch (positions 2, 3) on, as the local engine: 9 positions, one of them undecodable
    assert (again.resumed, again.scored) == (2, 8)
    score_on_ray(run_dir, folder, fresh, batch_size=BATCH)
    assert_same_outputs(out, fresh, inputs=False)


def test_any_file_name_round_trips_as_in_the_local_engine(cluster, run_dir, images, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    sources = sorted(images.glob("00[0-9]_*.png"))
    try:
        for name, source in zip(ODD_NAMES, sources):
            (folder / name).write_bytes(source.read_bytes())
    except (OSError, UnicodeEncodeError) as error:
        pytest.skip(f"this file system refuses such names: {error}")
    reference = tmp_path / "local"
    fastad.Scorer(run_dir, batch_size=BATCH).score_folder(folder, reference, num_workers=0, progress=False)
    result = score_on_ray(run_dir, folder, tmp_path / "ray", batch_size=BATCH)
    assert sorted(Path(p).name for p in result.paths) == sorted(ODD_NAMES)
    for name in ("scores.csv", "inputs.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path / "ray" / "maps")) == sorted(os.listdir(reference / "maps"))
