"""Seconds per CT->MR registration at 218 x 196 x 100, 1 mm (the paper's grid): intermod's network + warp
and intermod-register end to end (reading and writing files), against ANTs SyN (Mattes MI) and ANTs affine
on the same phantom pair, in the same run. Writes register_speed.md beside this script (or --out) and prints it.

The network is the paper's U-Net (widths 32/64/128), untrained: its speed does not depend on its weights.
It runs in float32 and in bfloat16 (``--precision``; intermod-register's default "auto" takes bf16 where
the device has it natively). With ``--trained CKPT`` (an intermod-train checkpoint) the pair is also
registered with that model in both precisions, and the table says how far apart the two results are.
Targets: network + warp <= 0.1 s on an H100; end to end <= 15 s on a 2-core CPU (the paper: 15 s).

    python experiments/benchmarks/register_speed.py [--repeats 3] [--seed 0] [--trained CKPT] [--out FILE.md]
"""
from __future__ import annotations

from intermod.baselines.ants import register_classical, single_threaded_ants

single_threaded_ants()  # as intermod-register does, before ANTs loads: its pre-alignment is repeatable

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ants  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from intermod.checkpoint import CheckpointMetadata, write_metadata  # noqa: E402
from intermod.data.phantom import GRIDS, grid_affine, synthesize_subject  # noqa: E402
from intermod.geometry import read_image, to_array  # noqa: E402
from intermod.inference import predict_field, resolve_precision  # noqa: E402
from intermod.io import atomic_write_text  # noqa: E402
from intermod.networks.unet import RegistrationUNet  # noqa: E402
from intermod.preprocessing import CT_WINDOW, MR_PERCENTILES  # noqa: E402
from intermod.registration import load_model, normalise, register_files, register_images  # noqa: E402
from intermod.spatial import warp  # noqa: E402

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


def write_checkpoint(path: Path, spacing: tuple[float, ...], seed: int) -> Path:
    """An untrained paper-size checkpoint for a model grid of ``spacing`` mm."""
    torch.manual_seed(seed)
    net = RegistrationUNet(WIDTHS)
    checkpoint = {"state_dict": {"net." + k: v for k, v in net.state_dict().items()}}
    write_metadata(checkpoint, CheckpointMetadata(
        method="dual", net={"_target_": "intermod.networks.unet.RegistrationUNet", "widths": list(WIDTHS)},
        inference="whole", spacing=spacing, orientation="RAS", ct_window=CT_WINDOW, mr_percentiles=MR_PERCENTILES,
        patch_size=68, intermod_version="benchmark"))
    torch.save(checkpoint, path)
    return path


def write_pair(folder: Path, seed: int) -> dict[str, Path]:
    """A phantom CT/MR pair with labels on the paper's grid as NIfTI (RAS, 1 mm), and untrained
    paper-size checkpoints for model grids of 1 mm and 2 mm."""
    grid = GRIDS["paper"]
    arrays = synthesize_subject(seed, grid)
    paths = {}
    for key in ("ct", "mr", "ct_labels", "mr_labels"):
        paths[key] = folder / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(arrays[key], grid_affine(grid)), paths[key])
    paths["checkpoint"] = write_checkpoint(folder / "paper_untrained.ckpt", grid.spacing, seed)
    paths["checkpoint_2mm"] = write_checkpoint(folder / "paper_untrained_2mm.ckpt", (2.0, 2.0, 2.0), seed)
    return paths


def network_and_warp(paths: dict[str, Path], device: str, precision: str, repeats: int) -> list[float]:
    """The network's forward pass and the warp of the MR, on inputs already on the model grid."""
    model = load_model(paths["checkpoint"], device, precision)
    ct, mr = normalise(to_array(read_image(paths["ct"])), to_array(read_image(paths["mr"])), model)
    ct, mr = ct.to(model.device), mr.to(model.device)

    def step():
        with torch.no_grad():
            warp(mr, predict_field(model.net, ct, mr, model.inference, integration_steps=model.integration_steps))
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernel selection and allocator, not part of a registration's steady cost
    return timed(step, repeats)


def precision_agreement(paths: dict[str, Path], checkpoint: Path, device: str) -> list[str]:
    """Register the pair with a trained model in fp32 and in bf16: how far apart are the results?"""
    images = {key: read_image(paths[key], labels="labels" in key) for key in ("ct", "mr", "ct_labels", "mr_labels")}
    # No affine stage: the pair shares one grid, and the difference is then the network's alone.
    results = {precision: register_images(images["ct"], images["mr"], load_model(checkpoint, device, precision),
                                          images["mr_labels"], images["ct_labels"], affine=False)
               for precision in ("fp32", "bf16")}
    difference = np.linalg.norm(results["bf16"].field - results["fp32"].field, axis=-1)
    labels = {p: to_array(r.mr_labels_warped) for p, r in results.items()}
    dice = {p: {organ: row["dice_after"] for organ, row in r.report["labels"].items()} for p, r in results.items()}
    organs = ", ".join(f"{organ} {100 * dice['fp32'][organ]:.2f} / {100 * dice['bf16'][organ]:.2f}"
                       for organ in dice["fp32"])
    return [f"Trained model `{checkpoint}` on {device}, bf16 against fp32 on this pair (`--no-affine`): "
            "field differs by "
            f"{difference.max():.3f} mm at most ({difference.mean():.4f} mm on average); warped MR labels agree on "
            f"{100 * np.mean(labels['bf16'] == labels['fp32']):.3f} % of the voxels; Dice after (%, fp32 / bf16): "
            f"{organs}."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained", type=Path, help="a trained checkpoint: compare its bf16 and fp32 results")
    parser.add_argument("--out", type=Path, default=OUT, help=f"Markdown file to write (default {OUT.name} here)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()[0]
    rows = []  # (method, device, what, seconds, target)
    notes = []
    with tempfile.TemporaryDirectory(prefix="intermod-bench-") as tmp:
        folder = Path(tmp)
        paths = write_pair(folder, args.seed)
        for device in devices:
            auto = resolve_precision("auto", torch.device(device))
            notes.append(f"On {device}, `--precision auto` (the default) runs {auto}.")
            for precision in ("fp32", "bf16"):
                rows.append(("intermod (paper U-Net)", device, f"network + warp, {precision}",
                             network_and_warp(paths, device, precision, args.repeats),
                             "<= 0.1 s on an H100" if device == "cuda" else ""))

            def end_to_end(checkpoint="checkpoint", precision="auto", affine=True):
                return timed(lambda: register_files(paths["ct"], paths["mr"], paths[checkpoint], folder / "out",
                                                    device=device, affine=affine, precision=precision), args.repeats)

            rows.append(("intermod-register", device, f"end to end with I/O ({auto})", end_to_end(),
                         "<= 15 s on a 2-core CPU" if device == "cpu" else ""))
            rows.append(("intermod-register", device, "end to end with I/O, --precision fp32",
                         end_to_end(precision="fp32"), ""))
            rows.append(("intermod-register", device, f"end to end with I/O, --no-affine ({auto})",
                         end_to_end(affine=False), ""))
            rows.append(("intermod-register, model grid 2 mm", device, f"end to end with I/O ({auto})",
                         end_to_end("checkpoint_2mm"), ""))
            if args.trained:
                notes += precision_agreement(paths, args.trained, device)
        command = [sys.executable, "-m", "intermod.cli.register", "--ct", str(paths["ct"]), "--mr", str(paths["mr"]),
                   "--checkpoint", str(paths["checkpoint"]), "--out", str(folder / "cli")]
        rows.append(("intermod-register", "cpu", "new process (imports + end to end)",
                     timed(lambda: subprocess.run(command, check=True, capture_output=True), 1), ""))
        arrays = {key: np.asarray(nib.load(paths[key]).dataobj) for key in ("ct", "mr", "mr_labels")}
        for name, method in (("ANTs SyN (Mattes MI)", "syn"), ("ANTs affine (Mattes MI)", "affine")):
            result = register_classical(arrays["ct"].astype(np.float32), arrays["mr"].astype(np.float32),
                                        arrays["mr_labels"], GRIDS["paper"].spacing, method, args.seed, threads=None)
            rows.append((name, "cpu", f"registration + label warp + field, all cores (`method={method}`)",
                         [result.seconds], ""))

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
    lines += [""] + notes
    lines += ["", "End to end = read, resample to the model grid, affine pre-alignment (orientation search + ANTs "
              "affine at 4 mm), network + warp, compose the field on the CT grid, warp the MR, "
              "report metrics, write all files; ANTs single-threaded as in `intermod-register` (repeatable). "
              "\"model grid 2 mm\": the same network trained on 2 mm data (as "
              "`make demo`'s), so it runs on 8x fewer voxels. The ANTs rows are Table 1's baselines (intermod's settings, "
              "`intermod/baselines/ants.py`) on all cores, timed inside their process.",
              f"Written by `experiments/benchmarks/register_speed.py` on {time.strftime('%Y-%m-%d')}."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
