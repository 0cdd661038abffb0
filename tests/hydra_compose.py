"""Composing intermod-train's config in a test, as Hydra does at run time."""
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from intermod.cli import CONF_DIR


def compose_train(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/intermod-config-test"  # Hydra sets it at run time
    return cfg
