"""fastad.integrations.anomalib against anomalib's own code: the replaced functions give anomalib's
results (coreset picks, neighbours, scores, maps), end to end through anomalib's Engine on the
builtin data, and disable() puts anomalib back exactly. Skipped without anomalib."""
import contextlib
import importlib.metadata
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("anomalib")

import fastad.integrations.anomalib as fastad_anomalib  # noqa: E402
from fastad.integrations.anomalib import AnomalibFallbackWarning  # noqa: E402
from conftest import brute_force_knn  # noqa: E402

from anomalib.data import MVTecAD  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.models import Padim, Patchcore  # noqa: E402
from anomalib.models.components import GaussianBlur2d  # noqa: E402
from anomalib.models.components.sampling import KCenterGreedy  # noqa: E402
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMap  # noqa: E402
from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator as PatchcoreMap  # noqa: E402
from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

REPLACED = [(KCenterGreedy, "select_coreset_idxs"), (PatchcoreModel, "nearest_neighbors"),
            (PatchcoreModel, "compute_anomaly_score"), (PatchcoreMap, "blur"), (PadimMap, "blur")]
SIZE = 32  # px: 4 x 4 layer2 patches per image, and the 33 x 33 blur still fits (radius 16 < 32)


@pytest.fixture(autouse=True)
def _restore():
    yield
    fastad_anomalib.disable()


def _class_attrs():
    return {(owner, name): owner.__dict__.get(name) for owner, name in REPLACED}


def test_disable_restores_the_very_originals():
    before = _class_attrs()
    fastad_anomalib.enable()
    fastad_anomalib.enable()  # idempotent: a second call must not record the replacements as originals
    during = _class_attrs()
    assert all(during[key] is not before[key] for key in before)
    fastad_anomalib.disable()
    after = _class_attrs()
    assert all(after[key] is before[key] for key in before)
    assert "blur" not in PatchcoreMap.__dict__ and "blur" not in PadimMap.__dict__


def test_enabled_context_leaves_the_state_it_found():
    before = _class_attrs()
    with fastad_anomalib.enabled():
        assert fastad_anomalib.is_enabled()
    assert not fastad_anomalib.is_enabled() and _class_attrs() == before
    fastad_anomalib.enable()
    with fastad_anomalib.enabled():
        pass
    assert fastad_anomalib.is_enabled()
    with pytest.raises(KeyError), fastad_anomalib.enabled():
        raise KeyError("inside")
    assert fastad_anomalib.is_enabled()


def test_unsupported_version_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.6.1")
    with pytest.raises(RuntimeError, match=r"anomalib>=2\.7\.0,<2\.8.*found anomalib 2\.6\.1"):
        fastad_anomalib.enable()
    assert not fastad_anomalib.is_enabled()


def test_extra_pins_the_supported_series():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert extras["anomalib"] == [fastad_anomalib.REQUIREMENT]


# --- each replaced function against anomalib's own -------------------------------------------

def _coreset(embedding, ratio, seed):
    seed_everything(seed, verbose=False)  # the projection draws from numpy, the start from torch
    return KCenterGreedy(embedding, ratio).select_coreset_idxs()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(700, 96), (300, 4, 3, 3)])  # projected; or flattened as anomalib does
def test_coreset_picks_anomalib_rows(seed, shape):
    embedding = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    expected = _coreset(embedding, 0.1, seed)
    with fastad_anomalib.enabled():
        picks = _coreset(embedding, 0.1, seed)
    assert picks == expected and len(picks) == int(shape[0] * 0.1)


@pytest.fixture(scope="module")
def patchcore_model():
    seed_everything(0, verbose=False)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False, num_neighbors=9)
    model.memory_bank = torch.randn(300, 64) + 3.0
    return model.eval()


@pytest.mark.parametrize("k", [1, 2, 9])
def test_nearest_neighbors_matches_anomalib(patchcore_model, k):
    embedding = torch.randn(1500, 64) + 3.0  # above anomalib's 1024-row chunk
    expected_dist, expected_index = patchcore_model.nearest_neighbors(embedding, k)
    with fastad_anomalib.enabled():
        dist, index = patchcore_model.nearest_neighbors(embedding, k)
    assert dist.shape == expected_dist.shape and index.shape == expected_index.shape
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(dist, expected_dist, rtol=1e-4, atol=0)
    exact_dist, _ = brute_force_knn(embedding, patchcore_model.memory_bank, k)  # fastad's are the exact ones
    torch.testing.assert_close(dist.double(), exact_dist.reshape(dist.shape), rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_neighbors", [1, 9])
def test_compute_anomaly_score_matches_anomalib(patchcore_model, num_neighbors, monkeypatch):
    monkeypatch.setattr(patchcore_model, "num_neighbors", num_neighbors)
    embedding = torch.randn(4 * 49, 64) + 3.0
    scores, locations = patchcore_model.nearest_neighbors(embedding, 1)
    scores, locations = scores.reshape(4, 49), locations.reshape(4, 49)
    expected = patchcore_model.compute_anomaly_score(scores, locations, embedding)
    with fastad_anomalib.enabled():
        score = patchcore_model.compute_anomaly_score(scores, locations, embedding)
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("generator_class", [PatchcoreMap, PadimMap])
@pytest.mark.parametrize("sigma", [4, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_blur_matches_anomalib(generator_class, sigma, dtype):
    generator = generator_class(sigma=sigma)  # built before enable(): still covered
    maps = torch.rand(3, 1, 40, 56, generator=torch.Generator().manual_seed(sigma))
    exact = generator.double().blur(maps.double())
    generator.to(dtype)  # as anomalib's precision="float16" does to the model
    maps = maps.to(dtype)
    expected = generator.blur(maps)
    with fastad_anomalib.enabled(), warnings.catch_warnings():
        warnings.simplefilter("error", AnomalibFallbackWarning)
        assert generator.blur.kernel is generator._modules["blur"].kernel  # attributes stay the module's
        blurred = generator.blur(maps)
    assert blurred.dtype == dtype and blurred.shape == maps.shape
    tolerance = 2e-6 if dtype == torch.float32 else 2e-3
    assert (blurred.float() - expected.float()).abs().max() <= tolerance
    if dtype == torch.float32:  # the separable pass is nearer float64 than anomalib's dense one
        assert (blurred.double() - exact).abs().max() <= (expected.double() - exact).abs().max()


def test_blur_not_a_reflect_gaussian_runs_anomalib_and_says_why():
    generator = PatchcoreMap()
    generator.blur = GaussianBlur2d(sigma=(4.0, 4.0), kernel_size=(33, 33), border_type="replicate")
    maps = torch.rand(2, 1, 40, 40)
    expected = generator.blur(maps)
    with fastad_anomalib.enabled(), pytest.warns(AnomalibFallbackWarning, match="border_type='reflect'"):
        blurred = generator.blur(maps)
    assert torch.equal(blurred, expected)


def test_blur_sigma_read_back_from_the_kernel():
    for sigma in (1.0, 2.5, 4.0, 7.0):
        module = GaussianBlur2d(sigma=(sigma, sigma), kernel_size=(2 * int(4 * sigma + 0.5) + 1,) * 2)
        found_sigma, size = fastad_anomalib.gaussian_sigma(module)
        assert abs(found_sigma - sigma) <= 1e-6 * sigma and size == module.kernel.shape[-1]
    box = GaussianBlur2d(sigma=(4.0, 4.0), kernel_size=(9, 9))
    box.kernel = torch.full_like(box.kernel, 1 / 81)
    assert "not a normalised Gaussian" in fastad_anomalib.gaussian_sigma(box)


# --- end to end through anomalib's Engine ----------------------------------------------------

def _engine_run(model_factory, data_root, work_dir, accelerate: bool):
    """fit + predict through anomalib's Engine from the same seeds; returns (model, maps, scores)."""
    seed_everything(0, verbose=False)
    model = model_factory()
    datamodule = MVTecAD(root=data_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=work_dir, logger=False, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False)
    with fastad_anomalib.enabled() if accelerate else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("error", AnomalibFallbackWarning)
        seed_everything(1, verbose=False)
        engine.fit(model=model, datamodule=datamodule)
        predictions = engine.predict(model=model, datamodule=datamodule)
    maps = torch.cat([batch.anomaly_map for batch in predictions])
    scores = torch.cat([batch.pred_score.reshape(-1) for batch in predictions])  # PaDiM gives [B, 1]
    return model, maps, scores


def _patchcore():
    return Patchcore(backbone="resnet18", pre_trained=False, coreset_sampling_ratio=0.1, num_neighbors=9,
                     pre_processor=Patchcore.configure_pre_processor(image_size=(SIZE, SIZE)),
                     post_processor=False, evaluator=False, visualizer=False)


def _padim():
    return Padim(backbone="resnet18", pre_trained=False, n_features=32,
                 pre_processor=Padim.configure_pre_processor(image_size=(SIZE, SIZE)),
                 post_processor=False, evaluator=False, visualizer=False)


@pytest.fixture(scope="module")
def brick_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomalib-data")
    fastad_anomalib.datamodule("builtin:brick", root, size=SIZE)  # exports root/brick once
    return root


@pytest.mark.parametrize("model_factory", [_patchcore, _padim], ids=["patchcore", "padim"])
def test_engine_results_equal_anomalib(model_factory, brick_root, tmp_path):
    reference, ref_maps, ref_scores = _engine_run(model_factory, brick_root, tmp_path / "ref", accelerate=False)
    fast, maps, scores = _engine_run(model_factory, brick_root, tmp_path / "fast", accelerate=True)
    assert maps.shape == (20, SIZE, SIZE) and scores.shape == (20,)
    if model_factory is _patchcore:  # the bank is embedding[picks]: equal banks, equal picks in order
        assert reference.model.memory_bank.shape == (int(40 * 16 * 0.1), 384)
        assert torch.equal(fast.model.memory_bank, reference.model.memory_bank)
    torch.testing.assert_close(maps, ref_maps, rtol=1e-4, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=0)
    assert not fastad_anomalib.is_enabled()
