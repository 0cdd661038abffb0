"""End-to-end runs of intermod-train on the tiny phantom: outputs, W&B offline, repeatability, resume."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from metrics_files import subject_results
from wandb_offline import wandb_history

from intermod.evaluation.table import IMAGE_ROW, NO_ORGANS_NOTE, build_table, collect, to_markdown

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
        assert 0 < subject["images"]["mi_before"] < math.log(32) and -1 <= subject["images"]["ncc_mr_after"] <= 1
    assert metrics["image_summary"]["ncc_mr_after"]["n"] == 2
    assert all(s["seconds"] > 0 for s in metrics["subjects"].values())  # the network's registration time
    assert {k: v["n"] for k, v in metrics["field_summary"].items()} == {"folding": 2, "sdlogj": 2, "seconds": 2}
    assert "| SDlogJ | " in result.stdout and "| Time (s) | " in result.stdout
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
                "train/loss_epoch", "val/loss", "val/dice_mean", "val/dice_prostate", "val/asd_bladder",
                "val/mi", "val/ncc_mr", "test/dice_after_bladder", "test/ncc_mr_after", "test/hd95_after_rectum",
                "test/folding", "test/sdlogj", "test/seconds"):
        assert key in history, key
    assert len(history["val/dice_mean"]) == 2  # one validation per epoch
    assert all(0 < d <= 1 for d in history["val/dice_mean"])
    organs = wandb_table(files, "test/per_subject")
    assert organs["columns"][:2] == ["subject", "organ"] and len(organs["data"]) == 2 * 3
    images = wandb_table(files, "test/per_subject_images")
    assert images["columns"] == ["subject", "mi_before", "mi_after", "ncc_mr_before", "ncc_mr_after"]
    assert sorted(row[0] for row in images["data"]) == sorted(metrics["subjects"])
    for stage, count in (("val", 2), ("test", 2)):
        images = [name for names in history[f"{stage}/registration/filenames"] for name in names]
        assert len(images) == count and all((files / name).stat().st_size > 10_000 for name in images)


def test_same_seed_same_metrics_and_rerun_is_skipped(tmp_path, tiny_dataset):
    train(tmp_path / "a", tiny_dataset, "logger=none")
    train(tmp_path / "b", tiny_dataset, "logger=none")
    first = json.loads((run_dir(tmp_path / "a") / "metrics.json").read_text())
    second = json.loads((run_dir(tmp_path / "b") / "metrics.json").read_text())
    assert subject_results(first) == subject_results(second)
    again = train(tmp_path / "a", tiny_dataset, "logger=none")
    assert "exists: skipping this run" in again.stdout
    changed = train(tmp_path / "a", tiny_dataset, "logger=none", "method.loss.lambda_l2=0.1", check=False)
    assert changed.returncode == 2 and "another config (method.loss.lambda_l2: 0.01 -> 0.1)" in changed.stderr
    # force=true trains again from scratch (not from the finished run's last.ckpt): the same numbers.
    forced = train(tmp_path / "a", tiny_dataset, "logger=none", "force=true")  # force is no change of config
    assert "from scratch" in forced.stdout and "resuming from" not in forced.stdout
    third = json.loads((run_dir(tmp_path / "a") / "metrics.json").read_text())
    assert third["resumed_from"] is None and subject_results(third) == subject_results(first)


def test_a_killed_run_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path, tiny_dataset):
    """Killed after an end-of-epoch checkpoint (3 training subjects x 2 flips x 2 patches = 6 steps an epoch,
    a checkpoint every 6 steps), resumed: same global step, same weights as a run never stopped, because
    the checkpoint also carries the random generators that draw the patches."""
    overrides = ["logger=none", "trainer.max_epochs=4", "callbacks.last_checkpoint.every_n_train_steps=6"]
    train(tmp_path / "whole", tiny_dataset, *overrides)
    cmd = [sys.executable, "-m", "intermod.cli.train", f"data.root={tiny_dataset}", f"paths.log_dir={tmp_path / 'cut'}",
           "name=t", *TINY, *overrides]
    last = run_dir(tmp_path / "cut") / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "no checkpoint was written before the kill"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 6 <= killed_at < 24 and not (run_dir(tmp_path / "cut") / "metrics.json").exists()

    resumed = train(tmp_path / "cut", tiny_dataset, *overrides)
    assert "resuming from" in resumed.stdout
    metrics = json.loads((run_dir(tmp_path / "cut") / "metrics.json").read_text())
    whole = json.loads((run_dir(tmp_path / "whole") / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("last.ckpt") and (metrics["global_step"], metrics["epochs_trained"]) == (24, 4)
    assert whole["global_step"] == metrics["global_step"]
    weights = [torch.load(run_dir(tmp_path / run) / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)["state_dict"] for run in ("whole", "cut")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6, msg=name)
    def dice(run: dict) -> dict:
        return {(s, o): v["dice_after"] for s, r in run["subjects"].items() for o, v in r["organs"].items()}

    assert dice(metrics) == pytest.approx(dice(whole))


def test_a_strategy_that_would_shard_the_data_twice_is_refused(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset, "logger=none", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.sync_batchnorm=false", "trainer.use_distributed_sampler=true", check=False)
    assert result.returncode == 2
    assert "trainer.use_distributed_sampler must be false with 2 processes" in result.stderr
    assert not (run_dir(tmp_path) / "metrics.json").exists()


def test_bad_dataset_fails_with_a_clear_message(tmp_path, tiny_dataset):
    result = train(tmp_path, tmp_path / "nowhere", "logger=none", check=False)
    assert result.returncode != 0
    assert "nowhere" in result.stderr and "not found" in result.stderr
    assert json.loads((run_dir(tmp_path) / "failed.json").read_text())["method"] == "dual"


def wandb_table(files: Path, key: str) -> dict:
    """A table the run logged under ``key``, as W&B wrote it (columns, data)."""
    folder, name = key.rsplit("/", 1)
    (path,) = [p for p in (files / "media" / "table" / folder).glob("*.table.json")
               if re.fullmatch(rf"{name}_\d+_[0-9a-f]+\.table\.json", p.name)]
    return json.loads(path.read_text())


def label_free_copy(dataset: Path, dst: Path) -> Path:
    """The dataset as a label-free import leaves it (SynthRAD2023): a body mask for labels."""
    shutil.copytree(dataset, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    meta.pop("spacing")  # as intermod-import leaves it when subjects' spacings differ
    (dst / "dataset.json").write_text(json.dumps({**meta, "labels": {"body": 1}, "label_free": True}))
    for path in dst.glob("*/*_labels.nii.gz"):
        image = nib.load(path)
        body = (nib.load(path.parent / "ct.nii.gz").get_fdata() > -500).astype(np.uint8)
        nib.save(nib.Nifti1Image(body, image.affine), path)
    return dst


def test_a_label_free_dataset_is_evaluated_on_images_and_says_there_is_no_dice(tmp_path, tiny_dataset):
    dataset = label_free_copy(tiny_dataset, tmp_path / "label_free")
    result = train(tmp_path, dataset, "logger=wandb")
    assert "no organ labels (label-free dataset)" in result.stdout and "NCC (paired MR, MR)" in result.stdout
    out = run_dir(tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == {} and metrics["summary"] == {} and metrics["label_free"] is True
    for subject in metrics["subjects"].values():
        assert subject["organs"] == {}  # no Dice of a body outline passed off as an organ's
        assert subject["images"]["ncc_mr_before"] > 0.5 and subject["images"]["mi_after"] > 0.1
    assert metrics["image_summary"]["mi_after"]["n"] == 2
    assert (out / "checkpoints" / "best.ckpt").exists()  # chosen by validation loss, there being no Dice
    # the grid intermod-register resamples to: read from the images when dataset.json gives no spacing
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["intermod"]["spacing"] == [4.0, 4.0, 4.0] and checkpoint["intermod"]["label_free"] is True
    assert metrics["spacing"] == [4.0, 4.0, 4.0]
    assert len(list((out / "figures").glob("test_*.png"))) == 2  # figures without organ contours

    run = next((out / "wandb").glob("offline-run-*"))
    history = wandb_history(run)
    assert "val/ncc_mr" in history and "test/mi_after" in history
    assert not any("dice" in key for key in history)
    assert len(wandb_table(run / "files", "test/per_subject_images")["data"]) == 2
    tables = run / "files" / "media" / "table" / "test"
    assert [p.name.startswith("per_subject_images_") for p in tables.iterdir()] == [True]

    table = build_table(collect(tmp_path / "runs"))
    assert [(m.key, rows) for m, rows in table.blocks] == [("mi", [IMAGE_ROW]), ("ncc_mr", [IMAGE_ROW]),
                                                           ("folding", ["whole field"]), ("sdlogj", ["whole field"]),
                                                           ("seconds", ["per registration"])]
    markdown = to_markdown(table)
    assert "| Dual vs Before |" in markdown  # the only comparison: with no registration
    assert NO_ORGANS_NOTE in markdown and "| DSC (%) |" not in markdown.split("## Reference")[0]
    ncc_after = np.mean([s["images"]["ncc_mr_after"] for s in metrics["subjects"].values()])
    ncc_row = next(line for line in markdown.splitlines() if line.startswith("| NCC (paired MR, MR)"))
    assert f"| **{ncc_after:.3f} ± " in ncc_row  # Dual, after the Before column


def test_the_cpu_recipe_trains_end_to_end_and_its_checkpoint_rebuilds_the_network(tmp_path, tiny_dataset):
    """experiment=cpu's path: per-axis patches from volumes held in memory, a half-resolution field,
    AdamW with warm-up and cosine decay counted in steps; registration rebuilds the same network."""
    from intermod.registration import load_model

    cmd = [sys.executable, "-m", "intermod.cli.train", "experiment=cpu", f"data.root={tiny_dataset}",
           f"paths.log_dir={tmp_path}", "name=t", "data.synthesize=null", "data.patch_size=[60,56,48]",
           "data.samples_per_volume=1", "trainer.max_steps=10", "model.scheduler.warmup_steps=2",
           "trainer.enable_progress_bar=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = run_dir(tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 10
    for subject in metrics["subjects"].values():  # the phantom's field: Table 1's Ground truth column
        truth, organs = subject["ground_truth"], subject["organs"]
        assert np.mean([truth["organs"][o]["dice_after"] for o in organs]) > np.mean(
            [organs[o]["dice_before"] for o in organs])
        assert truth["folding"]["percent_nonpositive_jacobian"] == 0.0
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["intermod"]["patch_size"] == [60, 56, 48]
    assert checkpoint["intermod"]["net"]["field_resolution"] == "half"
    # the schedule was stepped every step: warm-up done, cosine at its floor after max_steps
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 10
    model = load_model(out / "checkpoints" / "best.ckpt", precision="fp32")
    assert model.net.net.field_resolution == "half" and not hasattr(model.net.net, "dec0")
    # Unpickling what Lightning wrote must not load Lightning or TorchIO into intermod-register.
    script = ("import sys\nfrom intermod.registration import load_model\nload_model(sys.argv[1])\n"
              "print(sorted({m.split('.')[0] for m in sys.modules}\n"
              "             & {'pytorch_lightning', 'lightning', 'lightning_fabric', 'torchio'}))")
    loaded = subprocess.run([sys.executable, "-c", script, str(out / "checkpoints" / "best.ckpt")],
                            capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.splitlines()[-1] == "[]", loaded.stderr[-2000:]


def test_the_diffeomorphic_recipe_trains_and_its_checkpoint_registers_with_the_integral(tmp_path, tiny_dataset):
    """experiment=cpu_diffeo at tiny scale: the network's velocity integrated in training, validation and test,
    the steps recorded in the checkpoint (format 2) and read back by intermod-register's loader."""
    from intermod.registration import load_model

    cmd = [sys.executable, "-m", "intermod.cli.train", "experiment=cpu_diffeo", f"data.root={tiny_dataset}",
           f"paths.log_dir={tmp_path}", "name=t", "data.synthesize=null", "data.patch_size=[60,56,48]",
           "data.samples_per_volume=1", "trainer.max_steps=10", "model.scheduler.warmup_steps=2",
           "trainer.enable_progress_bar=false", "logger=none"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = run_dir(tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 10
    for subject in metrics["subjects"].values():
        assert subject["folding"]["percent_nonpositive_jacobian"] == 0.0 and subject["folding"]["min_jacobian"] > 0
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["intermod"]["format"] == 2 and checkpoint["intermod"]["integration_steps"] == 7
    assert load_model(out / "checkpoints" / "best.ckpt", precision="fp32").integration_steps == 7
