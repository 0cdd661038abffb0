"""The run folder's contract: swept values, folder names, W&B identity, config differences."""
from omegaconf import OmegaConf

from intermod.runs import RunIdentity, config_differences, swept_keys, swept_values, variant_dirname


def test_the_swept_keys_come_from_the_command_line_and_the_experiments_sweeper(tmp_path):
    OmegaConf.save({"hydra": {"overrides": {"task": ["experiment=cpu", "method.loss.lambda_l2=0,0.01",
                                                     "trainer.max_steps=10", "fold=range(2)"]},
                              "sweeper": {"params": {"method": "affine,dual"}}}}, tmp_path / "multirun.yaml")
    assert swept_keys(tmp_path) == {"method.loss.lambda_l2", "fold", "method"}
    assert swept_keys(tmp_path / "absent") == set()


def test_a_jobs_swept_values_leave_out_its_path_and_what_does_not_change_results():
    task = ["experiment=cpu", "method=dual", "fold=1", "method.loss.lambda_l2=0.1", "data.root=/x", "force=true",
            "model/optimizer=adamw"]
    keys = {"method", "fold", "method.loss.lambda_l2", "data.root", "force", "model/optimizer"}
    assert swept_values(task, keys) == {"method.loss.lambda_l2": "0.1", "model/optimizer": "adamw"}


def test_folder_names_are_readable_when_short_and_unique_when_cut():
    assert variant_dirname({}) == ""
    assert variant_dirname({"method.loss.lambda_l2": "0.1"}) == "method.loss.lambda_l2=0.1"
    group = variant_dirname({"model/optimizer": "adamw"})
    assert "/" not in group and group.startswith("model_optimizer=adamw-") and len(group) == 22 + 8
    long_a = variant_dirname({"data.patch_size": "[84,84,60]", "method.loss.lambda_laplacian": "0.25"})
    long_b = variant_dirname({"data.patch_size": "[84,84,60]", "method.loss.lambda_laplacian": "0.5"})
    assert len(long_a) == len(long_b) == 64 and long_a != long_b and "[" not in long_a


def test_the_wandb_identity_names_groups_and_tags_by_the_swept_values():
    identity = RunIdentity("ablation", "dual", 2, 0, {"method.loss.lambda_l2": "0.1"})
    assert identity.label == "ablation-dual-method.loss.lambda_l2=0.1-fold2-seed0"
    assert identity.tags == ["method=dual", "fold=2", "seed=0", "method.loss.lambda_l2=0.1"]
    assert RunIdentity("table1", "syn", 0, 0).label == "table1-syn-fold0-seed0"


def test_config_differences_name_each_changed_key_and_ignore_neutral_ones():
    stored = {"trainer": {"max_steps": 100, "precision": "32"}, "force": False, "paths": {"log_dir": "a"},
              "method": {"loss": {"lambda_l2": 0.01}}}
    current = {"trainer": {"max_steps": 200, "precision": "32"}, "force": True, "paths": {"log_dir": "b"},
               "method": {"loss": {"lambda_l2": 0.01, "lambda_x": 1}}}
    assert config_differences(stored, current) == ["method.loss.lambda_x: (absent) -> 1",
                                                   "trainer.max_steps: 100 -> 200"]
    assert config_differences(stored, stored) == []


def test_where_and_how_often_checkpoints_are_written_is_neutral_but_which_one_is_tested_is_not():
    stored = {"callbacks": {"model_checkpoint": {"dirpath": "/a/checkpoints", "monitor": "val/dice_mean"},
                            "last_checkpoint": {"every_n_train_steps": 50}, "lr_monitor": None,
                            "early_stopping": {"patience": 4}}}
    current = {"callbacks": {"model_checkpoint": {"dirpath": "/b/checkpoints", "monitor": "val/loss"},
                             "last_checkpoint": {"every_n_train_steps": 6}, "lr_monitor": {"logging_interval": "epoch"},
                             "early_stopping": {"patience": 8}}}
    assert config_differences(stored, current) == ["callbacks.early_stopping.patience: 4 -> 8",
                                                   "callbacks.model_checkpoint.monitor: 'val/dice_mean' -> 'val/loss'"]


def test_a_key_added_after_a_run_was_made_reads_as_the_value_that_made_it():
    """model.integration_steps came with the diffeomorphic option: a config stored before it has no such key
    and was made with 0 steps, so resuming or skipping that run is no change of config."""
    stored = {"model": {"net": {"widths": [8, 16, 32]}}, "method": {"name": "dual"}}
    current = {"model": {"net": {"widths": [8, 16, 32]}, "integration_steps": 0}, "method": {"name": "dual"}}
    assert config_differences(stored, current) == []
    current["model"]["integration_steps"] = 7
    assert config_differences(stored, current) == ["model.integration_steps: 0 -> 7"]
