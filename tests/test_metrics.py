"""fastad.metrics: hand-computed cases, scikit-learn on random data with ties, AUPRO against a
slow brute-force reference (own 8-connected flood fill, one threshold at a time), bad input."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import fastad
from fastad.metrics import aupro, image_auroc, iou, pixel_ap, pixel_auroc


# --- hand-computed cases ----------------------------------------------------------------------

def test_image_auroc_hand_computed():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4; lost 0.35<0.4
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # tie: positive 2 vs negative 2 counts one half: (1 + 0.5 + 1 + 1) / 4
    assert image_auroc(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1])) == 0.875
    # all scores tied: the ROC curve is the diagonal
    assert image_auroc(np.zeros(5), np.array([0, 1, 0, 1, 1])) == 0.5
    # inverted ranking
    assert image_auroc([3, 2, 1], [0, 1, 1]) == 0.0


def test_pixel_auroc_hand_computed_pools_all_images():
    maps = torch.tensor([[[0.1, 0.4]], [[0.35, 0.8]]])  # [2, 1, 2]
    masks = torch.tensor([[[0, 0]], [[1, 1]]])
    assert pixel_auroc(maps, masks) == 0.75  # same pairs as the image case above


def test_pixel_ap_hand_computed():
    # thresholds 0.8: tp 1 fp 0 (P 1, R 1/2); 0.4: tp 1 fp 1; 0.35: tp 2 fp 1 (P 2/3, R 1)
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert pixel_ap(np.array([0.1, 0.4, 0.35, 0.8]).reshape(1, 2, 2), np.array([0, 0, 1, 1]).reshape(1, 2, 2)) \
        == pytest.approx(5 / 6, abs=1e-15)
    # ties: scores 3 2 2 1 1, labels 0 1 1 1 0, three positives
    # t=3: tp 0 fp 1; t=2: tp 2 fp 1 (P 2/3, dR 2/3); t=1: tp 3 fp 2 (P 3/5, dR 1/3)
    # AP = 2/3 * 2/3 + 1/3 * 3/5 = 4/9 + 1/5 = 29/45
    maps = torch.tensor([3.0, 2.0, 2.0, 1.0, 1.0]).reshape(1, 1, 5)
    masks = torch.tensor([0, 1, 1, 1, 0]).reshape(1, 1, 5)
    assert pixel_ap(maps, masks) == pytest.approx(29 / 45, abs=1e-15)
    # every pixel anomalous: precision is 1 at every threshold
    assert pixel_ap(torch.rand(1, 3, 3), torch.ones(1, 3, 3)) == 1.0


# image 0 of the AUPRO cases: regions A = {(0,0), (0,1)} (size 2) and B = {(2,2)} (size 1),
# 6 normal pixels. Descending: .9 A, .8 N, .7 B, .5 A, then only normal pixels.
AUPRO_MASK = [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
AUPRO_MAP = [[0.9, 0.5, 0.8], [0.1, 0.2, 0.3], [0.4, 0.0, 0.7]]


def test_aupro_hand_computed_two_regions():
    maps, masks = torch.tensor([AUPRO_MAP]), torch.tensor([AUPRO_MASK])
    # curve (fpr, pro): (0, 0) (0, 1/4) (1/6, 1/4) (1/6, 3/4) (1/6, 1) (2/6, 1) ... (1, 1)
    # limit 1: 1/6 * 1/4 + 5/6 * 1 = 21/24
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(21 / 24, abs=1e-12)
    # limit 0.3: (1/6 * 1/4 + (0.3 - 1/6) * 1) / 0.3 = (1/24 + 2/15) / 0.3 = 7/12
    assert aupro(maps, masks) == pytest.approx(7 / 12, abs=1e-12)


def test_aupro_image_without_anomaly_adds_only_normal_pixels():
    # add an all-normal 3x3 image scored 0.85 everywhere: 15 normal pixels in all.
    # curve: (0, 1/4) at .9, (9/15, 1/4) at .85, (10/15, 1/4) at .8, (10/15, 1) after .7 and .5
    # limit 1: 1/4 * 10/15 + 1 * 5/15 = 1/2; limit 0.3: the PRO is 1/4 all the way
    maps = torch.tensor([AUPRO_MAP, [[0.85] * 3] * 3])
    masks = torch.tensor([AUPRO_MASK, [[0] * 3] * 3])
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.25, abs=1e-12)


def test_aupro_interpolates_at_the_limit_inside_a_tie():
    # one anomalous pixel tied with one of 3 normal pixels at 0.5: the curve jumps on a slope
    # from (0, 0) to (1/3, 1), then (2/3, 1), (1, 1)
    maps, masks = torch.tensor([[[0.5, 0.5, 0.1, 0.2]]]), torch.tensor([[[1, 0, 0, 0]]])
    # limit 0.3 < 1/3: PRO(0.3) = 0.9, area 0.3 * 0.9 / 2 = 0.135, / 0.3 = 0.45
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.45, abs=1e-12)
    # limit 1: 1/3 * 1/2 + 2/3 * 1 = 5/6
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(5 / 6, abs=1e-12)
    # limit exactly at a curve point: 1/3 * 1/2 / (1/3) = 1/2
    assert aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(0.5, abs=1e-12)


def test_aupro_diagonal_neighbours_are_one_region():
    # (0,1) and (1,2) touch diagonally: one region of size 3 with 8-connectivity (two with 4)
    masks = torch.tensor([[[1, 1, 0], [0, 0, 1]]])
    maps = torch.tensor([[[0.9, 0.1, 0.2], [0.3, 0.4, 0.8]]])
    # descending .9 A, .8 A, .4 N, .3 N, .2 N, .1 A; 3 normal pixels
    # one region: (0, 1/3) (0, 2/3) then PRO 2/3 until (1, 2/3) -> area 2/3
    # (two regions would give PRO 1/4, 3/4, flat at 3/4 -> area 3/4)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(2 / 3, abs=1e-12)


def test_aupro_perfect_and_worst_maps():
    masks = torch.zeros(2, 8, 8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 5:7, 5:7] = 1
    assert aupro(masks * 2 + 1, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-masks, masks, fpr_limit=1.0) == pytest.approx(0.0, abs=1e-12)
    assert aupro(-masks, masks) == 0.0


def test_iou_hand_computed():
    maps = torch.tensor([[[0.1, 0.6], [0.7, 0.2]]])
    masks = torch.tensor([[[0, 1], [1, 1]]])
    assert iou(maps, masks, 0.5) == 2 / 3   # pred {(0,1), (1,0)} inside gt of 3 pixels
    assert iou(maps, masks, 0.6) == 2 / 3   # maps >= threshold: 0.6 is predicted
    assert iou(maps, masks, 0.65) == 1 / 3
    assert iou(maps, masks, 0.0) == 3 / 4   # everything predicted
    assert iou(maps, torch.zeros_like(masks), 0.5) == 0.0
    assert iou(maps, torch.zeros_like(masks), 1.0) == 1.0  # empty union: exact agreement


def test_iou_pools_over_the_set():
    # image 0: inter 1, union 1; image 1: inter 0, union 3 -> pooled 1/4 (the mean would be 1/2)
    maps = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]])
    masks = torch.tensor([[[1, 0, 0]], [[0, 0, 1]]])
    assert iou(maps, masks, 0.5) == 1 / 4


# --- input types and binarisation -------------------------------------------------------------

def test_inputs_as_numpy_torch_and_lists_agree():
    g = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 5, (3, 6, 7), generator=g).float()
    masks = torch.rand(3, 6, 7, generator=g) < 0.3
    want = pixel_auroc(maps, masks)
    for m in (maps.double(), maps.half(), maps.bfloat16(), maps.int(), maps.numpy(), maps.numpy().astype(np.int64)):
        for k in (masks, masks.numpy(), masks.float(), masks.to(torch.uint8) * 255, masks.numpy().astype(np.uint8) * 255):
            assert pixel_auroc(m, k) == want
    assert image_auroc(maps[:, 0, 0].tolist(), masks[:, 0, 0].tolist()) == image_auroc(maps[:, 0, 0], masks[:, 0, 0])
    assert isinstance(want, float) and isinstance(aupro(maps, masks), float) and isinstance(iou(maps, masks, 2), float)


def test_masks_are_anomalous_above_one_half():
    maps = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    # 0.5 is normal, 0.51 anomalous: same as labels 0 0 1 1
    assert pixel_auroc(maps, torch.tensor([[[0.0, 0.5, 0.51, 1.0]]])) == 1.0
    assert iou(maps, torch.tensor([[[0.2, 0.5, 0.6, 0.9]]]), 2.0) == 1.0


def test_infinite_scores_are_ranked():
    assert image_auroc([-math.inf, 0.0, math.inf], [0, 1, 1]) == 1.0
    assert image_auroc([math.inf, math.inf, 0.0], [0, 1, 0]) == 0.75


# --- against scikit-learn ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_ap_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, h, w = rng.integers(1, 5), rng.integers(1, 12), rng.integers(2, 12)
    levels = [3, 10, 1000][seed % 3]  # heavy, some and few ties
    masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.6)
    masks.flat[0], masks.flat[-1] = True, False
    maps = rng.integers(0, levels, (n, h, w)).astype(np.float32) + masks * rng.integers(0, 3)
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_and_ap_match_sklearn_on_a_million_pixels():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(16, 256, 256, generator=g) < 0.05
    maps = torch.round((torch.rand(16, 256, 256, generator=g) + 0.3 * masks) * 2000) / 2000  # many ties
    y, s = masks.numpy().ravel(), maps.numpy().ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-10)


# --- AUPRO against a brute force ----------------------------------------------------------------

def flood_fill_regions(mask):
    """Regions of a 2-D bool mask with 8-connectivity, as lists of (row, col)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for r0 in range(h):
        for c0 in range(w):
            if mask[r0, c0] and not seen[r0, c0]:
                stack, region = [(r0, c0)], []
                seen[r0, c0] = True
                while stack:
                    r, c = stack.pop()
                    region.append((r, c))
                    for dr in (-1, 0, 1):
                        for dc in (-1, 0, 1):
                            rr, cc = r + dr, c + dc
                            if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                                seen[rr, cc] = True
                                stack.append((rr, cc))
                regions.append(region)
    return regions


def brute_force_aupro(maps, masks, fpr_limit):
    regions = [(i, reg) for i in range(len(masks)) for reg in flood_fill_regions(masks[i])]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([np.mean([pred[i, r, c] for r, c in reg]) for i, reg in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (fpr_limit - x0) / (x1 - x0) * (y1 - y0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fpr_limit", [0.3, 1.0, 0.05])
def test_aupro_matches_brute_force(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    n, h, w = 3, int(rng.integers(5, 11)), int(rng.integers(5, 11))
    masks = rng.random((n, h, w)) < 0.2          # many small regions, some touching diagonally
    masks[0, 0, 0], masks[0, 1, 1], masks[0, 0, 1], masks[0, 1, 0] = True, True, False, False
    masks[n - 1] = False                          # one image without anomaly
    levels = [4, 12, 10_000][seed % 3]
    maps = rng.integers(0, levels, (n, h, w)).astype(np.float64) + masks * rng.integers(0, levels // 2 + 1)  # mixed ties
    want = brute_force_aupro(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(want, abs=1e-10)
    assert aupro(torch.from_numpy(maps).float(), torch.from_numpy(masks), fpr_limit) == \
        pytest.approx(brute_force_aupro(maps.astype(np.float32), masks, fpr_limit), abs=1e-6)


def test_aupro_diagonal_region_in_brute_force_oracle():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    assert sorted(len(r) for r in flood_fill_regions(mask)) == [2, 2]


# --- bad input ----------------------------------------------------------------------------------

def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="scores and labels must have the same shape"):
        image_auroc(torch.rand(4), torch.ones(5))
    with pytest.raises(ValueError, match=r"scores must have shape \[N\]"):
        image_auroc(torch.rand(4, 1), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"maps must have shape \[N, H, W\]"):
        pixel_auroc(torch.rand(4, 4), torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"masks must have shape \[N, H, W\]"):
        aupro(torch.rand(1, 4, 4), torch.ones(1, 1, 4, 4))
    for f in (pixel_auroc, pixel_ap, aupro):
        with pytest.raises(ValueError, match="maps and masks must have the same shape"):
            f(torch.rand(2, 4, 4), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="maps and masks must have the same shape"):
        iou(torch.rand(2, 4, 4), torch.ones(2, 4, 5), 0.5)


def test_type_errors():
    with pytest.raises(TypeError, match="scores must be a torch.Tensor or numpy array"):
        image_auroc("0.1 0.2", [0, 1])
    with pytest.raises(TypeError, match="labels must hold real numbers"):
        image_auroc([0.1, 0.2], ["a", "b"])
    with pytest.raises(TypeError, match="maps must hold real numbers"):
        pixel_auroc(torch.ones(1, 2, 2, dtype=torch.complex64), torch.ones(1, 2, 2))
    with pytest.raises(TypeError, match="fpr_limit must be a real number"):
        aupro(torch.rand(1, 2, 2), torch.tensor([[[1, 0], [0, 0]]]), fpr_limit=True)
    with pytest.raises(TypeError, match="threshold must be a real number"):
        iou(torch.rand(1, 2, 2), torch.ones(1, 2, 2), "0.5")


def test_single_class_errors_say_which_class_is_missing():
    with pytest.raises(ValueError, match="image AUROC is undefined: labels has no anomalous image"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="image AUROC is undefined: labels has no normal image"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="pixel AUROC is undefined: masks has no normal pixel"):
        pixel_auroc(torch.rand(1, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="pixel AUROC is undefined: masks has no anomalous pixel"):
        pixel_auroc(torch.rand(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="labels has no anomalous image"):
        image_auroc(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="average precision is undefined: masks has no anomalous pixel"):
        pixel_ap(torch.rand(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="AUPRO is undefined: masks has no anomalous region"):
        aupro(torch.rand(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="AUPRO is undefined: masks has no normal pixel"):
        aupro(torch.rand(1, 2, 2), torch.ones(1, 2, 2))


def test_nan_errors():
    with pytest.raises(ValueError, match="scores contains NaN"):
        image_auroc([0.1, float("nan")], [0, 1])
    for f in (pixel_auroc, pixel_ap, aupro):
        with pytest.raises(ValueError, match="maps contains NaN"):
            f(torch.tensor([[[0.1, float("nan")]]]), torch.tensor([[[0, 1]]]))
        with pytest.raises(ValueError, match="masks contains NaN"):
            f(torch.tensor([[[0.1, 0.2]]]), torch.tensor([[[0.0, float("nan")]]]))
    with pytest.raises(ValueError, match="maps contains NaN"):
        iou(torch.tensor([[[0.1, float("nan")]]]), torch.tensor([[[0, 1]]]), 0.5)
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        iou(torch.tensor([[[0.1, 0.2]]]), torch.tensor([[[0, 1]]]), float("nan"))


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5, float("nan")])
def test_aupro_fpr_limit_out_of_range(limit):
    with pytest.raises(ValueError, match="fpr_limit must"):
        aupro(torch.rand(1, 2, 2), torch.tensor([[[1, 0], [0, 0]]]), fpr_limit=limit)


def test_public_names():
    assert fastad.metrics.__all__ == ["image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iou"]
