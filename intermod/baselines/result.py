"""What every classical baseline returns, and the checks and chores they share.

A classical method is a function ``register(ct, mr, mr_labels, spacing, seed=0, **options)``:
``ct``, ``mr`` and ``mr_labels`` are (X, Y, Z) arrays on one grid of ``spacing`` mm, the CT fixed and
the MR moving; it returns a :class:`ClassicalResult` whose field is in voxels, pull-back
(``warped(x) = moving(x + field[:, x])``, the convention of ``intermod.spatial``).
"""
from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClassicalResult", "check_inputs", "check_seed", "private_workdir", "warp_with_field"]


@dataclass
class ClassicalResult:
    """The MR registered to the CT by a classical method."""

    warped: np.ndarray  # MR resampled into the CT grid, linear interpolation, float32
    warped_labels: np.ndarray  # MR labels resampled by nearest neighbour (or per-label linear), input dtype
    field: np.ndarray  # (3, X, Y, Z) float32 total displacement in voxels, pull-back
    seconds: float  # the registration's own time: no process start, no library import


def check_inputs(ct, mr, mr_labels, spacing) -> list[float]:
    """Raise a clear ValueError for inputs a registration library would reject late or misread;
    return the spacing as 3 floats."""
    arrays = {"ct": ct, "mr": mr, "mr_labels": mr_labels}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.ndim != 3:
            raise ValueError(f"{name} must be a 3D (X, Y, Z) array, got shape {array.shape}")
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"ct, mr and mr_labels must share one grid, got shapes {shapes}")
    for name in ("ct", "mr"):
        if not np.issubdtype(arrays[name].dtype, np.number) or np.iscomplexobj(arrays[name]):
            raise ValueError(f"{name} must be a real-valued array, got dtype {arrays[name].dtype}")
        if not np.isfinite(arrays[name]).all():
            raise ValueError(f"{name} contains NaN" if np.isnan(arrays[name]).any() else f"{name} contains inf")
    if not np.issubdtype(mr_labels.dtype, np.integer):
        raise ValueError(f"mr_labels must be an integer array, got dtype {mr_labels.dtype}")
    try:
        spacing = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be 3 positive floats (mm), got {spacing!r}") from None
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive floats (mm), got {spacing}")
    return spacing


def check_seed(seed) -> int:
    """The seed as an int in [0, 2**31 - 1) (what ITK's and elastix's generators accept)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31 - 1:
        raise ValueError(f"seed must be an int in [0, 2**31 - 1), got {seed!r}")
    return int(seed)


@contextmanager
def _sigterm_exits():
    """Inside, SIGTERM (a scheduler's or `kill`'s stop) raises SystemExit, so that cleanup runs as it does
    for Ctrl-C, where Python's default would end the process on the spot. A handler someone else installed
    (submitit ignores SIGTERM and requeues on USR2) is left alone; only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def private_workdir(prefix: str):
    """A private temporary folder for a library's own files, removed on exit, also on error and on SIGTERM
    (which ends the process once the library's current call returns)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with _sigterm_exits():
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def warp_with_field(mr: np.ndarray, mr_labels: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MR (trilinear) and its labels (nearest) pulled back by ``field`` (3, X, Y, Z) voxels, edges
    replicated: ``intermod.spatial.warp``, the warp the runner and the networks use."""
    import torch

    from intermod.spatial import warp, warp_labels

    phi = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]
    image = torch.from_numpy(np.ascontiguousarray(mr, dtype=np.float32))[None, None]
    labels = torch.from_numpy(mr_labels.astype(np.int64))[None, None]  # any integer dtype torch lacks
    warped = warp(image, phi)[0, 0].numpy()
    warped_labels = warp_labels(labels, phi)[0, 0].numpy().astype(mr_labels.dtype)
    return warped, warped_labels
