"""Spatial transformation layer T(phi, I) of Cao et al. 2018 (Sec. 2.3, Eq. 5).

Conventions: tensors are (B, C, X, Y, Z); a displacement field ``phi`` is (B, 3, x, y, z) with
components (d0, d1, d2) in voxel units along (X, Y, Z). Warping pulls back:
``warped(p) = moving(p + offset + phi(p))``, where ``offset = (moving_size - field_size) // 2`` per
axis lets a field cover only the central region of the moving image (the network maps 68^3 inputs to
28^3 fields with the same centre).

Eq. 5 is evaluated directly (floor, eight corner gathers, weights prod_d (1 - |p_d - y_d|)) rather
than through ``torch.nn.functional.grid_sample``: grid_sample's normalise/unnormalise round trip of
voxel coordinates is inexact in floating point, so a zero field would not reproduce the image
bit-for-bit and a crop would not warp exactly like the whole volume. Here integer positions give
weights of exactly 1 and 0, so a zero field (or an integer translation) is exact, and the result of
a voxel depends only on its own position, never on the image size. Results agree with
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` and grid_sample(align_corners=True).

:func:`integrate_velocity` (the diffeomorphic option, ``model.integration_steps``; not the paper's)
turns a stationary velocity field into a displacement by scaling and squaring with this same warp.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["warp", "warp_labels", "integrate_velocity", "crop_center", "field_offset", "SpatialTransformer"]

MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros")


def _spatial_size(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        size = (size,) * 3
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"spatial size must be a positive int or 3 positive ints, got {size}")
    return size


def crop_center(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """Centre crop of the spatial dims of ``x`` (B, C, X, Y, Z) to ``size`` (int or 3 ints).

    The crop starts at ``(in_size - size) // 2`` per axis, the same offset that :func:`warp` uses
    for a field covering the central region.
    """
    if x.ndim != 5:
        raise ValueError(f"crop_center expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    size = _spatial_size(size)
    if any(s > n for s, n in zip(size, x.shape[2:])):
        raise ValueError(f"crop_center: size {size} exceeds the spatial shape {tuple(x.shape[2:])}")
    starts = [(n - s) // 2 for s, n in zip(size, x.shape[2:])]
    return x[..., starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


def field_offset(moving_size: Sequence[int], field_size: Sequence[int]) -> tuple[int, int, int]:
    """Voxel offset of a central-region field inside the moving image; sizes must differ evenly."""
    diffs = [int(m) - int(f) for m, f in zip(moving_size, field_size)]
    if len(diffs) != 3 or any(d < 0 or d % 2 for d in diffs):
        raise ValueError(
            f"field size {tuple(field_size)} must be centred in moving size {tuple(moving_size)}: "
            "each axis must be no larger and differ by an even number of voxels"
        )
    return tuple(d // 2 for d in diffs)


def _check_inputs(moving: Tensor, phi: Tensor, mode: str, padding_mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if moving.ndim != 5:
        raise ValueError(f"moving must be (B, C, X, Y, Z), got shape {tuple(moving.shape)}")
    if phi.ndim != 5 or phi.shape[1] != 3:
        raise ValueError(f"phi must be (B, 3, x, y, z), got shape {tuple(phi.shape)}")
    if phi.shape[0] != moving.shape[0]:
        raise ValueError(f"batch sizes differ: moving {tuple(moving.shape)} vs phi {tuple(phi.shape)}")
    if not phi.is_floating_point():
        raise ValueError(f"phi must be floating point, got {phi.dtype}")
    if mode == "bilinear" and not moving.is_floating_point():
        raise ValueError(f"bilinear warping needs a floating-point image, got {moving.dtype}; use warp_labels")


def warp(moving: Tensor, phi: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Warp ``moving`` (B, C, X, Y, Z) by the displacement ``phi`` (B, 3, x, y, z): T(phi, I), Eq. 5.

    ``mode``: "bilinear" (tri-linear, Eq. 5) or "nearest" (for label maps; rounds half to even like
    grid_sample). ``padding_mode``: "border" replicates edge voxels (as scipy's mode="nearest"),
    "zeros" reads 0 outside the image. Returns (B, C, x, y, z): the field's spatial size. Gradients
    flow to ``phi`` (and to ``moving`` if it requires them).
    """
    _check_inputs(moving, phi, mode, padding_mode)
    size = moving.shape[2:]
    offset = field_offset(size, phi.shape[2:])
    batch, channels = moving.shape[:2]
    # Sampling positions p = x + offset + phi(x) per axis, then per axis the neighbours read: the
    # rounded position (nearest) or floor and floor + 1 with weights 1 - frac and frac (Eq. 5).
    # Positions in at least float32: a bfloat16 field (autocast) would round them to half voxels above 128.
    dtype = torch.promote_types(phi.dtype, torch.float32)
    neighbours, weights = [], []
    for d in range(3):
        view = [1, 1, 1]
        view[d] = -1
        grid = torch.arange(phi.shape[2 + d], device=phi.device, dtype=dtype) + offset[d]
        p = phi[:, d].to(dtype) + grid.view(view)
        if mode == "nearest":
            neighbours.append([p.round().long()])
            continue
        lower = p.floor()
        frac = p - lower
        neighbours.append([lower.long(), lower.long() + 1])
        weights.append([1 - frac, frac])
    # Per axis and neighbour: its term of the flat index (border clamps) and, for zeros, whether it is inside.
    strides = (size[1] * size[2], size[2], 1)
    terms = [[i.clamp(0, n - 1) * stride for i in axis] for axis, n, stride in zip(neighbours, size, strides)]
    inside = ([[(i >= 0) & (i < n) for i in axis] for axis, n in zip(neighbours, size)]
              if padding_mode == "zeros" else None)
    flat = moving.flatten(2)
    warped = 0
    for corner in itertools.product(*(range(len(axis)) for axis in neighbours)):
        linear = terms[0][corner[0]] + terms[1][corner[1]] + terms[2][corner[2]]
        values = flat.gather(2, linear.flatten(1).unsqueeze(1).expand(-1, channels, -1))
        values = values.view(batch, channels, *phi.shape[2:])
        if inside is not None:
            mask = inside[0][corner[0]] & inside[1][corner[1]] & inside[2][corner[2]]
            values = torch.where(mask.unsqueeze(1), values, torch.zeros_like(values))
        if mode == "nearest":
            return values
        weight = weights[0][corner[0]] * weights[1][corner[1]] * weights[2][corner[2]]
        warped = warped + weight.unsqueeze(1) * values
    return warped


def warp_labels(labels: Tensor, phi: Tensor, padding_mode: str = "border") -> Tensor:
    """Warp an integer label map (B, 1, X, Y, Z) by nearest neighbour; keeps the dtype and label set."""
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, X, Y, Z), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer (or bool) tensor, got {labels.dtype}")
    return warp(labels, phi, mode="nearest", padding_mode=padding_mode)


def integrate_velocity(velocity: Tensor, steps: int) -> Tensor:
    """Displacement (B, 3, X, Y, Z) of the flow of a stationary velocity field after unit time, by
    scaling and squaring (Arsigny et al. 2006; VoxelMorph's ``VecInt``).

    ``velocity`` is (B, 3, X, Y, Z) in voxels, as :func:`warp`'s ``phi``. The velocity is scaled to
    ``u = v / 2**steps`` (small enough that x -> x + u is close to the flow for time 2**-steps), then
    composed with itself ``steps`` times: ``u <- u + warp(u, u)``, i.e. (x + u) o (x + u) in the pull-back
    convention of :func:`warp`, which doubles the time each step. The warp is the trilinear Eq. 5 with
    border padding, as everywhere else: where a composition samples outside the field, the edge voxels'
    displacements are replicated (the velocity is taken as constant beyond the field, so a constant
    velocity integrates exactly to itself). For a smooth velocity the result is a diffeomorphism up to the
    discretisation (positive Jacobian determinants, where the same field used as a displacement folds);
    7 steps match a 12-step reference to 0.01 voxel for a sinusoidal velocity of 3 voxels, and a rotation's
    analytic displacement to 0.003 voxel (tests/test_spatial.py).

    ``steps=0`` returns ``velocity`` itself: the velocity is the displacement (the paper's network).
    Otherwise the result is in at least float32 (a bfloat16 velocity, from autocast, is integrated in
    float32) and gradients flow to ``velocity``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"integration steps must be an int >= 0 (0: the velocity is the displacement), got {steps!r}")
    if velocity.ndim != 5 or velocity.shape[1] != 3:
        raise ValueError(f"velocity must be a (B, 3, X, Y, Z) field in voxels, got shape {tuple(velocity.shape)}")
    if not velocity.is_floating_point():
        raise ValueError(f"velocity must be floating point, got {velocity.dtype}")
    if steps == 0:
        return velocity
    u = velocity.to(torch.promote_types(velocity.dtype, torch.float32)) / 2 ** steps
    for _ in range(steps):
        u = u + warp(u, u)
    return u


class SpatialTransformer(nn.Module):
    """T(phi, I) as a parameter-free module (Sec. 2.3): ``forward(moving, phi) -> warped``."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, moving: Tensor, phi: Tensor) -> Tensor:
        return warp(moving, phi, mode=self.mode, padding_mode=self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
