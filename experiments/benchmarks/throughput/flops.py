"""FLOPs per patch of the U-Net, counted two ways: torch's FlopCounterMode and the conv layers' shapes."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from intermod.networks.unet import RegistrationUNet

PAPER_WIDTHS = (32, 64, 128)
PAPER_GFLOP = 99.0  # the figure for the paper's net, 68^3, forward + backward


def counted_flops(widths, patch: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one patch through the network, by torch's FlopCounterMode
    (convolutions only; shapes on the meta device, nothing computed)."""
    net = RegistrationUNet(widths).to("meta")
    x = torch.empty(1, 2, patch, patch, patch, device="meta")
    with FlopCounterMode(display=False) as forward:
        y = net(x)
    with FlopCounterMode(display=False) as backward:
        y.sum().backward()
    return forward.get_total_flops(), forward.get_total_flops() + backward.get_total_flops()


def conv_layer_flops(widths, patch: int) -> tuple[float, float]:
    """The same count from each conv layer's shapes: 2 FLOPs per multiply-add; the backward pass
    computes the weight gradient (as many) and the input gradient (as many), except for the first
    layer, whose input (the images) needs no gradient."""
    net = RegistrationUNet(widths).to("meta")
    layers = []
    hooks = [m.register_forward_hook(lambda m, args, out: layers.append((m, args[0].shape, out.shape)))
             for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    net(torch.empty(1, 2, patch, patch, patch, device="meta"))
    for hook in hooks:
        hook.remove()
    forward = backward = 0.0
    for i, (layer, in_shape, out_shape) in enumerate(layers):
        # A convolution does its kernel's work per output voxel; a transposed one per input voxel.
        voxels = math.prod(in_shape[2:] if isinstance(layer, nn.ConvTranspose3d) else out_shape[2:])
        flops = 2 * voxels * layer.in_channels * layer.out_channels * math.prod(layer.kernel_size)
        forward += flops
        backward += flops * (1 if i == 0 else 2)
    return forward, forward + backward
