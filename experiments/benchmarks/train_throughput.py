"""Training throughput of the paper-faithful setup (fp32, batch 2, TorchIO queue) and the fast one
(experiment=fast: bf16 autocast, channels_last_3d, torch.compile, batch 64, patches cut on the device).

For each setup, side by side: patches/s end to end (a real Lightning ``Trainer.fit`` with its data
module, data pipeline and host-to-device copies included) and on device-resident tensors (forward,
dual loss, backward, SGD step; no data loading); FLOPs per patch (torch's FlopCounterMode, checked
against a count from the conv layers), achieved TFLOP/s and the fraction of a peak, the loss + warp
share of a step, and the wall-clock to train the paper's schedule for one fold. Also the data paths
alone (queue vs device sampler) and, per setup, a profile of one step by kernel family.
Writes OUT.md and OUT.json.

    # the measurement (one H100; ~5 min):
    python experiments/benchmarks/train_throughput.py --device cuda --out experiments/benchmarks/train_throughput_h100
    # reduced, on a 2-core CPU (~10 min):
    python experiments/benchmarks/train_throughput.py --device cpu --widths 8 16 32 --steps 5 --warmup 2 \\
        --fast-batch 8 --no-compile --grid small --samples-per-volume 64 --queue-length 32
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from intermod.cli import CONF_DIR
from intermod.cli.synth import synthesize_dataset
from intermod.data.datamodule import PairedDataModule
from intermod.data.gpu_sampler import DevicePatchDataModule, DevicePatches
from intermod.io import atomic_write_json, atomic_write_text
from intermod.losses import RegistrationLoss
from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # see STACK-NOTES
PAPER_WIDTHS = (32, 64, 128)
PAPER_GFLOP = 99.0  # the figure for the paper's net, 68^3, forward + backward

# Dense peak TFLOP/s by math mode (NVIDIA data sheets); the first name that matches the device wins.
GPU_PEAKS = (("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
             ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
             ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
             ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}))

# Kernel (CUDA) or operator (CPU) families, by name; first match wins, so the order matters
# (cuDNN's batch-norm kernels before "cudnn" convolutions, scatter before cat).
FAMILIES = (("batch norm", r"batch_?norm|bn_fw|bn_bw|welford"),
            ("convolution", r"conv|cudnn|xmma|cutlass|gemm|implicit|wgrad|dgrad|fprop|sm\d\d_"),
            ("grid-sample/warp", r"gather|scatter|grid_sampler|index"),
            ("pooling", r"pool"),
            ("optimizer", r"foreach|multi_tensor|sgd"),
            ("copies/cat/crop", r"copy|cat|memcpy|memset|slice|clone|contiguous|fill"),
            ("loss (reductions)", r"reduce|sum|mean|norm|std|var"),
            ("elementwise/ReLU", r"elementwise|vectorized|relu|threshold|clamp|add|mul|sub|div|floor|pow|where|"
                                 r"triton_"))


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores (torch uses {torch.get_num_threads()} threads)",
             f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    if device.type == "cuda":
        parts.insert(0, f"GPU: {torch.cuda.get_device_name(device)}")
        parts.append(f"cuDNN {torch.backends.cudnn.version()}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    return "; ".join(parts)


def math_mode(device: torch.device, bf16: bool) -> str:
    """The arithmetic the convolutions run in: fp32 convolutions use TF32 on CUDA unless disabled."""
    if bf16:
        return "bf16"
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def peak_tflops(device: torch.device, mode: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from) for the device and math mode."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for pattern, peaks in GPU_PEAKS:
            if pattern in name:
                return peaks[mode], f"{pattern} data sheet, dense {mode}"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    # CPU: cores x clock x 32 FLOP/cycle (two 256-bit FMA pipes), twice that with AVX-512 BF16 in bf16.
    info = Path("/proc/cpuinfo").read_text()
    mhz = max((float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)), default=0.0)
    per_cycle = 64 if mode == "bf16" and "avx512_bf16" in info else 32
    if not mhz:
        return None, "unknown CPU clock: pass --peak-tflops"
    source = f"estimate: {os.cpu_count()} cores x {mhz:.0f} MHz x {per_cycle} FLOP/cycle"
    return os.cpu_count() * mhz * 1e6 * per_cycle / 1e12, source


# --- FLOPs -------------------------------------------------------------------------------------------

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


# --- data ---------------------------------------------------------------------------------------------

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


# --- model --------------------------------------------------------------------------------------------

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


def family(name: str) -> str:
    lowered = name.lower()
    return next((fam for fam, pattern in FAMILIES if re.search(pattern, lowered)), "other")


def step_profile(step, device: torch.device) -> dict:
    """One step under torch.profiler: self time per kernel (CUDA) or operator (CPU), grouped by family."""
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        step()
        sync(device)
    times = {}
    for event in prof.key_averages():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.self_device_time_total
        else:
            us = event.self_cpu_time_total
        if us > 0:
            times[event.key] = times.get(event.key, 0.0) + us / 1e3
    families: dict[str, float] = {}
    for name, ms in times.items():
        families[family(name)] = families.get(family(name), 0.0) + ms
    top = sorted(times.items(), key=lambda kv: -kv[1])[:12]
    return {"unit": "GPU kernel self time" if device.type == "cuda" else "CPU operator self time",
            "total_ms": sum(times.values()), "families_ms": dict(sorted(families.items(), key=lambda kv: -kv[1])),
            "top": [{"name": name[:110], "family": family(name), "ms": ms} for name, ms in top]}


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


# --- report -------------------------------------------------------------------------------------------

def schedule() -> dict:
    """The paper's schedule from the configs: epochs and patches per epoch of one fold."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=paper"])
    data = cfg.data
    train_subjects = data.synthesize.n_subjects - data.n_test - data.n_val
    flips = 2 if data.flip_augment else 1
    return {"epochs": int(cfg.trainer.max_epochs),
            "patches_per_epoch": train_subjects * flips * int(data.samples_per_volume),
            "source": f"conf/experiment/paper.yaml (max_epochs {cfg.trainer.max_epochs}, early stopping may end "
                      f"sooner); {train_subjects} training subjects x {flips} flips x {data.samples_per_volume} "
                      "patches"}


def data_path(setup: Setup, args) -> str:
    if setup.data.startswith("device:"):
        return f"device sampler ({setup.data.split(':')[1]})"
    if setup.data == "queue":
        return f"TorchIO queue, {args.paper_workers} workers (the paper config's)"
    return f"TorchIO queue, {args.tuned_workers} workers, pinned memory on CUDA"


def describe(setup: Setup, args) -> dict:
    return {"config": setup.name, "data_path": data_path(setup, args), "batch": setup.batch,
            "precision": setup.precision,            "channels_last": setup.channels_last, "compile": setup.compile}


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def markdown(report: dict) -> str:
    s, flops = report["settings"], report["flops"]
    reduced = report["reduced"]
    lines = ["# Training throughput", "",
             f"Device: **{report['device']}**. {report['machine']}. Load average (1 min) "
             f"{report['load_average'][0]:.1f} at the start, {report['load_average'][1]:.1f} at the end "
             "(on a shared machine other jobs slow every row).", "",
             (f"**Reduced size** ({', '.join(reduced)}): these numbers show the method and the CPU's relative "
              "costs, not the paper-size speed; see README.md for the H100 command.") if reduced else
             "Paper size: the paper's U-Net (widths 32/64/128), 68^3 patches, dual loss.", "",
             f"Network widths {'/'.join(map(str, s['widths']))}, {s['patch_size']}^3 patches -> "
             f"{s['patch_size'] - 40}^3 fields, dual loss (two exact Eq. 5 warps, two NCCs, Eq. 4), SGD. "
             f"Data: {s['dataset']}. {s['steps']} timed steps after {s['warmup']} warm-up steps "
             f"(queue paths: enough steps for two queue refills of {s['queue_length']} patches; "
             f"{s['samples_per_volume']} patches per volume).", "",
             "## Patches per second and time to train one fold", "",
             f"Fold estimate: {report['schedule']['epochs']} epochs x {report['schedule']['patches_per_epoch']:,} "
             f"patches ({report['schedule']['source']}), at the end-to-end rate; validation (one whole-volume "
             "pass per epoch) and compilation (once) are not included.", "",
             "| config | data path | batch | precision | channels_last | compile | end to end (patches/s) | "
             "compute only (patches/s) | end to end / compute | speed-up vs paper (end to end) | TFLOP/s "
             "(compute only) | peak TFLOP/s | % of peak | one fold |",
             "|" + "---|" * 14]
    paper_rate = report["setups"][0]["patches_per_s_end_to_end"]
    for r in report["setups"]:
        lines.append(f"| {r['config']} | {r['data_path']} | {r['batch']} | {r['precision']} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} | "
                     f"{fmt(r['patches_per_s_end_to_end'])} | {fmt(r['patches_per_s_compute_only'])} | "
                     f"{fmt(r['end_to_end_over_compute'], 2)} | "
                     f"{fmt(r['patches_per_s_end_to_end'] / paper_rate, 1)}x | "
                     f"{fmt(r['tflops'], 2)} | {fmt(r['peak_tflops'], 1)} | {fmt(r['percent_of_peak'], 1)} | "
                     f"{hours(r['fold_seconds'])} |")
    sources = dict.fromkeys(f"precision {r['precision']}: {r['peak_source']}" for r in report["setups"])
    if any(r["end_to_end_over_compute"] > 1 for r in report["setups"]):
        lines += ["", "End to end above compute only is measurement noise: the two are separate, short windows."]
    lines += ["", f"Peak: {'; '.join(sources)}. TFLOP/s counts only the network's convolutions (below), "
              "so elementwise work, the loss and the "
              "optimiser are overhead against the peak.", "",
              "## FLOPs per patch (forward + backward)", "",
              f"- torch.utils.flop_counter.FlopCounterMode: {flops['counted_gflop']:.2f} GFLOP "
              f"(forward {flops['counted_forward_gflop']:.2f})",
              f"- from the conv layers' shapes: {flops['layer_gflop']:.2f} GFLOP (forward "
              f"{flops['layer_forward_gflop']:.2f}; backward = weight gradient + input gradient, none for the input)",
              f"- the paper's net (32/64/128, 68^3): {flops['paper_counted_gflop']:.2f} GFLOP counted, vs the "
              f"~{PAPER_GFLOP:.0f} GFLOP quoted in the issue (3 x forward = {3 * flops['paper_forward_gflop']:.1f}: "
              "the quote includes the first layer's input gradient, which training does not compute)", "",
              "## Data paths alone (batches on the device, no model)", "",
              "A data path keeps up with a setup when it delivers at least that setup's compute-only rate.", "",
              "| data path | batch | patches/s | keeps up with paper | keeps up with fast |", "|---|---|---|---|---|"]
    demand = {r["config"]: r["patches_per_s_compute_only"] for r in report["setups"]}
    for r in report["data_paths"]:
        keeps_up = ["yes" if r["patches_per_s"] >= demand[name] else "**no**" for name in ("paper", "fast")]
        lines.append(f"| {r['data_path']} | {r['batch']} | {fmt(r['patches_per_s'])} | {' | '.join(keeps_up)} |")
    lines += ["", "Which to use: the TorchIO queue (the default) whenever it keeps up: any dataset size, label-based "
              "sampling, no device memory. The device sampler when the queue cannot feed the network and the "
              "padded training volumes fit in device memory (18 bytes per voxel; 3.7 GB for the paper's 24). "
              "Its crop method: whichever row above is faster on the device.",
              "", "## Loss and warp", "",
              "| config | step (ms) | loss + warp forward and backward (ms) | share | peak device memory (GB) |",
              "|---|---|---|---|---|"]
    for r in report["setups"]:
        if r["config"] in report["profiles"]:
            lines.append(f"| {r['config']} | {fmt(r['step_ms'])} | {fmt(r['loss_warp_ms'])} | "
                         f"{fmt(100 * r['loss_warp_share'])} % | {fmt(r['peak_memory_gb'], 2)} |")
    for name, prof in report["profiles"].items():
        if not prof.get("total_ms"):
            lines += ["", f"## Profile of one step: {name}", "", f"No events recorded. {prof.get('error', '')}"]
            continue
        lines += ["", f"## Profile of one step: {name} ({prof['unit']}, {prof['total_ms']:.1f} ms in all)", "",
                  "| family | ms | share |", "|---|---|---|"]
        lines += [f"| {fam} | {ms:.2f} | {100 * ms / prof['total_ms']:.1f} % |"
                  for fam, ms in prof["families_ms"].items()]
        lines += ["", "Largest entries:", "", "| kernel / operator | family | ms |", "|---|---|---|"]
        lines += [f"| `{t['name']}` | {t['family']} | {t['ms']:.2f} |" for t in prof["top"]]
    lines += ["", "Families are assigned from kernel/operator names (patterns in the script), so a fused kernel "
              "counts once, under the first family its name matches; the loss's and the warp's elementwise "
              "operations count as elementwise, which is why the loss + warp time is measured on its own above.",
              "",
              f"Written by `experiments/benchmarks/train_throughput.py` on {time.strftime('%Y-%m-%d')}: "
              f"`{report['command']}`."]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=str(Path(__file__).with_suffix("")), help="writes OUT.md and OUT.json")
    parser.add_argument("--widths", type=int, nargs=3, default=list(PAPER_WIDTHS))
    parser.add_argument("--patch-size", type=int, default=68)
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--fast-batch", type=int, default=64)
    parser.add_argument("--no-compile", action="store_true", help="the fast setup without torch.compile")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", help="a dataset root (default: synthesise a phantom)")
    parser.add_argument("--grid", default="paper", choices=("paper", "small", "tiny"))
    parser.add_argument("--subjects", type=int, default=4, help="phantom subjects (2 are held out)")
    # TorchIO 1.2.1's queue fails at its second fill when a volume's remaining patches exceed its length
    # (so the paper config's 9400 per volume with a queue of 1024 cannot run); 512 <= 1024 can.
    parser.add_argument("--samples-per-volume", type=int, default=512)
    parser.add_argument("--queue-length", type=int, default=1024)
    parser.add_argument("--paper-workers", type=int, default=4)
    parser.add_argument("--tuned-workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--crop", default="gather", choices=("gather", "slice"), help="the fast setup's crop")
    parser.add_argument("--peak-tflops", type=float, help="override the peak for every row")
    args = parser.parse_args()
    if args.samples_per_volume > args.queue_length:
        parser.error("--samples-per-volume must not exceed --queue-length (TorchIO 1.2.1's queue fails otherwise)")
    return args


def main() -> None:
    args = parse_args()
    load_at_start = os.getloadavg()[0]
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # trainer=gpu's setting: patch sizes are fixed
    root = dataset(args)
    paper = Setup("paper", args.paper_batch, bf16=False, channels_last=False, compile=False, data="queue")
    fast = Setup("fast", args.fast_batch, bf16=True, channels_last=True, compile=not args.no_compile,
                 data=f"device:{args.crop}")
    setups = [paper, fast, replace(fast, name="fast + queue", data="queue-tuned")]

    forward, total = counted_flops(args.widths, args.patch_size)
    layer_forward, layer_total = conv_layer_flops(args.widths, args.patch_size)
    paper_forward, paper_total = counted_flops(PAPER_WIDTHS, 68)
    flop = total  # per patch, forward + backward
    plan = schedule()

    models, compute, profiles, rows = {}, {}, {}, []
    for setup in setups:
        if setup.model_key not in compute:
            print(f"[{setup.name}] compute only")
            models[setup.model_key] = module(setup, args)
            compute[setup.model_key] = compute_only(setup, models[setup.model_key],
                                                    resident_batch(setup, root, args, device), args, device)
            profiles[setup.name] = compute[setup.model_key].pop("profile")
        print(f"[{setup.name}] end to end")
        rate = end_to_end(setup, models[setup.model_key], root, args, device)
        measured = compute[setup.model_key]
        peak, source = peak_tflops(device, math_mode(device, setup.bf16), args.peak_tflops)
        tflops = measured["patches_per_s_compute_only"] * flop / 1e12
        rows.append({**describe(setup, args), **measured, "device": str(device), "patches_per_s_end_to_end": rate,
                     "end_to_end_over_compute": rate / measured["patches_per_s_compute_only"],
                     "gflop_per_patch": flop / 1e9, "tflops": tflops, "tflops_end_to_end": rate * flop / 1e12,
                     "peak_tflops": peak, "peak_source": source,
                     "percent_of_peak": 100 * tflops / peak if peak else None,
                     "fold_seconds": plan["epochs"] * plan["patches_per_epoch"] / rate})
        print(json.dumps({k: v for k, v in rows[-1].items() if isinstance(v, (int, float))}, indent=None))

    data_rows = []
    for setup in (paper, *(replace(fast, data=d) for d in ("queue-tuned", "device:gather", "device:slice"))):
        data_rows.append({"data_path": data_path(setup, args), "batch": setup.batch,
                          "patches_per_s": data_rate(setup, root, args, device)})
        print(data_rows[-1])

    reduced = [f"widths {'/'.join(map(str, args.widths))}"] if tuple(args.widths) != PAPER_WIDTHS else []
    reduced += [f"{args.patch_size}^3 patches"] if args.patch_size != 68 else []
    reduced += [f"fast batch {args.fast_batch}"] if args.fast_batch != 64 else []
    reduced += ["no torch.compile"] if args.no_compile else []
    reduced += [f"{args.grid} phantom grid"] if args.grid != "paper" and not args.data else []
    reduced += [f"{args.samples_per_volume} patches per volume, queue of {args.queue_length}"] \
        if (args.samples_per_volume, args.queue_length) != (512, 1024) else []
    reduced += [f"{args.steps} timed steps"] if args.steps < 20 else []
    report = {"device": str(device) if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
              "machine": machine(device), "load_average": [load_at_start, os.getloadavg()[0]], "reduced": reduced,
              "schedule": plan, "command": " ".join(["python", os.path.relpath(__file__), *sys.argv[1:]]),
              "settings": {**vars(args), "dataset": f"{root} ({args.grid} grid)"},
              "flops": {"counted_gflop": total / 1e9, "counted_forward_gflop": forward / 1e9,
                        "layer_gflop": layer_total / 1e9, "layer_forward_gflop": layer_forward / 1e9,
                        "paper_counted_gflop": paper_total / 1e9, "paper_forward_gflop": paper_forward / 1e9},
              "setups": rows, "data_paths": data_rows, "profiles": profiles}
    out, text = Path(args.out), markdown(report)
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
