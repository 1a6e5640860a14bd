"""fastad.models.GlanceNet: Global-Net never sees the patch (bit for bit), the heads' losses and
scores against their formulas, the stain and mask helpers, and train -> score -> metric end to
end on builtin:brick (one torch thread: on the shared 2-core machine two threads ran ~15x slower)."""
import math

import numpy as np
import pytest
import torch

import fastad
from fastad.engine.checkpoint import load_checkpoint
from fastad.models import AnomalyResult, GlanceNet, create_model
from fastad.models.components.zoo import build_backbone
from fastad.models.glance.model import TEACHER_TAPS, TEACHERS, teacher_dim
from fastad.models.components.backbones import ResNet18, load_resnet18_teacher
from fastad.models.glance.boxes import hole_masks
from fastad.models.glance.losses import compactness_loss, dad_loss, iad_score, info_nce
from fastad.models.glance.networks import GlobalNet
from fastad.models.glance.stains import add_stain

SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def brick():
    """(train [40, 3, 128, 128], test [8, 3, 128, 128], masks [8, 128, 128]) from builtin:brick."""
    train = fastad.data.open_dataset("builtin:brick", "train", size=SIZE)
    test = fastad.data.open_dataset("builtin:brick", "test", size=SIZE)
    samples = [test[i] for i in range(8)]
    return (torch.stack([s.image for s in train]), torch.stack([s.image for s in samples]),
            torch.stack([s.mask for s in samples]))


@pytest.fixture(scope="module")
def trained(brick, tmp_path_factory):
    """A GlanceNet trained a little through both stages, checkpointed to a run folder."""
    torch.manual_seed(0)
    model = GlanceNet()
    run_dir = tmp_path_factory.mktemp("glance_run")
    history = fastad.engine.train(model, brick[0], steps=100, run_dir=run_dir, progress=False)
    return model, history, run_dir


def _changed_inside(images, top, left, size, seed=1):
    """images with the size x size patch at (top, left) replaced by random pixels."""
    out = images.clone()
    g = torch.Generator().manual_seed(seed)
    out[..., top:top + size, left:left + size] = torch.rand(out[..., top:top + size, left:left + size].shape, generator=g)
    return out


@pytest.mark.parametrize("top,left", [(16, 16), (5, 23), (0, 0), (32, 32)])
def test_global_net_does_not_peek(top, left):
    torch.manual_seed(0)
    net = GlobalNet(widths=(8, 16, 16, 32), feature_dim=16)
    images = torch.rand(2, 3, 64, 64)
    hole = hole_masks(torch.tensor([top, top]), torch.tensor([left, left]), 32, (64, 64))
    z = net(images, hole)
    assert torch.equal(net(_changed_inside(images, top, left, 32), hole), z)          # bit-identical
    # the test can fail: one pixel just outside the patch does change Z_g
    outside = images.clone()
    row = top + 32 if top + 32 < 64 else top - 1
    outside[:, :, row, left] += 0.5
    assert not torch.equal(net(outside, hole), z)


def test_trained_model_does_not_peek(trained, brick):
    model = trained[0]
    images = brick[1][:2]
    hole = hole_masks(torch.tensor([48, 48]), torch.tensor([80, 80]), 32, (SIZE, SIZE))
    with torch.no_grad():
        z = model.global_features(images, hole)
        assert torch.equal(model.global_features(_changed_inside(images, 48, 80, 32), hole), z)


def test_batched_copies_match_single_passes(trained, brick):
    """inference="copies" pushes all P masked copies as one batch; each copy alone gives the same Z_g."""
    model = trained[0]
    image = brick[1][0]
    grid = model.grid(SIZE, SIZE)
    corners = (grid.centres(torch.float32) - (model.patch_size - 1) / 2).round().long()
    holes = hole_masks(corners[:, 0], corners[:, 1], model.patch_size, (SIZE, SIZE))
    with torch.no_grad():
        batched = model.global_features(image.expand(len(holes), -1, -1, -1), holes)
        for p in (0, 24, len(holes) - 1):
            single = model.global_features(image[None], holes[p:p + 1])
            torch.testing.assert_close(single[0], batched[p], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("patch_size,corners", [(32, [[0, 0], [5, 23], [96, 96], [48, 80], [17, 0]]),
                                                (16, [[0, 112], [33, 7], [64, 64]])])
def test_shared_inference_matches_masked_copies(patch_size, corners):
    torch.manual_seed(0)
    net = GlobalNet().eval()
    image = torch.randn(1, 3, SIZE, SIZE)
    corners = torch.tensor(corners)
    holes = hole_masks(corners[:, 0], corners[:, 1], patch_size, (SIZE, SIZE))
    with torch.no_grad():
        copies = net(image.expand(len(corners), -1, -1, -1), holes)
        shared = net.forward_shared(image, corners, patch_size)[0]
        torch.testing.assert_close(shared, copies, rtol=1e-5, atol=1e-6)
        # no peeking in the shared form too: each patch's Z_g ignores its own pixels, bit for bit
        for i, (top, left) in enumerate(corners.tolist()):
            changed = net.forward_shared(_changed_inside(image, top, left, patch_size), corners, patch_size)[0]
            assert torch.equal(changed[i], shared[i])
            assert not torch.equal(changed, shared)                      # other patches do see them


def test_shared_inference_batches_images_independently():
    torch.manual_seed(0)
    net = GlobalNet().eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    corners = torch.tensor([[0, 0], [40, 96], [112, 112]])
    with torch.no_grad():
        batched = net.forward_shared(images, corners, 16)
        one_by_one = torch.stack([net.forward_shared(image[None], corners, 16)[0] for image in images])
    assert batched.shape == (3, 3, net.readout[-1].out_features)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_scores_agree_across_inference_modes(trained, brick):
    model = trained[0]
    shared = model.patch_scores(brick[1][:1])
    model.config["inference"] = "copies"
    try:
        copies = model.patch_scores(brick[1][:1])
    finally:
        model.config["inference"] = "shared"
    for a, b in zip(shared, copies):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_iad_score_formula():
    z_local = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z_global = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert torch.equal(iad_score(z_local, z_global), torch.tensor([2.5, 12.5]))        # (1/n)||Z_l - Z_g||²


def test_dad_loss_formula():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    normal = torch.tensor([True, False, False, True])
    p = torch.sigmoid(logits)
    y = normal.float()
    expected = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(dad_loss(logits, normal), expected)


def test_compactness_loss_formula():
    x = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0], [3.0, 6.0, 0.0], [4.0, 8.0, 1.0]])
    corr = np.corrcoef(x.numpy().T)
    expected = corr.sum() - np.trace(corr)
    assert math.isclose(float(compactness_loss(x)), expected, rel_tol=1e-5, abs_tol=1e-6)
    # two perfectly anti-correlated dimensions: c_12 = c_21 = -1
    assert math.isclose(float(compactness_loss(torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, -1.0]]))), -2.0,
                        rel_tol=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        compactness_loss(torch.ones(1, 3))


def test_info_nce_prefers_matching_views():
    a = torch.eye(4) * 5
    assert float(info_nce(a, a, 0.2)) < float(info_nce(a, a.roll(1, 0), 0.2))
    # the formula: mean cross-entropy over cosine similarities / temperature, both directions
    b = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    c = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    sim = torch.nn.functional.normalize(b, dim=1) @ torch.nn.functional.normalize(c, dim=1).T / 0.5
    expected = 0.5 * (-sim.log_softmax(1).diagonal().mean() - sim.log_softmax(0).diagonal().mean())
    torch.testing.assert_close(info_nce(b, c, 0.5), expected)


def test_info_nce_hard_negative():
    b = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    c = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    far = -b                                              # a hard negative pointing away: small extra term
    near = c.clone()                                      # one equal to the positive: log 2 more at best
    assert float(info_nce(b, c, 0.5)) < float(info_nce(b, c, 0.5, far)) < float(info_nce(b, c, 0.5, near))
    nb, nc, nh = (torch.nn.functional.normalize(x, dim=1) for x in (b, c, near))
    sim = nb @ nc.T / 0.5
    extra = lambda x: (x * nh).sum(1, keepdim=True) / 0.5                               # noqa: E731
    a_side, b_side = torch.cat([sim, extra(nb)], 1), torch.cat([sim.T, extra(nc)], 1)
    expected = 0.5 * (-a_side.log_softmax(1).diagonal().mean() - b_side.log_softmax(1).diagonal().mean())
    torch.testing.assert_close(info_nce(b, c, 0.5, near), expected)


def test_recipe_losses_run_both_ways(brick):
    """The first recipe's options (eq. 8's single DAD draw, gray stains, jittered views, no
    stained InfoNCE negative) still train; the default recipe's losses are finite."""
    torch.manual_seed(0)
    for config in ({}, {"teacher": "none"},
                   {"teacher": "none", "view_jitter": 0.2, "stains": "gray", "dad_negatives": 0, "ssl_stains": False}):
        model = GlanceNet(local_batch=4, global_batch=2, **config)
        model.setup(brick[0])
        for stage in model.stages:
            losses = model.training_loss(stage, brick[0][:4], torch.Generator().manual_seed(0))
            assert torch.isfinite(losses["total"]) and losses["total"].requires_grad


def test_global_loss_is_eq_10(trained, brick):
    model = trained[0]
    losses = model.global_loss(brick[0], torch.Generator().manual_seed(3))
    lambda_t = model.config["lambda_t"]
    torch.testing.assert_close(losses["total"], losses["iad"] + lambda_t * losses["dad"])
    # and iad is eq. 7 on the batch the same generator draws
    again = model.global_loss(brick[0], torch.Generator().manual_seed(3))
    assert torch.equal(again["iad"], losses["iad"])


def test_score_is_eq_13_through_idw(trained):
    model = trained[0]
    p = model.grid(SIZE, SIZE).num_patches
    s_iad, s_dad = torch.full((1, p), 2.0), torch.full((1, p), 0.5)
    for lam in (0.0, 0.3, 1.0):
        result = model.combine(s_iad, s_dad, (SIZE, SIZE), lam)
        torch.testing.assert_close(result.maps, torch.full((1, SIZE, SIZE), lam * 2.0 + (1 - lam) * 0.5))
    with pytest.raises(ValueError, match="lambda_s"):
        model.combine(s_iad, s_dad, (SIZE, SIZE), 1.5)


def test_dad_score_is_one_minus_p(trained, brick):
    model = trained[0]
    seen = []
    hook = model.dad_head.register_forward_hook(lambda module, inputs, out: seen.append(out.detach()))
    try:
        s_iad, s_dad = model.patch_scores(brick[1][:1])
    finally:
        hook.remove()
    assert s_iad.shape == s_dad.shape == (1, model.grid(SIZE, SIZE).num_patches)
    p = torch.cat([out.reshape(-1) for out in seen]).view_as(s_dad)
    assert torch.equal(s_dad, 1.0 - p) and not torch.allclose(s_dad, p)
    assert (s_dad >= 0).all() and (s_dad <= 1).all() and (s_iad >= 0).all()


def test_score_at_other_sizes(trained):
    model = trained[0]
    result = model.score(torch.rand(2, 3, 64, 64))
    assert result.maps.shape == (2, 64, 64) and result.image_scores.shape == (2,)
    assert torch.isfinite(result.maps).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        model.score(torch.rand(1, 3, 72, 72))
    with pytest.raises(ValueError, match="images must be"):
        model.score(torch.rand(1, 1, 64, 64))


def test_add_stain_is_small_and_seeded():
    patches = torch.full((6, 3, 32, 32), 0.5)
    stained = add_stain(patches, torch.Generator().manual_seed(0))
    assert torch.equal(stained, add_stain(patches, torch.Generator().manual_seed(0)))
    changed = (stained != patches).any(1).float().mean((1, 2))                        # area fraction per patch
    assert (changed > 0).all() and (changed < 0.5).all()
    assert torch.equal(stained[:, 0], stained[:, 1])                                  # gray stays gray
    assert stained.min() >= 0 and stained.max() <= 1


def test_add_stain_varied_has_lines_and_colours():
    patches = torch.full((64, 3, 32, 32), 0.5)
    stained = add_stain(patches, torch.Generator().manual_seed(0), varied=True)
    assert torch.equal(stained, add_stain(patches, torch.Generator().manual_seed(0), varied=True))
    assert stained.min() >= 0 and stained.max() <= 1
    changed = (stained != patches).any(1).float().mean((1, 2))
    assert (changed > 0).all() and (changed < 0.5).all()
    coloured = torch.tensor([not (torch.equal(s[0], s[1]) and torch.equal(s[1], s[2])) for s in stained])
    assert 0 < coloured.sum() < 64                                                    # some gray, some coloured


def test_map_blur(trained):
    model = trained[0]
    p = model.grid(SIZE, SIZE).num_patches
    s = torch.zeros(1, p)
    s[0, p // 2] = 1.0
    sharp = model.combine(s, s, (SIZE, SIZE), 1.0)
    model.config["blur_sigma"], sigma = 0.0, model.config["blur_sigma"]
    try:
        raw = model.combine(s, s, (SIZE, SIZE), 1.0)
    finally:
        model.config["blur_sigma"] = sigma
    assert sigma > 0
    torch.testing.assert_close(sharp.maps, fastad.ops.gaussian_blur(raw.maps[:, None], sigma)[:, 0])


def test_hole_masks():
    hole = hole_masks(torch.tensor([0, 3]), torch.tensor([2, 1]), 2, (5, 6))
    assert hole.shape == (2, 1, 5, 6)
    assert hole[0, 0, 0:2, 2:4].all() and hole[0].sum() == 4
    assert hole[1, 0, 3:5, 1:3].all() and hole[1].sum() == 4


def test_config_errors():
    with pytest.raises(ValueError, match="patch_size"):
        GlanceNet(patch_size=40)
    with pytest.raises(ValueError, match="lambda_s"):
        GlanceNet(lambda_s=-0.1)
    with pytest.raises(ValueError, match="stride"):
        GlanceNet(stride=0)
    with pytest.raises(ValueError, match="inference"):
        GlanceNet(inference="loop")
    with pytest.raises(ValueError, match="stains"):
        GlanceNet(stains="pink")
    with pytest.raises(ValueError, match="dad_negatives"):
        GlanceNet(dad_negatives=-1)
    with pytest.raises(ValueError, match="blur_sigma"):
        GlanceNet(blur_sigma=-1.0)
    assert isinstance(create_model("glance"), GlanceNet)


def test_training_reduces_losses(trained):
    history = trained[1]
    for stage in GlanceNet.stages:
        totals = [row["total"] for row in history if row["stage"] == stage]
        assert len(totals) == 100
        assert np.mean(totals[-10:]) < np.mean(totals[:10])


def test_end_to_end_and_checkpoint(trained, brick):
    model, _, run_dir = trained
    _, images, masks = brick
    result = model.score(images)
    assert isinstance(result, AnomalyResult)
    assert result.maps.shape == (8, SIZE, SIZE) and result.image_scores.shape == (8,)
    auroc = fastad.metrics.pixel_auroc(result.maps, masks)
    print(f"end-to-end pixel AUROC {auroc:.3f}")
    assert auroc > 0.75
    restored = load_checkpoint(run_dir).model
    restored.eval()
    torch.testing.assert_close(restored.score(images[:2]).maps, result.maps[:2])


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A randomly initialised ResNet-18 state_dict in torchvision's layout, saved with torch.save."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pth"
    torch.save(ResNet18().state_dict(), path)
    return path


def test_teacher_has_torchvision_layout():
    state = ResNet18().state_dict()
    assert len(state) == 122                                  # torchvision resnet18: 62 params + 60 BN buffers
    for key in ("conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.bias"):
        assert key in state
    assert ResNet18().eval()(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_distillation_loss_is_eq_1_and_3(teacher_file, brick):
    model = GlanceNet(teacher_weights=str(teacher_file), local_batch=4, lambda_k=2.0, lambda_c=0.01)
    model.setup(brick[0])
    losses = model.local_loss(brick[0], torch.Generator().manual_seed(0))
    # the same draw by hand: eq. 1 against the teacher on the same patches
    g = torch.Generator().manual_seed(0)
    n, k = brick[0].shape[0], model.patch_size
    idx = torch.randint(n, (4,), generator=g)
    rows = torch.randint(SIZE - k + 1, (4,), generator=g)
    cols = torch.randint(SIZE - k + 1, (4,), generator=g)
    patches = torch.stack([brick[0][i, :, r:r + k, c:c + k] for i, r, c in zip(idx, rows, cols)])
    z = model.local_features(patches)
    distill = ((model.decoder(z) - load_resnet18_teacher(teacher_file)(patches)) ** 2).sum(1).mean() / 512
    torch.testing.assert_close(losses["distill"], distill)
    torch.testing.assert_close(losses["total"], 2.0 * distill + 0.01 * compactness_loss(z))
    history = fastad.engine.train(model, brick[0][:4], steps={"local": 2, "global": 1}, progress=False)
    assert [row["stage"] for row in history] == ["local", "local", "global"]


def test_teacher_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights"):
        GlanceNet(teacher_weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="teacher_weights"):
        GlanceNet(teacher_weights=str(bad))


# --- the pretrained teacher ------------------------------------------------------------------------

def test_teacher_config_and_its_legacy_meaning(tmp_path):
    assert GlanceNet.Config().teacher == "efficientnet_lite0" and GlanceNet.Config().teacher_weights == "pretrained"
    # every config saved before the backbone zoo names teacher_weights (None or a path) and no teacher
    assert GlanceNet.Config.from_dict({"teacher_weights": None}, "glance").teacher == "none"
    assert GlanceNet.Config.from_dict({"teacher_weights": "r18.pth"}, "glance").teacher == "resnet18"
    assert GlanceNet.Config.from_dict({"teacher_weights": "random"}, "glance").teacher == "efficientnet_lite0"
    current = GlanceNet.Config()
    assert GlanceNet.Config.from_dict(current.as_dict(), "glance") == current
    assert GlanceNet.Config(teacher="none").teacher_weights is None
    for kwargs, match in [({"teacher": "resnet18"}, "local torchvision resnet18"),
                          ({"teacher": "none", "teacher_weights": "r18.pth"}, "reads no weights"),
                          ({"teacher_weights": None, "teacher": "efficientnet_lite0"}, "teacher_weights must be"),
                          ({"in_channels": 1}, "in_channels")]:
        with pytest.raises(ValueError, match=match):
            GlanceNet(**kwargs)
    with pytest.raises(ValueError) as error:                           # one line listing the choices
        GlanceNet(teacher="vgg16")
    assert "\n" not in str(error.value) and all(name in str(error.value) for name in TEACHERS)


def test_pretrained_teacher_is_loaded_frozen_and_left_out_of_the_checkpoint(brick, tmp_path):
    model = GlanceNet(local_batch=4, global_batch=2, feature_dim=16, global_widths=[8, 8, 8, 8], stride=16)
    teacher = model.teacher()
    reference = build_backbone("efficientnet_lite0", TEACHER_TAPS, "pretrained")
    before = teacher.net.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(before.values(), reference.state_dict().values()))
    assert not any(p.requires_grad for p in teacher.parameters())
    assert model.decoder.out_features == teacher_dim("efficientnet_lite0") == 40 + 112
    patches = brick[0][:3, :, :32, :32]
    maps = reference(patches)
    expected = torch.cat([maps["stride8"].mean((2, 3)), maps["stride16"].mean((2, 3))], 1)
    torch.testing.assert_close(teacher(patches), expected)                 # R(p): each tap's mean over the patch
    optimizer, _ = model.configure_optimizer("local", 1)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in [*model.local_net.parameters(), *model.decoder.parameters()]}
    fastad.engine.train(model, brick[0][:4], steps={"local": 2, "global": 1}, run_dir=tmp_path, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in teacher.net.state_dict().items())
    assert not teacher.net.training and not any(k.startswith("_teacher") for k in model.state_dict())
    loaded = load_checkpoint(tmp_path).model                             # scoring reads no teacher
    assert loaded._teacher == () and torch.equal(loaded.score(brick[1][:1]).maps, model.score(brick[1][:1]).maps)
    with pytest.warns(UserWarning, match="random initialisation"):
        random = GlanceNet(teacher_weights="random")
    assert not torch.equal(random.teacher().net.state_dict()["net.conv_stem.weight"], before["net.conv_stem.weight"])
