"""Classical CT->MR registration baselines with ANTsPy (Table 1 of Cao et al. 2018).

* ``affine``: ANTsPy ``Affine`` (one 12-dof stage) with Mattes mutual information, our stand-in for
  FLIRT with MI.
* ``syn``: ANTsPy ``SyN`` (an affine stage, then SyN), Mattes MI in both: the paper's
  "SyN (ANTs, MI)".

Both start from ANTs' alignment of the centres of intensity mass. The CT is the fixed image, the MR
the moving one. The result holds the MR and its labels resampled into the CT grid (the MR minimum, labels 0, outside the MR
grid) and the total (affine + deformable) displacement in voxels, pull-back convention:
``warped(x) = moving(x + field[:, x])``, the convention of ``intermod.spatial``.

Defaults (``DEFAULT_OPTIONS``; ``**options`` override them, e.g. from Hydra):

* ``affine``: ANTsPy's own schedule, 2100x1200x1200x10 iterations at shrink factors 6x4x2x1 with
  smoothing 3x2x1x0 voxels, 32 histogram bins, 20 % of the voxels sampled on a jittered grid. At
  1 mm (218x196x100) the coarsest level is ~36x33x17 voxels, coarse enough to catch the few-cm
  misalignment left after the inter-subject alignment. ANTsPy's ``SyN`` ignores these schedule
  options: its affine stage is fixed at 2100x1200x1200x0 iterations, shrink factors 4x2x2x1 (the
  bins and the sampling rate do apply).
  On small images the default shrink factors are capped so the coarsest level keeps at least
  :data:`MIN_LEVEL_VOXELS` voxels along every axis (:func:`fit_shrink_factors`): on the 4 mm phantom
  (55x49x25) factor 6 left 9x8x4 voxels and the optimiser diverged on some subjects (Dice 0.84 -> 0.31).
* ``syn``: ``reg_iterations=(100, 70, 20)`` at shrink factors 4x2x1 (ANTsPy derives them from the
  length). ANTsPy's default ``(40, 20, 0)`` never optimises at full resolution, too coarse for the
  prostate (~4 cm across); the schedule is ``antsRegistrationSyN.sh``'s 100x70x50x20 at 8x4x2x1
  without its 8x level, a handful of voxels on a 2 mm pelvis. Gradient step 0.2, update-field
  smoothing 3 voxels, no total-field smoothing: ANTsPy's defaults, the usual SyN[0.2,3,0].

Determinism. The affine stages sample the MI at random. Two facts of ANTsPy 0.6.3 / ANTs:

* ``ants.registration(random_seed=...)`` is swallowed by ``**kwargs`` and ignored; the seed given to
  ``antsRegistration --random-seed`` comes from ``ants.config`` (:func:`ants_random_seed`). ANTs reads
  a seed of 0 as "seed from the clock", so ANTs gets ``seed + 1``.
* Even with a fixed seed, runs differ unless ITK runs single-threaded, and ITK honours
  ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` only if it is in the environment from before ANTs is
  imported (setting it later in the process changes nothing).

So each registration runs in a fresh Python process whose environment sets the thread count
(``threads=1`` by default: bit-identical results for a seed; ``threads=None`` leaves ITK's
default of all cores, faster but not repeatable). Starting it and importing ANTs cost ~2-3 s per
call, excluded from ``ClassicalResult.seconds``.

ANTs writes its transforms (tens of MB per SyN warp) under the system temp folder and never removes
them: every call gets a private folder (``ants_workdir``), removed on exit, also on error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from intermod.baselines.result import ClassicalResult, check_inputs, check_seed, private_workdir

__all__ = ["ClassicalResult", "register_classical", "fit_shrink_factors", "ants_workdir", "ants_random_seed",
           "single_threaded_ants", "run_in_child", "DEFAULT_OPTIONS", "METHODS"]

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

MIN_LEVEL_VOXELS = 12  # per axis, at the coarsest affine level


def fit_shrink_factors(factors, shape) -> list[int]:
    """``factors`` capped so that every level keeps >= MIN_LEVEL_VOXELS voxels along the shortest axis."""
    cap = max(1, min(shape) // MIN_LEVEL_VOXELS)
    return [min(int(f), cap) for f in factors]


# Set by register_classical itself: naming one of these in ``options`` is an error, not an override.
_RESERVED = {"fixed", "moving", "type_of_transform", "outprefix", "aff_metric", "syn_metric",
             "random_seed", "initial_transform", "write_composite_transform", "verbose"}
_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def ants_workdir(prefix: str = "intermod-ants-"):
    """A private temporary folder for ANTs outputs; ``outprefix`` must point inside it."""
    return private_workdir(prefix)


def single_threaded_ants() -> None:
    """Make this process's ANTs registrations repeatable: ITK single-threaded, unless the user set a count.

    Call before ANTs loads: its ITK reads the thread count from the environment only. SimpleITK's ITK
    reads the same variable, so SimpleITK is given all cores back explicitly.
    """
    if _THREADS_ENV in os.environ:
        return
    os.environ[_THREADS_ENV] = "1"
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(os.cpu_count() or 1)


@contextmanager
def ants_random_seed(seed: int):
    """Seed ANTs' random sampling for the ``ants.registration`` calls inside (in this process).

    ``ants.registration`` ignores its ``random_seed`` argument and seeds from the clock otherwise;
    ANTs reads a seed of 0 as "from the clock", hence ``seed + 1``. The previous setting is restored.
    """
    import ants

    previous = ants.config._random_seed
    ants.config._random_seed = int(seed) + 1
    try:
        yield
    finally:
        ants.config._random_seed = previous


def register_classical(ct: np.ndarray, mr: np.ndarray, mr_labels: np.ndarray, spacing, method: str,
                       seed: int = 0, *, threads: int | None = 1, **options) -> ClassicalResult:
    """Register the MR (moving) to the CT (fixed) with ANTs ``affine`` or ``syn`` and Mattes MI.

    ``ct``, ``mr`` and ``mr_labels`` are (X, Y, Z) arrays on one grid of ``spacing`` mm (origin 0,
    identity direction). ``threads`` is ITK's thread count (None: all cores, not repeatable).
    ``options`` override ``DEFAULT_OPTIONS`` or pass other keywords of ``ants.registration``
    (numbers, strings, booleans and sequences of them).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    spacing = _check_inputs(ct, mr, mr_labels, spacing)
    seed = check_seed(seed)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    merged = _registration_options(options)
    if "aff_shrink_factors" not in options:  # a schedule given explicitly is used as it is
        merged["aff_shrink_factors"] = fit_shrink_factors(merged["aff_shrink_factors"], ct.shape)
    job = {"type_of_transform": METHODS[method], "spacing": spacing, "seed": int(seed), "options": merged}

    with ants_workdir() as workdir:
        # ANTs initialises by aligning centres of intensity mass: with CT in HU (air -1000) that
        # centre is meaningless and the affine stage diverges. MI ignores the shift to a zero minimum.
        mr_min = float(mr.min())
        np.save(workdir / "ct.npy", (ct - ct.min()).astype(np.float32))
        np.save(workdir / "mr.npy", (mr - mr_min).astype(np.float32))
        np.save(workdir / "labels.npy", mr_labels.astype(np.float32))
        (workdir / "job.json").write_text(json.dumps(job))
        run_in_child(__name__, workdir, threads, "ANTs registration failed")
        with np.load(workdir / "result.npz") as out:
            return ClassicalResult(
                warped=out["warped"] + np.float32(mr_min),  # undo the shift; outside the MR grid: its minimum
                warped_labels=np.rint(out["warped_labels"]).astype(mr_labels.dtype),
                field=out["field"],
                seconds=float(out["seconds"]),
            )


def _check_inputs(ct, mr, mr_labels, spacing) -> list[float]:
    """The shared checks, and one of ANTs' own; return the spacing."""
    spacing = check_inputs(ct, mr, mr_labels, spacing)
    if mr_labels.size and np.abs(mr_labels).max() >= 2**24:  # ANTs resamples them as float32
        raise ValueError("mr_labels must be below 2**24 in absolute value")
    return spacing


def _registration_options(options: dict) -> dict:
    """``DEFAULT_OPTIONS`` updated by ``options``, checked against ``ants.registration``'s keywords.

    ANTsPy accepts and ignores unknown keywords, so a misspelt option would silently do nothing.
    Sequences (Hydra hands over ListConfig) become lists, ready for JSON.
    """
    import inspect

    import ants  # heavy (ITK): imported only when a classical baseline runs

    known = set(inspect.signature(ants.registration).parameters) - {"kwargs"}
    reserved = sorted(set(options) & _RESERVED)
    if reserved:
        raise ValueError(f"options {reserved} are set by register_classical, not overridable")
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown ants.registration options {unknown}")
    merged = {**DEFAULT_OPTIONS, **options}
    return {key: list(value) if _is_sequence(value) else value for key, value in merged.items()}


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def run_in_child(module: str, workdir: Path, threads: int | None, failure: str) -> None:
    """Run ``python -m module workdir`` in a fresh process with ITK's thread count set before ANTs loads.

    Raises RuntimeError starting with ``failure`` and ending with the child's last lines when it fails.
    """
    env = dict(os.environ)
    if threads is not None:
        env[_THREADS_ENV] = str(threads)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", module, str(workdir)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{failure} (exit code {proc.returncode}):\n{tail}")


def _register_files(workdir: Path) -> None:
    """The child's work: read the job in ``workdir``, register, write ``result.npz`` there."""
    import ants

    job = json.loads((workdir / "job.json").read_text())
    spacing = job["spacing"]
    # ANTsPy formats an affine schedule only when it is a tuple.
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in job["options"].items()}
    fixed = _to_ants(np.load(workdir / "ct.npy"), spacing, ants)
    moving = _to_ants(np.load(workdir / "mr.npy"), spacing, ants)
    labels = _to_ants(np.load(workdir / "labels.npy"), spacing, ants)

    start = time.perf_counter()
    with ants_random_seed(job["seed"]):
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=job["type_of_transform"],
                                aff_metric="mattes", syn_metric="mattes", outprefix=f"{workdir}/", **options)
    transforms = reg["fwdtransforms"]
    not_inverted = [False] * len(transforms)  # forward list: never invert, whatever ANTsPy guesses
    warped_labels = ants.apply_transforms(fixed, labels, transforms, interpolator="genericLabel",
                                          whichtoinvert=not_inverted)
    composed = ants.apply_transforms(fixed, moving, transforms, compose=f"{workdir}/",
                                     whichtoinvert=not_inverted)
    field = _displacement_voxels(ants.image_read(composed).numpy(), spacing)
    seconds = time.perf_counter() - start
    np.savez(workdir / "result.npz", warped=reg["warpedmovout"].numpy().astype(np.float32),
             warped_labels=warped_labels.numpy(), field=field, seconds=seconds)


def _to_ants(array: np.ndarray, spacing, ants):
    """An ANTs image on our grid convention: origin 0, identity direction."""
    return ants.from_numpy(array, origin=(0.0, 0.0, 0.0), spacing=tuple(spacing),
                           direction=np.eye(3))


def _displacement_voxels(composed_mm: np.ndarray, spacing) -> np.ndarray:
    """(X, Y, Z, 3) mm displacement written by antsApplyTransforms -> (3, X, Y, Z) voxels.

    The composed field maps each fixed point p to the moving point p + d(p); with origin 0 and
    identity direction on both grids, physical axis i is array axis i and d / spacing is in voxels.
    """
    voxels = composed_mm / np.asarray(spacing)
    return np.ascontiguousarray(np.moveaxis(voxels, -1, 0), dtype=np.float32)


if __name__ == "__main__":
    _register_files(Path(sys.argv[1]))
