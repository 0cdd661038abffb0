"""Tests for intermod.metrics: analytic cases plus a cross-check against MONAI."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from intermod.metrics import (
    average_surface_distance,
    dice,
    folding_statistics,
    hausdorff95,
    jacobian_determinant,
    mask_surface,
    histogram_mutual_information,
    ncc,
    organ_metrics,
)

ISO = (1.0, 1.0, 1.0)


def ball(shape, center, radius, spacing=ISO):
    """Voxels whose centre lies within ``radius`` mm of ``center`` (given in voxel coordinates)."""
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum(((grid[i] - center[i]) * spacing[i]) ** 2 for i in range(3))
    return dist2 <= radius**2


def lens_dice(radius, offset):
    """Dice of two equal balls whose centres are ``offset`` apart (lens intersection volume)."""
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12
    return lens / (4 / 3 * math.pi * radius**3)


def blobs(shape, seed, threshold):
    """Smooth random blobs that also touch the volume border."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, sigma=2.5) > threshold


# ---------------------------------------------------------------- Dice


def test_ncc_is_one_for_affine_copies_and_minus_one_for_negatives():
    image = np.random.default_rng(0).random((9, 8, 7)).astype(np.float32)
    assert ncc(image, image) == pytest.approx(1.0)
    assert ncc(image, 2.5 * image + 3.0) == pytest.approx(1.0)  # invariant to gain and offset
    assert ncc(image, -image) == pytest.approx(-1.0)
    assert abs(ncc(image, np.random.default_rng(1).random((9, 8, 7)))) < 0.2


def test_histogram_mutual_information_analytic_cases():
    a, b = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")  # independent, uniform over 32 bins each
    # MI of an image with itself is its entropy
    assert histogram_mutual_information(a, a) == pytest.approx(math.log(32))
    assert histogram_mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    assert histogram_mutual_information(a, 1000 - 3 * a) == pytest.approx(math.log(32))  # a linear remap loses nothing
    halves = (a >= 16).astype(float)  # one bit of a: MI = log 2
    assert histogram_mutual_information(a, halves) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="shapes differ"):
        histogram_mutual_information(a, b[:-1])
    a[3, 4] = np.nan  # a diverged network's warped image: NaN, as ncc gives, not an exception
    assert math.isnan(histogram_mutual_information(a, b)) and math.isnan(ncc(a, b))


def test_dice_identical_disjoint_empty():
    a = np.zeros((6, 6, 6), bool)
    a[1:3, 1:3, 1:3] = True
    b = np.zeros_like(a)
    b[4:6, 4:6, 4:6] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_dice_cubes_known_overlap():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4, 0:4, 0:4] = True  # 64 voxels
    b[2:6, 0:4, 0:4] = True  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(2 * 32 / 128, abs=1e-12)


# ---------------------------------------------------------------- surfaces


def test_surface_is_face_connected_boundary():
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    surface = mask_surface(cube)
    assert surface.sum() == 5**3 - 3**3
    # A mask touching the volume border has a surface there too.
    assert mask_surface(np.ones((3, 3, 3), bool)).sum() == 26


def test_concentric_spheres_asd_and_spacing():
    shape, center = (56, 56, 56), (28, 28, 28)
    inner, outer = ball(shape, center, 20), ball(shape, center, 23)
    asd = average_surface_distance(inner, outer, ISO)
    assert asd == pytest.approx(3.0, abs=0.5)
    assert average_surface_distance(inner, outer, (2.0, 2.0, 2.0)) == pytest.approx(2 * asd, rel=1e-12)
    assert average_surface_distance(outer, inner, ISO) == pytest.approx(asd, rel=1e-12)


@pytest.mark.parametrize("offset", [4, 8])
def test_shifted_sphere_hd95_and_dice(offset):
    radius, shape = 15, (50, 50, 60)
    a = ball(shape, (25, 25, 25), radius)
    b = ball(shape, (25, 25, 25 + offset), radius)
    assert hausdorff95(a, b, ISO) == pytest.approx(offset, abs=1.0)
    assert dice(a, b) == pytest.approx(lens_dice(radius, offset), rel=0.02)
    assert hausdorff95(a, a, ISO) == 0.0
    assert average_surface_distance(a, a, ISO) == 0.0


def test_anisotropic_spacing_single_voxels_exact():
    a = np.zeros((9, 9, 9), bool)
    b = np.zeros_like(a)
    a[4, 4, 2] = True
    b[4, 4, 4] = True  # two voxels apart along z
    assert average_surface_distance(a, b, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hausdorff95(a, b, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hausdorff95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_anisotropic_spacing_shifted_sphere():
    spacing, shape = (1.0, 1.0, 3.0), (44, 44, 20)
    # Physical spheres of radius 18 mm, shifted 2 slices = 6 mm along z.
    a = ball(shape, (22, 22, 9), 18, spacing)
    b = ball(shape, (22, 22, 11), 18, spacing)
    assert hausdorff95(a, b, spacing) == pytest.approx(6.0, abs=1.5)
    assert hausdorff95(a, b, ISO) == pytest.approx(2.0, abs=0.5)


def test_empty_masks_give_nan():
    a = np.zeros((5, 5, 5), bool)
    b = a.copy()
    b[2, 2, 2] = True
    for fn in (average_surface_distance, hausdorff95):
        assert math.isnan(fn(a, b, ISO))
        assert math.isnan(fn(b, a, ISO))
        assert math.isnan(fn(a, a, ISO))


def test_input_validation_messages():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match=r"\(4, 4, 4\) vs \(4, 4, 5\)"):
        average_surface_distance(a, np.zeros((4, 4, 5), bool), ISO)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        jacobian_determinant(np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        folding_statistics(np.zeros((4, 4, 4, 3)))


def test_organ_metrics():
    fixed = np.zeros((30, 30, 30), np.int16)
    moving = np.zeros_like(fixed)
    fixed[ball(fixed.shape, (10, 15, 15), 6)] = 1
    moving[ball(fixed.shape, (10, 15, 17), 6)] = 1
    fixed[20:26, 10:20, 10:20] = 2
    moving[20:26, 10:20, 10:20] = 2
    spacing = (1.0, 1.0, 2.0)
    out = organ_metrics(fixed, moving, {"bladder": 1, "prostate": 2, "rectum": 3}, spacing)
    assert set(out) == {"bladder", "prostate", "rectum"}
    assert set(out["bladder"]) == {"dice", "asd", "hd95"}
    assert out["bladder"]["dice"] == pytest.approx(dice(fixed == 1, moving == 1))
    assert out["bladder"]["hd95"] == pytest.approx(hausdorff95(fixed == 1, moving == 1, spacing))
    assert out["prostate"] == {"dice": 1.0, "asd": 0.0, "hd95": 0.0}
    assert out["rectum"]["dice"] == 1.0 and math.isnan(out["rectum"]["asd"])
    with pytest.raises(ValueError, match="fixed labels"):
        organ_metrics(fixed, moving[:-1], {"bladder": 1}, spacing)


# ---------------------------------------------------------------- MONAI cross-check


# MONAI warns about its own internal use of a deprecated argument.
@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize(
    ("seed", "spacing"), [(0, (1.0, 1.0, 1.0)), (1, (0.8, 1.2, 2.5)), (2, (2.0, 0.5, 1.0))]
)
def test_matches_monai(seed, spacing):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    shape = (40, 36, 30)
    a = blobs(shape, seed, 0.02)
    # Partly overlapping a, partly independent, so distances range from 0 to several voxels.
    b = blobs(shape, seed + 100, 0.02) | (ndimage.binary_dilation(a, iterations=2) & blobs(shape, seed + 200, 0.0))

    def one_hot(mask):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    kwargs = dict(include_background=False, spacing=list(spacing))
    ref_asd = monai_metrics.compute_average_surface_distance(one_hot(a), one_hot(b), symmetric=True, **kwargs)
    ref_hd = monai_metrics.compute_hausdorff_distance(one_hot(a), one_hot(b), percentile=95, **kwargs)
    assert average_surface_distance(a, b, spacing) == pytest.approx(ref_asd.item(), abs=1e-4)
    assert hausdorff95(a, b, spacing) == pytest.approx(ref_hd.item(), abs=1e-4)


# ---------------------------------------------------------------- Jacobian


def test_jacobian_zero_field_is_one():
    field = np.zeros((3, 5, 6, 7))
    np.testing.assert_array_equal(jacobian_determinant(field), np.ones((5, 6, 7)))
    stats = folding_statistics(field)
    assert stats == {
        "percent_nonpositive_jacobian": 0.0,
        "std_log_jacobian": 0.0,
        "min_jacobian": 1.0,
        "max_jacobian": 1.0,
    }


def test_jacobian_linear_field_is_exact():
    mat = np.array([[0.1, -0.2, 0.05], [0.3, 0.02, -0.1], [0.0, 0.15, -0.25]])
    grid = np.indices((6, 7, 8), dtype=np.float64)
    field = np.einsum("ij,j...->i...", mat, grid)
    expected = np.linalg.det(np.eye(3) + mat)
    det = jacobian_determinant(field, spacing=(1.0, 1.0, 3.0))
    np.testing.assert_allclose(det, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(det, jacobian_determinant(field))


def test_folding_field_is_all_nonpositive():
    grid = np.indices((5, 5, 5), dtype=np.float64)
    field = np.zeros((3, 5, 5, 5))
    field[0] = -2.0 * grid[0]  # x0 -> -x0: a reflection, det = -1
    np.testing.assert_allclose(jacobian_determinant(field), -1.0)
    stats = folding_statistics(field)
    assert stats["percent_nonpositive_jacobian"] == 100.0
    assert math.isnan(stats["std_log_jacobian"])
    assert stats["min_jacobian"] == pytest.approx(-1.0)
