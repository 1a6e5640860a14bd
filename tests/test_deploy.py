"""fastad.deploy: every op's ONNX lowering against the op, and every registered model's exported
graph against its PyTorch scoring on ONNX Runtime and OpenVINO (fp32, batch 1 and 5, within 1e-4
relative), verdicts, the uint8 input, the CLI and the one-line refusals.

Each model is trained tiny and exported once per module (the ONNX file is also what the OpenVINO
runtime reads; one test converts to OpenVINO IR). GlanceNet's default shared-box scoring plans
its boxes from host values; traced, it scores the masked copies, and the export is held to the
shared path's scores."""
import csv
import json
import math
import warnings

import pytest
import torch

import fastad
from conftest import train_rawpixel_run, write_gravel_pngs
from fastad import cli
from fastad.deploy import UnsupportedOpError, export, load, lowering
from fastad.deploy.export import relative_deviation
from fastad.engine import Scorer, train
from fastad.engine.decision import calibration_record
from fastad.engine.checkpoint import update_header
from fastad.models import MODELS, create_model
from fastad.models.base import AnomalyModel, AnomalyResult
from fastad.ops import PatchGrid

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TOLERANCE = 1e-4
#: the smallest configuration of each registered model (the checkpoint tests' sizes)
TINY = {
    "rawpixel": {"stride": 32},
    "pedenet": {"n_patches": 8, "n_pairs": 4, "stride": 32},
    "patchcore": {"image_size": 64},
    "fcdd": {"width": 0.125, "batch_size": 2, "resize": 224},
    "glance": {"feature_dim": 16, "global_widths": [8, 8, 8, 8], "local_batch": 4, "global_batch": 2, "stride": 16,
               "dad_negatives": 1},
    "utad": {"ie_widths": [4, 4, 4, 4], "latent_dim": 8, "ie_hidden": 16, "expert_width": 2, "detail_dim": 4,
             "detail_width": 2, "mlp_hidden": 8, "n_residual": 1, "batch_size": 2, "pixel_threshold_images": 2},
}


def test_every_registered_model_has_a_tiny_config():
    assert set(MODELS) == set(TINY)


def _builtin(split: str, size: int, count: int) -> torch.Tensor:
    dataset = fastad.data.open_dataset("builtin:gravel", split, size=size)
    return torch.stack([dataset[i % len(dataset)].image for i in range(count)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model name -> (trained tiny model, its ONNX artefact folder), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            with warnings.catch_warnings():  # random backbones: their warning is not under test here
                warnings.simplefilter("ignore")
                model = create_model(name, **TINY[name])
                train(model, _builtin("train", model.image_size, 4), steps=1, progress=False)
            cache[name] = (model, export(model, tmp_path_factory.mktemp(name), "onnx"))
        return cache[name]
    return get


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_exported_graph_scores_equal_pytorch(name, runtime, exported):
    model, folder = exported(name)
    inferencer = load(folder, runtime)
    for batch in (1, 5):
        images = _builtin("test", model.image_size, batch)
        with torch.inference_mode():
            expected = model.score(images)
        got = inferencer.score(images)
        assert got.maps.shape == expected.maps.shape and got.image_scores.shape == (batch,)
        assert relative_deviation(got.image_scores, expected.image_scores) <= TOLERANCE
        assert relative_deviation(got.maps, expected.maps) <= TOLERANCE


def test_metadata_names_what_a_line_needs(exported):
    model, folder = exported("patchcore")
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["model"] == "patchcore" and metadata["config"] == model.config
    assert metadata["input"]["shape"] == ["B", 3, 64, 64] and metadata["input"]["dtype"] == "float32"
    assert metadata["fastad"] == fastad.__version__ and metadata["opset"] == 18 and metadata["threshold"] is None
    assert metadata["image_score"] == "max" and metadata["deviation"]["maps"] <= TOLERANCE
    assert set(metadata["outputs"]) == {"image_scores", "maps"}


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A raw-pixel run whose calibrated threshold splits the builtin test crops' scores."""
    run = train_rawpixel_run(tmp_path_factory.mktemp("run"))
    scores = Scorer(run).score(_builtin("test", 256, 12)).image_scores
    update_header(run, {"calibration": calibration_record(scores, 0.4, "max", "fp32", "test crops")})
    return run


@pytest.fixture(scope="module")
def calibrated_ir(calibrated_run, tmp_path_factory):
    return export(calibrated_run, tmp_path_factory.mktemp("ir"), "openvino")


def test_openvino_ir_of_a_calibrated_run_gives_the_scorers_verdicts(calibrated_run, calibrated_ir):
    assert {p.name for p in calibrated_ir.iterdir()} == {"model.xml", "model.bin", "metadata.json"}
    inferencer = load(calibrated_ir)
    images = _builtin("test", 256, 12)
    expected, got = Scorer(calibrated_run).score(images), inferencer.score(images)
    assert inferencer.runtime == "openvino" and inferencer.threshold == Scorer(calibrated_run).threshold
    assert got.verdict == expected.verdict and set(expected.verdict) == {"ok", "defect"}
    assert relative_deviation(got.maps, expected.maps) <= TOLERANCE


def test_uint8_input_graph_equals_the_scorer_on_uint8_images(calibrated_run, tmp_path):
    folder = export(calibrated_run, tmp_path / "u8", "onnx", input_dtype="uint8")
    images = (_builtin("test", 256, 3) * 255).round().to(torch.uint8)
    expected, got = Scorer(calibrated_run).score(images), load(folder).score(images)
    assert relative_deviation(got.image_scores, expected.image_scores) <= TOLERANCE
    assert got.verdict == expected.verdict
    with pytest.raises(TypeError, match="uint8 images"):
        load(folder).score(images.float() / 255)


def test_fp16_openvino_records_its_deviation(calibrated_run, tmp_path):
    folder = export(calibrated_run, tmp_path / "half", "openvino", precision="fp16")
    deviation = json.loads((folder / "metadata.json").read_text())["deviation"]
    assert 0 <= deviation["maps"] < 0.05 and "verdicts_equal" in deviation
    with pytest.raises(ValueError, match="precision 'fp16' needs format 'openvino'"):
        export(calibrated_run, tmp_path / "x", "onnx", precision="fp16")


class CoresetProbe(AnomalyModel):
    """A scoring graph holding an op without a lowering (the training-only coreset search)."""

    name = "coreset_probe"
    image_size = 32

    def score(self, images):
        flat = images.flatten(2).mean(1)
        chosen = fastad.ops.kcenter_coreset(flat, 2)
        maps = images.mean(1) + chosen.sum().float()
        return AnomalyResult(maps.flatten(1).amax(1), maps)


def test_an_op_without_lowering_is_refused_in_one_line(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"fastad\.kcenter_coreset\.default, which has no ONNX lowering"):
        export(CoresetProbe(), tmp_path / "out", "onnx", check_images=torch.rand(2, 3, 32, 32))


class ChunkedProbe(AnomalyModel):
    """Scoring that splits the batch into chunks of 2: no graph for any batch size."""

    name = "chunked_probe"
    image_size = 32

    def score(self, images):
        maps = torch.cat([chunk.mean(1) for chunk in images.split(2)])
        return AnomalyResult(maps.flatten(1).amax(1), maps)


def test_a_batch_bound_scoring_is_refused_in_one_line(tmp_path):
    with pytest.raises(UnsupportedOpError, match="chunked_probe .*dynamic batch") as caught:
        export(ChunkedProbe(), tmp_path / "out", "onnx", check_images=torch.rand(3, 3, 32, 32))
    assert "\n" not in str(caught.value)


def test_load_names_what_is_missing(tmp_path, calibrated_ir):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load(tmp_path)
    with pytest.raises(ValueError, match="runtime 'onnxruntime' needs an ONNX artefact"):
        load(calibrated_ir, "onnxruntime")
    with pytest.raises(ValueError, match="batch_size"):
        load(calibrated_ir, batch_size=0)


# --- the CLI --------------------------------------------------------------------------------------

def test_cli_export_then_score_model_file_writes_the_checkpoints_scores(calibrated_run, tmp_path):
    images = write_gravel_pngs(tmp_path / "images", "test", range(4), size=256)
    assert cli.main(["--threads", "1", "export", "--checkpoint", str(calibrated_run), "--format", "onnx",
                     "--out", str(tmp_path / "art")]) == 0
    assert cli.main(["--threads", "1", "score", "--model-file", str(tmp_path / "art"), "--images", str(images),
                     "--out", str(tmp_path / "deployed"), "--no-overlays"]) == 0
    assert cli.main(["--threads", "1", "score", "--checkpoint", str(calibrated_run), "--images", str(images),
                     "--out", str(tmp_path / "torch"), "--no-overlays"]) == 0
    rows = [list(csv.reader(open(tmp_path / folder / "scores.csv"))) for folder in ("deployed", "torch")]
    assert [r[0] for r in rows[0]] == [r[0] for r in rows[1]] and [r[2] for r in rows[0]] == [r[2] for r in rows[1]]
    for got, expected in zip(rows[0][1:], rows[1][1:]):
        assert math.isclose(float(got[1]), float(expected[1]), rel_tol=TOLERANCE)
    assert cli.main(["score", "--model-file", str(tmp_path / "art"), "--images", str(images),
                     "--out", str(tmp_path / "deployed"), "--no-overlays"]) == 0      # a finished run resumes


def test_cli_model_file_refuses_torch_options(tmp_path, capsys):
    assert cli.main(["score", "--model-file", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--device", "cuda"]) == 2
    assert "--model-file runs on the CPU runtime" in capsys.readouterr().err


# --- each lowering against its op -----------------------------------------------------------------

def test_knn_lowering_chunks_the_bank_and_matches_the_op(monkeypatch):
    monkeypatch.setattr(lowering, "KNN_BANK_CHUNK", 50)
    torch.manual_seed(0)
    query, bank = torch.randn(40, 12), torch.randn(230, 12) * 3 + 5     # off-centre: the expansion's worst case
    for k in (1, 4):
        dist, index = lowering.knn(query, bank, k)
        expected_dist, expected_index = fastad.ops.knn(query, bank, k)
        torch.testing.assert_close(dist, expected_dist, rtol=1e-5, atol=1e-6)
        assert torch.equal(index, expected_index)
    near = torch.cat([bank[:5] + 1e-3, bank[7:9]])                       # queries next to bank rows
    torch.testing.assert_close(lowering.knn(near, bank, 1)[0], fastad.ops.knn(near, bank, 1)[0], rtol=1e-3, atol=1e-6)
    small = torch.randn(3, 12)                                           # a bank smaller than k + extra
    assert torch.equal(lowering.knn(query, small, 2)[1], fastad.ops.knn(query, small, 2)[1])


@pytest.mark.parametrize("grid", [PatchGrid(8, 4, (16, 16)), PatchGrid(5, 7, (30, 27)), PatchGrid(3, 2, (9, 12))])
def test_patch_tables_match_the_ops(grid):
    torch.manual_seed(0)
    scores = torch.rand(3, grid.num_patches, dtype=torch.float64)
    args = (grid.patch_size, grid.stride, grid.image_size, grid.image_size)
    torch.testing.assert_close(lowering.patch_average(scores, *args), fastad.ops.patch_average(scores, grid))
    for power, radius in ((2.0, None), (3.0, 6.0)):
        torch.testing.assert_close(lowering.idw_upsample(scores, *args, power, radius),
                                   fastad.ops.idw_upsample(scores, grid, power=power, radius=radius))


def test_blur_upsample_gmm_and_partial_conv_lowerings_match_the_ops():
    torch.manual_seed(0)
    maps = torch.rand(2, 1, 20, 17, dtype=torch.float64)
    torch.testing.assert_close(lowering.gaussian_blur(maps, 2.0, 9), fastad.ops.gaussian_blur(maps, 2.0, 9))
    heat = torch.rand(2, 1, 5, 6, dtype=torch.float64)
    for start, out in ((1.0, (16, 16)), (-2.5, (12, 30)), (4.0, (40, 9))):
        torch.testing.assert_close(lowering.gaussian_upsample(heat, out, 7, 3, start, 2.0),
                                   fastad.ops.gaussian_upsample(heat, out, 7, 3, start, 2.0))
    z, mu = torch.randn(30, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    factor = torch.linalg.cholesky(torch.eye(4, dtype=torch.float64) + 0.3 * torch.ones(3, 4, 4, dtype=torch.float64))
    log_phi = torch.log_softmax(torch.randn(3, dtype=torch.float64), 0)
    for per_component in (False, True):
        torch.testing.assert_close(lowering.gmm_log_prob(z, log_phi, mu, factor, per_component),
                                   fastad.ops.gmm_log_prob(z, log_phi, mu, factor, per_component))
    x, weight, bias = torch.rand(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    mask = (torch.rand(2, 1, 9, 9) > 0.4).float()
    raw = torch.nn.functional.conv2d(x * mask, weight, None, 1, 1)
    coverage = lowering.partial_conv_coverage(mask, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    torch.testing.assert_close(coverage, fastad.ops.partial_conv_coverage(mask, 3, 1, 1))
    got = lowering.partial_conv_renormalize(raw, coverage, bias, 9.0)
    for a, b in zip(got, fastad.ops.partial_conv_renormalize(raw, coverage, bias, 9.0)):
        torch.testing.assert_close(a, b)


class EveryMapOp(torch.nn.Module):
    """The map ops no registered model's default scoring holds together, in one graph."""

    def forward(self, scores):
        z = scores[:, :8].reshape(-1, 4)
        grid = PatchGrid(5, 7, (30, 27))
        average = fastad.ops.patch_average(scores, grid)
        idw = fastad.ops.idw_upsample(scores, grid, radius=6.0)
        up = fastad.ops.gaussian_upsample(average[:, None, ::6, ::6], (30, 27), 7, 6, -1.5, 2.0)[:, 0]
        blurred = fastad.ops.gaussian_blur((average + idw + up)[:, None], 1.5)[:, 0]
        mu, factor = torch.linspace(-1, 1, 12).view(3, 4), torch.eye(4).expand(3, 4, 4) * 1.5
        log_prob = fastad.ops.gmm_log_prob(z, torch.log(torch.tensor([0.2, 0.3, 0.5])), mu, factor)
        mask = (blurred[:, None] > blurred.mean()).float()
        out, _ = fastad.ops.partial_conv2d(blurred[:, None].expand(-1, 2, -1, -1), mask, torch.ones(3, 2, 3, 3),
                                           torch.tensor([0.1, 0.2, 0.3]), padding=1)
        return out.flatten(1).amax(1) + log_prob.view(scores.shape[0], -1).sum(1), blurred


def test_map_ops_export_to_onnx_and_match(tmp_path):
    import onnxruntime as ort

    from fastad.deploy.export import exported_program, save_onnx

    torch.manual_seed(0)

    scores = torch.rand(2, PatchGrid(5, 7, (30, 27)).num_patches)
    program = exported_program(EveryMapOp(), scores, "every map op")
    save_onnx(program, tmp_path / "ops.onnx", ["scores"], ["image_scores", "maps"])
    session = ort.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    more = torch.rand(3, scores.shape[1])
    expected = EveryMapOp()(more)
    for got, want in zip(session.run(None, {session.get_inputs()[0].name: more.numpy()}), expected):
        assert relative_deviation(torch.from_numpy(got), want) <= TOLERANCE
