"""Console scripts, one small file each. Hydra apps read their configs from the repository's conf/."""
import json
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def bf16_where_native(accelerator: str = "auto") -> str:
    """Lightning's precision for ``accelerator``: "bf16-mixed" where its device computes bfloat16 natively
    (AMX / AVX-512 BF16 CPUs, Ampere and later GPUs), else "32" (emulated bfloat16 would be slower)."""
    import torch

    from intermod.inference import native_bf16

    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if native_bf16(torch.device("cuda" if cuda else "cpu")) else "32"


def run_variant(sweep_dir: str, task_overrides) -> str:
    """The run folder's level for a multirun job's swept values ('key=value,.../'), '' when it has none."""
    from intermod.runs import job_swept_values, variant_dirname

    variant = variant_dirname(job_swept_values(sweep_dir, task_overrides or ()))
    return f"{variant}/" if variant else ""


def network_margin(target: str) -> int:
    """Voxels a valid-convolution network (its class ``target``) loses per side: what the training volumes are
    padded by, so every voxel can be the centre of a patch's output."""
    from hydra.utils import get_class

    return int(get_class(target).margin)


def if_organs(root: str, with_organs, without):
    """``with_organs`` if the dataset at ``root`` has organ labels, ``without`` if it is label-free (its
    dataset.json says ``"label_free": true``: a body mask for labels, so no Dice). A dataset.json not there
    yet is the phantom's, synthesised on first use, which has organs; one that cannot be read fails the
    run's dataset check, which names the fix."""
    from intermod.data.layout import DATASET_JSON

    try:
        label_free = json.loads((Path(root) / DATASET_JSON).read_text()).get("label_free") is True
    except (OSError, ValueError):
        label_free = False
    return without if label_free else with_organs


OmegaConf.register_new_resolver("if_organs", if_organs, replace=True)
OmegaConf.register_new_resolver("network_margin", network_margin, replace=True)
OmegaConf.register_new_resolver("bf16_where_native", bf16_where_native, replace=True)
OmegaConf.register_new_resolver("run_variant", run_variant, replace=True)
