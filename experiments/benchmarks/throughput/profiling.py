"""A profile of one training step: self time per kernel (CUDA) or operator (CPU), grouped by family."""
from __future__ import annotations

import re

import torch
from torch.profiler import ProfilerActivity, profile

from throughput.machine import sync

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
