"""Load a network checkpoint written by training, checked and ready for inference on a chosen device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from intermod.checkpoint import CheckpointError, read_metadata
from intermod.geometry import InputError
from intermod.inference import InferenceNetwork, resolve_precision
from intermod.networks.unet import RegistrationUNet

UNET_TARGET = "intermod.networks.unet.RegistrationUNet"


@dataclass(frozen=True)
class Model:
    """A trained network, ready for inference, and the preprocessing it was trained with (from the checkpoint)."""

    net: InferenceNetwork
    spacing: tuple[float, float, float]
    orientation: str
    inference: str
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]
    labels: dict[str, int]
    method: str
    device: torch.device
    precision: str  # "fp32" or "bf16": what the network runs in
    integration_steps: int = 0  # > 0: the network predicts a velocity, integrated into the field (checkpoint)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def select_device(device: str) -> torch.device:
    """``torch.device`` for "cpu" or "cuda[:N]"; :class:`InputError` when CUDA is asked for and absent."""
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device}: expected 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "no GPU is visible" if torch.version.cuda else "this torch build has no CUDA support"
        raise InputError(f"--device {device}: CUDA is not available ({why}, torch {torch.__version__}); "
                         "use --device cpu")
    return torch.device(device)


def load_model(path: str | Path, device: str = "cpu", precision: str = "auto") -> Model:
    """Load a network checkpoint written by :class:`intermod.module.RegistrationModule`.

    ``precision``: "fp32", "bf16" or "auto" (bf16 where the device has it natively, see
    :mod:`intermod.inference`). Refuses (:class:`InputError` naming ``path``) files that are not intermod
    checkpoints, checkpoints of another format version and runs of baseline methods, which hold no network.
    """
    path = Path(path)
    torch_device = select_device(device)
    precision = resolve_precision(precision, torch_device)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    try:
        meta = read_metadata(checkpoint, path)
    except CheckpointError as err:
        raise InputError(str(err)) from None
    target = meta.net["_target_"]
    if target != UNET_TARGET:
        raise InputError(f"{path}: network {target!r} is not supported (expected {UNET_TARGET})")
    try:
        # Every constructor argument recorded (widths, norm, ...), so the weights fit the same network.
        net = RegistrationUNet(**{k: v for k, v in meta.net.items() if k != "_target_"})
        prefix = "net."
        net.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
        network = InferenceNetwork(net, precision).to(torch_device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        missing = f"missing entry {err}" if isinstance(err, KeyError) else _first_line(err)
        raise InputError(f"{path}: unusable intermod checkpoint ({missing})") from None
    return Model(net=network, spacing=meta.spacing, orientation=meta.orientation, inference=meta.inference,
                 ct_window=meta.ct_window, mr_percentiles=meta.mr_percentiles, labels=meta.labels, method=meta.method,
                 device=torch_device, precision=precision, integration_steps=meta.integration_steps)
