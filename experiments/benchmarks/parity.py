"""Numerical parity of experiment=fast with fp32 training (needs a GPU for real numbers).

Trains, on the small phantom (2 mm, 68^3 patches, fold 0) with the same patches per epoch:

- ``fp32``: experiment=paper, the paper-faithful setup (fp32, batch 2, lr 0.01, TorchIO queue);
- ``fast_fp32``: experiment=fast in fp32, eager, contiguous (batch 64, lr 0.32, device sampler);
- ``fast``: experiment=fast (bf16 autocast, channels_last_3d, torch.compile, batch 64, lr 0.32);

each with several seeds, then compares the per-epoch training loss and the final validation Dice with
the run-to-run spread over seeds: ``fast`` vs ``fast_fp32`` isolates bf16/channels_last/compile; ``fast``
vs ``fp32`` adds the batch-size and learning-rate change. Writes OUT.md and OUT.json.

    python experiments/benchmarks/parity.py --out experiments/benchmarks/parity_h100      # ~25 min on an H100
    python experiments/benchmarks/parity.py --smoke --out /tmp/parity_smoke                # CPU check, ~5 min

Finished runs are kept in --work-dir and skipped when the command runs again, so a command that was cut
off resumes where it stopped (an interrupted run restarts from its last checkpoint).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import warnings
from itertools import combinations
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from intermod.cli import CONF_DIR
from intermod.io import atomic_write_report
from intermod.runner import run
from intermod.runs import METRICS_FILE

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # see STACK-NOTES
CONFIGS = {"fp32": ["experiment=paper"],
           "fast_fp32": ["experiment=fast", "trainer.precision=32", "model.compile=false", "model.channels_last=false"],
           "fast": ["experiment=fast"]}
# The CPU smoke check: tiny grid, narrow net, one short epoch; it checks the script, not parity.
SMOKE = ["trainer=cpu", "model=unet_small", "model.compile=false", "data.patch_size=44",
         "data.root=${paths.data_dir}/phantom_tiny", "data.synthesize.grid=tiny", "data.num_workers=0"]


def overrides(config: str, seed: int, args) -> list[str]:
    common = ["data=phantom_small", "logger=csv", "callbacks.early_stopping=null", "name=parity", f"seed={seed}",
              f"trainer.max_epochs={args.epochs}", f"data.samples_per_volume={args.samples_per_volume}",
              f"data.queue_length={max(args.samples_per_volume, 256)}", f"paths.log_dir={args.work_dir}",
              "trainer.enable_progress_bar=false"]
    if args.data_dir:
        common.append(f"paths.data_dir={args.data_dir}")
    return CONFIGS[config] + common + (SMOKE if args.smoke else [])


def train(config: str, seed: int, args) -> Path:
    """One run (skipped if its metrics.json exists); returns its folder."""
    folder = Path(args.work_dir) / config / f"seed{seed}"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(config, seed, args))
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)  # Hydra's run dir when launched by intermod-train
    print(f"=== {config}, seed {seed}: {folder}")
    run(cfg, folder)
    return folder


def epoch_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """Per epoch: train/loss_epoch, val/loss and val/dice_mean from the CSV logs (resumed runs add versions)."""
    epochs: dict[int, dict[str, float]] = {}
    for path in sorted((folder / "csv").glob("version_*/metrics.csv")):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                for key in ("train/loss_epoch", "val/loss", "val/dice_mean"):
                    if row.get(key):
                        epochs.setdefault(int(row["epoch"]), {})[key] = float(row[key])
    return dict(sorted(epochs.items()))


def collect(folder: Path) -> dict | None:
    metrics_path = folder / METRICS_FILE
    if not metrics_path.exists():
        return None
    metrics = json.loads(metrics_path.read_text())
    epochs = epoch_metrics(folder)
    val = [e["val/dice_mean"] for e in epochs.values() if "val/dice_mean" in e]
    test = statistics.mean(row["dice_after"]["mean"] for row in metrics["summary"].values())
    return {"epochs": epochs, "final_val_dice": val[-1] if val else None, "test_dice": test,
            "train_s": metrics.get("timings", {}).get("train_s"), "global_step": metrics.get("global_step")}


def spread(values: list[float]) -> float | None:
    """Run-to-run noise: the largest difference between two seeds."""
    return max(abs(a - b) for a, b in combinations(values, 2)) if len(values) > 1 else None


def compare(results: dict, candidate: str, reference: str, metric: str) -> dict | None:
    """Mean difference of ``metric`` between two configs against the reference's seed spread."""
    a = [r[metric] for r in results.get(candidate, {}).values() if r and r[metric] is not None]
    b = [r[metric] for r in results.get(reference, {}).values() if r and r[metric] is not None]
    if not a or not b:
        return None
    difference, noise = statistics.mean(a) - statistics.mean(b), spread(b)
    return {"candidate": candidate, "reference": reference, "metric": metric, "difference": difference,
            "noise": noise, "within_noise": None if noise is None else abs(difference) <= noise}


def final_loss(run_result: dict) -> float | None:
    losses = [e["train/loss_epoch"] for e in run_result["epochs"].values() if "train/loss_epoch" in e]
    return losses[-1] if losses else None


def markdown(report: dict) -> str:
    lines = ["# Numerical parity of experiment=fast with fp32", "",
             f"Device: {report['device']}. {report['setting']}", "",
             "## Final validation Dice, test Dice, training time", "",
             "| config | seed | final val Dice | test Dice | final train loss | optimiser steps | train time |",
             "|---|---|---|---|---|---|---|"]
    for config, seeds in report["runs"].items():
        for seed, r in seeds.items():
            if r is None:
                lines.append(f"| {config} | {seed} | not run yet | | | | |")
                continue
            lines.append(f"| {config} | {seed} | {r['final_val_dice']:.4f} | {r['test_dice']:.4f} | "
                         f"{r['final_train_loss']:.4f} | {r['global_step']} | {r['train_s'] / 60:.1f} min |")
    lines += ["", "## Training loss per epoch (mean over seeds; range)", "",
              "| epoch | " + " | ".join(report["runs"]) + " |", "|---" * (len(report["runs"]) + 1) + "|"]
    epochs = sorted({e for seeds in report["runs"].values() for r in seeds.values() if r for e in r["epochs"]})
    for epoch in epochs:
        cells = []
        for seeds in report["runs"].values():
            values = [r["epochs"][epoch]["train/loss_epoch"] for r in seeds.values()
                      if r and "train/loss_epoch" in r["epochs"].get(epoch, {})]
            cells.append(f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})" if values else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", "",
              "Noise = the largest difference between two seeds of the reference config.", "",
              "| candidate | reference | metric | mean difference | noise | within noise |",
              "|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        noise = "n/a (one seed)" if c["noise"] is None else f"{c['noise']:.4f}"
        verdict = {True: "yes", False: "**no**", None: "n/a"}[c["within_noise"]]
        lines.append(f"| {c['candidate']} | {c['reference']} | {c['metric']} | {c['difference']:+.4f} | {noise} | "
                     f"{verdict} |")
    lines += ["", f"Written by `experiments/benchmarks/parity.py` on {time.strftime('%Y-%m-%d')}: "
              f"`{report['command']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).with_name("parity")), help="writes OUT.md and OUT.json")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples-per-volume", type=int, default=256, help="patches per volume per epoch")
    parser.add_argument("--work-dir", default="outputs/parity", help="run folders (kept: reruns skip finished runs)")
    parser.add_argument("--data-dir", help="where the phantom is (synthesised on first use; default: ./data)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not parity")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples_per_volume = 1, 8

    runs = {config: {seed: collect(train(config, seed, args)) for seed in args.seeds} for config in args.configs}
    for seeds in runs.values():
        for r in seeds.values():
            if r:
                r["final_train_loss"] = final_loss(r)
    comparisons = [c for pair in (("fast", "fast_fp32"), ("fast", "fp32"), ("fast_fp32", "fp32"))
                   for metric in ("final_val_dice", "final_train_loss", "test_dice")
                   if (c := compare(runs, *pair, metric))]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu"
    setting = (f"Small phantom (2 mm), fold 0, {args.epochs} epochs x {args.samples_per_volume} patches per "
               f"volume, seeds {', '.join(map(str, args.seeds))}; otherwise each config's own settings.")
    if args.smoke:
        setting += " **Smoke run** (tiny grid, narrow net, CPU): checks that the script works, says nothing of parity."
    report = {"device": device, "setting": setting, "runs": runs, "comparisons": comparisons,
              "command": "python experiments/benchmarks/parity.py " + " ".join(sys.argv[1:])}
    text = markdown(report)
    atomic_write_report(args.out, report, text)
    print(text)


if __name__ == "__main__":
    main()
