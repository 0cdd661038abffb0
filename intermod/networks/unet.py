"""Registration network M: (I_CT, I_MR) -> phi of Cao et al. 2018 (Sec. 2.2, Fig. 3).

A valid-convolution 3D U-Net: 3x3x3 convs without padding, each followed by BatchNorm + ReLU, two
per level; two max-pool down-samplings and two up-samplings; skip connections centre-cropped and
concatenated; a final 1x1x1 conv with no activation (displacements are signed). Sizes for the
paper's 68^3 input:

    68 -conv2-> 64 -pool-> 32 -conv2-> 28 -pool-> 14 -conv2-> 10
    -up-> 20 (+skip 28 cropped) -conv2-> 16 -up-> 32 (+skip 64 cropped) -conv2-> 28

so the output is the input minus 2 * margin (margin = 20) per axis, with the same centre: output
voxel i sits on input voxel i + 20. Up-sampling is a 2x2x2 transposed conv with stride 2 (the
original U-Net's "up-conv"): it keeps every up-sampled voxel exactly on the grid of the cropped
skip features, whereas trilinear up-sampling would need a half-voxel shift. The paper gives the
channel widths only in its figure; ``widths`` (one per level, default 32, 64, 128) is therefore a
choice of ours.

``field_resolution="half"`` (an option of ours, not the paper's) stops the decoder one level early: a
1x1x1 head on the level-1 features gives the field on a grid of twice the spacing, and trilinear
up-sampling brings it to the same n - 40 output. The level-1 voxel j sits on input voxel 2j + 18.5,
output voxel i on i + 20, so up-sampling by 2 (half-voxel centres, ``align_corners=False``) and
cropping 2 voxels per side puts every output voxel exactly where the full-resolution head's would be,
and never extrapolates. It skips the costliest level (up0, dec0) and gives a field as smooth as a
B-spline on a 2-voxel grid: about half the FLOPs per output voxel.

In eval mode the network is a translation-equivariant sliding window for shifts that are multiples
of 4 voxels (two stride-2 poolings), so tiled inference with tiles at multiples of 4 reproduces
whole-volume inference.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intermod.spatial import crop_center

__all__ = ["RegistrationUNet", "upsample_half_resolution"]


NORMS = {"batch": nn.BatchNorm3d, "none": nn.Identity}
FIELD_RESOLUTIONS = ("full", "half")


def _conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """Two valid 3x3x3 convs, each + normalisation + ReLU (shrinks each axis by 4)."""
    layers = []
    for c_in in (in_channels, out_channels):
        layers += [nn.Conv3d(c_in, out_channels, 3), NORMS[norm](out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def upsample_half_resolution(field: Tensor) -> Tensor:
    """The level-1 field (B, 3, m, m', m'') on the output grid: (B, 3, 2m - 4, ...). Level-1 voxel j sits on
    output voxel 2j - 1.5, which trilinear up-sampling by 2 with half-voxel centres puts on up-sampled
    voxel 2j - 0.5 + 2: the output is the up-sampled field without 2 voxels per side (no extrapolation)."""
    field = F.interpolate(field, scale_factor=2, mode="trilinear", align_corners=False)
    return crop_center(field, tuple(n - 4 for n in field.shape[2:]))


class RegistrationUNet(nn.Module):
    """U-Net mapping a (B, 2, X, Y, Z) CT+MR patch pair to a (B, 3, X-40, Y-40, Z-40) field (voxels).

    The field is the displacement, or with ``model.integration_steps`` > 0 a stationary velocity that the
    module and intermod.inference integrate (intermod.spatial.integrate_velocity); the network is the same."""

    in_channels = 2
    out_channels = 3
    margin = 20  # per side: output = input - 2 * margin

    def __init__(self, widths: Sequence[int] = (32, 64, 128), norm: str = "batch",
                 field_resolution: str = "full") -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be 3 positive channel counts (one per level), got {widths}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        if field_resolution not in FIELD_RESOLUTIONS:
            raise ValueError(f"field_resolution must be one of {FIELD_RESOLUTIONS}, got {field_resolution!r}")
        w0, w1, w2 = widths
        self.widths = widths
        self.field_resolution = field_resolution
        self.enc0 = _conv_block(self.in_channels, w0, norm)
        self.enc1 = _conv_block(w0, w1, norm)
        self.bottom = _conv_block(w1, w2, norm)
        self.pool = nn.MaxPool3d(2)
        self.up1 = nn.ConvTranspose3d(w2, w1, 2, stride=2)
        self.dec1 = _conv_block(2 * w1, w1, norm)
        if field_resolution == "full":
            self.up0 = nn.ConvTranspose3d(w1, w0, 2, stride=2)
            self.dec0 = _conv_block(2 * w0, w0, norm)
        self.head = nn.Conv3d(w0 if field_resolution == "full" else w1, self.out_channels, 1)
        # Near-zero output at initialisation: training starts from (almost) the identity warp.
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def valid_input_size(n: int) -> bool:
        """Whether an input axis of ``n`` voxels passes the network without rounding (n % 4 == 0, n >= 44)."""
        return n % 4 == 0 and n >= 44

    @staticmethod
    def output_size(n: int) -> int:
        """Output axis length for a valid input axis length ``n``: n - 40."""
        if not RegistrationUNet.valid_input_size(n):
            raise ValueError(f"input size {n} is invalid: it must be a multiple of 4 and >= 44")
        return n - 2 * RegistrationUNet.margin

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, 2, X, Y, Z) with CT and MR channels, got shape {tuple(x.shape)}")
        if not all(self.valid_input_size(n) for n in x.shape[2:]):
            raise ValueError(
                f"invalid input shape {tuple(x.shape)}: every spatial size must be a multiple of 4 and >= 44"
            )
        skip0 = self.enc0(x)
        skip1 = self.enc1(self.pool(skip0))
        y = self.bottom(self.pool(skip1))
        y = self.up1(y)
        y = self.dec1(torch.cat([crop_center(skip1, y.shape[2:]), y], 1))
        if self.field_resolution == "half":
            # The head may stay float32 under a bfloat16 body (intermod.inference): full-precision displacements.
            return upsample_half_resolution(self.head(y.to(self.head.weight.dtype)))
        y = self.up0(y)
        y = self.dec0(torch.cat([crop_center(skip0, y.shape[2:]), y], 1))
        return self.head(y.to(self.head.weight.dtype))
