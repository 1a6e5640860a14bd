"""fastad.models.PEDENet: network shapes, the eq. 8 loss, the neighbour-pair sampler, training
and kNN scoring end to end on a tiny builtin set (CPU, small batches so it stays fast)."""
import math

import pytest
import torch

import fastad
from fastad.models import AnomalyResult, PEDENet, PatchEncoder, sample_training_batch
from fastad.models.components.patches import extract_patches
from fastad.models.pedenet.sampling import POSITIONS

SIZE, STRIDE = 128, 32


@pytest.fixture(scope="module")
def brick():
    """(train [4, 3, 128, 128], test [6, 3, 128, 128], masks [6, 128, 128]) from builtin:brick."""
    train = fastad.data.open_dataset("builtin:brick", "train", size=SIZE)
    test = fastad.data.open_dataset("builtin:brick", "test", size=SIZE)
    images = torch.stack([train[i].image for i in range(4)])
    samples = [test[i] for i in range(6)]
    return images, torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples])


@pytest.fixture(scope="module")
def trained(brick):
    """A PEDENet after a few small Adam steps, with its loss history."""
    torch.manual_seed(0)
    model = PEDENet(n_patches=16, n_pairs=8)
    history = fastad.engine.train(model, brick[0], steps=6, progress=False)
    return model, history


def test_network_shapes():
    torch.manual_seed(0)
    model = PEDENet(embedding_dim=32, n_components=3)
    patches = torch.rand(5, 3, 64, 64)
    z = model.embed(patches)
    assert z.shape == (5, 32) and z.abs().max() <= 1          # tanh output
    assert model.de(z).shape == (5, 3)
    assert torch.allclose(model.de(z).sum(1), torch.ones(5))
    assert model.locate(z, z.flip(0)).shape == (5, 8)
    assert [m.out_channels for m in model.pe.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [32, 64, 128, 128, 64, 64, 32, 32, 32]
    with pytest.raises(ValueError, match="64x64"):
        model.embed(torch.rand(2, 3, 32, 32))


def test_hierarchical_encoder_sees_sub_patches_by_position():
    # swapping two sub-patches changes the embedding: aggregation keeps their positions
    torch.manual_seed(0)
    pe = PatchEncoder()
    x = torch.rand(1, 3, 64, 64)
    swapped = x.clone()
    swapped[..., :32, :32], swapped[..., 32:, 32:] = x[..., 32:, 32:], x[..., :32, :32]
    assert not torch.allclose(pe(x), pe(swapped))
    # and the small encoder is shared: a patch of four equal sub-patches gives four equal maps
    tile = torch.rand(1, 3, 32, 32).repeat(1, 1, 2, 2)
    subs = tile.reshape(1, 3, 2, 32, 2, 32).permute(0, 2, 4, 1, 3, 5).reshape(4, 3, 32, 32)
    maps = pe.small(subs)
    assert torch.allclose(maps[0], maps[3])


def test_loss_components_and_weights():
    torch.manual_seed(0)
    model = PEDENet(lambda_den=0.3, lambda_lpn=2.0, lambda_reg=0.01)
    images = torch.rand(2, 3, 128, 128)
    batch = sample_training_batch(images, torch.Generator().manual_seed(0), n_patches=8, n_pairs=4)
    losses = model.loss(batch.patches, (batch.centre, batch.neighbour, batch.position))
    assert set(losses) == {"total", "den", "lpn", "reg"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    expected = 0.3 * losses["den"] + 2.0 * losses["lpn"] + 0.01 * losses["reg"]
    assert torch.allclose(losses["total"], expected)
    assert losses["reg"] > 0 and losses["lpn"] > 0
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sampler_position_labels_are_exact():
    # pixel values encode their own coordinates, so a crop tells where it came from
    h = w = 150
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    images = torch.stack([rows, cols, torch.zeros(h, w)])[None].repeat(3, 1, 1, 1)
    images[:, 2] = torch.arange(3.0)[:, None, None]           # image index
    batch = sample_training_batch(images, torch.Generator().manual_seed(1), n_patches=20, n_pairs=400,
                                  min_shift=40)
    assert batch.patches.shape == (20, 3, 64, 64) and batch.centre.shape == batch.neighbour.shape == (400, 3, 64, 64)
    assert set(batch.position.tolist()) == set(range(8))
    shift = batch.neighbour[:, :2, 0, 0] - batch.centre[:, :2, 0, 0]          # [400, 2] (dy, dx)
    direction = torch.tensor(POSITIONS)[batch.position].float()
    assert torch.equal(shift.sign(), direction)
    moved = shift[direction != 0].abs()
    assert moved.min() >= 40 and moved.max() <= 64
    assert torch.equal(batch.centre[:, 2], batch.neighbour[:, 2])             # same image
    # a crop is a contiguous 64x64 window
    assert torch.equal(batch.centre[:, 0, -1, 0] - batch.centre[:, 0, 0, 0], torch.full((400,), 63.0))
    with pytest.raises(ValueError, match="too small"):
        sample_training_batch(torch.rand(1, 3, 100, 100), n_pairs=2)


def test_adam_steps_reduce_the_loss(trained):
    _, history = trained
    assert len(history) == 6
    assert all(math.isfinite(step[name]) for step in history for name in ("total", "den", "lpn", "reg"))
    assert history[-1]["total"] < history[0]["total"]


def test_extract_patches_raster_order():
    images = torch.rand(2, 3, 128, 128)
    patches = extract_patches(images, 64, 32).reshape(2, 9, 3, 64, 64)
    assert torch.equal(patches[1, 5], images[1, :, 32:96, 64:128])           # row 1, col 2


def test_score_maps_and_image_scores(trained, brick):
    model, _ = trained
    train, test, masks = brick
    bank = model.build_memory_bank(train[:2], stride=STRIDE)
    assert bank.shape == (2 * 9, 64)
    result = model.score(test[:3], stride=STRIDE)
    assert isinstance(result, AnomalyResult)
    assert result.maps.shape == (3, SIZE, SIZE) and result.image_scores.shape == (3,)
    assert torch.equal(result.image_scores, result.maps.flatten(1).amax(1))
    assert (result.maps >= 0).all()
    # a training image is its own nearest neighbour: zero everywhere
    assert model.score(train[:1], stride=STRIDE).maps.abs().max() < 1e-3
    half = model.build_memory_bank(train[:2], stride=STRIDE, coreset=0.5)
    assert half.shape == (9, 64)


def test_end_to_end_pixel_auroc(trained, brick):
    model, _ = trained
    train, test, masks = brick
    model.build_memory_bank(train, stride=STRIDE)
    result = model.score(test, stride=STRIDE)
    auroc = fastad.metrics.pixel_auroc(result.maps, masks)
    assert isinstance(auroc, float) and 0.0 <= auroc <= 1.0
    assert 0.0 <= fastad.metrics.aupro(result.maps, masks) <= 1.0


@pytest.mark.parametrize("stride", [16, 32])
def test_dense_embeddings_equal_the_cropped_patches(stride):
    torch.manual_seed(0)
    model = PEDENet(embedding_dim=16).eval()
    images = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        dense = model.embed_images(images, stride, dense=True)
        crops = model.embed_images(images, stride, dense=False)
    assert dense.shape == crops.shape == (2, ((128 - 64) // stride + 1) * ((96 - 64) // stride + 1), 16)
    torch.testing.assert_close(dense, crops, rtol=1e-4, atol=1e-5)  # the two paths run different conv layouts
    with pytest.raises(ValueError, match="even"):
        model.pe.forward_dense(images, 15)
