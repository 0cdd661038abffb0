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
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from intermod.io import atomic_write_report
from throughput.flops import PAPER_WIDTHS, conv_layer_flops, counted_flops
from throughput.machine import machine, math_mode, peak_tflops
from throughput.measure import compute_only, data_rate, end_to_end
from throughput.report import data_path, describe, markdown, schedule
from throughput.setups import Setup, dataset, module, resident_batch

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # see STACK-NOTES


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
    text = markdown(report)
    atomic_write_report(args.out, report, text)
    print(text)


if __name__ == "__main__":
    main()
