"""Classical CT->MR registration baselines with ANTsPy (Table 1 of Cao et al. 2018).

* ``affine``: ANTs rigid+affine with Mattes mutual information, our stand-in for FLIRT with MI.
* ``syn``: ANTs rigid+affine+SyN, Mattes MI in every stage, as in the paper's "SyN (ANTs, MI)".

The CT is the fixed image, the MR the moving one. The result holds the MR and its labels resampled
into the CT grid and the total (affine + deformable) displacement in voxels, pull-back convention:
``warped(x) = moving(x + field[:, x])``, the same convention as ``intermod.spatial``.

ANTs writes its transforms (tens of MB per SyN warp) under the system temp folder and never removes
them; every call here gets its own folder, removed on exit, also on error.

Defaults (``DEFAULT_OPTIONS``, each can be overridden through ``**options``, e.g. from Hydra):

* affine stage: ANTsPy's own schedule, 2100x1200x1200x10 iterations at shrink factors 6x4x2x1 with
  smoothing 3x2x1x0 voxels, 32 histogram bins, 20 % of the voxels sampled on a jittered grid. At
  1 mm (218x196x100) the coarsest level is ~36x33x17 voxels, coarse enough to capture the few-cm
  misalignments left after the inter-subject alignment; at 2 mm it is ~18x16x8, still enough voxels
  for a 32-bin joint histogram.
* SyN stage: ``reg_iterations=(100, 70, 20)`` at shrink factors 4x2x1 (ANTsPy derives them from the
  length). ANTsPy's default ``(40, 20, 0)`` never optimises the full resolution, too coarse for
  the prostate (~4 cm); the schedule follows ``antsRegistrationSyN.sh`` (100x70x50x20 at 8x4x2x1)
  without its 8x level, which is a handful of voxels on a 2 mm pelvis. Gradient step 0.2, update
  field smoothing 3 voxels, no total-field smoothing (ANTsPy defaults, the usual SyN[0.2,3,0]).

Determinism: the affine stages sample the MI on a randomly jittered grid. ANTsPy 0.6.3 silently
swallows a ``random_seed=`` keyword; the seed it passes to ``antsRegistration --random-seed`` is read
from ``ants.config._random_seed``, which ``register_classical`` sets for the call. ITK reads
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` only once per process, at its first multi-threaded call.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = {"affine": "Affine", "syn": "SyN"}

DEFAULT_OPTIONS = {
    "aff_iterations": (2100, 1200, 1200, 10),
    "aff_shrink_factors": (6, 4, 2, 1),
    "aff_smoothing_sigmas": (3, 2, 1, 0),
    "aff_sampling": 32,
    "aff_random_sampling_rate": 0.2,
    "syn_sampling": 32,
    "reg_iterations": (100, 70, 20),
    "grad_step": 0.2,
    "flow_sigma": 3,
    "total_sigma": 0,
}

# Set by register_classical itself: an option naming one of these is an error, not an override.
_RESERVED = {"fixed", "moving", "type_of_transform", "outprefix", "aff_metric", "syn_metric",
             "random_seed", "initial_transform", "write_composite_transform", "verbose"}


@dataclass
class ClassicalResult:
    """The MR registered to the CT by a classical method."""

    warped: np.ndarray  # MR resampled into the CT grid, linear interpolation, float32
    warped_labels: np.ndarray  # MR labels resampled with ANTs 'genericLabel', input dtype
    field: np.ndarray  # (3, X, Y, Z) float32 total displacement in voxels, pull-back
    seconds: float  # wall time of registration + resampling + field composition


@contextmanager
def ants_workdir(prefix: str = "intermod-ants-"):
    """A private temporary folder for ANTs outputs; ``outprefix`` must point inside it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def register_classical(ct: np.ndarray, mr: np.ndarray, mr_labels: np.ndarray, spacing, method: str,
                       seed: int = 0, **options) -> ClassicalResult:
    """Register the MR (moving) to the CT (fixed) with ANTs ``affine`` or ``syn`` and Mattes MI.

    ``ct``, ``mr`` and ``mr_labels`` are (X, Y, Z) arrays on one grid of ``spacing`` mm. ``options``
    override ``DEFAULT_OPTIONS`` or pass other keywords of ``ants.registration``.
    """
    import ants  # heavy import (ITK): only when a classical baseline actually runs

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    spacing = _check_inputs(ct, mr, mr_labels, spacing)
    kwargs = _registration_kwargs(options, ants)

    start = time.perf_counter()
    fixed = _to_ants(ct.astype(np.float32), spacing, ants)
    moving = _to_ants(mr.astype(np.float32), spacing, ants)
    labels = _to_ants(mr_labels.astype(np.float32), spacing, ants)  # exact for labels < 2**24
    with ants_workdir() as workdir, _ants_seed(seed, ants):
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=METHODS[method],
                                aff_metric="mattes", syn_metric="mattes",
                                outprefix=f"{workdir}/", **kwargs)
        transforms = reg["fwdtransforms"]
        not_inverted = [False] * len(transforms)
        warped_labels = ants.apply_transforms(fixed, labels, transforms, interpolator="genericLabel",
                                              whichtoinvert=not_inverted)
        field = _displacement_voxels(fixed, moving, transforms, workdir, spacing, ants)
    return ClassicalResult(
        warped=reg["warpedmovout"].numpy().astype(np.float32),
        warped_labels=np.rint(warped_labels.numpy()).astype(mr_labels.dtype),
        field=field,
        seconds=time.perf_counter() - start,
    )


def _check_inputs(ct, mr, mr_labels, spacing) -> tuple[float, float, float]:
    """Raise a clear error for inputs ANTs would reject late or misread; return the spacing."""
    arrays = {"ct": ct, "mr": mr, "mr_labels": mr_labels}
    for name, array in arrays.items():
        if np.ndim(array) != 3:
            raise ValueError(f"{name} must be a 3D (X, Y, Z) array, got shape {np.shape(array)}")
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"ct, mr and mr_labels must share one grid, got shapes {shapes}")
    for name in ("ct", "mr"):
        if np.isnan(arrays[name]).any():
            raise ValueError(f"{name} contains NaN")
    if not np.issubdtype(mr_labels.dtype, np.integer):
        raise ValueError(f"mr_labels must be an integer array, got dtype {mr_labels.dtype}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive floats (mm), got {spacing}")
    return spacing


def _registration_kwargs(options: dict, ants) -> dict:
    """Defaults merged with ``options``, checked against ``ants.registration``'s keywords.

    ANTsPy accepts and ignores unknown keywords, so a misspelt option would silently do nothing.
    Sequences become tuples: ANTsPy formats the affine schedule only when given a tuple, and Hydra
    hands over lists.
    """
    import inspect

    known = set(inspect.signature(ants.registration).parameters) - {"kwargs"}
    reserved = sorted(set(options) & _RESERVED)
    if reserved:
        raise ValueError(f"options {reserved} are set by register_classical and cannot be overridden")
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown ants.registration options {unknown}")
    merged = {**DEFAULT_OPTIONS, **options}
    return {key: tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
            for key, value in merged.items()}


def _to_ants(array: np.ndarray, spacing, ants):
    """An ANTs image on our grid convention: origin 0, identity direction."""
    return ants.from_numpy(array, origin=(0.0, 0.0, 0.0), spacing=spacing, direction=np.eye(3))


@contextmanager
def _ants_seed(seed: int, ants):
    """Make ANTsPy pass ``--random-seed seed`` to antsRegistration for the duration of the block."""
    previous = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


def _displacement_voxels(fixed, moving, transforms, workdir: Path, spacing, ants) -> np.ndarray:
    """The forward transforms composed into one (3, X, Y, Z) pull-back displacement in voxels.

    antsApplyTransforms writes the composition as a displacement field on the fixed grid mapping each
    fixed point p to the moving point p + d(p), in mm; with origin 0 and identity direction on both
    grids the voxel displacement is d / spacing.
    """
    path = ants.apply_transforms(fixed, moving, transforms, compose=f"{workdir}/",
                                 whichtoinvert=[False] * len(transforms))
    if path is None:
        raise RuntimeError("antsApplyTransforms did not write the composed displacement field")
    mm = ants.image_read(path).numpy()  # (X, Y, Z, 3)
    voxels = mm / np.asarray(spacing)
    return np.ascontiguousarray(np.moveaxis(voxels, -1, 0), dtype=np.float32)
