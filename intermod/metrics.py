"""Overlap, surface-distance and deformation-quality metrics for label maps and displacement fields.

Conventions: masks and label maps are numpy arrays with axes (X, Y, Z); ``spacing`` is the voxel size in
mm per axis; displacement fields have shape (3, X, Y, Z), are in voxel units along the array axes and
describe the transform x -> x + u(x).

Surface distances are computed with scipy only (no MONAI at run time) and match
``monai.metrics.compute_average_surface_distance(symmetric=True)`` and
``monai.metrics.compute_hausdorff_distance(percentile=95)`` to float32 precision: the surface of a mask
is defined exactly as in MONAI's ``get_mask_edges`` (see :func:`mask_surface`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

# Lower bound for det(J) before taking its log: keeps log finite for near-singular (but positive) voxels.
_MIN_POSITIVE_JACOBIAN = 1e-9


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global normalised cross-correlation of two images (the paper's Eq. 3 similarity), in [-1, 1]."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def histogram_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Mutual information (nats) of two images from their joint histogram, ``bins`` per axis over each
    image's own range: in [0, log(bins)], and unchanged by a linear rescaling of either image."""
    if a.shape != b.shape:
        raise ValueError(f"histogram_mutual_information: shapes differ, {a.shape} vs {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan  # a diverged network's output: reported as NaN, like ncc, not a crash
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log(p[nonzero] / outer[nonzero])).sum())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty (nothing to disagree on)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"dice: masks differ in shape {a.shape} vs {b.shape}")
    total = a.sum() + b.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def _as_mask_pair(a: np.ndarray, b: np.ndarray, spacing: Sequence[float], name: str):
    """Boolean masks and a float spacing vector, validated against each other."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"{name}: masks differ in shape {a.shape} vs {b.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_arr.shape != (a.ndim,) or not np.all(spacing_arr > 0):
        raise ValueError(
            f"{name}: spacing must be {a.ndim} positive values (one per mask axis), got {tuple(spacing)}"
        )
    return a, b, spacing_arr


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: the mask minus its binary erosion.

    The erosion uses scipy's default structuring element, the face-connected cross (6-neighbourhood in
    3D, ``generate_binary_structure(ndim, 1)``), with everything outside the array counted as background.
    So a voxel is on the surface when at least one of its face neighbours is background or lies outside
    the volume. This is MONAI's ``get_mask_edges`` definition; the 26-neighbourhood would mark more
    voxels (edge/corner contacts) and give distances that no longer agree with MONAI.
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: np.ndarray):
    """Distances in mm from each surface voxel of ``a`` to the surface of ``b``, and from ``b`` to ``a``.

    Both masks must be non-empty. The work is restricted to the bounding box of ``a | b`` grown by one
    voxel: every surface voxel lies inside it, so the exact EDT inside the box equals the one over the
    full volume, and the one-voxel margin keeps out-of-volume voxels as background for the erosion.
    """
    union = a | b
    box = tuple(
        slice(max(int(idx.min()) - 1, 0), int(idx.max()) + 2) for idx in np.nonzero(union)
    )
    surf_a = mask_surface(a[box])
    surf_b = mask_surface(b[box])
    # EDT of the complement gives, at every voxel, the distance to the nearest surface voxel.
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)
    return dist_to_b[surf_a], dist_to_a[surf_b]


def _pair_surface_distances(a, b, spacing: Sequence[float], name: str):
    """Validated directional surface distances (a -> b, b -> a) in mm, or None if either mask is empty."""
    a, b, spacing_arr = _as_mask_pair(a, b, spacing, name)
    if not a.any() or not b.any():
        return None
    return _surface_distances(a, b, spacing_arr)


def _mean_distance(distances) -> float:
    return float("nan") if distances is None else float(np.concatenate(distances).mean())


def _max_directional_p95(distances) -> float:
    return float("nan") if distances is None else float(max(np.percentile(d, 95) for d in distances))


def average_surface_distance(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm between two masks.

    The mean over the pooled surface voxels of both masks of the distance to the other mask's surface
    (see :func:`mask_surface`), with anisotropic ``spacing`` respected. Returns nan when either mask is
    empty: a distance to an absent surface is undefined.
    """
    return _mean_distance(_pair_surface_distances(a, b, spacing, "average_surface_distance"))


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two masks.

    The maximum of the two directional 95th percentiles (a -> b and b -> a, linear interpolation),
    which is what ``monai.metrics.compute_hausdorff_distance(percentile=95)`` computes; surfaces as in
    :func:`mask_surface`. Returns nan when either mask is empty.
    """
    return _max_directional_p95(_pair_surface_distances(a, b, spacing, "hausdorff95"))


def organ_metrics(
    fixed_labels: np.ndarray,
    moving_labels: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float],
) -> dict[str, dict[str, float]]:
    """Dice, average surface distance and HD95 per organ between two label maps.

    Args:
        fixed_labels: integer label map of the fixed image, axes (X, Y, Z).
        moving_labels: integer label map of the (warped) moving image, same shape.
        labels: organ name -> label value, e.g. ``{"bladder": 1, "prostate": 2, "rectum": 3}``.
        spacing: voxel size in mm per axis.

    Returns:
        ``{organ: {"dice": ..., "asd": ..., "hd95": ...}}``; distances in mm, nan where an organ is
        absent from either map.
    """
    fixed_labels = np.asarray(fixed_labels)
    moving_labels = np.asarray(moving_labels)
    if fixed_labels.shape != moving_labels.shape:
        raise ValueError(
            f"organ_metrics: fixed labels {fixed_labels.shape} and moving labels {moving_labels.shape} differ in shape"
        )
    results = {}
    for name, value in labels.items():
        fixed_mask = fixed_labels == value
        moving_mask = moving_labels == value
        # One pair of distance transforms serves both distance metrics.
        distances = _pair_surface_distances(fixed_mask, moving_mask, spacing, "organ_metrics")
        results[name] = {
            "dice": dice(fixed_mask, moving_mask),
            "asd": _mean_distance(distances),
            "hd95": _max_directional_p95(distances),
        }
    return results


def _validate_field(field: np.ndarray, name: str) -> np.ndarray:
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"{name}: expected a displacement field of shape (3, X, Y, Z), got {field.shape}")
    if min(field.shape[1:]) < 2:
        raise ValueError(f"{name}: each spatial axis needs at least 2 voxels for finite differences, got {field.shape}")
    return field


def jacobian_determinant(field: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Determinant of the Jacobian of x -> x + u(x) at every voxel, shape (X, Y, Z).

    Derivatives are central differences per voxel (``np.gradient``; one-sided at the borders). Because
    ``u`` is in voxel units, det(I + du/dx) is already the physical volume change: rescaling both the
    displacement and the coordinates to mm conjugates the Jacobian by diag(spacing), which leaves its
    determinant unchanged. ``spacing`` is therefore only validated, so callers can pass it uniformly.

    Args:
        field: displacement field of shape (3, X, Y, Z) in voxel units.
        spacing: optional voxel size in mm per axis; does not change the result.
    """
    field = _validate_field(field, "jacobian_determinant")
    if spacing is not None and (len(spacing) != 3 or not all(s > 0 for s in spacing)):
        raise ValueError(f"jacobian_determinant: spacing must be 3 positive values, got {tuple(spacing)}")
    # jac[i][j] = d(x_i + u_i) / d x_j
    jac = [list(np.gradient(field[i])) for i in range(3)]
    for i in range(3):
        jac[i][i] += 1.0
    # Cofactor expansion along the first row: avoids materialising an (X, Y, Z, 3, 3) array.
    return (
        jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
        - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
        + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
    )


def folding_statistics(field: np.ndarray) -> dict[str, float]:
    """Summary of the regularity of a displacement field of shape (3, X, Y, Z) in voxel units.

    Returns:
        ``percent_nonpositive_jacobian``: percentage (0-100) of voxels with det(J) <= 0 (folding);
        ``std_log_jacobian``: standard deviation of log det(J) over voxels with det(J) > 0, det clipped
        below at 1e-9 (nan if no voxel has det(J) > 0);
        ``min_jacobian`` and ``max_jacobian``.
    """
    det = jacobian_determinant(field)
    positive = det[det > 0]
    std_log = float(np.log(np.maximum(positive, _MIN_POSITIVE_JACOBIAN)).std()) if positive.size else float("nan")
    return {
        "percent_nonpositive_jacobian": float(100.0 * np.count_nonzero(det <= 0) / det.size),
        "std_log_jacobian": std_log,
        "min_jacobian": float(det.min()),
        "max_jacobian": float(det.max()),
    }
