"""Learning curves: validation Dice, loss and folding against CPU seconds of training, recipes side by side.

Each recipe (a list of intermod-train overrides, in recipes.yaml) trains through the real training path
(the config's data module, LightningModule and Lightning Trainer) for a fixed budget of training seconds
on one machine, one recipe after another, so the columns compare. Every ``--eval-every`` seconds of
training the validation subjects are registered as whole volumes; evaluation time is not counted. A
callback splits every step into data (patch queue and Lightning's loop), forward + loss, backward and
optimiser, so the table shows where the time goes.

Validation subjects are never test subjects: ``data.n_val`` (default 3 here, so recipes are chosen on
more than one subject) takes them from the training pool of the fold; the test subjects are not loaded.

    python experiments/learning/learning_curve.py --recipes demo cpu --budget-min 12 \\
        --out experiments/learning/cpu_vs_demo
writes OUT.md (table), OUT.csv (every curve point), OUT.png (Dice against minutes) and OUT.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from intermod.cli import CONF_DIR
from intermod.io import atomic_write_report, atomic_write_text
from intermod.metrics import dice
from intermod.runner import ensure_dataset, make_datamodule, make_module
from intermod.spatial import warp_labels

HERE = Path(__file__).parent
PHASES = ("data", "forward", "backward", "optimizer")


class LearningCurve(pl.Callback):
    """Times every training step by phase, evaluates every ``eval_every_s`` training seconds, and stops
    the run after ``budget_s`` training seconds (evaluation excluded)."""

    def __init__(self, val_batches: list[dict], budget_s: float, eval_every_s: float):
        self.val_batches, self.budget_s, self.eval_every_s = val_batches, budget_s, eval_every_s
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.points: list[dict] = []
        self.losses: list[float] = []
        self.next_eval = 0.0
        self.mark = None  # time of the last phase boundary

    @property
    def train_s(self) -> float:
        return sum(self.seconds.values())

    def _lap(self, phase: str) -> None:
        now = time.perf_counter()
        if self.mark is not None:
            self.seconds[phase] += now - self.mark
        self.mark = now

    def on_train_start(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module)  # the curve starts at the untrained network
        self.next_eval = self.eval_every_s
        self.mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._lap("data")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._lap("forward")
        self.losses.append(float(loss.detach()))

    def on_after_backward(self, trainer, pl_module) -> None:
        self._lap("backward")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._lap("optimizer")
        done = self.train_s >= self.budget_s
        if self.train_s >= self.next_eval or done:
            self.evaluate(trainer, pl_module)
            self.next_eval += self.eval_every_s
            self.mark = time.perf_counter()  # evaluation is not training time
        if done:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.points[-1]["step"] != trainer.global_step:  # stopped by max_steps between evaluations
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        organs: dict[str, list[float]] = {}
        folding, val_loss = [], []
        with trainer.precision_plugin.forward_context():
            for batch in self.val_batches:
                out = pl_module.register_batch(batch)
                velocity = out["velocity"].float() if "velocity" in out else None  # model.integration_steps > 0
                loss, _ = pl_module.loss(out["field"].float(), batch["ct"], batch["mr"], batch["ct_paired"],
                                         batch["mr_paired"], velocity=velocity)
                result = pl_module.evaluate_batch(batch, out)
                val_loss.append(float(loss))
                folding.append(result["folding"]["percent_nonpositive_jacobian"])
                for organ, values in result["organs"].items():
                    organs.setdefault(organ, []).append(values["dice_after"])
        pl_module.train(was_training)
        point = {"train_s": self.train_s, "step": trainer.global_step, "epoch": trainer.current_epoch,
                 "train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                 "val_loss": float(np.mean(val_loss)), "folding_percent": float(np.mean(folding)),
                 "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan"),
                 **{f"dice_{organ}": float(np.mean(v)) for organ, v in organs.items()}}
        point["dice_mean"] = float(np.mean([point[f"dice_{o}"] for o in organs]))
        self.points.append(point)
        self.losses = []
        print(f"  {point['train_s']:7.1f} s  step {point['step']:5d}  loss {point['train_loss']:.4f}  val loss "
              f"{point['val_loss']:.4f}  Dice " + " / ".join(f"{100 * point[f'dice_{o}']:.1f}" for o in organs)
              + f"  folding {point['folding_percent']:.3f} %", flush=True)


def compose_recipe(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/intermod-learning-curve"
    return cfg


def ground_truth_dice(datamodule, batches: list[dict]) -> dict[str, float]:
    """Mean Dice of the CT labels and the MR labels warped by the phantom's ground-truth field."""
    scores: dict[str, list[float]] = {}
    for batch in batches:
        warped = warp_labels(batch["mr_labels"], datamodule.ground_truth_field(batch["subject_id"][0]))
        for organ, value in datamodule.labels.items():
            scores.setdefault(organ, []).append(dice(batch["ct_labels"][0, 0].numpy() == value,
                                                     warped[0, 0].numpy() == value))
    return {organ: float(np.mean(v)) for organ, v in scores.items()}


def run_recipe(name: str, overrides: list[str], budget_s: float, eval_every_s: float, threads: int) -> dict:
    cfg = compose_recipe(overrides)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(threads)
    ensure_dataset(cfg.data)
    datamodule = make_datamodule(cfg)
    val_batches = list(datamodule.val_dataloader())
    before = {organ: float(np.mean([dice(b["ct_labels"][0, 0].numpy() == v, b["mr_labels"][0, 0].numpy() == v)
                                    for b in val_batches])) for organ, v in datamodule.labels.items()}
    truth = ground_truth_dice(datamodule, val_batches)
    module = make_module(cfg, datamodule)
    loss_truth = float(np.mean([module.loss(datamodule.ground_truth_field(b["subject_id"][0]), b["ct"], b["mr"],
                                            b["ct_paired"], b["mr_paired"])[0] for b in val_batches]))
    curve = LearningCurve(val_batches, budget_s, eval_every_s)
    trainer_cfg = dict(cfg.trainer)
    trainer_cfg.pop("_target_")
    trainer_cfg.update(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       limit_val_batches=0, num_sanity_val_steps=0, callbacks=[curve],
                       default_root_dir="/tmp/intermod-learning-curve")
    trainer_cfg.setdefault("max_steps", -1)
    print(f"{name}: {' '.join(overrides)}", flush=True)
    pl.Trainer(**trainer_cfg).fit(module, datamodule=datamodule)
    steps = max(1, curve.points[-1]["step"])
    return {"name": name, "overrides": overrides, "points": curve.points, "seconds": curve.seconds,
            "steps": steps, "seconds_per_step": curve.train_s / steps, "dice_before": before, "dice_truth": truth,
            "val_loss_truth": loss_truth,
            "patch_size": list(datamodule.patch_size), "val_subjects": list(datamodule.split.val),
            "params": sum(p.numel() for p in module.parameters())}


def recovered(result: dict, organ: str, point: dict) -> float:
    """(Dice after - before) / (Dice ground truth - before): the share of the achievable gain."""
    before, truth = result["dice_before"][organ], result["dice_truth"][organ]
    return (point[f"dice_{organ}"] - before) / (truth - before)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}; Python {platform.python_version()}"


def render(results: list[dict], args, recipes: dict) -> str:
    organs = list(results[0]["dice_before"])
    lines = [f"# Learning curves: {', '.join(r['name'] for r in results)}", "",
             f"Machine: {machine()}. Budget {args.budget_min:g} min of training per recipe (evaluation not "
             f"counted), evaluated every {args.eval_every:g} s on the validation subjects "
             f"{', '.join(results[0]['val_subjects'])} of fold {args.fold} (never test subjects), run one after "
             f"another in one go. Command: `{' '.join(sys.argv)}`.", "",
             "## At the end of the budget", "",
             "Dice in %; *recovered*: (Dice after - before) / (Dice ground truth - before) per organ, the share "
             "of the gain the phantom's ground-truth field achieves; folding: % voxels with det J <= 0.", "",
             "| recipe | steps | s/step | " + " | ".join(f"{o} Dice" for o in organs) + " | "
             + " | ".join(f"{o} recovered" for o in organs) + " | best val Dice (mean) at | folding (%) |"
             + " val loss (at the ground truth) |",
             "|---|---|---|" + "---|" * (2 * len(organs) + 3)]
    for r in results:
        last = r["points"][-1]
        best = max(r["points"], key=lambda p: p["dice_mean"])
        truth = f" ({r['val_loss_truth']:.4f})" if "val_loss_truth" in r else ""
        lines.append(f"| {r['name']} | {r['steps']} | {r['seconds_per_step']:.2f} | "
                     + " | ".join(f"{100 * last[f'dice_{o}']:.1f}" for o in organs) + " | "
                     + " | ".join(f"{recovered(r, o, last):.2f}" for o in organs)
                     + f" | {100 * best['dice_mean']:.1f} ({best['train_s'] / 60:.1f} min) | "
                     f"{last['folding_percent']:.3f} | {last['val_loss']:.4f}{truth} |")
    first = results[0]
    lines += ["", "Before registration: " + " / ".join(f"{100 * first['dice_before'][o]:.1f}" for o in organs)
              + " %; ground-truth field: " + " / ".join(f"{100 * first['dice_truth'][o]:.1f}" for o in organs)
              + f" % ({' / '.join(organs)}).", "",
              "## Where the time goes (share of training seconds)", "",
              "| recipe | patch (input) | parameters | " + " | ".join(PHASES) + " | s/step |",
              "|---|---|---|" + "---|" * (len(PHASES) + 1)]
    for r in results:
        total = sum(r["seconds"].values())
        lines.append(f"| {r['name']} | {'x'.join(map(str, r['patch_size']))} | {r['params']:,} | "
                     + " | ".join(f"{100 * r['seconds'][p] / total:.0f} %" for p in PHASES)
                     + f" | {r['seconds_per_step']:.2f} |")
    lines += ["", "data: the patch queue (loading, normalising and cropping volumes) and Lightning's loop; "
              "forward: network, warps and loss; backward: gradients; optimizer: the update and the schedule.",
              "", "## Recipes", ""]
    for r in results:
        lines.append(f"- **{r['name']}**: {recipes[r['name']]['note']} (`{' '.join(r['overrides'])}`)")
    lines += ["", "## Curves", "", f"![curves]({Path(args.out).name}.png)", "",
              "| recipe | min | step | train loss | val loss | " + " | ".join(organs) + " | folding (%) |",
              "|---|---|---|---|---|" + "---|" * (len(organs) + 1)]
    for r in results:
        for p in r["points"]:
            lines.append(f"| {r['name']} | {p['train_s'] / 60:.1f} | {p['step']} | {p['train_loss']:.4f} | "
                         f"{p['val_loss']:.4f} | " + " | ".join(f"{100 * p[f'dice_{o}']:.1f}" for o in organs)
                         + f" | {p['folding_percent']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    organs = list(results[0]["dice_before"])
    fig, axes = plt.subplots(1, len(organs) + 1, figsize=(4 * (len(organs) + 1), 3.6), squeeze=False)
    for r in results:
        minutes = [p["train_s"] / 60 for p in r["points"]]
        for ax, organ in zip(axes[0], organs):
            ax.plot(minutes, [100 * p[f"dice_{organ}"] for p in r["points"]], marker=".", label=r["name"])
        axes[0, -1].plot(minutes, [p["val_loss"] for p in r["points"]], marker=".", label=r["name"])
    for ax, organ in zip(axes[0], organs):
        ax.axhline(100 * results[0]["dice_before"][organ], color="grey", ls=":", lw=1)
        ax.axhline(100 * results[0]["dice_truth"][organ], color="black", ls="--", lw=1)
        ax.set(title=f"{organ} (val Dice %)", xlabel="training minutes")
    axes[0, -1].set(title="val loss", xlabel="training minutes")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("dotted: before registration; dashed: ground-truth field", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", required=True, help="names from recipes.yaml")
    parser.add_argument("--recipes-file", default=str(HERE / "recipes.yaml"))
    parser.add_argument("--budget-min", type=float, default=12.0, help="training minutes per recipe")
    parser.add_argument("--eval-every", type=float, default=60.0, help="training seconds between evaluations")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--n-val", type=int, default=3, help="validation subjects taken from the fold's training pool")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, help="output prefix, e.g. experiments/learning/levers")
    args = parser.parse_args(argv)
    recipes = yaml.safe_load(Path(args.recipes_file).read_text())
    unknown = [r for r in args.recipes if r not in recipes]
    if unknown:
        print(f"error: {args.recipes_file} has no recipe {', '.join(unknown)}; it has {', '.join(recipes)}",
              file=sys.stderr)
        return 2
    common = [f"fold={args.fold}", f"data.n_val={args.n_val}", "logger=none", "trainer=cpu"]
    results = []
    for name in args.recipes:
        overrides = common + list(recipes[name]["overrides"])
        if "steps_per_min" in recipes[name]:  # a step-counted schedule fitted to the budget at the recipe's speed
            overrides.append(f"trainer.max_steps={int(recipes[name]['steps_per_min'] * args.budget_min)}")
        results.append(run_recipe(name, overrides, 60 * args.budget_min, args.eval_every, args.threads))
        # after every recipe, so an interrupted comparison keeps what it measured
        out = Path(args.out)
        atomic_write_report(out, {"machine": machine(), "results": results}, render(results, args, recipes))
        keys = ["train_s", "step", "epoch", "train_loss", "val_loss", "lr", "folding_percent", "dice_mean",
                *(f"dice_{o}" for o in results[0]["dice_before"])]
        atomic_write_text(out.with_suffix(".csv"), "recipe," + ",".join(keys) + "\n" + "".join(
            f"{r['name']}," + ",".join(f"{p[k]:.6g}" for k in keys) + "\n" for r in results for p in r["points"]))
        plot(results, out.with_suffix(".png"))
    print(f"wrote {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
