"""fastad.Scorer: memory formats, input types and sizes, precisions, argument errors, and (with a
GPU) CUDA graphs against eager scoring."""
import pytest
import torch

import fastad
from fastad.engine import train
from fastad.models import create_model
from conftest import requires_cuda

QUICK = {"pedenet": {"n_patches": 8, "n_pairs": 4}, "fcdd": {}, "glance": {"stride": 32}, "utad": {},
         "rawpixel": {}, "patchcore": {}}


def ready(name: str, device="cpu"):
    """(model set up on 4 builtin:brick training images without training steps, 2 test images [2, 3, S, S])."""
    torch.manual_seed(0)
    model = create_model(name, **QUICK[name])
    size = model.image_size
    train_set = fastad.data.open_dataset("builtin:brick", "train", size=size)
    test_set = fastad.data.open_dataset("builtin:brick", "test", size=size)
    train(model.to(device), torch.stack([train_set[i].image for i in range(4)]).to(device), steps=0, progress=False)
    return model, torch.stack([test_set[i].image for i in (0, 15)])


@pytest.fixture(scope="module")
def fcdd():
    return ready("fcdd")


@pytest.mark.filterwarnings("ignore:UTAD. no VGG-19 weights", "ignore:PatchCore. no backbone weights")
@pytest.mark.parametrize("name", sorted(QUICK))
def test_channels_last_scores_like_contiguous(name):
    model, images = ready(name)
    nhwc = fastad.Scorer(model, memory_format="channels_last")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    fast = nhwc.score(images)
    plain = fastad.Scorer(model, memory_format="contiguous").score(images)
    assert all(c.weight.is_contiguous() for c in convs)
    assert fast.maps.shape == plain.maps.shape == (2, model.image_size, model.image_size)
    scale = plain.maps.abs().max().item()
    torch.testing.assert_close(fast.maps, plain.maps, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(fast.image_scores, plain.image_scores, rtol=1e-4, atol=1e-4 * scale)


def test_uint8_and_other_sizes_are_accepted(fcdd):
    model, images = fcdd
    scorer = fastad.Scorer(model)
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(scorer.score(as_uint8).maps, scorer.score(as_uint8.float() / 255).maps)
    larger = torch.nn.functional.interpolate(images, size=(300, 260), mode="bilinear", align_corners=False)
    result = scorer(larger)
    assert result.maps.shape == (2, model.image_size, model.image_size) and result.maps.dtype == torch.float32
    assert torch.isfinite(result.maps).all()


@pytest.mark.filterwarnings("ignore:UTAD. no VGG-19 weights", "ignore:PatchCore. no backbone weights")
@pytest.mark.parametrize("name", sorted(QUICK))
def test_bf16_stays_close_to_fp32(name):
    model, images = ready(name)
    exact = fastad.Scorer(model).score(images).maps
    bf16 = fastad.Scorer(model, precision="bf16").score(images).maps
    assert bf16.dtype == torch.float32
    assert (bf16 - exact).abs().mean() <= 0.05 * exact.abs().mean()      # 2 % for UTAD's deep, untrained nets


@pytest.mark.parametrize("kwargs, error, match", [
    ({"precision": "fp8"}, ValueError, "precision must be one of"),
    ({"precision": "fp16"}, ValueError, "needs a CUDA device"),
    ({"cuda_graphs": True}, ValueError, "cuda_graphs needs a CUDA device"),
    ({"memory_format": "nhwc"}, ValueError, "memory_format must be one of"),
    ({"batch_size": 0}, ValueError, "batch_size must be in >= 1"),
])
def test_bad_arguments_are_named(fcdd, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastad.Scorer(fcdd[0], **kwargs)


def test_bad_images_are_named(fcdd):
    scorer = fastad.Scorer(fcdd[0])
    with pytest.raises(ValueError, match=r"images must be a tensor \[B, 3, H, W\]"):
        scorer.score(torch.rand(3, 224, 224))
    with pytest.raises(TypeError, match="float in"):
        scorer.score(torch.zeros(1, 3, 224, 224, dtype=torch.int32))


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["pedenet", "fcdd", "glance", "patchcore"])
def test_cuda_graphs_replay_matches_eager_and_cpu(name):
    model, images = ready(name)
    on_cpu = fastad.Scorer(model).score(images).maps
    eager = fastad.Scorer(model, "cuda").score(images).maps
    graphed = fastad.Scorer(model, "cuda", cuda_graphs=True)
    first, again = graphed.score(images).maps, graphed.score(images.flip(0)).maps
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    torch.testing.assert_close(again, eager.flip(0), rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    torch.testing.assert_close(eager.cpu(), on_cpu, rtol=1e-3, atol=1e-3 * on_cpu.abs().max().item())
