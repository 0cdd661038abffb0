"""Tissue intensities: per-subject CT (HU) and T2-weighted MR contrast, textures, bias, blur and noise."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from intermod.data.phantom.anatomy import _T, TISSUES
from intermod.data.phantom.grid import _FOV_MM, Grid, _axes, _upsample

# Per tissue: CT mean (HU), CT low/high-frequency texture (HU), MR mean (a.u.), MR low/high texture
# (relative). "high" is the fine mottle (stool, trabecular marrow, BPH nodules).
_CONTRAST = {
    "air":             (-1000.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "skin":            (35.0, 6.0, 4.0, 360.0, 0.06, 0.05),
    "fat":             (-100.0, 8.0, 6.0, 700.0, 0.05, 0.04),
    "muscle":          (48.0, 5.0, 4.0, 170.0, 0.08, 0.06),
    "vessel":          (42.0, 3.0, 2.0, 80.0, 0.15, 0.05),
    "cortex":          (1200.0, 120.0, 80.0, 25.0, 0.2, 0.2),
    "marrow":          (250.0, 50.0, 60.0, 520.0, 0.10, 0.10),
    "cartilage":       (70.0, 5.0, 4.0, 600.0, 0.06, 0.05),
    "seminal_vesicle": (32.0, 4.0, 3.0, 780.0, 0.08, 0.12),
    "rectal_wall":     (46.0, 5.0, 4.0, 240.0, 0.08, 0.06),
    "stool":           (-20.0, 25.0, 45.0, 330.0, 0.20, 0.30),
    "gas":             (-1000.0, 0.0, 0.0, 8.0, 0.0, 0.0),
    "prostate_tz":     (44.0, 4.0, 4.0, 360.0, 0.10, 0.12),
    "prostate_pz":     (40.0, 4.0, 3.0, 650.0, 0.08, 0.08),
    "bladder_wall":    (42.0, 4.0, 3.0, 200.0, 0.08, 0.05),
    "urine":           (10.0, 2.0, 1.5, 950.0, 0.02, 0.01),
}
_SOFT = ("skin", "muscle", "vessel", "cartilage", "seminal_vesicle", "rectal_wall", "prostate_tz",
         "prostate_pz", "bladder_wall", "urine")   # small CT jitter keeps them within a few tens of HU


def _sample_contrast(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject tissue look-up tables (index = tissue id) and noise/bias parameters."""
    table = np.array([_CONTRAST[name] for name in TISSUES], np.float32)
    ct_mean, mr_mean = table[:, 0].copy(), table[:, 3].copy()
    for name, i in TISSUES.items():
        if name in _SOFT:
            ct_mean[i] += rng.normal(0.0, 2.5)
    ct_mean[_T["fat"]] += rng.normal(0.0, 8.0)
    ct_mean[_T["marrow"]] += rng.normal(0.0, 30.0)
    ct_mean[_T["cortex"]] = rng.uniform(1000, 1400)
    ct_mean[_T["stool"]] += rng.normal(0.0, 15.0)
    mr_mean *= np.clip(1 + rng.normal(0.0, 0.05, len(mr_mean)), 0.88, 1.12).astype(np.float32)
    mr_mean *= np.float32(rng.uniform(0.8, 1.25))   # scanner gain: MR units are arbitrary
    return {
        "ct_mean": ct_mean, "ct_low": table[:, 1], "ct_high": table[:, 2],
        "mr_mean": mr_mean, "mr_low": table[:, 4], "mr_high": table[:, 5],
        "ct_noise": np.float32(rng.uniform(10, 18)),
        "mr_noise": np.float32(rng.uniform(0.012, 0.025) * mr_mean[_T["urine"]]),
        "bias": rng.uniform([-0.15, -0.15, -0.15, 0.0, 0.05, -0.2], [0.15, 0.15, 0.15, 0.2, 0.3, 0.0]),
    }


def _smooth_field(rng: np.random.Generator, grid: Grid, cell_mm: float) -> np.ndarray:
    """Unit-variance smooth random field of correlation length ~cell_mm: white noise on a lattice of
    that spacing, Gaussian-smoothed, upsampled trilinearly onto the grid (cheap)."""
    extent = (np.array(grid.shape) - 1) * np.array(grid.spacing)
    shape = tuple(max(2, int(np.ceil(e / cell_mm)) + 1) for e in extent)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0, mode="wrap")
    coarse /= coarse.std()
    return _upsample(coarse, grid.shape)


def _fine_field(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Unit-variance fine mottle: white noise on the grid, Gaussian-smoothed by sigma_mm."""
    field = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32),
                                    sigma_mm / np.array(grid.spacing))
    field /= field.std()
    return field


def _bias_field(grid: Grid, coef: np.ndarray) -> np.ndarray:
    """exp(linear + quadratic) in normalised coordinates: a smooth coil-like shading, separable."""
    factors = []
    for axis, (ax, half) in enumerate(zip(_axes(grid), _FOV_MM / 2)):
        t = ax / half
        shape = [1, 1, 1]
        shape[axis] = -1
        factors.append(np.exp(coef[axis] * t + coef[3 + axis] * t * t).astype(np.float32).reshape(shape))
    return factors[0] * factors[1] * factors[2]


def _psf_voxels(grid: Grid, scanner_mm: tuple) -> np.ndarray:
    """Gaussian blur (voxels): the scanner's point spread combined with a half-voxel anti-aliasing
    blur of resampling onto the grid (point-sampled edges would otherwise alias)."""
    spacing = np.array(grid.spacing)
    return np.sqrt(np.square(scanner_mm) + np.square(0.5 * spacing)) / spacing


def _ct_image(rng, grid, tissue, c) -> np.ndarray:
    low, high = _smooth_field(rng, grid, 8.0), _fine_field(rng, grid, 1.2)
    image = c["ct_mean"][tissue] + c["ct_low"][tissue] * low + c["ct_high"][tissue] * high
    image = ndimage.gaussian_filter(image, _psf_voxels(grid, (0.6, 0.6, 0.9)))
    image += c["ct_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(image, -1024, 3071).astype(np.float32)


def _mr_image(rng, grid, tissue, c) -> np.ndarray:
    low, high = _smooth_field(rng, grid, 8.0), _fine_field(rng, grid, 1.2)
    signal = c["mr_mean"][tissue] * np.maximum(1 + c["mr_low"][tissue] * low + c["mr_high"][tissue] * high, 0)
    signal = ndimage.gaussian_filter(signal, _psf_voxels(grid, (0.7, 0.7, 1.1)))
    signal *= _bias_field(grid, c["bias"])
    real = signal + c["mr_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = c["mr_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)   # Rician magnitude
