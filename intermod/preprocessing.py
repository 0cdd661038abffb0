"""The intensity normalisation of CT and MR volumes, one definition for training and registration."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

CT_WINDOW = (-160.0, 240.0)  # HU; the soft-tissue window (W 400, L 40): organs differ by tens of HU
MR_PERCENTILES = (0.5, 99.5)  # MR intensities have no unit: robust extremes instead of min and max


def normalise_ct(volume, window: Sequence[float] = CT_WINDOW) -> np.ndarray:
    """A CT volume (array of any shape) clipped to the HU ``window`` and mapped linearly
    onto [0, 1], as float32 (a new array)."""
    low, high = window
    # Clip, then float32, then shift and scale: TorchIO's Clamp + RescaleIntensity, which trained the
    # first checkpoints, step by step, so their inputs are reproduced bit for bit.
    array = np.clip(np.asarray(volume), low, high).astype(np.float32, copy=False)
    array -= low
    array /= high - low
    return array


def normalise_mr(volume, percentiles: Sequence[float] = MR_PERCENTILES) -> np.ndarray:
    """An MR volume (array of any shape) mapped linearly from its ``percentiles`` onto
    [0, 1], values beyond them clipped, as float32 (a new array)."""
    array = np.array(volume, dtype=np.float32)
    np.clip(array, *np.percentile(array, tuple(percentiles)), out=array)
    low, high = array.min(), array.max()
    if low == high:
        # As TorchIO did: the volume is left as it was (only clipped to [0, 1]) rather than divided by 0.
        warnings.warn(f"MR volume is constant between its {percentiles} percentiles: not rescaled",
                      RuntimeWarning, stacklevel=2)
        return np.clip(np.asarray(volume, dtype=np.float32), 0, 1)
    array -= low
    array /= high - low
    return np.clip(array, 0, 1, out=array)
