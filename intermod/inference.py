"""Whole-volume registration with a patch-trained valid-convolution network.

The network maps an input of size n to an output of size n - 2 * margin with the same centre, so
padding the volume by ``margin`` on each side gives every voxel a displacement. Two ways:

- ``whole``: one fully convolutional pass over the padded volume (rounded up to a valid size);
- ``tiled``: the paper's 68^3 -> 28^3 tiles on a stride of the output size.

Tiles start on multiples of the output size (a multiple of 4), so the pooling grids line up with the
whole pass and in eval mode both give the same field.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from intermod.spatial import warp, warp_labels

MODES = ("whole", "tiled")


def _pad_to(x: torch.Tensor, before: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """Pad the spatial dims with zeros (the normalised minimum): ``before`` in front, up to ``sizes``."""
    pads = []
    for n, target in zip(reversed(x.shape[2:]), reversed(sizes)):
        pads += [before, target - n - before]
    return F.pad(x, pads)


@torch.no_grad()
def predict_field(net: nn.Module, ct: torch.Tensor, mr: torch.Tensor, mode: str = "whole",
                  tile: int = 68, tiles_per_batch: int = 8) -> torch.Tensor:
    """Displacement (B, 3, X, Y, Z) in voxels for every voxel of ``ct``/``mr`` (B, 1, X, Y, Z)."""
    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    if ct.shape != mr.shape:
        raise ValueError(f"CT {tuple(ct.shape)} and MR {tuple(mr.shape)} must share one grid")
    margin = net.margin
    x = torch.cat([ct, mr], dim=1)
    shape = tuple(x.shape[2:])
    if mode == "whole":
        # Round each padded size up to a size the network accepts (a multiple of 4).
        sizes = tuple(4 * math.ceil((n + 2 * margin) / 4) for n in shape)
        field = net(_pad_to(x, margin, sizes))
        return field[(...,) + tuple(slice(0, n) for n in shape)]

    out = net.output_size(tile)
    counts = [math.ceil(n / out) for n in shape]
    padded = _pad_to(x, margin, tuple(c * out + 2 * margin for c in counts))
    field = x.new_zeros((x.shape[0], 3, *(c * out for c in counts)))
    corners = [(i, j, k) for i in range(counts[0]) for j in range(counts[1]) for k in range(counts[2])]
    for start in range(0, len(corners), tiles_per_batch):
        chunk = corners[start:start + tiles_per_batch]
        patches = torch.cat([padded[..., i * out:i * out + tile, j * out:j * out + tile, k * out:k * out + tile]
                             for i, j, k in chunk])
        predicted = net(patches).split(x.shape[0])
        for (i, j, k), phi in zip(chunk, predicted):
            field[..., i * out:(i + 1) * out, j * out:(j + 1) * out, k * out:(k + 1) * out] = phi
    return field[(...,) + tuple(slice(0, n) for n in shape)]


@torch.no_grad()
def register_volumes(net: nn.Module, ct: torch.Tensor, mr: torch.Tensor, mr_labels: torch.Tensor | None = None,
                     mode: str = "whole") -> dict[str, torch.Tensor]:
    """Register MR to CT: the field, the MR warped into CT space and, if given, the warped MR labels."""
    field = predict_field(net, ct, mr, mode)
    out = {"field": field, "mr_warped": warp(mr, field)}
    if mr_labels is not None:
        out["mr_labels_warped"] = warp_labels(mr_labels, field)
    return out
