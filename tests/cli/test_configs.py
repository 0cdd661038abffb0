"""Every experiment, method, model, callback, trainer and logger config composes and instantiates."""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_method, instantiate
from hydra_compose import compose_train
from omegaconf import OmegaConf

from intermod.cli import CONF_DIR
from intermod.data.datamodule import patch_shape
from intermod.losses import RegistrationLoss
from intermod.networks.unet import RegistrationUNet
from intermod.refinement import Refinement
from intermod.runner import make_callbacks, register_classically, train_and_test
from intermod.runs import CHECKPOINT_DIR

GROUP = lambda group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))  # noqa: E731


@pytest.mark.parametrize("experiment", GROUP("experiment"))
def test_every_experiment_instantiates_its_data_model_callbacks_trainer_and_loggers(experiment, tmp_path):
    # Without a GPU, GPU experiments' trainers are built on the CPU: everything else as configured.
    cpu = [] if torch.cuda.is_available() else ["trainer.accelerator=cpu", "trainer.devices=1"]
    cfg = compose_train([f"experiment={experiment}", *cpu])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.name and cfg.method.name
    patch = patch_shape(OmegaConf.to_container(cfg.data)["patch_size"])
    data = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k != "synthesize"}
    datamodule = instantiate(data)
    assert datamodule.patch_size == patch and datamodule.margin == RegistrationUNet.margin  # the network's
    module = instantiate(cfg.model, loss=instantiate(cfg.method.loss), labels={"bladder": 1})
    assert [module.net.output_size(n) for n in patch] == [n - 2 * datamodule.margin for n in patch]
    assert module.configure_optimizers() is not None  # schedules resolve their step counts
    loggers = [instantiate(logger, save_dir=str(tmp_path)) for logger in (cfg.get("logger") or {}).values()]
    callbacks = make_callbacks(cfg)
    best, last = callbacks["model_checkpoint"], callbacks["last_checkpoint"]
    assert best.dirpath == last.dirpath == str(Path(cfg.paths.output_dir) / CHECKPOINT_DIR)  # where runs resume from
    assert (best.monitor, best.mode) == ("val/dice_mean", "max")  # the phantom has organs
    assert ("lr_monitor" in callbacks) == bool(loggers)  # Lightning's monitor refuses to run without a logger
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=list(callbacks.values()),
                          default_root_dir=str(tmp_path))
    assert trainer.max_epochs == cfg.trainer.max_epochs and trainer.max_steps == cfg.trainer.get("max_steps", -1)
    assert all(callback in trainer.callbacks for callback in callbacks.values())


def test_table1_is_the_paper_s_protocol_swept():
    paper, table1 = compose_train(["experiment=paper"]), compose_train(["experiment=table1"])
    for key in ("data", "model", "trainer", "method", "callbacks"):
        assert table1[key] == paper[key], key
    assert table1.callbacks.early_stopping.patience == 4 and "early_stopping" not in compose_train([]).callbacks
    assert compose_train(["experiment=table1_smoke"]).callbacks.early_stopping is None  # switched off


@pytest.mark.parametrize("label_free", [True, False])
def test_a_label_free_dataset_keeps_the_checkpoint_with_the_lowest_validation_loss(tmp_path, label_free):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"body": 1}, "label_free": label_free}))
    cfg = compose_train(["data=folder", f"data.root={tmp_path}"])
    best = make_callbacks(cfg)["model_checkpoint"]
    assert (best.monitor, best.mode) == (("val/loss", "min") if label_free else ("val/dice_mean", "max"))


@pytest.mark.parametrize("method", GROUP("method"))
def test_every_method_names_its_procedure_and_instantiates_what_that_needs(method):
    cfg = compose_train([f"method={method}"])
    procedure = get_method(cfg.method.procedure)
    assert procedure in (train_and_test, register_classically)
    if procedure is train_and_test:
        loss = instantiate(cfg.method.loss)  # a method testing another's network trains with that one's loss
        assert isinstance(loss, RegistrationLoss) and loss.method == cfg.method.get("network_from", cfg.method.name)
        assert isinstance(instantiate(cfg.method.refinement), Refinement)
    else:  # called as the runner calls it; binding checks the arguments without registering
        volume = np.zeros((8, 8, 8), np.float32)
        inspect.signature(instantiate(cfg.method.register)).bind(volume, volume, volume.astype(np.uint8),
                                                                 [1.0, 1.0, 1.0], seed=0)


@pytest.mark.parametrize("model", GROUP("model"))
def test_every_model_instantiates(model):
    cfg = compose_train([f"model={model}"])
    module = instantiate(cfg.model, loss=instantiate(cfg.method.loss), labels={"bladder": 1})
    assert module.net.output_size(cfg.data.patch_size) == cfg.data.patch_size - 40
    optimizer = module.configure_optimizers()
    assert optimizer is not None


@pytest.mark.parametrize("group", ["trainer", "logger", "data", "data/loader", "data/preprocessing", "callbacks",
                                   "paths"])
def test_every_option_of_a_group_composes(group):
    for option in GROUP(group):
        cfg = compose_train([f"{group}={option}"] + (["data.root=/somewhere"] if option == "folder" else []))
        OmegaConf.resolve(cfg)


def test_defaults_are_the_paper_s():
    cfg = compose_train([])
    assert cfg.method.loss.lambda_laplacian == 0.5 and cfg.method.loss.lambda_l2 == 0.01
    assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.optimizer.lr == 0.01
    assert cfg.model.scheduler.step_size == 4 and cfg.model.scheduler.gamma == 0.5
    assert cfg.data.batch_size == 2 and cfg.data.patch_size == 68 and cfg.data.flip_augment
    assert list(cfg.model.net.widths) == [32, 64, 128]
    assert cfg.model.integration_steps == 0  # the network predicts the displacement


@pytest.mark.parametrize("experiment", GROUP("experiment"))
def test_only_the_diffeomorphic_experiments_integrate_a_velocity(experiment):
    steps = compose_train([f"experiment={experiment}"]).model.integration_steps
    assert steps == (7 if experiment.endswith("diffeo") else 0)


def test_cpu_diffeo_is_the_cpu_recipe_with_seven_integration_steps():
    cpu, diffeo = compose_train(["experiment=cpu"]), compose_train(["experiment=cpu_diffeo"])
    for key in ("data", "trainer", "method"):
        assert diffeo[key] == cpu[key], key
    assert diffeo.model == {**cpu.model, "integration_steps": 7} and diffeo.name == "cpu_diffeo"


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_recipe_uses_bfloat16_only_where_the_device_has_it(monkeypatch, native):
    import intermod.inference

    monkeypatch.setattr(intermod.inference, "native_bf16", lambda device: native)
    cfg = compose_train(["experiment=cpu"])
    assert cfg.trainer.precision == ("bf16-mixed" if native else "32")
