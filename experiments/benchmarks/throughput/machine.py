"""The machine a measurement runs on: its description, its math mode and its peak TFLOP/s."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

# Dense peak TFLOP/s by math mode (NVIDIA data sheets); the first name that matches the device wins.
GPU_PEAKS = (("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
             ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
             ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
             ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}))


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
