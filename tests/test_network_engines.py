"""Scorer(network_engine="openvino"): every registered model that names networks scores as the
torch engine does (fp32, within 1e-4 relative, batch 1 and 5, verdicts identical), the model
object keeps its own networks, and the refusals name the option."""
import warnings

import pytest
import torch

import fastad
from fastad.deploy.export import relative_deviation
from fastad.engine import Scorer, train
from fastad.engine.network_engines import NETWORK_ENGINES, OpenVINONetwork, with_network_engine
from fastad.models import MODELS, create_model

ov = pytest.importorskip("openvino")

TOLERANCE = 1e-4
#: small configurations of the models that name networks
TINY = {"patchcore": {"image_size": 64}, "fcdd": {"width": 0.125, "batch_size": 2, "resize": 224}}


def _builtin(split: str, size: int, count: int) -> torch.Tensor:
    dataset = fastad.data.open_dataset("builtin:gravel", split, size=size)
    return torch.stack([dataset[i % len(dataset)].image for i in range(count)])


def _trained(name: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, **TINY[name])
        train(model, _builtin("train", model.image_size, 4), steps=1, progress=False)
    return model.eval()


def test_every_model_naming_networks_is_covered():
    assert {name for name, cls in MODELS.items() if cls.networks} == set(TINY)
    for name in TINY:
        model = create_model(name, **TINY[name])
        for network in model.networks:
            assert isinstance(getattr(model, network), torch.nn.Module), (name, network)


@pytest.mark.parametrize("name", sorted(TINY))
def test_openvino_network_engine_scores_equal_the_torch_engine(name):
    model = _trained(name)
    reference = Scorer(model)
    engine = Scorer(model, network_engine="openvino")
    for batch in (1, 5, 2):   # a batch size after the first compilation reuses it
        images = _builtin("test", model.image_size, batch)
        expected, got = reference.score(images), engine.score(images)
        assert got.maps.shape == expected.maps.shape
        assert relative_deviation(got.maps, expected.maps) <= TOLERANCE
        assert relative_deviation(got.image_scores, expected.image_scores) <= TOLERANCE
    network = getattr(engine.scoring_model, model.networks[0])
    assert isinstance(network, OpenVINONetwork) and len(network.compiled_shapes) == 1
    assert not isinstance(getattr(model, model.networks[0]), OpenVINONetwork)   # the model keeps its own
    assert engine.settings()["network_engine"] == "openvino" and "network_engine" not in reference.settings()


def test_openvino_network_engine_gives_the_calibrated_verdicts():
    model = _trained("patchcore")
    images = _builtin("test", model.image_size, 6)
    scores = Scorer(model).score(images).image_scores.sort().values
    threshold = float(scores[2:4].mean())   # between two images' scores, far from either
    a, b = Scorer(model), Scorer(model, network_engine="openvino")
    a.threshold = b.threshold = threshold
    assert a.score(images).verdict == b.score(images).verdict


def test_bf16_runs_natively_or_is_refused_by_name():
    model = _trained("patchcore")
    images = _builtin("test", model.image_size, 2)
    natively = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    scorer = Scorer(model, precision="bf16", network_engine="openvino")
    if "BF16" in natively:
        got, expected = scorer.score(images), Scorer(model).score(images)
        assert relative_deviation(got.maps, expected.maps) < 0.1   # bf16 network: about 1e-2
    else:
        with pytest.raises(ValueError, match="precision 'bf16'"):
            scorer.score(images)


def test_refusals_name_the_option():
    model = create_model("rawpixel")
    with pytest.raises(ValueError, match="network_engine"):
        Scorer(model, network_engine="tensorrt")
    with pytest.raises(ValueError, match="names no network"):
        with_network_engine(model, "openvino", "fp32")
    assert with_network_engine(model, "torch", "fp32") is model
    with pytest.raises(ValueError, match="runs on the CPU"):
        Scorer(create_model("patchcore", **TINY["patchcore"]), device="meta", network_engine="openvino")
    with pytest.raises(ValueError, match="precision 'fp32' or 'bf16'"):
        with_network_engine(create_model("patchcore", **TINY["patchcore"]), "openvino", "fp16")
    assert NETWORK_ENGINES == ("torch", "openvino")


def test_cli_score_with_the_openvino_network_engine(tmp_path):
    import csv

    from conftest import write_gravel_pngs
    from fastad import cli

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(create_model("patchcore", **TINY["patchcore"]), _builtin("train", 64, 4), run_dir=tmp_path / "run",
              progress=False)
    images = write_gravel_pngs(tmp_path / "images", "test", range(3), size=64)
    scores = {}
    for engine in NETWORK_ENGINES:
        out = tmp_path / engine
        assert cli.main(["score", "--checkpoint", str(tmp_path / "run"), "--images", str(images), "--out", str(out),
                         "--no-overlays", "--maps", "none", "--network-engine", engine]) == 0
        with open(out / "scores.csv", newline="") as f:
            scores[engine] = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    assert scores["torch"].keys() == scores["openvino"].keys() and len(scores["torch"]) == 3
    torch_scores, openvino_scores = (torch.tensor([scores[e][p] for p in sorted(scores[e])]) for e in NETWORK_ENGINES)
    assert relative_deviation(openvino_scores, torch_scores) <= TOLERANCE
    assert cli.main(["score", "--checkpoint", str(tmp_path / "run"), "--images", str(images), "--out",
                     str(tmp_path / "ray"), "--engine", "ray", "--network-engine", "openvino"]) == 2
