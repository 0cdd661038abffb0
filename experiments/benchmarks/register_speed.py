"""Seconds per CT->MR registration at 218 x 196 x 100, 1 mm (the paper's grid): intermod's network + warp
and intermod-register end to end (reading and writing files), against ANTs SyN (Mattes MI) and ANTs affine
on the same phantom pair, in the same run. Writes register_speed.md beside this script and prints it.

The network is the paper's U-Net (widths 32/64/128), untrained: its speed does not depend on its weights.
Targets: network + warp <= 0.1 s on an H100; end to end <= 15 s on a 2-core CPU (the paper: 15 s).

    python experiments/benchmarks/register_speed.py [--repeats 3] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ants
import nibabel as nib
import torch

from intermod.baselines.ants import ants_workdir
from intermod.cli.synth import grid_affine
from intermod.data.phantom import GRIDS, synthesize_subject
from intermod.geometry import read_image, to_array
from intermod.inference import predict_field
from intermod.networks.unet import RegistrationUNet
from intermod.registration import load_model, normalise, register_files
from intermod.spatial import warp

WIDTHS = (32, 64, 128)
OUT = Path(__file__).with_suffix(".md")


def machine() -> str:
    """CPU model, cores, torch (and GPU) in one line."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores (torch uses {torch.get_num_threads()} threads)",
             f"torch {torch.__version__}", f"ANTsPy {ants.__version__}", f"Python {platform.python_version()}"]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def write_pair(folder: Path, seed: int) -> dict[str, Path]:
    """A phantom CT/MR pair on the paper's grid as NIfTI (RAS, 1 mm), and an untrained paper-size checkpoint."""
    grid = GRIDS["paper"]
    arrays = synthesize_subject(seed, grid)
    paths = {}
    for key in ("ct", "mr"):
        paths[key] = folder / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(arrays[key], grid_affine(grid)), paths[key])
    torch.manual_seed(seed)
    net = RegistrationUNet(WIDTHS)
    paths["checkpoint"] = folder / "paper_untrained.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "intermod": {"format": 1, "labels": {}, "intermod_version": "benchmark", "method": "dual",
                             "net": {"_target_": "intermod.networks.unet.RegistrationUNet", "widths": list(WIDTHS)},
                             "inference": "whole", "spacing": list(grid.spacing), "orientation": "RAS",
                             "patch_size": 68, "ct_window": [-1000.0, 1000.0], "mr_percentiles": [0.5, 99.5]}},
               paths["checkpoint"])
    return paths


def network_and_warp(paths: dict[str, Path], device: str, repeats: int) -> list[float]:
    """The network's forward pass and the warp of the MR, on inputs already on the model grid."""
    model = load_model(paths["checkpoint"], device)
    ct, mr = normalise(to_array(read_image(paths["ct"])), to_array(read_image(paths["mr"])), model)
    ct, mr = ct.to(model.device), mr.to(model.device)

    def step():
        with torch.no_grad():
            warp(mr, predict_field(model.net, ct, mr, model.inference))
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernel selection and allocator, not part of a registration's steady cost
    return timed(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()[0]
    rows = []  # (method, device, what, seconds, target)
    with tempfile.TemporaryDirectory(prefix="intermod-bench-") as tmp:
        folder = Path(tmp)
        paths = write_pair(folder, args.seed)
        for device in devices:
            rows.append(("intermod (paper U-Net)", device, "network + warp",
                         network_and_warp(paths, device, args.repeats), "<= 0.1 s on an H100" if device == "cuda" else ""))
            for affine in (True, False):
                what = "end to end with I/O" + ("" if affine else ", --no-affine")
                seconds = timed(lambda: register_files(paths["ct"], paths["mr"], paths["checkpoint"], folder / "out",
                                                       device=device, affine=affine), args.repeats)
                rows.append(("intermod-register", device, what, seconds,
                             "<= 15 s on a 2-core CPU" if device == "cpu" and affine else ""))
        command = [sys.executable, "-m", "intermod.cli.register", "--ct", str(paths["ct"]), "--mr", str(paths["mr"]),
                   "--checkpoint", str(paths["checkpoint"]), "--out", str(folder / "cli")]
        rows.append(("intermod-register", "cpu", "new process (imports + end to end)",
                     timed(lambda: subprocess.run(command, check=True, capture_output=True), 1), ""))
        fixed, moving = ants.image_read(str(paths["ct"])), ants.image_read(str(paths["mr"]))
        for name, transform in (("ANTs SyN (Mattes MI)", "SyN"), ("ANTs affine (Mattes MI)", "Affine")):
            def register():
                with ants_workdir() as workdir:
                    ants.registration(fixed, moving, transform, aff_metric="mattes", syn_metric="mattes",
                                      random_seed=args.seed, outprefix=str(workdir) + "/")
            rows.append((name, "cpu", "registration + warp (ANTsPy defaults)", timed(register, 1), ""))

    grid = GRIDS["paper"]
    lines = ["# Registration speed", "",
             f"One phantom CT/MR pair (`synthesize_subject({args.seed}, GRIDS['paper'])`), "
             f"{' x '.join(map(str, grid.shape))} voxels at {grid.spacing[0]:g} mm. "
             f"intermod: the paper's U-Net, widths {'/'.join(map(str, WIDTHS))}, whole-volume inference. "
             "Median (min-max) over the runs; ANTs once.", "",
             f"Machine: {machine()}. Load average (1 min) {load_before:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end: other jobs on a shared machine slow every row alike.", "",
             "| method | device | timed | seconds | runs | target |", "|---|---|---|---|---|---|"]
    for method, device, what, seconds, target in rows:
        spread = f" ({min(seconds):.2f}-{max(seconds):.2f})" if len(seconds) > 1 else ""
        lines.append(f"| {method} | {device} | {what} | {statistics.median(seconds):.2f}{spread} | {len(seconds)} "
                     f"| {target} |")
    lines += ["", "End to end = read, resample to the model grid, affine pre-alignment (orientation search + ANTs "
              "affine at 4 mm), network + warp, compose the field on the CT grid, warp the MR, report metrics, "
              "write all files. ANTs' own timings exclude reading the images.",
              f"Written by `experiments/benchmarks/register_speed.py` on {time.strftime('%Y-%m-%d')}."]
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
