"""Test-time refinement (instance optimisation): Adam steps on one CT/MR pair, from the network's field.

At test time there is no paired image, so the refinement needs an inter-modality similarity: the squared
difference of MIND-SSC descriptors (``"mind"``, as ConvexAdam's Adam stage) or Parzen mutual information
of the intensities (``"mi"``). The update is optimised on a grid ``grid`` voxels apart (descriptors
averaged over each cell) and up-sampled trilinearly: ``grid``^3 times fewer voxels to warp a step, and a
smooth update by construction. The regulariser is Eq. 4 on the whole field at that grid, in its units.

For the paper's network the update is added to its displacement. For a diffeomorphic network
(``integration_steps`` > 0) the update is a stationary velocity, integrated like the network's, composed
with the network's map (the update's flow first, then the network's) and regularised itself, as the
network's velocity is in training: a composition of diffeomorphisms, so the refined field stays one where
adding a displacement can fold it (tests/test_refinement.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from intermod.losses import mind_ssc, parzen_mutual_information, smoothness
from intermod.spatial import integrate_velocity, warp

__all__ = ["SIMILARITIES", "Refinement", "refine_field"]

SIMILARITIES = ("mind", "mi")


@dataclass(frozen=True)
class Refinement:
    """How to refine: ``steps`` Adam steps (0: none) at learning rate ``lr`` (grid voxels per step)."""
    steps: int = 0
    similarity: str = "mind"
    lr: float = 0.1
    grid: int = 2
    lambda_laplacian: float = 0.5
    lambda_l2: float = 0.0
    mind_radius: int = 1
    mind_dilation: int = 2
    mi_bins: int = 32

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"refinement similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.grid < 1 or self.lr <= 0:
            raise ValueError(f"refinement needs grid >= 1 and lr > 0, got grid={self.grid}, lr={self.lr}")


def _to_grid(x: Tensor, grid: int) -> Tensor:
    """Mean over ``grid``^3 cells; the volume padded (replicating) to a whole number of cells first."""
    pad = [p for n in reversed(x.shape[2:]) for p in (0, -n % grid)]
    return F.avg_pool3d(F.pad(x, pad, mode="replicate"), grid)


def _after(field: Tensor, u: Tensor) -> Tensor:
    """The displacement of the map x -> x + u(x) followed by ``field``'s: u(x) + field(x + u(x))."""
    return u + warp(field, u)


def _updated(field: Tensor, update: Tensor, integration_steps: int) -> Tensor:
    """``field`` after ``update`` (both (B, 3, X, Y, Z), one unit): added, or with ``integration_steps`` > 0 the
    update's flow composed with the field's map."""
    return field + update if not integration_steps else _after(field, integrate_velocity(update, integration_steps))


def refine_field(ct: Tensor, mr: Tensor, field: Tensor, refinement: Refinement, integration_steps: int = 0) -> Tensor:
    """The field (1, 3, X, Y, Z), voxels, pull-back) after ``refinement.steps`` Adam steps that move the MR
    (1, 1, X, Y, Z) towards the CT (1, 1, X, Y, Z), both normalised to [0, 1]. Zero steps return ``field``.
    ``integration_steps``: the network's (0: the paper's displacement; > 0: the update is a velocity, composed)."""
    if ct.ndim != 5 or ct.shape[:2] != (1, 1) or mr.shape != ct.shape:
        raise ValueError(f"refine_field: ct and mr must both be (1, 1, X, Y, Z), got {tuple(ct.shape)} and "
                         f"{tuple(mr.shape)}")
    if field.shape != (1, 3, *ct.shape[2:]):
        raise ValueError(f"refine_field: the field must be (1, 3, {', '.join(map(str, ct.shape[2:]))}), "
                         f"got {tuple(field.shape)}")
    if refinement.steps == 0:
        return field
    g = refinement.grid
    # Lightning tests under inference mode, whose tensors autograd refuses: leave it, on copies of the inputs.
    with torch.inference_mode(False), torch.enable_grad():
        ct, mr, start_field = ct.float().clone(), mr.float().clone(), field.float().clone()
        with torch.no_grad():
            if refinement.similarity == "mind":
                fixed, moving = (mind_ssc(image, refinement.mind_radius, refinement.mind_dilation) for image in (ct, mr))
            else:
                fixed, moving = ct, mr
            fixed, moving = _to_grid(fixed, g), _to_grid(moving, g)
            # Cell i's centre is voxel g * i + (g - 1) / 2, so a displacement of d grid units is g * d voxels.
            start = _to_grid(start_field, g) / g
        update = torch.zeros_like(start, requires_grad=True)
        optimiser = torch.optim.Adam([update], lr=refinement.lr)
        for _ in range(refinement.steps):
            phi = _updated(start, update, integration_steps)
            warped = warp(moving, phi)
            if refinement.similarity == "mind":
                dissimilarity = (warped - fixed).pow(2).mean()
            else:
                mi = parzen_mutual_information(fixed, warped, bins=refinement.mi_bins)
                dissimilarity = 1 - mi.mean() / math.log(refinement.mi_bins)
            # Replicated borders: the Laplacian reaches the outermost cells too, which would otherwise drift free.
            # A velocity update is regularised itself (its flow is smooth where it is); a displacement, the sum.
            bordered = F.pad(update if integration_steps else phi, (1,) * 6, mode="replicate")
            regulariser = smoothness(bordered, refinement.lambda_laplacian, refinement.lambda_l2)[0].mean()
            optimiser.zero_grad()
            (dissimilarity + regulariser).backward()
            optimiser.step()
        update = update.detach()
    if integration_steps:  # the flow, integrated where it was optimised, then up-sampled as a displacement
        update = integrate_velocity(update, integration_steps)
    padded = [n + (-n % g) for n in ct.shape[2:]]
    step = F.interpolate(update * g, size=padded, mode="trilinear", align_corners=False)
    step = step[..., :ct.shape[2], :ct.shape[3], :ct.shape[4]]
    return (field + step if not integration_steps else _after(field.float(), step)).to(field.dtype)
