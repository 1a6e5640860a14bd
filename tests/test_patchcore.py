"""PatchCore: backbone shapes and torchvision compatibility, the coreset bank, scoring against a
plain-PyTorch rendering of the paper's recipe, eq. 7 re-weighting, checkpoints, bad settings."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import fastad
from fastad.engine import load_checkpoint, train
from fastad.models import PatchCore, create_model
from fastad.models.components.backbones import ResNet
from fastad.models.components.zoo import build_backbone
from conftest import DEVICES

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore:PatchCore. no backbone weights")


@pytest.fixture(scope="module")
def normal_images():
    train_set = fastad.data.open_dataset("builtin:brick", "train", size=SIZE)
    return torch.stack([train_set[i].image for i in range(3)])


@pytest.fixture(scope="module")
def test_images():
    test_set = fastad.data.open_dataset("builtin:brick", "test", size=SIZE)
    return torch.stack([test_set[i].image for i in (0, 15)])


def fitted(normal_images, **settings) -> PatchCore:
    model = create_model("patchcore", image_size=SIZE, sigma=2.0, **settings)
    train(model, normal_images, progress=False)
    return model


def full_state(name: str) -> dict[str, torch.Tensor]:
    """A torchvision-layout state_dict of every stage plus an fc head, as torchvision saves it."""
    net = ResNet(name)
    net.reset_parameters(torch.Generator().manual_seed(1))
    state = net.state_dict()
    width = net.channels["layer4"]
    state.update({"fc.weight": torch.randn(1000, width), "fc.bias": torch.randn(1000)})
    return state


@pytest.mark.parametrize("backbone, layers, dim", [
    ("resnet18", ("layer2", "layer3"), 128 + 256),
    ("resnet18", ("layer1", "layer2", "layer3"), 64 + 128 + 256),
    ("wide_resnet50_2", ("layer2", "layer3"), 512 + 1024),
    ("efficientnet_lite0", None, 40 + 112),
    ("efficientnet_lite0", ("stride4", "stride8", "stride16"), 24 + 40 + 112),
    ("efficientnet_lite2", ("stride8", "stride16"), 48 + 120),
])
def test_feature_shapes(backbone, layers, dim):
    model = PatchCore(backbone=backbone, layers=layers, weights="random")
    images = torch.rand(2, 3, 96, 64)
    stride = {"layer1": 4, "layer2": 8, "stride4": 4}.get(model.settings.layers[0], 8)
    assert model.embed(images).shape == (2, dim, 96 // stride, 64 // stride)
    assert model.patch_features(images).shape == (2 * (96 // stride) * (64 // stride), dim)
    if backbone.startswith("efficientnet"):                            # blocks after the last tap are not built
        assert len(model.backbone.net.blocks) == 5
    else:
        assert not hasattr(model.backbone.net, "layer4")


def test_embedding_is_the_papers_aggregation():
    model = PatchCore()
    assert model.settings.backbone == "efficientnet_lite0" and model.settings.layers == ("stride8", "stride16")
    images = torch.rand(2, 3, 64, 64)
    maps = model.backbone(images)
    coarse = F.interpolate(F.avg_pool2d(maps["stride16"], 3, 1, 1), size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([F.avg_pool2d(maps["stride8"], 3, 1, 1), coarse], 1)
    torch.testing.assert_close(model.embed(images), expected)


@pytest.mark.parametrize("backbone", ["resnet18", "wide_resnet50_2"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_file_loads(backbone, suffix, tmp_path):
    state = full_state(backbone)
    path = tmp_path / f"{backbone}{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = PatchCore(backbone=backbone, weights=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # no random-init warning with weights
        model.setup(torch.rand(1, 3, SIZE, SIZE))
    loaded = model.backbone.net.state_dict()
    assert loaded and all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_state_dict_keys_are_torchvisions():
    torchvision = pytest.importorskip("torchvision")
    for name in ("resnet18", "wide_resnet50_2"):
        reference = getattr(torchvision.models, name)().state_dict()
        ours = ResNet(name).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()
                                                         if not k.startswith("fc.")}


def test_features_equal_torchvisions(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = PatchCore(backbone="resnet18", weights=str(path))
    model.setup(torch.rand(1, 3, SIZE, SIZE))
    images = torch.rand(2, 3, 128, 128)
    x = torchvision.transforms.functional.normalize(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        x = reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x)))))
        layer2 = reference.layer2(x)
        layer3 = reference.layer3(layer2)
        ours = model.eval().backbone(images)
    torch.testing.assert_close(ours["layer2"], layer2)
    torch.testing.assert_close(ours["layer3"], layer3)


def test_weights_file_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="weights must be the path of a local resnet18 weights file"):
        PatchCore(backbone="resnet18", weights=str(tmp_path / "missing.pth")).setup(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="weights: resnet18 has no packaged weights; give weights=PATH"):
        PatchCore(backbone="resnet18")                               # refused with the settings, before training
    path = tmp_path / "resnet18.pth"
    torch.save(full_state("resnet18"), path)
    with pytest.raises(ValueError, match=r"weights .*resnet18.pth is not a torchvision ResNet state_dict"):
        PatchCore(backbone="wide_resnet50_2", weights=str(path)).setup(torch.rand(1, 3, SIZE, SIZE))
    state = full_state("resnet18")
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer2.0.conv1.weight is \(128, 64, 5, 5\), expected \(128, 64, 3, 3\)"):
        PatchCore(backbone="resnet18", weights=str(path)).setup(torch.rand(1, 3, SIZE, SIZE))


def test_default_backbone_is_the_pretrained_lite0_without_a_warning(normal_images):
    model = PatchCore()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.setup(normal_images)
    expected = build_backbone("efficientnet_lite0", ("stride8", "stride16"), "pretrained").state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.backbone.state_dict().items())


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_random_initialisation_warns_and_follows_the_seed(normal_images, backbone):
    with pytest.warns(UserWarning, match="no backbone weights .weights='random'"):
        PatchCore(backbone=backbone, weights="random").setup(normal_images)
    a, b, c = (PatchCore(backbone=backbone, weights=None, seed=s) for s in (3, 3, 4))   # None: random alike
    for model in (a, b, c):
        model.setup(normal_images)
    states = [[v for v in m.backbone.state_dict().values() if v.ndim == 4][-1] for m in (a, b, c)]  # last conv
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])


@pytest.mark.parametrize("projection_dim", [None, 32])
def test_bank_is_the_kcenter_coreset_of_the_patch_features(normal_images, projection_dim):
    model = fitted(normal_images, coreset_ratio=0.25, projection_dim=projection_dim, seed=5)
    features = model.patch_features(normal_images)
    m = features.shape[0]
    n = round(0.25 * m)
    start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(5)))
    searched = features - features.mean(0, dtype=torch.float64).float()
    if projection_dim is not None:
        searched = searched @ fastad.nn.random_projection.sparse_random_matrix(features.shape[1], projection_dim, 5)
    index = fastad.ops.kcenter_coreset(searched, n, start)
    assert model.memory_bank.bank.shape == (n, features.shape[1])
    torch.testing.assert_close(model.memory_bank.bank, features[index], rtol=1e-5, atol=1e-5)


def test_ratio_one_keeps_every_patch(normal_images):
    model = fitted(normal_images, coreset_ratio=1.0)
    torch.testing.assert_close(model.memory_bank.bank, model.patch_features(normal_images), rtol=1e-6, atol=1e-5)


def reference_maps(model: PatchCore, images: torch.Tensor) -> torch.Tensor:
    """The recipe in plain PyTorch, float64: nearest bank distance per patch (cdist + min),
    bilinear upsampling to the image, Gaussian blur (torch's reflect pad + dense 2-D conv)."""
    features = model.embed(images).double().cpu()
    b, d, h, w = features.shape
    dist = torch.cdist(features.permute(0, 2, 3, 1).reshape(b, h * w, d), model.memory_bank.bank.double().cpu())
    patch = dist.min(2).values.reshape(b, 1, h, w)
    maps = F.interpolate(patch, size=images.shape[-2:], mode="bilinear", align_corners=False)
    sigma = model.settings.sigma
    return fastad.ops.reference.gaussian_blur(maps, sigma, 2 * int(4 * sigma + 0.5) + 1)[:, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_scores_equal_the_plain_pytorch_recipe(normal_images, test_images, device):
    model = fitted(normal_images).to(device)
    result = model.score(test_images.to(device))
    expected = reference_maps(model, test_images.to(device))
    scale = expected.abs().max().item()
    assert result.maps.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(result.maps.cpu().double(), expected, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(result.image_scores.cpu().double(), expected.flatten(1).amax(1), rtol=1e-5,
                               atol=1e-5 * scale)


def direct_reweighting(model: PatchCore, images: torch.Tensor, b: int) -> torch.Tensor:
    """Eq. 7 written out per image in float64: s = (1 - exp|m_test - m*| / sum_{m in N_b(m*)} exp|m_test - m|) s*."""
    bank = model.memory_bank.bank.double()
    factors = []
    for features in model.embed(images).double():
        patches = features.flatten(1).T
        dist = torch.cdist(patches, bank)
        worst = dist.min(1).values.argmax()
        m_test = patches[worst]
        m_star = bank[dist[worst].argmin()]
        support = torch.sort((bank - m_star).norm(dim=1), stable=True).indices[:b]
        to_support = (bank[support] - m_test).norm(dim=1)
        factors.append(1 - math.exp((m_test - m_star).norm()) / torch.exp(to_support).sum())
    return torch.tensor(factors, dtype=torch.float64)


@pytest.mark.parametrize("b", [2, 9])
def test_reweighting_is_eq_7(normal_images, test_images, b):
    plain = fitted(normal_images)
    reweighted = fitted(normal_images, neighbours=b)
    torch.testing.assert_close(reweighted.memory_bank.bank, plain.memory_bank.bank)
    ours, base = reweighted.score(test_images), plain.score(test_images)
    torch.testing.assert_close(ours.maps, base.maps)                 # the map is not re-weighted
    factor = direct_reweighting(reweighted, test_images, b)
    assert ((factor > 0) & (factor < 1)).all()
    torch.testing.assert_close(ours.image_scores.double(), base.image_scores.double() * factor, rtol=1e-5, atol=1e-7)


def test_checkpoint_round_trip(normal_images, test_images, tmp_path):
    model = create_model("patchcore", image_size=SIZE, sigma=2.0, coreset_ratio=0.2, neighbours=3)
    train(model, normal_images, run_dir=tmp_path, data="builtin:brick", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # a rebuild neither reads weights nor warns
        loaded = load_checkpoint(tmp_path).model
    assert loaded.settings == model.settings and loaded.image_size == SIZE
    assert torch.equal(loaded.memory_bank.bank, model.memory_bank.bank)
    expected, again = model.score(test_images), loaded.score(test_images)
    assert torch.equal(again.maps, expected.maps) and torch.equal(again.image_scores, expected.image_scores)


def test_ray_replicas_rebuild_the_model(normal_images, test_images):
    from fastad.distributed.weights import pack_model, unpack_model

    model = fitted(normal_images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replica = unpack_model(pack_model(model))
    assert torch.equal(replica.score(test_images).maps, model.score(test_images).maps)


def test_backbone_stays_in_eval_mode(normal_images):
    model = fitted(normal_images)
    model.train()
    assert model.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.parameters())


def test_scoring_before_fitting_is_refused():
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        PatchCore().score(torch.rand(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("settings, error, match", [
    ({"backbone": "vgg19"}, ValueError, "backbone must be one of efficientnet_lite0, efficientnet_lite1, "
                                        "efficientnet_lite2, resnet18, wide_resnet50_2; got 'vgg19'"),
    ({"weights": 3}, TypeError, "weights must be 'pretrained', 'random' or a file path"),
    ({"layers": ["layer3", "layer2"]}, ValueError, "layers must be a non-empty list"),
    ({"layers": ["layer5"]}, ValueError, "layers must be a non-empty list of distinct taps of efficientnet_lite0"),
    ({"backbone": "resnet18", "layers": ["stride8"]}, ValueError, "taps of resnet18 from .'layer1'"),
    ({"layers": "layer2"}, ValueError, "layers must be a non-empty list"),
    ({"coreset_ratio": 0.0}, ValueError, "coreset_ratio must be > 0.0"),
    ({"coreset_ratio": 1.5}, ValueError, "coreset_ratio must be <= 1.0"),
    ({"projection_dim": 0}, ValueError, r"projection_dim must be in >= 1"),
    ({"neighbours": 65}, ValueError, r"neighbours must be in \[1, 64\]"),
    ({"neighbours": 2.0}, TypeError, "neighbours must be an int"),
    ({"sigma": -1}, ValueError, "sigma must be > 0.0"),
    ({"sigma": 10, "image_size": 32}, ValueError, "sigma must leave the blur's radius"),
    ({"image_size": 16}, ValueError, "image_size must be in >= 32"),
    ({"seed": -1}, ValueError, "seed must be in >= 0"),
    ({"coreset": 0.1}, TypeError, "patchcore has no config key 'coreset'"),
])
def test_bad_settings_name_the_key(settings, error, match):
    with pytest.raises(error, match=match):
        create_model("patchcore", **settings)
