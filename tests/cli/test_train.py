"""End-to-end runs of intermod-train on the tiny phantom: outputs, W&B offline, repeatability, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb_offline import wandb_history

TINY = ["model=unet_small", "model/optimizer=adam", "data.patch_size=44", "data.samples_per_volume=2", "data.queue_length=8",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "data.synthesize=null"]


def train(tmp_path: Path, dataset: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "intermod.cli.train", f"data.root={dataset}", f"paths.log_dir={tmp_path}",
           "name=t", *TINY, *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_dir(tmp_path: Path, method="dual", fold=0, seed=0) -> Path:
    return tmp_path / "runs" / "t" / method / f"fold{fold}-seed{seed}"


def test_a_run_writes_metrics_config_checkpoints_and_wandb(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset, "logger=wandb")
    assert "wandb sync" in result.stdout  # the user is told how to upload the offline run
    out = run_dir(tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["method"], metrics["fold"], metrics["seed"]) == ("dual", 0, 0)
    assert sorted(metrics["subjects"]) == sorted(metrics["split"]["test"]) and len(metrics["subjects"]) == 2
    for subject in metrics["subjects"].values():
        assert set(subject["organs"]) == {"bladder", "prostate", "rectum"}
        organ = subject["organs"]["prostate"]
        assert {"dice_before", "dice_after", "asd_before", "asd_after", "hd95_before", "hd95_after"} <= set(organ)
        assert 0 < organ["dice_before"] <= 1 and organ["asd_after"] >= 0
        assert subject["folding"]["percent_nonpositive_jacobian"] >= 0
    assert (out / "config_resolved.yaml").exists() and (out / ".hydra" / "config.yaml").exists()
    assert (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" / "last.ckpt").exists()
    assert sorted(p.name for p in (out / "figures").glob("test_*.png")) == sorted(
        f"test_{s}.png" for s in metrics["split"]["test"])

    # W&B ran offline and wrote the run: config, losses and their components, validation metrics, images.
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    history = wandb_history(runs[0])
    for key in ("train/loss_step", "train/sim_ct_step", "train/sim_mr_step", "train/laplacian_step", "train/l2_step",
                "train/loss_epoch", "val/loss", "val/dice_mean", "val/dice_prostate", "val/asd_bladder"):
        assert key in history, key
    assert len(history["val/dice_mean"]) == 2  # one validation per epoch
    assert all(0 < d <= 1 for d in history["val/dice_mean"])
    for stage, count in (("val", 2), ("test", 2)):
        images = [name for names in history[f"{stage}/registration/filenames"] for name in names]
        assert len(images) == count and all((files / name).stat().st_size > 10_000 for name in images)


def test_same_seed_same_metrics_and_rerun_is_skipped(tmp_path, tiny_dataset):
    train(tmp_path / "a", tiny_dataset, "logger=none")
    train(tmp_path / "b", tiny_dataset, "logger=none")
    first = json.loads((run_dir(tmp_path / "a") / "metrics.json").read_text())
    second = json.loads((run_dir(tmp_path / "b") / "metrics.json").read_text())
    assert first["subjects"] == second["subjects"]
    again = train(tmp_path / "a", tiny_dataset, "logger=none")
    assert "exists: skipping this run" in again.stdout
    # force=true trains again from scratch (not from the finished run's last.ckpt): the same numbers.
    forced = train(tmp_path / "a", tiny_dataset, "logger=none", "force=true")
    assert "from scratch" in forced.stdout and "resuming from" not in forced.stdout
    third = json.loads((run_dir(tmp_path / "a") / "metrics.json").read_text())
    assert third["resumed_from"] is None and third["subjects"] == first["subjects"]


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_dataset):
    cmd = [sys.executable, "-m", "intermod.cli.train", f"data.root={tiny_dataset}", f"paths.log_dir={tmp_path}",
           "name=t", *TINY, "logger=none", "trainer.max_epochs=6", "ckpt_every_n_steps=2"]
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "no checkpoint was written before the kill"
    assert not (run_dir(tmp_path) / "metrics.json").exists()

    resumed = train(tmp_path, tiny_dataset, "logger=none", "trainer.max_epochs=6", "ckpt_every_n_steps=2")
    assert "resuming from" in resumed.stdout
    metrics = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["epochs_trained"] == 6


def test_bad_dataset_fails_with_a_clear_message(tmp_path, tiny_dataset):
    result = train(tmp_path, tmp_path / "nowhere", "logger=none", check=False)
    assert result.returncode != 0
    assert "nowhere" in result.stderr and "not found" in result.stderr
    assert json.loads((run_dir(tmp_path) / "failed.json").read_text())["method"] == "dual"
