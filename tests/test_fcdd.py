"""fastad.models.FCDD: the two losses against their formulas, the push function at 0, the
receptive field of the nets, confetti noise and the augmentation, the per-epoch learning-rate
decay and exact resume, semi-supervised batches, and train -> score -> pixel AUROC end to end on
builtin:brick (small widths and batches; one CPU thread, which is faster on a busy machine)."""
import math

import pytest
import torch

import fastad
from fastad.engine import resume, train
from fastad.engine.checkpoint import load_checkpoint, save_checkpoint
from fastad.models import FCDD, create_model
from fastad.models.fcdd.augment import (confetti_noise, local_contrast_normalization, min_max, random_resized_crop,
                                        augment)
from fastad.models.fcdd.losses import PUSH_EPS, fcdd_loss, hsc_pixel_loss, push
from fastad.models.components.zoo import build_backbone
from fastad.models.fcdd.model import BACKBONES
from fastad.models.fcdd.networks import fcdd_cnn224, pseudo_huber
from fastad.nn.score_map_upsampler import receptive_field


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def p(x):
    return -math.log(1 - math.exp(-x))


# --- losses ---------------------------------------------------------------------------------------

SCORES = torch.tensor([[[0.5, 2.0], [1.0, 0.25]],
                       [[3.0, 0.1], [0.2, 0.4]],
                       [[0.3, 0.6], [0.9, 1.2]]], dtype=torch.float64)
MASKS = torch.tensor([[[0, 1], [0, 0]],
                      [[1, 0], [1, 0]],
                      [[0, 0], [0, 0]]], dtype=torch.bool)


def test_pseudo_huber_and_push():
    x = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    expected = torch.tensor([0.0, math.sqrt(1.25) - 1, math.sqrt(10) - 1], dtype=torch.float64)
    assert torch.allclose(pseudo_huber(x), expected)
    assert torch.allclose(pseudo_huber(-x), pseudo_huber(x))
    with_eps = [-math.log(1 - math.exp(-v) + PUSH_EPS) for v in (0.5, 3.0)]
    assert push(x[1:]).tolist() == pytest.approx(with_eps, rel=1e-12)
    assert push(x[1:]).tolist() == pytest.approx([p(0.5), p(3.0)], abs=1e-5)     # eps is negligible there
    assert float(push(torch.zeros(()))) == pytest.approx(-math.log(PUSH_EPS))


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_pseudo_huber_keeps_small_scores(dtype, rel):
    x = torch.tensor([1e-5, 1e-3, 0.05, 0.5, 30.0], dtype=torch.float64)
    exact = torch.sqrt(x * x + 1) - 1
    assert pseudo_huber(x.to(dtype)).double().tolist() == pytest.approx(exact.tolist(), rel=rel)


def test_fcdd_loss_is_eq4():
    # image 0: normal (0.5 + 1.0 + 0.25)/4, anomalous mean 2.0/4; image 1: normal 0.5/4, anomalous
    # 3.2/4; image 2 has no anomalous pixel: its normal mean only
    expected = ((1.75 / 4 + p(0.5)) + (0.5 / 4 + p(3.2 / 4)) + 3.0 / 4) / 3
    assert float(fcdd_loss(SCORES, MASKS)) == pytest.approx(expected, rel=1e-5)
    # a batch with no anomalous pixels: the mean score
    assert float(fcdd_loss(SCORES, torch.zeros_like(MASKS))) == pytest.approx(float(SCORES.mean()))


def test_hsc_pixel_loss_is_eq5():
    # |J0| = 9, |J1| = 3 over the 12 pixels of the batch
    normal = 0.5 + 1.0 + 0.25 + 0.1 + 0.4 + 0.3 + 0.6 + 0.9 + 1.2
    pushed = p(2.0) + p(3.0) + p(0.2)
    expected = (normal + 9 / 3 * pushed) / 12
    assert float(hsc_pixel_loss(SCORES, MASKS)) == pytest.approx(expected, rel=1e-5)
    assert float(hsc_pixel_loss(SCORES, torch.zeros_like(MASKS))) == pytest.approx(float(SCORES.mean()))
    # the two losses differ on the same batch (eq. 5 pushes each anomalous pixel)
    assert float(hsc_pixel_loss(SCORES, MASKS)) != pytest.approx(float(fcdd_loss(SCORES, MASKS)))


@pytest.mark.parametrize("loss", [fcdd_loss, hsc_pixel_loss])
def test_gradients_are_finite_at_zero_scores(loss):
    scores = torch.zeros(2, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    value = loss(scores, masks)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(scores.grad).all()
    assert (scores.grad[masks] < 0).all()          # anomalous pixels are pushed up
    assert (scores.grad[~masks] > 0).all()         # normal ones pulled down


def test_losses_reject_mismatched_masks():
    with pytest.raises(ValueError, match="masks"):
        hsc_pixel_loss(SCORES, MASKS[:2])
    with pytest.raises(ValueError, match="masks"):
        fcdd_loss(SCORES, MASKS[:, 0])


# --- networks -------------------------------------------------------------------------------------

def test_receptive_field_of_the_default_net_by_hand():
    # (k, s, p) = conv 5/1/2, pool 3/2/1, conv 5/1/2, pool 3/2/1, conv 3/1/1, conv 3/1/1, pool 3/2/1,
    # conv 3/1/1, head 1x1: extent 1 +4 +2 +4*2 +2*2 +2*4 +2*4 +2*4 +2*8 = 59, stride 8; every
    # layer pads (k - 1)/2, so unit 0 is centred on pixel 0
    model = FCDD(backbone="cnn")
    up = model.upsampler
    assert (up.receptive_field, up.stride, up.start, up.sigma) == (59, 8, 0.0, 12.0)
    assert model.heatmap(torch.rand(1, 3, 224, 224)).shape == (1, 1, 28, 28)
    assert receptive_field(fcdd_cnn224(1.0)).extent == 59


def test_receptive_field_contains_the_input_gradient():
    # the input pixels an interior unit depends on lie within its derived field
    torch.manual_seed(0)
    model = FCDD(backbone="cnn", width=0.25).eval()
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    out = model.head(model.backbone(x))
    out[0, 0, 14, 10].backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
    half = (59 - 1) // 2
    assert rows.min() >= 8 * 14 - half and rows.max() <= 8 * 14 + half
    assert cols.min() >= 8 * 10 - half and cols.max() <= 8 * 10 + half
    assert rows.max() - rows.min() > 30        # and it is wide, not a few pixels


def test_vgg11_backbone_random_init_with_notice():
    with pytest.warns(UserWarning, match="random initialisation"):
        model = FCDD(backbone="vgg11", weights="random")
    # conv 3/1/1, pool 2/2/0 (x3 blocks), then two 512 convs: extent 62, stride 8, start 3.5
    up = model.upsampler
    assert (up.receptive_field, up.stride, up.start) == (62, 8, 3.5)
    assert model.head.in_channels == 512 and model.frozen_layers == 0
    assert model.heatmap(torch.rand(1, 3, 64, 64)).shape == (1, 1, 8, 8)


def test_vgg11_weights_load_and_freeze(tmp_path):
    from safetensors.torch import save_file

    with pytest.warns(UserWarning, match="random initialisation"):
        source = FCDD(backbone="vgg11", weights=None)
    torch.nn.init.constant_(source.backbone[0].weight, 0.125)
    save_file({f"features.{k}": v.contiguous() for k, v in source.backbone.state_dict().items()},
              str(tmp_path / "vgg11_bn.safetensors"))
    model = FCDD(backbone="vgg11", weights=str(tmp_path / "vgg11_bn.safetensors"))
    assert torch.equal(model.backbone[0].weight, source.backbone[0].weight)
    assert model.frozen_layers == 15                          # through the third max-pool (layer 14)
    assert isinstance(model.backbone[14], torch.nn.MaxPool2d)
    assert not any(p.requires_grad for p in model.backbone[:15].parameters())
    assert all(p.requires_grad for p in model.backbone[15:].parameters())
    model.train()
    assert not model.backbone[1].training and model.backbone[16].training
    with pytest.raises(ValueError, match="vgg11_bn"):
        save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        FCDD(backbone="vgg11", weights=str(tmp_path / "bad.safetensors"))


def test_config_errors():
    for kwargs, match in [({"loss": "hsc"}, "loss"), ({"backbone": "resnet"}, "backbone"),
                          ({"backbone": "cnn", "weights": "x.pth"}, "weights"), ({"batch_size": 0}, "batch_size"),
                          ({"backbone": "vgg11"}, "vgg11 has no packaged weights"),
                          ({"weights": None}, "weights must be 'pretrained'"),
                          ({"weights": "missing.pth"}, "weights must be the path"),
                          ({"anomaly_probability": 2.0}, "anomaly_probability"), ({"resize": 200}, "resize")]:
        with pytest.raises(ValueError, match=match):
            FCDD(**kwargs)
    with pytest.raises(ValueError) as error:                  # an unknown backbone: one line listing them all
        FCDD(backbone="resnet")
    assert "\n" not in str(error.value) and all(name in str(error.value) for name in BACKBONES)


# --- the pretrained backbone ----------------------------------------------------------------------

def test_pretrained_trunk_geometry_is_its_input_gradient():
    # TF "same" convolutions pad (k - 1) // 2 - (odd total) on the top/left, computed per input
    # size: the derived field of a unit must be exactly the pixels its gradient reaches when every
    # weight is a small positive number (no unit clips, so every path contributes)
    model = FCDD(width=0.25).double().eval()
    up = model.upsampler
    assert (up.receptive_field, up.stride, up.start) == (99, 8, 7.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.constant_(module.weight, 1e-2)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.reset_parameters()
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    out = model.head(model.backbone(x))
    assert out.shape == (1, 1, 28, 28)
    half = (up.receptive_field - 1) // 2
    for i in (0, 13, 27):
        x.grad = None
        out[0, 0, i, i].backward(retain_graph=True)
        rows = torch.nonzero(x.grad[0].abs().sum((0, 2)))[:, 0]
        centre = int(up.stride * i + up.start)
        assert (int(rows.min()), int(rows.max())) == (max(0, centre - half), min(223, centre + half)), i


def test_pretrained_backbone_is_loaded_and_frozen(brick):
    model = FCDD(width=0.25, batch_size=2)
    reference = build_backbone("efficientnet_lite0", ("stride8",), "pretrained")
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.frozen.state_dict().values(),
                                                 reference.state_dict().values()))
    frozen = {k: v.clone() for k, v in model.backbone.frozen.state_dict().items()}
    assert not any(p.requires_grad for p in model.backbone.frozen.parameters())
    assert all(p.requires_grad for p in model.backbone.upper.parameters())
    train(model, brick[0][:4], steps=2, progress=False)
    model.train()
    assert not model.backbone.frozen.training and model.backbone.upper.training
    for key, value in model.backbone.frozen.state_dict().items():      # weights and BatchNorm statistics
        assert torch.equal(value, frozen[key]), key
    with pytest.warns(UserWarning, match="random initialisation"):
        random = FCDD(weights="random")
    assert not torch.equal(random.backbone.frozen.state_dict()["net.conv_stem.weight"], frozen["net.conv_stem.weight"])


def test_pretrained_checkpoint_holds_the_backbone(brick, tmp_path):
    model = FCDD(width=0.25, batch_size=2)
    train(model, brick[0][:4], steps=1, progress=False)
    save_checkpoint(tmp_path, model, {})
    loaded = load_checkpoint(tmp_path).model              # built with read_weight_files=False: nothing read
    assert loaded.config["backbone"] == "efficientnet_lite0" and loaded.config["weights"] == "pretrained"
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(loaded.score(brick[1][:2]).maps, model.score(brick[1][:2]).maps)


# --- synthetic anomalies and pre-processing -------------------------------------------------------

def test_confetti_noise_masks_are_the_painted_pixels():
    images = torch.full((4, 3, 64, 64), 0.5)
    out, masks = confetti_noise(images, torch.Generator().manual_seed(0), max_squares=5)
    assert masks.any(dim=(1, 2)).all()
    outside = ~masks[:, None].expand_as(out)
    assert torch.equal(out[outside], images[outside])                           # untouched outside
    assert torch.equal((out != 0.5).any(1) | masks, masks)                      # changed => masked
    again, again_masks = confetti_noise(images, torch.Generator().manual_seed(0), max_squares=5)
    assert torch.equal(again, out) and torch.equal(again_masks, masks)
    with pytest.raises(ValueError, match="max_squares"):
        confetti_noise(images, torch.Generator(), min_squares=3, max_squares=2)


def test_crop_and_resize_move_masks_with_images():
    images = torch.zeros(8, 3, 224, 224)
    images[:, :, 60:140, 90:180] = 1.0
    masks = images[:, 0] > 0.5
    out, out_masks = random_resized_crop(images, masks, torch.Generator().manual_seed(1), 240, 224)
    assert out.shape == (8, 3, 224, 224) and out_masks.shape == (8, 224, 224)
    agree = ((out[:, 0] > 0.5) == out_masks).float().mean()
    assert agree > 0.995
    full, full_masks = augment(images, masks, torch.Generator().manual_seed(1))
    assert full.shape == (8, 3, 224, 224) and torch.equal(full_masks, out_masks)   # same draws, same geometry


def test_contrast_normalisation_and_min_max():
    x = torch.rand(3, 3, 16, 16) * 5 + 2
    y = local_contrast_normalization(x)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.abs().mean((1, 2, 3)), torch.ones(3), atol=1e-5)
    low, high = y.min(), y.max()
    z = min_max(y, low, high)
    assert float(z.min()) == pytest.approx(0) and float(z.max()) == pytest.approx(1)


# --- training -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def brick():
    """(train [12, 3, 224, 224], test images [10, ...], masks [10, 224, 224]) of builtin:brick."""
    train_set = fastad.data.open_dataset("builtin:brick", "train", size=224)
    test_set = fastad.data.open_dataset("builtin:brick", "test", size=224)
    samples = [test_set[i] for i in range(10)]
    return (torch.stack([train_set[i].image for i in range(12)]), torch.stack([s.image for s in samples]),
            torch.stack([s.mask for s in samples]))


def test_learning_rate_decays_per_epoch(brick):
    model = FCDD(batch_size=5, lr=0.01, lr_decay=0.1)
    model.setup(brick[0])                                  # 12 images at 5 per step: 3 steps per epoch
    assert model.steps_per_epoch() == 3
    assert FCDD.steps_for_epochs(4, 12, 5) == 12
    with pytest.raises(ValueError, match="epochs"):
        FCDD.steps_for_epochs(0, 12)
    optimizer, scheduler = model.configure_optimizer("train", 10)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.01] * 3 + [0.009] * 3 + [0.0081])
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_training_batch_has_confetti_or_real_anomalies(brick):
    model = FCDD(batch_size=8, anomaly_probability=1.0)
    images, masks = model.training_batch(brick[0], torch.Generator().manual_seed(0))
    assert images.shape == (8, 3, 224, 224) and masks.any(dim=(1, 2)).all()
    model = FCDD(batch_size=8, anomaly_probability=0.0)
    assert not model.training_batch(brick[0], torch.Generator().manual_seed(0))[1].any()
    # semi-supervised: the masks come from the real anomalies (here: one image, left half masked)
    model = FCDD(batch_size=4, anomaly_probability=1.0)
    real_mask = torch.zeros(1, 100, 100, dtype=torch.bool)
    real_mask[:, :, :50] = True
    model.set_real_anomalies(torch.rand(1, 3, 100, 100), real_mask)
    _, masks = model.training_batch(brick[0], torch.Generator().manual_seed(0))
    assert 0.4 < float(masks.float().mean()) < 0.6
    with pytest.raises(ValueError, match="masks"):
        model.set_real_anomalies(torch.rand(2, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool))


def test_checkpoint_keeps_real_anomalies_and_input_range(brick, tmp_path):
    model = FCDD(width=0.25)
    model.setup(brick[0])
    model.set_real_anomalies(torch.rand(2, 3, 50, 60), torch.rand(2, 50, 60) > 0.5)
    save_checkpoint(tmp_path, model, {})
    loaded = load_checkpoint(tmp_path).model
    for name in ("real_anomalies", "real_masks", "input_low", "input_high", "n_train"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    assert loaded.real_masks.dtype == torch.bool and loaded.steps_per_epoch() == 1


class Interrupted(Exception):
    pass


def test_resume_is_exact(brick, tmp_path, monkeypatch):
    images = brick[0][:6]
    config = {"width": 0.25, "batch_size": 2, "lr": 0.05, "lr_decay": 0.5}   # 3 steps per epoch
    torch.manual_seed(0)
    straight = FCDD(**config)
    torch.manual_seed(0)
    interrupted = FCDD(**config)
    train(straight, images, steps=5, progress=False)

    calls = {"n": 0}
    original = FCDD.training_loss

    def fail_at_step_4(self, stage, train_images, generator):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Interrupted
        return original(self, stage, train_images, generator)

    monkeypatch.setattr(FCDD, "training_loss", fail_at_step_4)
    with pytest.raises(Interrupted):
        train(interrupted, images, steps=5, run_dir=tmp_path, checkpoint_every=4, progress=False)
    monkeypatch.setattr(FCDD, "training_loss", original)
    resumed, history = resume(tmp_path, images, progress=False)
    assert len(history) == 5
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # the checkpoint restores the model for scoring
    loaded = load_checkpoint(tmp_path).model
    assert torch.equal(loaded.score(brick[1][:2]).maps, straight.score(brick[1][:2]).maps)


def test_train_score_end_to_end(brick):
    train_images, test_images, masks = brick
    torch.manual_seed(0)
    model = create_model("fcdd", batch_size=8)
    history = train(model, train_images, steps=30, progress=False)
    assert len(history) == 30 and all(math.isfinite(row["total"]) for row in history)
    result = model.score(test_images)
    assert result.maps.shape == (10, 224, 224) and result.image_scores.shape == (10,)
    assert (result.maps >= 0).all()
    assert fastad.metrics.pixel_auroc(result.maps, masks) > 0.8
    # any input size: maps come back at it
    small = model.score(test_images[:2, :, :128, :128])
    assert small.maps.shape == (2, 128, 128)
