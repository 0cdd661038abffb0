"""The measurements: the data path alone, steps on device-resident batches, and Trainer.fit end to end."""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet
from throughput.machine import sync
from throughput.profiling import step_profile
from throughput.setups import Setup, datamodule, timed_batches


def data_rate(setup: Setup, root: Path, args, device: torch.device) -> float:
    """Patches/s of the data path alone: batches drawn and on the device, no model."""
    loader = datamodule(setup, root, args, device).train_dataloader()
    batches = iter(loader)
    move = functools.partial(torch.Tensor.to, device=device, non_blocking=True)
    for _ in range(args.warmup):
        {k: move(v) for k, v in next(batches).items()}
    n = timed_batches(setup, args, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        {k: move(v) for k, v in next(batches).items()}
    sync(device)
    return n * setup.batch / (time.perf_counter() - start)


def train_step(model: RegistrationModule, batch: dict, optimizer, setup: Setup, device: torch.device) -> None:
    """What Lightning's loop does per step: autocast forward and loss (bf16-mixed), backward, SGD step."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.bf16):
        phi = model(batch["ct"], batch["mr"])
        loss, _ = model.loss(phi.float(), batch["ct"], batch["mr"], batch["ct_paired"], batch["mr_paired"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loss_step(model: RegistrationModule, batch: dict, phi: torch.Tensor, setup: Setup, device) -> None:
    """The dual loss (two warps, two NCCs, the regulariser) forward and backward, on a given field."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.bf16):
        loss, _ = model.loss(phi, batch["ct"], batch["mr"], batch["ct_paired"], batch["mr_paired"])
    loss.backward()


def seconds_per_call(function, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        function()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        function()
    sync(device)
    return (time.perf_counter() - start) / steps


def compute_only(setup: Setup, model: RegistrationModule, batch: dict, args, device: torch.device) -> dict:
    """Steps on a device-resident batch: patches/s, the loss + warp share, memory, a profile."""
    model.to(device)
    model.configure_model()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = functools.partial(train_step, model, batch, optimizer, setup, device)
    step_s = seconds_per_call(step, args.steps, args.warmup, device)
    field_size = args.patch_size - 2 * RegistrationUNet.margin
    phi = torch.zeros(setup.batch, 3, *(field_size,) * 3, device=device).normal_(0, 0.5).requires_grad_()
    loss_s = seconds_per_call(functools.partial(loss_step, model, batch, phi, setup, device), args.steps,
                              args.warmup, device)
    peak_memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    try:
        profiled = step_profile(step, device)
    except RuntimeError as err:  # e.g. no CUPTI access: the profile is extra, the rates stand without it
        profiled = {"error": str(err)}
    return {"patches_per_s_compute_only": setup.batch / step_s, "step_ms": step_s * 1e3, "loss_warp_ms": loss_s * 1e3,
            "loss_warp_share": loss_s / step_s, "peak_memory_gb": peak_memory, "profile": profiled}


class WindowTimer(pl.Callback):
    """Wall-clock of the training batches after ``warmup``, data fetching included (CUDA synchronised
    at both ends only, so the loop runs as it does in training)."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.start = self.stop = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (self.warmup, trainer.max_steps):  # steps done so far
            sync(self.device)
            if trainer.global_step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.stop = time.perf_counter()


def end_to_end(setup: Setup, model: RegistrationModule, root: Path, args, device: torch.device) -> float:
    """Patches/s of Trainer.fit with the setup's data module (validation off)."""
    n = timed_batches(setup, args, device)
    timer = WindowTimer(max(args.warmup, 1), device)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=setup.precision, max_steps=timer.warmup + n,
                         limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, benchmark=device.type == "cuda", callbacks=[timer],
                         default_root_dir=tempfile.mkdtemp(prefix="intermod-bench-"))
    trainer.fit(model, datamodule=datamodule(setup, root, args, device))
    return n * setup.batch / (timer.stop - timer.start)
