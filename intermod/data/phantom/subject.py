"""One subject from one seed: anatomy, deformation and contrast rendered on a grid; its difficulty record."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intermod.data.phantom.anatomy import LABELS, _Canvas, _organ_labels, _render, _sample_anatomy
from intermod.data.phantom.contrast import _ct_image, _mr_image, _sample_contrast
from intermod.data.phantom.deformation import Deformation, _fields, _sample_deformation
from intermod.data.phantom.grid import Grid, _axes, grid_points
from intermod.metrics import dice, ncc
from intermod.spatial_numpy import warp_array


@dataclass(frozen=True)
class Phantom:
    """A synthesised subject with its internals (for checks and figures)."""
    arrays: dict[str, np.ndarray]   # what synthesize_subject returns
    ct_tissue: np.ndarray           # uint8 TISSUES on the CT
    mr_tissue: np.ndarray           # uint8 TISSUES on the MR
    w: np.ndarray                   # (X, Y, Z, 3) voxels: MR voxel y shows CT anatomy at y + w(y)
    deformation: Deformation        # the analytic map behind w and gt_field (local part rescaled)
    grid: Grid


def synthesize_phantom(seed: int, grid: Grid) -> Phantom:
    """Synthesise one subject on ``grid``, keeping the tissue maps and the deformation."""
    rng = np.random.default_rng(seed)
    anatomy = _sample_anatomy(rng)
    deformation = _sample_deformation(rng, anatomy)
    contrast = _sample_contrast(rng)
    deformation, phi, w, u = _fields(deformation, grid)

    ct_tissue = _render(anatomy, _Canvas(grid, tuple(np.ix_(*_axes(grid))), np.zeros(3)))
    margin = np.abs(phi - grid_points(grid)).max(axis=1)
    mr_tissue = _render(anatomy, _Canvas(grid, tuple(phi.reshape(3, *grid.shape)), margin))
    del phi

    ct = _ct_image(rng, grid, ct_tissue, contrast)
    mr = _mr_image(rng, grid, mr_tissue, contrast)
    arrays = {
        "ct": ct, "mr": mr,
        "ct_paired": warp_array(ct, w, order=1),
        "mr_paired": warp_array(mr, u, order=1),
        "ct_labels": _organ_labels(ct_tissue), "mr_labels": _organ_labels(mr_tissue),
        "gt_field": u,
    }
    return Phantom(arrays, ct_tissue, mr_tissue, w, deformation, grid)


def synthesize_subject(seed: int, grid: Grid) -> dict[str, np.ndarray]:
    """One paired CT/MR subject on ``grid``: ct, mr, ct_paired, mr_paired (float32), ct_labels,
    mr_labels (uint8, LABELS) and gt_field ((X, Y, Z, 3) float32 voxels, warp(mr, gt_field) ==
    mr_paired). Deterministic in ``seed``."""
    return synthesize_phantom(seed, grid).arrays


def difficulty_report(subject: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per organ: Dice of ct_labels vs mr_labels before registration and after warping mr_labels by
    gt_field (nearest). "images": NCC of the two intra-modality pairs the paper's loss compares,
    at the ground-truth field (the MR one is 1 by construction, mr_paired being warp(mr, gt_field))."""
    u = subject["gt_field"]
    ct_labels, mr_labels = subject["ct_labels"], subject["mr_labels"]
    mr_labels_warped = warp_array(mr_labels, u, order=0)
    report = {organ: {"dice_before": dice(ct_labels == v, mr_labels == v),
                      "dice_gt": dice(ct_labels == v, mr_labels_warped == v)}
              for organ, v in LABELS.items()}
    report["images"] = {
        "ncc_ct_vs_ct_paired_warped": ncc(subject["ct"], warp_array(subject["ct_paired"], u)),
        "ncc_mr_paired_vs_mr_warped": ncc(subject["mr_paired"], warp_array(subject["mr"], u)),
    }
    return report
