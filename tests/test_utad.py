"""fastad.models.UTAD: IE-Net and Expert-Net losses against their formulas on tiny tensors, AdaIN
against eq. 7, the VGG-19 extractor, the perceptual measurement and threshold, shapes through
both stages, and train -> score -> metrics end to end on builtin data (small widths, few steps)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastad
from fastad.models import UTAD, AnomalyResult, create_model
from fastad.models.utad.expert import ExpertNet, adaptive_instance_norm
from fastad.models.utad.impression import (ImpressionExtractor, InceptionBlock, kl_to_standard_normal,
                                   mutual_information_loss, shuffle_codes)
from fastad.models.utad.measure import layer_distances, segment
from fastad.models.components.backbones import VGG19Features
from fastad.models.components.zoo import build_backbone
from fastad.models.utad.model import BACKBONES, DEFAULT_TAPS

SIZE = UTAD.image_size
TINY = dict(ie_widths=[4, 8, 8, 8], latent_dim=8, ie_hidden=32, expert_width=4, detail_dim=4, detail_width=4,
            mlp_hidden=8, pixel_threshold_images=2, batch_size=2)


def tiny_utad(**overrides) -> UTAD:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UTAD(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def brick():
    """(train [4, 3, 128, 128], test [3, 3, 128, 128] (1 normal, 2 defective), masks [3, 128, 128],
    labels [3]); VGG-19 at 128 px dominates the tests' time, so the sets are small."""
    train = fastad.data.open_dataset("builtin:brick", "train", size=SIZE)
    test = fastad.data.open_dataset("builtin:brick", "test", size=SIZE)
    everything = [test[i] for i in range(len(test))]
    samples = [s for s in everything if s.label == 0][:1] + [s for s in everything if s.label == 1][:2]
    return (torch.stack([train[i].image for i in range(4)]), torch.stack([s.image for s in samples]),
            torch.stack([s.mask for s in samples]), torch.tensor([s.label for s in samples]))


# ---- IE-Net ---------------------------------------------------------------------------------------
def test_kl_matches_eq2_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 0: 0.5 (1 + 1 - 1 - 0) + 0.5 (0 + 2 - 1 - log 2); row 1: 0
    expected = (0.5 + 0.5 * (1.0 - math.log(2.0))) / 2
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0


def test_mutual_information_loss_matches_eq4():
    positive, negative = torch.tensor([0.5, 0.8]), torch.tensor([0.1, 0.5])
    expected = -((math.log(0.5) + math.log(0.8)) / 2 + (math.log(0.9) + math.log(0.5)) / 2)
    assert mutual_information_loss(positive, negative).item() == pytest.approx(expected, rel=1e-6)
    # a perfect discriminator drives it to 0
    assert mutual_information_loss(torch.ones(4), torch.zeros(4)).item() == pytest.approx(0.0, abs=1e-5)


def test_shuffle_codes_moves_every_code():
    z = torch.arange(5.0)[:, None].repeat(1, 3)
    for seed in range(10):
        shuffled = shuffle_codes(z, torch.Generator().manual_seed(seed))
        assert (shuffled[:, 0] != z[:, 0]).all()
        assert sorted(shuffled[:, 0].tolist()) == z[:, 0].tolist()
    with pytest.raises(ValueError, match="at least 2"):
        shuffle_codes(torch.zeros(1, 3))


def test_inception_block_and_ie_shapes():
    block = InceptionBlock(3, 8)
    assert block(torch.rand(2, 3, 16, 16)).shape == (2, 8, 16, 16)
    assert len(block.branches) == 4
    with pytest.raises(ValueError, match="divisible by 4"):
        InceptionBlock(3, 6)
    torch.manual_seed(0)
    ie = ImpressionExtractor(64, (4, 8, 8, 8), latent_dim=6, hidden=16)
    x = torch.rand(3, 3, 64, 64)
    mu, logvar, pooled = ie.encode(x)
    assert mu.shape == logvar.shape == (3, 6) and pooled.shape == (3, 8)
    h = ie.impression(x)
    assert h.shape == x.shape and (h > 0).all() and (h < 1).all()
    with pytest.raises(ValueError, match="64, 64"):
        ie.encode(torch.rand(1, 3, 32, 32))


def test_ie_loss_is_eq6_with_the_generator_s_sample():
    torch.manual_seed(0)
    ie = ImpressionExtractor(32, (4, 4), latent_dim=5, hidden=8, alpha=0.3, beta=0.2, gamma=2.0)
    x = torch.rand(4, 3, 32, 32)
    losses = ie.loss(x, torch.Generator().manual_seed(7))
    assert torch.allclose(losses["total"], 0.3 * losses["mi"] + 0.2 * losses["kl"] + 2.0 * losses["rec"])
    mu, logvar, _ = ie.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))      # drawn first
    z = mu + (0.5 * logvar).exp() * eps
    assert torch.allclose(losses["rec"], F.mse_loss(ie.decode(z), x))
    assert torch.allclose(losses["kl"], kl_to_standard_normal(mu, logvar))
    losses["total"].backward()
    assert all(p.grad is not None for p in ie.parameters())                   # discriminator included


# ---- Expert-Net -----------------------------------------------------------------------------------
def test_adain_matches_eq7_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    gamma, beta = torch.tensor([[2.0]]), torch.tensor([[0.5]])
    std = math.sqrt(1.25 + 1e-5)                                             # biased variance of 1..4
    expected = torch.tensor([2.0 * (v - 2.5) / std + 0.5 for v in (1, 2, 3, 4)]).view(1, 1, 2, 2)
    assert torch.allclose(adaptive_instance_norm(a, gamma, beta), expected, atol=1e-6)
    # per sample and channel: output mean beta, output std gamma
    a = torch.randn(2, 3, 8, 8) * 5 + 3
    gamma, beta = torch.rand(2, 3) + 0.5, torch.randn(2, 3)
    out = adaptive_instance_norm(a, gamma, beta)
    assert torch.allclose(out.mean((2, 3)), beta, atol=1e-5)
    assert torch.allclose(out.std((2, 3), unbiased=False), gamma, atol=1e-3)


def test_expert_shapes_and_losses_match_formulas():
    torch.manual_seed(0)
    expert = ExpertNet(width=4, detail_dim=3, detail_width=4, mlp_hidden=8, lambda_detail=0.7)
    x, h = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = expert(x, h)
    assert out.reconstruction.shape == out.naive_impression.shape == (2, 3, 32, 32)
    assert out.detail.shape == (2, 3)
    assert torch.allclose(out.detail, expert.detail(x))
    losses = expert.loss(x, h)
    assert torch.allclose(losses["rec"], (out.reconstruction - x).abs().mean())
    assert torch.allclose(losses["naive"], (out.naive_impression - h).abs().mean())
    assert torch.allclose(losses["detail"], (expert.detail(out.reconstruction) - expert.detail(x)).abs().mean())
    assert torch.allclose(losses["total"], losses["rec"] + losses["naive"] + 0.7 * losses["detail"])
    # the detail vector steers the reconstruction through AdaIN
    other = expert.decode_image(expert.encode_impression(h), out.detail + 1.0)
    assert not torch.allclose(other, out.reconstruction)
    with pytest.raises(ValueError, match="divisible by 8"):
        expert(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20))


# ---- perceptual measurement -----------------------------------------------------------------------
def test_vgg_features_one_pass_no_grad_and_random_notice():
    with pytest.warns(UserWarning, match="random initialisation"):
        vgg = VGG19Features(None, seed=3)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    c12, c22, c34 = vgg(x)
    assert c12.shape == (2, 64, 32, 32) and c22.shape == (2, 128, 16, 16) and c34.shape == (2, 256, 8, 8)
    assert not c34.requires_grad and (c12 >= 0).all()
    with pytest.warns(UserWarning):
        again = VGG19Features(None, seed=3)
    assert torch.equal(again(x)[2], c34)                                     # fixed by the seed


def test_vgg_features_load_a_local_torchvision_file(tmp_path):
    from safetensors.torch import save_file

    from fastad.models.components.backbones import VGG19_CONVS

    state = {}
    for index, cin, cout in VGG19_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(cout)
    state["classifier.0.weight"] = torch.zeros(2, 2)                          # ignored
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    torch.save(state, tmp_path / "vgg19.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                        # no random-init notice
        for name in ("vgg19.safetensors", "vgg19.pth"):
            vgg = VGG19Features(str(tmp_path / name))
            assert torch.equal(vgg.convs[7].weight, state["features.16.weight"])
    del state["features.5.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="features.5.bias"):
        VGG19Features(str(tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match="vgg_weights"):
        VGG19Features(str(tmp_path / "missing.pth"))


def test_layer_distances_and_segmentation_formulas():
    a = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)]
    b = [torch.ones(1, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1), torch.full((1, 3, 2, 2), 2.0)]
    d = layer_distances(a, b, (4, 4))
    assert d.shape == (1, 2, 4, 4)
    assert torch.allclose(d[0, 0], torch.full((4, 4), (1.0 + 9.0) / 2))      # mean over channels of (a-b)^2
    assert torch.allclose(d[0, 1], torch.full((4, 4), 4.0))                   # constant map upsampled
    maps = torch.tensor([[[0.1, 0.5], [0.7, 0.2]]])
    assert torch.equal(segment(maps, 0.5), torch.tensor([[[False, True], [True, False]]]))
    with pytest.raises(ValueError, match="same layers"):
        layer_distances(a, b[:1], (4, 4))


# ---- the model ------------------------------------------------------------------------------------
def test_registered_with_two_stages_and_validated_config(tmp_path):
    assert UTAD.stages == ("impression", "expert") and UTAD.image_size == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                        # pretrained: no notice
        model = create_model("utad", **TINY)
    assert isinstance(model, UTAD) and model.config["ie_widths"] == [4, 8, 8, 8]
    assert model.config["backbone"] == "efficientnet_lite0" and model.config["layers"] == list(DEFAULT_TAPS)
    with pytest.warns(UserWarning, match="VGG-19"):
        assert create_model("utad", backbone="vgg19", **TINY).config["weights"] is None
    with pytest.raises(ValueError, match="batch_size"):
        UTAD(batch_size=1)
    with pytest.raises(ValueError, match="pixel_quantile"):
        UTAD(pixel_quantile=1.0)
    with pytest.raises(ValueError, match="vgg_weights"):
        UTAD(vgg_weights=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="stage"):
        model.configure_optimizer("joint", 1)
    for kwargs, match in [({"backbone": "vgg19", "layers": ["stride2"]}, "vgg_weights"),
                          ({"vgg_weights": "vgg19.pth", "backbone": "efficientnet_lite0"}, "vgg_weights is for"),
                          ({"weights": None}, "weights must be"), ({"layers": ["stride8", "stride2"]}, "layers"),
                          ({"layers": ["conv1_2"]}, "layers")]:
        with pytest.raises(ValueError, match=match):
            UTAD(**kwargs)
    with pytest.raises(ValueError) as error:                              # one line listing the choices
        UTAD(backbone="vgg16")
    assert "\n" not in str(error.value) and all(name in str(error.value) for name in BACKBONES)


def test_a_config_from_before_the_zoo_means_vgg19():
    # every saved config before the backbone zoo holds vgg_weights and no backbone
    legacy = UTAD.Config.from_dict({"vgg_weights": None, "vgg_seed": 2}, "utad")
    assert legacy.backbone == "vgg19" and legacy.weights is None and legacy.layers is None
    current = UTAD.Config()
    assert UTAD.Config.from_dict(current.as_dict(), "utad") == current      # a new config round-trips


def test_pretrained_perceptual_network_is_loaded_and_frozen(brick):
    model = tiny_utad(layers=["stride4", "stride16"])
    reference = build_backbone("efficientnet_lite0", ("stride4", "stride16"), "pretrained")
    before = model.perceptual.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(before.values(), reference.state_dict().values()))
    assert not any(p.requires_grad for p in model.perceptual.parameters())
    fastad.engine.train(model, brick[0], steps=1, progress=False)
    model.train()
    assert not model.perceptual.net.training
    assert all(torch.equal(v, before[k]) for k, v in model.perceptual.state_dict().items())
    assert [tuple(f.shape[1:]) for f in model.perceptual(brick[0][:1])] == [(24, 32, 32), (112, 8, 8)]
    assert model.layer_weights.shape == (2, 2)
    with pytest.warns(UserWarning, match="random initialisation"):
        random = UTAD(**TINY, weights="random")
    assert not torch.equal(random.perceptual.state_dict()["net.net.conv_stem.weight"],
                           before["net.net.conv_stem.weight"])


def test_shapes_through_both_stages():
    model = tiny_utad()
    x = torch.rand(1, 3, SIZE, SIZE)
    parts = model.reconstruct(x)
    assert all(parts[k].shape == x.shape for k in ("impression", "reconstruction", "naive_impression"))
    distances = model.layer_distances(x)
    assert distances.shape == (1, 2, len(DEFAULT_TAPS), SIZE, SIZE) and (distances >= 0).all()
    assert (distances[:, 1] == 0).all() and (distances[:, 0] > 0).any()      # naive term off by default
    result = model.score(x)
    assert isinstance(result, AnomalyResult)
    assert result.maps.shape == (1, SIZE, SIZE) and torch.equal(result.image_scores, result.maps.flatten(1).amax(1))
    assert model.score(torch.rand(1, 3, 64, 64)).maps.shape == (1, 64, 64)   # other sizes: resized


def test_expert_stage_trains_only_expert_net(brick):
    model = tiny_utad()
    generator = torch.Generator().manual_seed(0)
    optimizer, _ = model.configure_optimizer("expert", 1)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.expert.parameters()}
    ie_before = {k: v.clone() for k, v in model.ie.state_dict().items()}
    losses = model.training_loss("expert", brick[0], generator)
    assert set(losses) == {"total", "rec", "naive", "detail"}
    losses["total"].backward()
    optimizer.step()
    assert all(p.grad is None for p in model.ie.parameters())
    assert all(torch.equal(v, model.ie.state_dict()[k]) for k, v in ie_before.items())
    ie_optimizer, _ = model.configure_optimizer("impression", 1)
    assert {id(p) for g in ie_optimizer.param_groups for p in g["params"]} == {id(p) for p in model.ie.parameters()}
    assert set(model.training_loss("impression", brick[0], generator)) == {"total", "mi", "kl", "rec"}


def test_prepare_scoring_calibrates_layer_weights_and_threshold(brick):
    model = tiny_utad(pixel_quantile=0.9, naive_weight=0.5)
    model.prepare_scoring(brick[0])                                          # the first 2 images
    distances = model.layer_distances(brick[0][:2])
    weighted = distances * model.layer_weights[None, :, :, None, None]
    taps = len(DEFAULT_TAPS)
    assert torch.allclose(weighted.mean((0, 3, 4)), torch.ones(2, taps), rtol=1e-3)   # each term and layer: mean 1
    maps = weighted[:, 0].sum(1) + 0.5 * weighted[:, 1].sum(1)                     # eq. 8
    assert torch.allclose(maps.mean(), torch.tensor(taps + 0.5 * taps), rtol=1e-3)
    flagged = segment(maps, model.pixel_threshold).float().mean().item()
    assert flagged == pytest.approx(0.1, abs=0.01)
    assert model.calibrate_pixel_threshold(brick[0][:1], 0.5) == pytest.approx(float(maps[0].median()), rel=1e-3)


def test_end_to_end_train_checkpoint_score_metrics(brick, tmp_path):
    train, test, masks, labels = brick
    model = tiny_utad()
    history = fastad.engine.train(model, train, steps={"impression": 3, "expert": 2}, run_dir=tmp_path,
                                  progress=False)
    assert [row["stage"] for row in history] == ["impression"] * 3 + ["expert"] * 2
    assert all(math.isfinite(row["total"]) for row in history)
    assert math.isfinite(model.segmentation_threshold())
    result = model.score(test)
    assert result.maps.shape == (3, SIZE, SIZE) and torch.isfinite(result.maps).all()
    for value in (fastad.metrics.pixel_auroc(result.maps, masks), fastad.metrics.aupro(result.maps, masks),
                  fastad.metrics.iou(result.maps, masks, model.segmentation_threshold()),
                  fastad.metrics.image_auroc(result.image_scores, labels)):
        assert 0.0 <= value <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = fastad.engine.load_checkpoint(tmp_path).model
    assert torch.equal(restored.pixel_threshold, model.pixel_threshold)
    for (key, value), saved in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(value, saved), key                                # the backbone travels with it
    assert torch.allclose(restored.score(test[:1]).maps, model.score(test[:1]).maps, atol=1e-5)


def test_old_config_keys_load_under_their_new_names():
    config = UTAD.Config.from_dict({"threshold_quantile": 0.95, "calibration_images": 3}, "utad")
    assert config.pixel_quantile == 0.95 and config.pixel_threshold_images == 3
    assert "threshold_quantile" not in config.as_dict()
    with pytest.raises(ValueError, match="'threshold_quantile' is the old name of 'pixel_quantile'"):
        UTAD.Config.from_dict({"threshold_quantile": 0.95, "pixel_quantile": 0.9}, "utad")
