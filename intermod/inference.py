"""Whole-volume registration with a patch-trained valid-convolution network.

The network maps an input of size n to an output of size n - 2 * margin with the same centre, so
padding the volume by ``margin`` on each side gives every voxel a displacement. Two ways:

- ``whole``: one fully convolutional pass over the padded volume (rounded up to a valid size);
- ``tiled``: the paper's 68^3 -> 28^3 tiles on a stride of the output size.

Tiles start on multiples of the output size (a multiple of 4), so the pooling grids line up with the
whole pass and in eval mode both give the same field.

The diffeomorphic option (``integration_steps`` > 0, ``model.integration_steps``): the network's output
is a stationary velocity field, and the displacement is its scaling-and-squaring integral
(:func:`intermod.spatial.integrate_velocity`). The velocity is stitched over the whole volume first (from
one pass or from the tiles) and integrated once there, not per tile inside the network. Each
composition reads the field at x + u(x), up to the whole displacement away from x: integrating a tile on
its own would read the neighbouring tiles' velocity as the tile's replicated border, giving a field that
depends on the tiling, with seams at tile edges. Integrated once over the volume, the field is exact
wherever the compositions stay inside the volume, and the same in whole and tiled mode. Training
integrates each patch's velocity with the same function (:class:`intermod.module.RegistrationModule`):
there the border replication stands in for the velocity beyond the patch, an approximation confined to
within about the displacement of the patch's faces.

:class:`InferenceNetwork` prepares a trained network for registration: BatchNorm folded into the
convolutions, channels-last memory and, with ``precision="bf16"``, a bfloat16 body (oneDNN on CPUs
with native bfloat16, tensor cores on GPUs), about 3x faster on CPU than float32.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from intermod.spatial import integrate_velocity, warp, warp_labels

MODES = ("whole", "tiled")
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (else bfloat16 would be emulated, and slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16" for ``precision`` ("auto": bf16 where ``device`` has it natively)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (eval mode) with each Conv3d + BatchNorm3d pair in a Sequential folded into one conv."""
    net = copy.deepcopy(net).eval()
    for block in net.modules():
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if isinstance(block[i], nn.Conv3d) and isinstance(block[i + 1], nn.BatchNorm3d):
                    block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
    return net


class InferenceNetwork(nn.Module):
    """A trained registration network made ready for inference; returns float32 fields.

    ``precision`` "bf16" runs the body in bfloat16 and keeps the 1x1x1 head in float32: the field differs
    from float32 inference by a few hundredths of a voxel (tests/test_inference.py).
    """

    def __init__(self, net: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        net = fold_batchnorm(net).to(self.dtype, memory_format=torch.channels_last_3d)
        net.head.float()
        self.net = net
        self.margin = net.margin
        self.output_size = net.output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype, memory_format=torch.channels_last_3d)).float()


def _pad_to(x: torch.Tensor, before: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """Pad the spatial dims with zeros (the normalised minimum): ``before`` in front, up to ``sizes``."""
    pads = []
    for n, target in zip(reversed(x.shape[2:]), reversed(sizes)):
        pads += [before, target - n - before]
    return F.pad(x, pads)


@torch.no_grad()
def predict_field(net: nn.Module, ct: torch.Tensor, mr: torch.Tensor, mode: str = "whole",
                  tile: int = 68, tiles_per_batch: int = 8, integration_steps: int = 0) -> torch.Tensor:
    """Displacement (B, 3, X, Y, Z) in voxels for every voxel of ``ct``/``mr`` (B, 1, X, Y, Z).

    ``integration_steps`` > 0: the network predicts a velocity field (:func:`predict_network_output`),
    integrated over the whole volume into the displacement returned."""
    velocity = predict_network_output(net, ct, mr, mode, tile, tiles_per_batch)
    return integrate_velocity(velocity, integration_steps)


@torch.no_grad()
def predict_network_output(net: nn.Module, ct: torch.Tensor, mr: torch.Tensor, mode: str = "whole",
                           tile: int = 68, tiles_per_batch: int = 8) -> torch.Tensor:
    """The network's output field (B, 3, X, Y, Z) for every voxel of ``ct``/``mr`` (B, 1, X, Y, Z), from one
    pass or stitched from tiles: the displacement, or with ``integration_steps`` > 0 the velocity."""
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
                     mode: str = "whole", integration_steps: int = 0) -> dict[str, torch.Tensor]:
    """Register MR to CT: the field (the displacement), the MR warped into CT space and, if given, the warped
    MR labels; with ``integration_steps`` > 0 also the velocity the field was integrated from."""
    velocity = predict_network_output(net, ct, mr, mode)
    field = integrate_velocity(velocity, integration_steps)
    out = {"field": field, "mr_warped": warp(mr, field)}
    if integration_steps:
        out["velocity"] = velocity
    if mr_labels is not None:
        out["mr_labels_warped"] = warp_labels(mr_labels, field)
    return out
