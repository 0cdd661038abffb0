"""The run folder's contract: its file names, the folder and W&B identity a job gets, and whether the run
a folder already holds was made with this job's config."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import OmegaConf

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config_resolved.yaml"
CHECKPOINT_DIR = "checkpoints"

# Already in the folder's path (experiment name / method / fold-seed), so not repeated in the variant.
IDENTITY_KEYS = ("experiment", "name", "method", "fold", "seed")
# Keys that do not change a run's results: never part of its identity, never a reason to refuse a resume.
NEUTRAL_KEYS = ("force", "torch_threads", "paths", "data.root", "logger", "trainer.enable_progress_bar",
                "callbacks.model_checkpoint.dirpath", "callbacks.last_checkpoint", "callbacks.lr_monitor")
# Keys added to the config after runs were made, with the value that reproduces those runs: a stored config
# without the key was made with that value, so resuming or skipping such a run is no change of config.
ADDED_KEYS = {"model.integration_steps": 0}
MAX_VARIANT_CHARS = 64
HASH_CHARS = 8


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NEUTRAL_KEYS)


def parse_override(text: str) -> tuple[str, str]:
    """'+trainer.max_time=00:12:00' -> ('trainer.max_time', '00:12:00'); a group 'model/optimizer=adam'
    keeps its slash."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def swept_keys(sweep_dir: str | Path) -> set[str]:
    """The keys a multirun varies, from the multirun.yaml Hydra writes into the sweep folder before any job
    starts: command-line overrides with several values and the experiment's hydra.sweeper.params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return set()
    hydra_cfg = OmegaConf.load(path).hydra
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    keys = {o.key_or_group for o in overrides if o.is_sweep_override()}
    return keys | set((hydra_cfg.sweeper.get("params") or {}).keys())


def swept_values(task_overrides: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
    """This job's values of the swept ``keys`` (sorted), leaving out those already in the folder's path
    and those that do not change results."""
    keys = set(keys)
    pairs = (parse_override(o) for o in task_overrides)
    return dict(sorted((k, v) for k, v in pairs if k in keys and k not in IDENTITY_KEYS and not _neutral(k)))


def job_swept_values(sweep_dir: str | Path, task_overrides: Iterable[str]) -> dict[str, str]:
    """A multirun job's swept values: its ``task_overrides`` of the keys its sweep (``sweep_dir``) varies."""
    return swept_values(task_overrides, swept_keys(sweep_dir))


def variant_dirname(values: Mapping[str, str]) -> str:
    """A readable folder name for the swept values ('' for none), e.g. 'method.loss.lambda_l2=0.1';
    characters a path cannot hold become '_', and a long name is cut and made unique by a short hash."""
    if not values:
        return ""
    text = ",".join(f"{k}={v}" for k, v in values.items())
    safe = re.sub(r"[^\w.=,+-]", "_", text)
    if safe == text and len(text) <= MAX_VARIANT_CHARS:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:HASH_CHARS]
    return f"{safe[:MAX_VARIANT_CHARS - HASH_CHARS - 1]}-{digest}"


@dataclass(frozen=True)
class RunIdentity:
    """Who a job is: its experiment, method, fold, seed and swept values; names its folder and W&B run."""
    name: str
    method: str
    fold: int
    seed: int
    swept: dict[str, str] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return variant_dirname(self.swept)

    @property
    def label(self) -> str:
        """The W&B run name, e.g. 'ablation-dual-method.loss.lambda_l2=0.1-fold0-seed0'."""
        return "-".join(p for p in (self.name, self.method, self.variant, f"fold{self.fold}", f"seed{self.seed}") if p)

    @property
    def tags(self) -> list[str]:
        """W&B tags to filter by (W&B caps a tag at 64 characters)."""
        tags = [f"method={self.method}", f"fold={self.fold}", f"seed={self.seed}"]
        return tags + [f"{k}={v}"[:64] for k, v in self.swept.items()]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between a folder's stored resolved config and this job's, as
    'key: old -> new', neutral keys left out."""
    old, new = flatten(stored), flatten(current)
    old = {**{k: v for k, v in ADDED_KEYS.items() if k in new}, **old}  # what a run made before a key meant
    missing = object()

    def shown(values: dict, key: str) -> str:
        return repr(values[key]) if key in values else "(absent)"

    keys = sorted(k for k in old.keys() | new.keys() if not _neutral(k) and old.get(k, missing) != new.get(k, missing))
    return [f"{k}: {shown(old, k)} -> {shown(new, k)}" for k in keys]
