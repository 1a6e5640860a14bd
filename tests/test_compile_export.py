"""Every fastad op runs inside torch.compile(fullgraph=True) (fake kernels, no graph breaks,
autograd through the compiled graph), and a model's scoring graph exports with torch.export."""
import pytest
import torch

import fastad
from test_op_matrix import check_compiled_matches_eager
from fastad.engine import train
from fastad.engine.export import export_scoring, scoring_module
from fastad.models import create_model
from fastad.ops import PatchGrid

GRID = PatchGrid(8, 4, (16, 16))


def _knn(query, bank):
    dist, _ = fastad.ops.knn(query, bank, 3)
    return dist.sum()


def _gmm(z, gamma):
    energy, penalty = fastad.ops.gmm_energy(z, gamma)
    return energy.mean() + penalty


def _gmm_log_prob(z, mu):
    scale_tril = torch.eye(4).expand(2, 4, 4) * 1.5
    return fastad.ops.gmm_log_prob(z, torch.log(torch.tensor([0.3, 0.7])), mu, scale_tril).sum()


def _partial_conv(x, weight):
    mask = (torch.arange(16.0) % 3 > 0).float().expand(2, 1, 16, 16)
    out, new_mask = fastad.ops.partial_conv2d(x, mask, weight, None, padding=1)
    return (out * new_mask).sum()


def _upsampling(scores, heatmap):
    average = fastad.ops.patch_average(scores, GRID)
    idw = fastad.ops.idw_upsample(scores, GRID)
    gaussian = fastad.ops.gaussian_upsample(heatmap, 16, 5, 2, 1.0, sigma=2.0)
    return (average + idw + gaussian[:, 0] + fastad.ops.gaussian_blur(average[:, None], 1.5)[:, 0]).sum()


CASES = {
    "knn": (_knn, lambda: (torch.randn(20, 8), torch.randn(50, 8))),
    "gmm_energy": (_gmm, lambda: (torch.randn(64, 4), torch.softmax(torch.randn(64, 2), 1))),
    "gmm_log_prob": (_gmm_log_prob, lambda: (torch.randn(30, 4), torch.randn(2, 4))),
    "partial_conv2d": (_partial_conv, lambda: (torch.randn(2, 3, 16, 16), torch.randn(5, 3, 3, 3))),
    "upsampling": (_upsampling, lambda: (torch.rand(2, GRID.num_patches), torch.rand(2, 1, 6, 6))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_compiles_fullgraph_with_gradients(name):
    fn, make_inputs = CASES[name]
    torch.manual_seed(0)
    eager_inputs = [t.requires_grad_() for t in make_inputs()]
    compiled_inputs = [t.detach().clone().requires_grad_() for t in eager_inputs]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_value, compiled_value = fn(*eager_inputs), compiled(*compiled_inputs)
    torch.testing.assert_close(compiled_value, eager_value)
    eager_value.backward()
    compiled_value.backward()
    for a, b in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad)


def test_coreset_compiles_fullgraph():
    features = torch.randn(40, 6)
    compiled = torch.compile(lambda f: fastad.ops.kcenter_coreset(f, 5), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(features), fastad.ops.kcenter_coreset(features, 5))


@pytest.mark.parametrize("model_name", ["pedenet", "rawpixel", "patchcore"])
def test_scoring_graph_exports(model_name):
    torch.manual_seed(0)
    config = {"pedenet": {"n_patches": 8, "n_pairs": 4, "stride": 32}, "rawpixel": {"stride": 32},
              "patchcore": {"image_size": 128}}[model_name]
    model = create_model(model_name, **config)
    train(model, torch.rand(3, 3, 128, 128), steps=1, progress=False)
    images = torch.rand(2, 3, 128, 128)
    program = export_scoring(model, images)
    scores, maps = program.module()(images)
    expected = model.score(images)
    torch.testing.assert_close(scores, expected.image_scores)
    torch.testing.assert_close(maps, expected.maps)
    assert any("fastad" in str(node.target) for node in program.graph.nodes)   # the op, not a decomposition
    more = torch.rand(3, 3, 128, 128)                                            # the batch is dynamic
    torch.testing.assert_close(program.module()(more)[1], model.score(more).maps)
    module = scoring_module(model)
    assert torch.equal(module(images)[0], expected.image_scores)


def test_ops_run_in_float32_under_autocast():
    torch.manual_seed(0)
    query, bank = torch.randn(10, 8), torch.randn(30, 8)
    heatmap = torch.rand(2, 1, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist, _ = fastad.ops.knn(query.bfloat16(), bank, 2)
        up = fastad.ops.gaussian_upsample(heatmap.bfloat16(), 16, 5, 2, 1.0, sigma=2.0)
        layer = fastad.nn.PartialConv2d(3, 4, 3, padding=1)
        x, mask = torch.rand(1, 3, 8, 8), (torch.rand(1, 1, 8, 8) > 0.3).float()
        out = layer(x.bfloat16(), mask)                   # the convolution itself autocasts, as nn.Conv2d does
    assert dist.dtype == up.dtype == torch.float32
    torch.testing.assert_close(out.float(), layer(x, mask), rtol=0.05, atol=0.05)
    torch.testing.assert_close(dist, fastad.ops.knn(query.bfloat16().float(), bank, 2)[0])
    with pytest.raises(TypeError, match="float32"):   # outside autocast, low precision is still refused
        fastad.ops.knn(query.bfloat16(), bank.bfloat16(), 2)


@pytest.mark.parametrize("name", ["gmm_log_prob", "gaussian_upsample"])   # inductor compiles slowly on 2 cores
def test_inductor_on_cpu_matches_eager(name):
    """torch.compile(fullgraph=True) with inductor, forward and backward, on the CPU (the CUDA
    matrix in test_op_matrix.py covers every op)."""
    check_compiled_matches_eager(name, "cpu")
