"""ConvexAdam (Siebert, Hansen & Heinrich, MICCAI 2021) as a classical CT->MR baseline.

The ``convexadam`` package (0.2.0, imports as ``convexAdam``): MIND-SSC features of both images,
a discrete correlation search on a coarse grid smoothed by coupled convex optimisation, made
inverse-consistent, then refined by Adam at half resolution with a diffusion regulariser.
``convex_adam_pt`` runs on the CPU with ``device=cpu`` and float32 (what :func:`register` passes).
CT fixed, MR moving. No training, no mask, no labels used.

Parameters (``DEFAULT_OPTIONS``; ``**options`` override them, e.g. from Hydra): the package's own
defaults, ``mind_r=1, mind_d=2`` (MIND-SSC patch radius and self-similarity distance in voxels),
``grid_sp=6, disp_hw=4`` (the discrete search: a 6-voxel grid, +-4 of its cells, so a capture range
of 24 voxels = 48 mm at 2 mm, more than the few-cm misalignment of a pelvis pair), coupled-convex
smoothing, ``grid_sp_adam=2, selected_niter=80, lambda_weight=1.25`` (Adam on a 2-voxel = 4 mm
grid, 80 steps, diffusion weight 1.25), ``selected_smooth=0``, ``ic=True``. Everything is in voxels:
the method does not know the spacing, so it suits (near-)isotropic grids such as intermod's 1, 2
and 4 mm ones. On the 2 mm phantom (109x98x50, subject 3) Dice goes 0.832/0.862/0.827 ->
0.936/0.824/0.938 (bladder/prostate/rectum) in ~21 s on one CPU thread.

Intensities (``normalise=True``): each image is mapped linearly so that its 0.5th and 99.5th
percentiles become 0 and 1, and clipped there. MIND-SSC divides the patch distances by their
local mean, so it is invariant to a linear intensity map: raw HU and a rescaled CT give the same
field up to float32 rounding (< 0.02 voxel, tested), and CT in HU with an MR in arbitrary units
needs no matching. What the mapping changes is the clipping, which keeps outliers (CT bone and
metal, MR hot spots) out of the global clamp MIND puts on its variance; on the 2 mm phantom it
changes little (mean Dice 0.899 with it, 0.900 without), it is kept for real scans.

Units and axis order, verified with known shifts (``tests/baselines/test_convexadam.py``):

* ``convex_adam_pt`` returns an (X, Y, Z, 3) float64 array whose component i is the displacement
  along array axis i, in voxels, pull-back: ``warped(x) = moving(x + u(x))``.
* With Adam (``lambda_weight > 0``) its values are short by a factor (N - 1) / N along an axis
  with N = size // grid_sp_adam cells: Adam samples with ``grid_sample(align_corners=False)``, where
  one cell is N / 2 normalised units, but converts with ``(N - 1) / 2``. That is 4-5 % on 40-50
  voxel axes, a few tenths of a voxel on a few-voxel shift. :func:`register` multiplies each
  component by N / (N - 1): the field returned is the one ConvexAdam's own sampling applied.
* Sizes not divisible by the grids are floored by its pooling (and the field then stretched
  back), so the images are edge-padded at the high end to a multiple of lcm(grid_sp, grid_sp_adam)
  and the field cropped back.
* ``ic=False`` (the package's issue #20) hands Adam a coarse-grid field in units of ``grid_sp``
  voxels as if in voxels (and without Adam returns it at the coarse resolution): it is refused.

Determinism: the method has no random part; the global torch generator is forked and seeded
around the call (the package's ``nn.Conv3d`` consumes it while building its parameters, then
overwrites them). On the CPU two calls with the same inputs and thread count are bit-identical
(tested). ``threads`` is torch's CPU thread count for the call, 1 by default (None: torch's own
setting), as with the ANTs baselines: a different count may change the order of floating-point
sums, and on a busy machine one thread is also the fastest (a 42x36x36 pair, 80 Adam steps: 3 s
on one thread, 33 s on two, on 2 cores shared with other jobs). On CUDA, ``grid_sample``'s backward pass uses
atomic adds: not bit-repeatable.

Side effects contained: the package calls ``warnings.filterwarnings("ignore")`` when imported,
silencing every warning of the process; it is imported inside ``warnings.catch_warnings()``, which
restores the filters. It writes no files.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np

from intermod.baselines.result import ClassicalResult, check_inputs, check_seed, warp_with_field

DEFAULT_OPTIONS = {
    "mind_r": 1,
    "mind_d": 2,
    "lambda_weight": 1.25,
    "grid_sp": 6,
    "disp_hw": 4,
    "selected_niter": 80,
    "selected_smooth": 0,
    "grid_sp_adam": 2,
    "ic": True,
}
PERCENTILES = (0.5, 99.5)  # the intensity range mapped to [0, 1] when normalising


def register(ct: np.ndarray, mr: np.ndarray, mr_labels: np.ndarray, spacing, seed: int = 0, *,
             device: str = "cpu", threads: int | None = 1, normalise: bool = True,
             **options) -> ClassicalResult:
    """Register the MR (moving) to the CT (fixed) with ConvexAdam (MIND-SSC).

    ``ct``, ``mr`` and ``mr_labels`` are (X, Y, Z) arrays on one grid of ``spacing`` mm. ``options``
    override ``DEFAULT_OPTIONS`` (keywords of ``convex_adam_pt``). ``threads``: torch's CPU thread
    count during the call (None: leave torch's setting). ``normalise``: map each image's 0.5-99.5 percentile
    range to [0, 1] first (see the module docstring).
    """
    import torch

    check_inputs(ct, mr, mr_labels, spacing)
    seed = check_seed(seed)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    params = _parameters(options, ct.shape)
    convex_adam_pt = _import_convex_adam()
    device = torch.device(device)

    start = time.perf_counter()
    fixed, moving = (_normalised(image, name) if normalise else _nonconstant(image, name)
                     for image, name in ((ct, "ct"), (mr, "mr")))
    multiple = math.lcm(params["grid_sp"], params["grid_sp_adam"])
    padded = [-(-n // multiple) * multiple for n in ct.shape]
    pad = [(0, p - n) for p, n in zip(padded, ct.shape)]
    fixed, moving = (np.pad(image, pad, mode="edge") for image in (fixed, moving))

    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # its grid_sample/affine_grid calls rely on the default align_corners and say so each time
            warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior",
                                    category=UserWarning)
            torch.manual_seed(seed)
            disp = convex_adam_pt(torch.from_numpy(fixed), torch.from_numpy(moving), **params,
                                  dtype=torch.float32, device=device, verbose=False)
    finally:
        torch.set_num_threads(previous_threads)
    disp = np.asarray(disp)[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    field = np.moveaxis(disp, -1, 0)
    if params["lambda_weight"] > 0:  # Adam's (N - 1) / N shortfall, see the module docstring
        cells = np.array([p // params["grid_sp_adam"] for p in padded], float)
        field = field * (cells / (cells - 1))[:, None, None, None]
    field = np.ascontiguousarray(field, dtype=np.float32)
    seconds = time.perf_counter() - start

    if not np.isfinite(field).all():
        raise RuntimeError("ConvexAdam returned a field with NaN or inf")
    warped, warped_labels = warp_with_field(mr, mr_labels, field)
    return ClassicalResult(warped=warped, warped_labels=warped_labels, field=field, seconds=seconds)


def _parameters(options: dict, shape) -> dict:
    """``DEFAULT_OPTIONS`` updated by ``options``, checked: unknown names, types, sizes, ``ic``."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown ConvexAdam options {unknown}; expected some of {sorted(DEFAULT_OPTIONS)}")
    params = {**DEFAULT_OPTIONS, **options}
    for name in ("mind_r", "mind_d", "grid_sp", "disp_hw", "selected_niter", "selected_smooth", "grid_sp_adam"):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"ConvexAdam option {name} must be an int, got {value!r}")
        params[name] = int(value)
    for name in ("mind_r", "mind_d", "grid_sp", "disp_hw", "grid_sp_adam"):
        if params[name] < 1:
            raise ValueError(f"ConvexAdam option {name} must be >= 1, got {params[name]}")
    if params["selected_smooth"] < 0 or (params["selected_smooth"] and params["selected_smooth"] % 2 == 0):
        raise ValueError(f"ConvexAdam option selected_smooth must be 0 or odd, got {params['selected_smooth']}")
    lam = params["lambda_weight"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.number)) or not lam >= 0:
        raise ValueError(f"ConvexAdam option lambda_weight must be a number >= 0 (0: no Adam stage), got {lam!r}")
    params["lambda_weight"] = float(lam)
    if lam > 0 and params["selected_niter"] < 1:  # convexAdam 0.2.0 fails on an unbound variable
        raise ValueError(f"ConvexAdam option selected_niter must be >= 1 when lambda_weight > 0, "
                         f"got {params['selected_niter']}")
    if params["ic"] is not True:
        raise ValueError("ConvexAdam option ic must be true: with ic=false convexAdam 0.2.0 returns its coarse "
                         "field in units of grid_sp voxels (its issue #20), which intermod does not convert")
    multiple = math.lcm(params["grid_sp"], params["grid_sp_adam"])
    for axis, n in enumerate(shape):
        padded = -(-n // multiple) * multiple
        # the correlation's 3x3x3 box filters need 3 cells, Adam's unit conversion N - 1 > 0
        if padded // params["grid_sp"] < 3 or padded // params["grid_sp_adam"] < 2:
            raise ValueError(f"axis {axis} has {n} voxels: too few for grid_sp={params['grid_sp']} and "
                             f"grid_sp_adam={params['grid_sp_adam']} (at least 3 cells of grid_sp and 2 of "
                             "grid_sp_adam are needed, after padding to a multiple of both)")
    return params


def _import_convex_adam():
    """``convex_adam_pt``, imported without letting the package silence the process's warnings."""
    with warnings.catch_warnings():
        from convexAdam.convex_adam_MIND import convex_adam_pt
    return convex_adam_pt


def _nonconstant(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.max() == image.min():
        raise ValueError(f"{name} is constant: MIND features are undefined (0 / 0)")
    return image


def _normalised(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` mapped linearly so its PERCENTILES become 0 and 1, clipped to [0, 1], float32."""
    low, high = np.percentile(image, PERCENTILES)
    if not high > low:
        raise ValueError(f"{name} is constant (between its {PERCENTILES[0]} and {PERCENTILES[1]} percentiles): "
                         "MIND features are undefined (0 / 0)")
    return np.clip((np.asarray(image, np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)
