"""Sweeps: all methods through one multirun, DDP under multirun, the submitit launcher, SLURM detection."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metrics_files import subject_results
from wandb_offline import wandb_run

SMOKE = ["experiment=table1_smoke", "trainer.max_epochs=1", "data.samples_per_volume=2", "data.synthesize=null"]


def multirun(tmp_path: Path, dataset: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "intermod.cli.train", "-m", f"data.root={dataset}", f"paths.log_dir={tmp_path}",
           *SMOKE, *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_an_ablation_gets_a_folder_and_a_wandb_run_per_value_and_a_changed_config_is_refused(tmp_path, tiny_dataset):
    sweep = tmp_path / "multiruns" / "table1_smoke" / "dual"
    multirun(tmp_path, tiny_dataset, "method=dual", "fold=0", "method.loss.lambda_l2=0.01,0.1", "logger=wandb")
    folders = {value: sweep / f"method.loss.lambda_l2={value}" / "fold0-seed0" for value in ("0.01", "0.1")}
    metrics = {value: json.loads((folder / "metrics.json").read_text()) for value, folder in folders.items()}
    for value, folder in folders.items():
        assert metrics[value]["swept"] == {"method.loss.lambda_l2": value}
        run, config = wandb_run(next((folder / "wandb").glob("offline-run-*")))
        assert run.run_group == "table1_smoke" and run.display_name == f"table1_smoke-dual-method.loss.lambda_l2={value}-fold0-seed0"
        assert list(run.tags) == ["method=dual", "fold=0", "seed=0", f"method.loss.lambda_l2={value}"]
        assert config["swept"] == {"method.loss.lambda_l2": value} and config["method"]["loss"]["lambda_l2"] == float(value)
    assert subject_results(metrics["0.01"]) != subject_results(metrics["0.1"])  # two trainings, not one reused

    changed = multirun(tmp_path, tiny_dataset, "method=dual", "fold=0", "method.loss.lambda_l2=0.01,0.1", "logger=none",
                       "trainer.max_epochs=2")
    assert changed.stderr.count("holds a run made with another config (trainer.max_epochs: 1 -> 2)") == 2
    assert json.loads((folders["0.1"] / "metrics.json").read_text()) == metrics["0.1"]  # nothing lost
    replaced = multirun(tmp_path, tiny_dataset, "method=dual", "fold=0", "method.loss.lambda_l2=0.1,0.2", "logger=none",
                        "trainer.max_epochs=2", "force=true")
    assert replaced.stdout.count("from scratch") == 1  # 0.1's folder held a run; 0.2's is new
    assert json.loads((folders["0.1"] / "metrics.json").read_text())["epochs_trained"] == 2


def test_one_multirun_over_all_methods_fills_every_cell_of_the_table(tmp_path, tiny_dataset):
    from intermod.cli.table1 import main as table1

    multirun(tmp_path, tiny_dataset, "method=affine,syn,ct,mr,dual", "fold=0")
    sweep = tmp_path / "multiruns" / "table1_smoke"
    for method in ("affine", "syn", "ct", "mr", "dual"):
        metrics = json.loads((sweep / method / "fold0-seed0" / "metrics.json").read_text())
        assert metrics["method"] == method and len(metrics["subjects"]) == 2
    assert table1([str(sweep), "--out-dir", str(tmp_path / "table")]) == 0
    markdown = (tmp_path / "table" / "table1.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| DSC") or line.startswith("|  |")]
    body = markdown.split("## Paired")[0]
    assert "—" not in body and "Missing or failed" not in body
    assert len([r for r in rows if "±" in r]) >= 6  # DSC and ASD rows of three organs, every cell filled

    # Re-running the sweep skips finished jobs.
    again = multirun(tmp_path, tiny_dataset, "method=affine,dual", "fold=0")
    assert again.stdout.count("exists: skipping this run") == 2


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, tiny_dataset):
    multirun(tmp_path, tiny_dataset, "method=affine", "fold=0,7")
    sweep = tmp_path / "multiruns" / "table1_smoke" / "affine"
    assert (sweep / "fold0-seed0" / "metrics.json").exists()
    failed = json.loads((sweep / "fold7-seed0" / "failed.json").read_text())
    assert "fold must be in [0, 5)" in failed["error"]


def test_ddp_spawn_under_multirun_writes_into_the_sweep_folder(tmp_path, tiny_dataset):
    """Two CPU processes (gloo); SyncBatchNorm needs a GPU, so it is off here."""
    multirun(tmp_path, tiny_dataset, "method=dual", "fold=0", "trainer=ddp", "hydra/launcher=basic",
             "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false")
    assert [p.name for p in (tmp_path / "multiruns").iterdir()] == ["table1_smoke"]  # no stray sweep folders
    metrics = json.loads((tmp_path / "multiruns" / "table1_smoke" / "dual" / "fold0-seed0" / "metrics.json").read_text())
    assert metrics["method"] == "dual" and len(metrics["subjects"]) == 2


def test_submitit_launcher_runs_jobs(tmp_path, tiny_dataset):
    """The SLURM launcher's code path, through submitit's local executor (no cluster here)."""
    multirun(tmp_path, tiny_dataset, "method=affine", "fold=0",
             "hydra/launcher=slurm_local")
    assert (tmp_path / "multiruns" / "table1_smoke" / "affine" / "fold0-seed0" / "metrics.json").exists()


def test_lightning_takes_ranks_from_slurm(monkeypatch):
    """With trainer=slurm, a SLURM task is one rank: Lightning reads it from the environment."""
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
                       "SLURM_NODEID": "0", "SLURM_JOB_NAME": "intermod", "SLURM_JOB_ID": "42",
                       "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert trainer.global_rank == 1 and trainer.world_size == 2


def test_dual_io_tests_the_dual_job_s_network_with_refinement(tmp_path, tiny_dataset):
    """method=dual,dual_io: dual_io trains nothing, tests dual's best checkpoint, refines each test field
    (timed per subject, within the registration's seconds) and so differs from dual."""
    sweep = tmp_path / "multiruns" / "table1_smoke"
    multirun(tmp_path, tiny_dataset, "method=dual,dual_io", "fold=0", "hydra/launcher=basic")  # one after the other
    dual, refined = (json.loads((sweep / m / "fold0-seed0" / "metrics.json").read_text()) for m in ("dual", "dual_io"))
    assert refined["network_from"] == str(sweep / "dual" / "fold0-seed0" / "checkpoints" / "best.ckpt")
    assert refined["checkpoint"] == refined["network_from"] and refined["global_step"] == 0 < dual["global_step"]
    assert dual["network_from"] is None and all("refine_s" not in s for s in dual["subjects"].values())
    assert all(s["refine_s"] > 0 for s in refined["subjects"].values())
    assert all(0 < s["seconds"] for s in dual["subjects"].values())  # the network's registration time
    assert all(s["refine_s"] < s["seconds"] for s in refined["subjects"].values())  # which includes refinement
    assert subject_results(refined) != subject_results(dual)


@pytest.mark.slow  # a training like any other (covered above and in test_train.py); only the fallback is new
def test_dual_io_without_a_finished_dual_job_trains_its_own_network(tmp_path, tiny_dataset):
    own = multirun(tmp_path / "own", tiny_dataset, "method=dual_io", "fold=0")
    assert "no finished dual job" in own.stdout
    assert json.loads((tmp_path / "own" / "multiruns" / "table1_smoke" / "dual_io" / "fold0-seed0" /
                       "metrics.json").read_text())["global_step"] > 0


def test_ablation_variants_are_one_sweep_with_a_column_each(tmp_path, tiny_dataset):
    """conf/ablation/: one factor per file, swept as +ablation=...; each variant is its own job and column, and
    every variant experiment=ablation_cpu sweeps exists."""
    from omegaconf import OmegaConf

    from intermod.cli import CONF_DIR
    from intermod.cli.table1 import main as table1

    experiment = OmegaConf.load(Path(CONF_DIR) / "experiment" / "ablation_cpu.yaml")
    variants = experiment.hydra.sweeper.params["+ablation"].split(",")
    assert {p.stem for p in (Path(CONF_DIR) / "ablation").glob("*.yaml")} == set(variants)

    multirun(tmp_path, tiny_dataset, "method=dual", "fold=0", "+ablation=recipe,lncc", "logger=none")
    sweep = tmp_path / "multiruns" / "table1_smoke"
    config = {v: OmegaConf.load(sweep / "dual" / f"ablation={v}" / "fold0-seed0" / "config_resolved.yaml")
              for v in ("recipe", "lncc")}
    assert (config["recipe"].method.loss.similarity, config["lncc"].method.loss.similarity) == ("ncc", "lncc")
    assert table1([str(sweep), "--out-dir", str(tmp_path / "table"), "--reference", "dual[ablation=recipe]"]) == 0
    markdown = (tmp_path / "table" / "table1.md").read_text()
    assert "| Before | Dual, ablation=lncc | Dual, ablation=recipe | Ground truth |" in markdown
    assert "Dual, ablation=recipe vs Dual, ablation=lncc" in markdown
