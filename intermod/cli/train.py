"""intermod-train: train one method on one fold, test it on whole volumes, write metrics.json.

    intermod-train method=dual fold=0                 # one run
    intermod-train -m method=ct,mr,dual fold=0,1,2,3,4   # a sweep
    intermod-train -m experiment=cpu method.loss.lambda_l2=0,0.01,0.1   # an ablation: one folder per value
"""
from __future__ import annotations

import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from intermod.cli import CONF_DIR
from intermod.runner import RunError, run
from intermod.runs import job_swept_values


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    start = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    try:
        swept = job_swept_values(hydra_cfg.sweep.dir, hydra_cfg.overrides.task) if multirun else {}
        result = run(cfg, hydra_cfg.runtime.output_dir, swept)
    except RunError as err:
        print(f"intermod-train: {err}", file=sys.stderr)
        if multirun:
            return None  # the run folder records the failure (failed.json); the sweep goes on
        sys.exit(2)
    print(f"intermod-train: done in {time.perf_counter() - start:.0f} s")
    return result


if __name__ == "__main__":
    main()
