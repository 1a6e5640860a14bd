"""anomalib's own PatchCore through anomalib's Engine, with and without
fastad.integrations.anomalib.enable(): fit (backbone, k-center coreset, a validation pass) and
predict, on builtin brick (40 training crops, 20 test crops, 256 px), resnet18 with random
weights, layers 2 + 3, coreset ratio 0.1, k = 9. Skipped without anomalib.

    pytest benchmarks/test_anomalib_bench.py --benchmark-group-by=group

Each contender's fit starts from a fresh model built from the same seeds (set-up, untimed); the
fastad contender then checks its memory bank, maps and scores against anomalib's from the same
session (bank equal, maps and scores within 1e-4 relative). anomalib's fit takes minutes, so it
runs once; predict runs 3 rounds after a warm-up.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("anomalib")

import fastad.integrations.anomalib as fastad_anomalib  # noqa: E402
from benchlib import run_pedantic  # noqa: E402

from anomalib.engine import Engine  # noqa: E402
from anomalib.models import Patchcore  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

SIZE = 256
SEEDS = 4  # coreset-agreement runs
CONTENDERS = ["anomalib", "anomalib+fastad"]  # anomalib first: the fastad run compares against it
_fitted: dict[str, tuple] = {}  # contender -> (lightning model, engine), for predict
_outputs: dict[str, dict] = {}  # contender -> {"bank", "maps", "scores"}


@pytest.fixture(scope="module")
def brick(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomalib-bench")
    return fastad_anomalib.datamodule("builtin:brick", root, size=SIZE, train_batch_size=8,
                                      eval_batch_size=8, num_workers=0)


def _accelerated(contender: str):
    return fastad_anomalib.enabled() if contender == "anomalib+fastad" else contextlib.nullcontext()


def _fresh(root):
    seed_everything(0, verbose=False)
    model = Patchcore(backbone="resnet18", pre_trained=False, layers=("layer2", "layer3"),
                      coreset_sampling_ratio=0.1, num_neighbors=9,
                      pre_processor=Patchcore.configure_pre_processor(image_size=(SIZE, SIZE)),
                      post_processor=False, evaluator=False, visualizer=False)
    engine = Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False)
    seed_everything(1, verbose=False)
    return model, engine


@pytest.mark.parametrize("contender", CONTENDERS)
def test_patchcore_fit(benchmark, contender, brick, tmp_path):
    benchmark.group = "anomalib PatchCore fit (40 x 256 px, coreset 0.1)"
    benchmark.extra_info["contender"] = contender
    runs = []

    def setup():
        runs.append(_fresh(tmp_path))
        return runs[-1], {}

    def fit(model, engine):
        with _accelerated(contender):
            engine.fit(model=model, datamodule=brick)

    benchmark.pedantic(fit, setup=setup, rounds=1, warmup_rounds=0, iterations=1)
    _fitted[contender] = runs[-1]
    bank = runs[-1][0].model.memory_bank
    assert bank.shape == (int(40 * 32 * 32 * 0.1), 384)
    _outputs.setdefault(contender, {})["bank"] = bank
    if contender != CONTENDERS[0] and CONTENDERS[0] in _outputs:
        same_set, moved = _pick_agreement(bank, _outputs[CONTENDERS[0]]["bank"])
        benchmark.extra_info.update(same_set=same_set, picks_moved=moved)
        print(f"\ncoreset vs anomalib's: same set {same_set}, {moved} of {bank.shape[0]} picks at another position")
        assert same_set


def _pick_agreement(bank: torch.Tensor, reference: torch.Tensor) -> tuple[bool, int]:
    """(same rows as a set, how many rows sit at another position) of two banks of embedding rows."""
    position = {row.numpy().tobytes(): i for i, row in enumerate(reference)}
    found = [position.get(row.numpy().tobytes(), -1) for row in bank]
    return len(bank) == len(reference) and sorted(found) == list(range(len(reference))), \
        sum(j != i for i, j in enumerate(found))


@pytest.mark.parametrize("contender", CONTENDERS)
def test_patchcore_predict(benchmark, contender, brick):
    benchmark.group = "anomalib PatchCore predict (20 x 256 px)"
    benchmark.extra_info["contender"] = contender
    if contender not in _fitted:
        pytest.skip("needs the fit benchmark of the same contender in this session")
    model, engine = _fitted[contender]

    def predict():
        with _accelerated(contender):
            return engine.predict(model=model, datamodule=brick)

    predictions = run_pedantic(benchmark, predict)
    outputs = _outputs[contender]
    outputs["maps"] = torch.cat([batch.anomaly_map for batch in predictions])
    outputs["scores"] = torch.cat([batch.pred_score.reshape(-1) for batch in predictions])
    assert outputs["maps"].shape == (20, SIZE, SIZE)
    reference = _outputs.get(CONTENDERS[0], {})
    if contender != CONTENDERS[0] and "maps" in reference:
        # elementwise 1e-4 relative is reported; asserted relative to the map's range, since
        # anomalib's own |x|² − 2x·y + |y|² distances are off by more where distances are small
        relative = (outputs["maps"] - reference["maps"]).abs() / reference["maps"].abs()
        benchmark.extra_info.update(map_max_rel=float(relative.max()), map_over_1e4=int((relative > 1e-4).sum()))
        print(f"\nmaps vs anomalib's: max relative difference {float(relative.max()):.2e}, "
              f"{int((relative > 1e-4).sum())} of {relative.numel()} pixels over 1e-4")
        scale = float(reference["maps"].abs().max())
        torch.testing.assert_close(outputs["maps"], reference["maps"], rtol=1e-4, atol=1e-4 * scale)
        torch.testing.assert_close(outputs["scores"], reference["scores"], rtol=1e-4, atol=0)


def test_coreset_agreement(brick, capsys, tmp_path):
    """How often fastad's greedy loop picks other rows than anomalib's from the same projection
    and start: SEEDS seeds on the layer2+3 features of the 40 training crops at 128 px (10 240
    patches, 1 024 picks). Prints the counts; asserts the picked sets are equal."""
    from anomalib.models.components.sampling import KCenterGreedy

    model = _fresh(tmp_path)[0].model.train()  # training mode: forward returns the patch embedding
    model.feature_extractor.eval()
    brick.setup()
    images = torch.stack([brick.train_data[i].image for i in range(len(brick.train_data))])
    with torch.no_grad():
        embedding = torch.cat([model(torch.nn.functional.interpolate(batch, size=128, mode="bilinear"))
                               for batch in images.split(8)])
    model.embedding_store.clear()
    order_differs, set_differs, moved = 0, 0, 0
    for seed in range(SEEDS):
        picks = []
        for contender in CONTENDERS:
            seed_everything(seed, verbose=False)
            with _accelerated(contender):
                picks.append(KCenterGreedy(embedding, 0.1).select_coreset_idxs())
        order_differs += picks[0] != picks[1]
        set_differs += set(picks[0]) != set(picks[1])
        moved += sum(a != b for a, b in zip(*picks))
    with capsys.disabled():
        print(f"\ncoreset agreement, {SEEDS} seeds x {len(picks[0])} picks of {embedding.shape[0]} rows: order differs in "
              f"{order_differs}, set in {set_differs}; {moved} of {SEEDS * len(picks[0])} positions differ")
    assert set_differs == 0
