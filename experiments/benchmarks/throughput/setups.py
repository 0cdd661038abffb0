"""What is measured: a setup (model side and data path) and the dataset, data module and module it builds."""
from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from intermod.data.datamodule import PairedDataModule
from intermod.data.gpu_sampler import DevicePatchDataModule, DevicePatches
from intermod.data.synthesis import synthesize_dataset
from intermod.losses import RegistrationLoss
from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet


@dataclass(frozen=True)
class Setup:
    """One training configuration: the model side (precision, layout, compile, batch) and its data path."""
    name: str
    batch: int
    bf16: bool
    channels_last: bool
    compile: bool
    data: str  # "queue" (TorchIO, the paper's settings), "queue-tuned", "device:gather" or "device:slice"

    @property
    def model_key(self) -> tuple:
        return self.batch, self.bf16, self.channels_last, self.compile

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.bf16 else "32"


def dataset(args) -> Path:
    """The benchmark's phantom: --data, or a few subjects synthesised once on --grid."""
    if args.data:
        return Path(args.data)
    root = Path(tempfile.gettempdir()) / f"intermod-bench-{args.grid}-{args.subjects}"
    if not (root / "dataset.json").exists():
        print(f"synthesising {args.subjects} phantom subjects ({args.grid} grid) in {root}")
        synthesize_dataset(root, args.subjects, args.grid, seed=0, workers=os.cpu_count() or 1)
    return root


def datamodule(setup: Setup, root: Path, args, device: torch.device) -> PairedDataModule:
    """The setup's data module; one validation and one test subject, the rest trains."""
    common = dict(root=root, fold=0, n_test=1, n_val=1, patch_size=args.patch_size, margin=RegistrationUNet.margin,
                  samples_per_volume=args.samples_per_volume, batch_size=setup.batch)
    if setup.data.startswith("device:"):
        return DevicePatchDataModule(**common, device=str(device), crop=setup.data.split(":")[1],
                                     num_workers=args.paper_workers)
    if setup.data == "queue":  # conf/experiment/paper.yaml's settings
        return PairedDataModule(**common, queue_length=args.queue_length, num_workers=args.paper_workers)
    return PairedDataModule(**common, queue_length=args.queue_length, num_workers=args.tuned_workers,
                            pin_memory=device.type == "cuda")


def timed_batches(setup: Setup, args, device: torch.device) -> int:
    """Batches to time: the queue refills every queue_length patches, so its window spans two refills."""
    if setup.data.startswith("device:"):
        return args.steps
    return max(args.steps, math.ceil(2 * args.queue_length / setup.batch))


def module(setup: Setup, args) -> RegistrationModule:
    torch.manual_seed(0)
    return RegistrationModule(RegistrationUNet(args.widths), RegistrationLoss("dual"),
                              functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                              channels_last=setup.channels_last, compile=setup.compile,
                              compile_mode=args.compile_mode)


def resident_batch(setup: Setup, root: Path, args, device: torch.device) -> dict[str, torch.Tensor]:
    """One batch of real patches, already on the device."""
    volumes = datamodule(replace(setup, data="device:gather"), root, args, device).load_volumes()
    return next(iter(DevicePatches(volumes, args.patch_size, setup.batch, setup.batch)))
