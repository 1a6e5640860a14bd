"""fastad.ops.kcenter_coreset against the reference greedy k-center, and NearestNeighborScorer."""
import pytest
import torch

import fastad
from conftest import DEVICES, brute_force_knn, requires_cuda


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,d,n,start", [(1, 1, 1, 0), (50, 3, 10, 7), (3000, 32, 200, 0), (1100, 130, 1100, 1034)])
def test_matches_reference_greedy_selection(device, m, d, n, start):
    g = torch.Generator().manual_seed(m + d + n)
    dtype = torch.float64 if device == "cpu" else torch.float32
    features = torch.randn(m, d, generator=g, dtype=dtype).to(device)
    got = fastad.ops.kcenter_coreset(features, n, start)
    want = fastad.ops.reference.kcenter_coreset(features.cpu().double(), n, start)
    assert got.dtype == torch.int64 and got.device == features.device
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,d,n", [(60_000, 8, 40), (30_000, 130, 25)])
def test_large_banks_where_a_warp_handles_several_rows(device, m, d, n):
    """M well above the number of warps a GPU keeps resident, so every warp of the persistent
    kernel folds several rows per step; the picks are the CPU's (fp64 minima on both)."""
    g = torch.Generator().manual_seed(m + d)
    features = torch.randn(m, d, generator=g)
    got = fastad.ops.kcenter_coreset(features.to(device), n, 5)
    assert torch.equal(got.cpu(), fastad.ops.reference.kcenter_coreset(features, n, 5))
    if device == "cuda":
        assert torch.equal(got.cpu(), fastad.ops.kcenter_coreset(features, n, 5))


@pytest.mark.parametrize("device", DEVICES)
def test_near_ties_pick_like_the_cpu(device):
    """Rows whose squared distances differ in the last fp32 bits: fp64 minima on both devices."""
    g = torch.Generator().manual_seed(17)
    base = torch.randn(400, 24, generator=g)
    features = torch.cat([base, base + 1e-6 * torch.randn(400, 24, generator=g), base.flip(0)])
    got = fastad.ops.kcenter_coreset(features.to(device), 1000, 0)
    assert torch.equal(got.cpu(), fastad.ops.kcenter_coreset(features, 1000, 0))
    assert torch.equal(got.cpu(), fastad.ops.reference.kcenter_coreset(features, 1000, 0))


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_rows_without_checks_count_as_infinitely_far(device):
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(18))
    features[9] = float("nan")
    features[4, 1] = float("inf")
    got = fastad.ops.kcenter_coreset(features.to(device), 6, 0, check_values=False)
    assert got[:3].tolist() == [0, 4, 9]  # inf distance to every centre, lower index first
    assert torch.equal(got.cpu(), fastad.ops.reference.kcenter_coreset(features, 6, 0))


@pytest.mark.cuda
@requires_cuda
def test_cuda_graph_capture():
    features = torch.randn(5000, 16, generator=torch.Generator().manual_seed(19)).cuda()
    fastad.ops.kcenter_coreset(features, 10, 0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chosen = fastad.ops.kcenter_coreset(features, 50, 3, check_values=False)
    features.copy_(torch.randn(5000, 16, generator=torch.Generator().manual_seed(20)))
    graph.replay()
    assert torch.equal(chosen.cpu(), fastad.ops.kcenter_coreset(features.cpu(), 50, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_duplicates_are_never_chosen_twice(device):
    rows = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 0.0], [5.0, 0.0]], device=device)
    chosen = fastad.ops.kcenter_coreset(rows, 4, 0)
    assert torch.equal(chosen.cpu(), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("device", DEVICES)
def test_covering_radius_shrinks_as_the_coreset_grows(device):
    g = torch.Generator().manual_seed(11)
    features = torch.randn(2000, 16, generator=g).to(device)
    chosen = fastad.ops.kcenter_coreset(features, 400, 0)
    radii = [brute_force_knn(features, features[chosen[:n]], 1)[0].max().item() for n in (25, 100, 400)]
    assert radii[0] > radii[1] > radii[2] > 0


def test_opcheck_kcenter_coreset():
    features = torch.randn(100, 5, generator=torch.Generator().manual_seed(12))
    torch.library.opcheck(torch.ops.fastad.kcenter_coreset.default, (features, 10, 3))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(features=torch.randn(5), n=1), ValueError, "features must have shape"),
        (dict(features=torch.randn(5, 2), n=0), ValueError, "n must be in"),
        (dict(features=torch.randn(5, 2), n=6), ValueError, "n must be in"),
        (dict(features=torch.randn(5, 2), n=2, start=5), ValueError, "start must be in"),
        (dict(features=torch.ones(5, 2, dtype=torch.int32), n=2), TypeError, "features must be float32"),
        (dict(features=torch.tensor([[float("nan"), 0.0]]), n=1), ValueError, "features contains NaN"),
        (dict(features=torch.empty(0, 2), n=1), ValueError, "non-empty"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        fastad.ops.kcenter_coreset(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_scorer_scores_are_mean_knn_distances(device):
    g = torch.Generator().manual_seed(13)
    bank = (300.0 + torch.randn(1500, 24, generator=g)).to(device)
    query = (300.0 + torch.randn(100, 24, generator=g)).to(device)
    scorer = fastad.nn.NearestNeighborScorer(bank, k=3)
    want, want_index = brute_force_knn(query, bank, 3)
    torch.testing.assert_close(scorer.score(query).double().cpu(), want.mean(1), rtol=1e-4, atol=1e-5)
    assert torch.equal(scorer.knn(query)[1].cpu(), want_index)
    torch.testing.assert_close(scorer.memory_bank, bank, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("projection_dim", [None, 8])
def test_scorer_subsample_keeps_a_coreset(device, projection_dim):
    g = torch.Generator().manual_seed(14)
    far_cluster = 50.0 + torch.randn(10, 24, generator=g)  # a rare mode that random sampling misses
    bank = torch.cat([torch.randn(990, 24, generator=g), far_cluster]).to(device)
    scorer = fastad.nn.NearestNeighborScorer(bank, k=1)
    index = scorer.subsample(0.1, seed=3, projection_dim=projection_dim)
    assert index.shape == (100,) and len(set(index.tolist())) == 100
    torch.testing.assert_close(scorer.memory_bank, bank[index], rtol=0, atol=1e-5)
    assert scorer.score(bank[index]).max() < 1e-3
    assert (index >= 990).any()
    assert scorer.score(bank).max() < 0.5 * brute_force_knn(bank, bank[:100], 1)[0].max()


def test_scorer_subsample_is_deterministic_under_a_seed():
    bank = torch.randn(500, 8, generator=torch.Generator().manual_seed(15))
    first = fastad.nn.NearestNeighborScorer(bank).subsample(50, seed=7)
    second = fastad.nn.NearestNeighborScorer(bank).subsample(50, seed=7)
    assert torch.equal(first, second)


def test_scorer_state_dict_round_trip():
    bank = torch.randn(200, 8, generator=torch.Generator().manual_seed(16))
    scorer = fastad.nn.NearestNeighborScorer(bank, k=2)
    scorer.subsample(20, seed=1)
    restored = fastad.nn.NearestNeighborScorer(torch.zeros(20, 8), k=2)
    restored.load_state_dict(scorer.state_dict())
    query = torch.randn(10, 8)
    assert torch.equal(restored.score(query), scorer.score(query))


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: fastad.nn.NearestNeighborScorer(torch.randn(10)), ValueError, "bank must have shape"),
        (lambda: fastad.nn.NearestNeighborScorer(torch.randn(10, 3), k=11), ValueError, "k must be in"),
        (lambda: fastad.nn.NearestNeighborScorer(torch.full((4, 3), float("inf"))), ValueError, "bank contains"),
        (lambda: fastad.nn.NearestNeighborScorer(torch.randn(10, 3)).score(torch.randn(2, 4)), ValueError, "D = 3"),
        (lambda: fastad.nn.NearestNeighborScorer(torch.randn(10, 3)).subsample(1.5), ValueError, "fraction"),
        (lambda: fastad.nn.NearestNeighborScorer(torch.randn(10, 3)).subsample(0), ValueError, "size must be in"),
    ],
)
def test_scorer_bad_input(make, error, message):
    with pytest.raises(error, match=message):
        make()


def _clustered(m, d, clusters, spread, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(clusters, d, generator=g, dtype=torch.float64)
    labels = torch.randint(clusters, (m,), generator=g)
    scale = torch.logspace(0, -3, d, dtype=torch.float64)  # a decaying spectrum, like CNN features
    return (centres[labels] + spread * scale * torch.randn(m, d, generator=g, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,d,n,clusters,spread", [
    (1500, 384, 120, 40, 1.0),    # PatchCore-like: most rows skipped by the projection bound
    (4000, 1, 400, 8, 0.5),       # D = 1: k = 1, the projection is the distance itself
    (2000, 7, 500, 3, 1e-3),      # tight clusters, k = 1
    (300, 2048, 32, 5, 2.0),      # the largest D that prunes
    (300, 2049, 20, 5, 2.0),      # above it: every row read
])
def test_pruned_steps_match_reference(m, d, n, clusters, spread, dtype):
    features = _clustered(m, d, clusters, spread, m + d, dtype)
    got = fastad.ops.kcenter_coreset(features, n, 3)
    assert torch.equal(got, fastad.ops.reference.kcenter_coreset(features, n, 3))


def test_pruned_steps_with_duplicates_and_ties():
    """Exact duplicate rows (minimum 0 once a copy is chosen), equal distances to the farthest
    point (ties to the lower index) and points on a lattice, where bounds are met with equality."""
    g = torch.Generator().manual_seed(21)
    lattice = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij"), -1).reshape(-1, 2)
    block = torch.cat([lattice, torch.zeros(lattice.shape[0], 6)], 1)
    features = torch.cat([block, block, block[torch.randperm(block.shape[0], generator=g)]])
    got = fastad.ops.kcenter_coreset(features, 300, 0)
    assert torch.equal(got, fastad.ops.reference.kcenter_coreset(features, 300, 0))
    assert len(set(got.tolist())) == 300


@pytest.mark.parametrize("scale", [1e-140, 1e140])
def test_pruned_steps_at_extreme_magnitudes(scale):
    """float64 rows whose squared distances underflow or come close to overflow."""
    features = _clustered(1000, 16, 10, 1.0, 22, torch.float64) * scale
    got = fastad.ops.kcenter_coreset(features, 120, 0)
    assert torch.equal(got, fastad.ops.reference.kcenter_coreset(features, 120, 0))


def test_pruned_steps_with_non_finite_rows():
    features = _clustered(1000, 32, 10, 1.0, 23)
    features[17, 3] = float("nan")
    features[500, 0] = float("inf")
    got = fastad.ops.kcenter_coreset(features, 100, 17, check_values=False)
    assert torch.equal(got, fastad.ops.reference.kcenter_coreset(features, 100, 17))
