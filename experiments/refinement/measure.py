"""Test-time refinement of a trained network's field: which similarity, how many steps, how long.

Run on the validation subject(s) of the checkpoint's fold (never its test subjects: the settings chosen
here become the `dual_io` method's, which Table 1 tests), one process, the machine's threads:

    python experiments/refinement/measure.py RUN_DIR [RUN_DIR ...] [--steps 25 50 100] [--data-root DIR] [--out experiments/refinement/refinement_cpu.md]

Each RUN_DIR is a finished or running learned job (its checkpoints/best.ckpt and config_resolved.yaml); with
several (other folds), their validation subjects are pooled, each registered by its own fold's network.
Writes a Markdown table: mean Dice (%) per organ, % folding voxels and seconds of refinement per subject, per
setting, with the network alone (0 steps) as the baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from intermod.data.layout import load_dataset
from intermod.data.splits import make_split
from intermod.geometry import read_image, to_array
from intermod.inference import predict_field
from intermod.io import atomic_write_text
from intermod.metrics import dice, folding_statistics
from intermod.refinement import SIMILARITIES, Refinement, refine_field
from intermod.registration import load_model
from intermod.registration.pipeline import normalise
from intermod.spatial import warp_labels



def subject_arrays(spec, subject: str) -> dict[str, np.ndarray]:
    return {key: to_array(read_image(spec.path(subject, key), labels=key.endswith("labels")))
            for key in ("ct", "mr", "ct_labels", "mr_labels")}


def measure(run_dir: Path, steps: list[int], data_root: Path | None = None) -> tuple[list[dict], dict]:
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    spec = load_dataset(data_root or cfg.data.root)
    split = make_split(spec.subjects, cfg.fold, cfg.data.split_seed)
    model = load_model(run_dir / "checkpoints" / "best.ckpt", "cpu", "fp32")
    rows = []
    for subject in split.val:
        arrays = subject_arrays(spec, subject)
        ct, mr = normalise(arrays["ct"], arrays["mr"], model)
        labels = torch.from_numpy(arrays["mr_labels"].astype(np.int64))[None, None]
        start = time.perf_counter()
        field = predict_field(model.net, ct, mr, model.inference, integration_steps=model.integration_steps)
        network_s = time.perf_counter() - start
        settings = [(0, "network")] + [(n, s) for n in steps if n for s in SIMILARITIES]
        for n, similarity in settings:
            start = time.perf_counter()
            refined = field if n == 0 else refine_field(ct, mr, field, Refinement(steps=n, similarity=similarity),
                                                     model.integration_steps)
            seconds = time.perf_counter() - start
            warped = warp_labels(labels, refined)[0, 0].numpy()
            rows.append({"subject": subject, "steps": n, "similarity": similarity, "seconds": seconds,
                         "network_s": network_s,
                         "folding": folding_statistics(refined[0].numpy())["percent_nonpositive_jacobian"],
                         **{organ: 100 * dice(arrays["ct_labels"] == v, warped == v)
                            for organ, v in model.labels.items()}})
    return rows, {"fold": int(cfg.fold), "val": list(split.val), "labels": list(model.labels), "run": str(run_dir)}


def render(rows: list[dict], metas: list[dict]) -> str:
    organs = metas[0]["labels"]
    subjects = ", ".join(f"{s} (fold {m['fold']})" for m in metas for s in m["val"])
    lines = [f"# Test-time refinement on validation subjects {subjects}", "",
             "Networks: " + ", ".join(f"`{m['run']}/checkpoints/best.ckpt`" for m in metas) + ", fp32. "
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
             f"{torch.__version__} using {torch.get_num_threads()}.", "",
             "| setting | " + " | ".join(f"Dice {o} (%)" for o in organs) + " | folding (%) | seconds |",
             "|---|" + "---:|" * (len(organs) + 2)]
    keys = list(dict.fromkeys((r["steps"], r["similarity"]) for r in rows))
    for steps, similarity in keys:
        chosen = [r for r in rows if (r["steps"], r["similarity"]) == (steps, similarity)]
        name = "network alone" if steps == 0 else f"{similarity}, {steps} steps"
        seconds = np.mean([r["network_s"] if steps == 0 else r["seconds"] for r in chosen])
        lines.append(f"| {name} | " + " | ".join(f"{np.mean([r[o] for r in chosen]):.1f}" for o in organs)
                     + f" | {np.mean([r['folding'] for r in chosen]):.3f} | {seconds:.1f} |")
    lines += ["", "Seconds: the network's whole-volume prediction (network alone) or the refinement after it, "
              "per subject, on a CPU shared with whatever else ran."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--data-root", type=Path, help="the dataset folder, if not the run's data.root (relative to "
                        "where it was trained)")
    parser.add_argument("--out", type=Path, default=Path("experiments/refinement/refinement_cpu.md"))
    args = parser.parse_args()
    measured = [measure(run_dir, args.steps, args.data_root) for run_dir in args.run_dirs]
    if len({tuple(meta["labels"]) for _, meta in measured}) > 1:
        raise SystemExit("measure.py: the runs' datasets have different organ labels; measure them separately")
    table = render([row for rows, _ in measured for row in rows], [meta for _, meta in measured])
    atomic_write_text(args.out, table)
    print(table)


if __name__ == "__main__":
    main()
