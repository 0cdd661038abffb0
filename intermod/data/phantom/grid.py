"""The phantom's grids and physical coordinates: mm about the centre of the field of view, RAS voxel order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]          # voxels, array axes (X, Y, Z)
    spacing: tuple[float, float, float]  # mm


GRIDS: dict[str, Grid] = {"paper": Grid((218, 196, 100), (1.0, 1.0, 1.0)),
                          "small": Grid((109, 98, 50), (2.0, 2.0, 2.0)),   # same field of view
                          "tiny": Grid((55, 49, 25), (4.0, 4.0, 4.0))}     # tests and smoke runs
_FOV_MM = np.array([218.0, 196.0, 100.0])  # the paper's field of view (mm); every grid covers it


def _axes(grid: Grid) -> list[np.ndarray]:
    """Physical voxel-centre coordinates (mm) per axis, the volume centred on the origin."""
    return [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(grid.shape, grid.spacing)]


def grid_points(grid: Grid) -> np.ndarray:
    """All voxel centres of ``grid`` as a (3, N) float32 array in mm (C order over X, Y, Z)."""
    mesh = np.meshgrid(*_axes(grid), indexing="ij")
    return np.stack([m.ravel() for m in mesh])


def grid_affine(grid: Grid) -> np.ndarray:
    """RAS affine with the volume centred on the origin (the voxel centres of :func:`grid_points`)."""
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = -(np.array(grid.shape) - 1) / 2 * np.array(grid.spacing)
    return affine


def _upsample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Separable linear interpolation of a 3-D array to ``shape``, corners aligned (like
    ndimage.zoom(order=1, grid_mode=False), several times faster)."""
    for axis, n in enumerate(shape):
        m = array.shape[axis]
        if m == n:
            continue
        pos = np.linspace(0, m - 1, n)
        lo = np.minimum(pos.astype(int), m - 2)
        frac = (pos - lo).astype(np.float32).reshape([-1 if i == axis else 1 for i in range(3)])
        array = np.take(array, lo, axis=axis) * (1 - frac) + np.take(array, lo + 1, axis=axis) * frac
    return array


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles (radians) about X, Y, Z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
