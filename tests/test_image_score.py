"""Image-score rules over pixel maps (fastad.metrics.image_score) against numpy / scipy oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastad.metrics.image_score import (IMAGE_SCORE_RULES, NORMALISED_RULES, SMOOTH_SIGMA, TOP_FRACTION, image_score,
                                        normalise, smooth)


def _maps(n=5, h=40, w=36, seed=0):
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed))


def test_smooth_matches_scipy_gaussian_filter():
    maps = _maps()
    expected = np.stack([ndimage.gaussian_filter(m, SMOOTH_SIGMA, mode="nearest", truncate=3.0)
                         for m in maps.double().numpy()])
    np.testing.assert_allclose(smooth(maps.double()).numpy(), expected, atol=1e-12)
    flat = torch.full((2, 9, 7), 0.25)
    assert torch.allclose(smooth(flat), flat)


def test_smooth_takes_maps_smaller_than_its_kernel_and_keeps_the_dtype():
    """smooth runs fastad.ops.gaussian_blur on the map padded by replicating its edge, so a map
    narrower than the kernel's reach (12 px at sigma 4; the op's reflect padding alone refuses
    it) is blurred as scipy's mode="nearest" blurs it, and float32 agrees with float64."""
    tiny = _maps(3, 5, 2, seed=1).double()
    expected = np.stack([ndimage.gaussian_filter(m, SMOOTH_SIGMA, mode="nearest", truncate=3.0) for m in tiny.numpy()])
    np.testing.assert_allclose(smooth(tiny).numpy(), expected, atol=1e-12)
    maps = _maps()
    assert torch.allclose(smooth(maps), smooth(maps.double()).float(), rtol=0, atol=1e-6)
    half = smooth(maps.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), smooth(maps), atol=1e-2)


def test_plain_rules_match_numpy():
    maps = _maps()
    a = maps.numpy().reshape(len(maps), -1)
    np.testing.assert_allclose(image_score(maps, "max").numpy(), a.max(1))
    np.testing.assert_allclose(image_score(maps, "q0.99").numpy(), np.quantile(a, 0.99, axis=1), rtol=1e-6)
    np.testing.assert_allclose(image_score(maps, "q0.999").numpy(), np.quantile(a, 0.999, axis=1), rtol=1e-6)
    s = np.stack([ndimage.gaussian_filter(m, SMOOTH_SIGMA, mode="nearest", truncate=3.0)
                  for m in maps.double().numpy()]).reshape(len(maps), -1)
    np.testing.assert_allclose(image_score(maps, "smooth_max").numpy(), s.max(1), rtol=1e-5)
    k = max(1, round(TOP_FRACTION * s.shape[1]))
    np.testing.assert_allclose(image_score(maps, "smooth_top1").numpy(), np.sort(s, 1)[:, -k:].mean(1), rtol=1e-5)
    assert image_score(maps.numpy(), "max").dtype == torch.float32


def test_smoothed_rules_prefer_a_blob_to_one_hot_pixel():
    maps = torch.zeros(2, 64, 64)
    maps[0, 30, 30] = 1.0                # one isolated hot pixel (noise)
    maps[1, 20:30, 20:30] = 0.6          # a 10 x 10 anomalous blob, weaker peak
    assert image_score(maps, "max").argmax() == 0
    for rule in ("smooth_max", "smooth_top1", "q0.99"):
        assert image_score(maps, rule).argmax() == 1, rule


def test_normalised_rules_remove_position_bias_and_are_affine_invariant():
    gen = torch.Generator().manual_seed(2)
    bias = torch.linspace(0, 3, 48).expand(48, 48)             # strong left-to-right bias
    reference = bias + 0.1 * torch.randn(20, 48, 48, generator=gen)
    maps = bias + 0.1 * torch.randn(6, 48, 48, generator=gen)
    maps[3, 10:16, 4:10] += 0.8                                 # defect on the low-bias side
    for rule in NORMALISED_RULES:
        scores = image_score(maps, rule, reference=reference)
        assert scores.argmax() == 3, rule
        again = image_score(maps * 7 + 2, rule, reference=reference * 7 + 2)
        torch.testing.assert_close(again, scores, rtol=1e-4, atol=1e-4)
    assert int(maps[3].flatten().argmax()) % 48 >= 40           # the raw maximum sits on the bias, not the defect
    z = normalise(maps, reference)
    assert abs(float(normalise(reference, reference).std()) - 1) < 1e-5 and z.shape == maps.shape


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "mean"}, "rule must be one of"),
    ({"rule": "norm_max"}, "needs reference maps"),
    ({"rule": "max", "reference": torch.rand(2, 8, 8)}, "takes no reference maps"),
    ({"rule": "norm_max", "reference": torch.rand(2, 8, 9)}, "reference must be"),
    ({"rule": "norm_max", "reference": torch.ones(3, 8, 8)}, "cannot normalise"),
    ({"rule": "norm_max", "reference": torch.full((2, 8, 8), float("nan"))}, "reference contains NaN"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        image_score(torch.rand(2, 8, 8), **kwargs)


def test_bad_maps():
    with pytest.raises(ValueError, match="maps contains NaN"):
        image_score(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="maps"):
        image_score(torch.rand(4, 4))
    with pytest.raises(ValueError, match="at least one pixel"):
        image_score(torch.rand(2, 0, 4))
    assert set(NORMALISED_RULES) < set(IMAGE_SCORE_RULES)
