"""What a trained checkpoint records beside its weights, so that intermod-register can rebuild the model."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import intermod
from intermod.geometry import orientation_direction
from intermod.inference import MODES as INFERENCE_MODES

# Raise it whenever a reader of the old metadata would misread the new. Format 2 adds integration_steps: a
# format-1 reader would ignore the entry and warp with the velocity as if it were the displacement, so a
# checkpoint with integration_steps > 0 is written as format 2, which such readers refuse. Without it (0
# steps, the paper's network) the metadata stays format 1, word for word what earlier versions wrote and read.
FORMAT_VERSION = 2  # the newest format this version writes
READABLE_FORMATS = (1, 2)  # format 1: integration_steps is 0
KEY = "intermod"  # the checkpoint dict's entry that holds the metadata
FIX = "register with a checkpoint written by intermod-train (a run's checkpoints/best.ckpt)"


class CheckpointError(ValueError):
    """A checkpoint whose metadata cannot be used; the message names the file, the entry and the fix."""


def _text(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError
    return value


def _network(value) -> dict:
    if not isinstance(value, Mapping) or not value.get("_target_"):
        raise ValueError
    return dict(value)


def _inference(value) -> str:
    if value not in INFERENCE_MODES:
        raise ValueError
    return value


def _spacing(value) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in value)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError
    return spacing


def _orientation(value) -> str:
    orientation_direction(value)
    return str(value)


def _increasing_pair(value) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not pair[0] < pair[1]:
        raise ValueError
    return pair


def _labels(value) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ValueError
    return {str(name): int(label) for name, label in value.items()}


def _steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError
    return value


def _patch_size(value) -> int | tuple[int, ...] | None:
    return value if value is None or isinstance(value, int) else tuple(int(n) for n in value)


# Entry -> (what it must be, its check: the normalised value, or TypeError / ValueError).
_ENTRIES = {
    "method": ("must be a non-empty string", _text),
    "net": ("must name the network class ('_target_') and its constructor arguments; classical baselines "
            "(affine, syn) hold no network to register with", _network),
    "inference": (f"must be one of {INFERENCE_MODES}", _inference),
    "spacing": ("must be 3 positive numbers (mm)", _spacing),
    "orientation": ("must be 3 axis codes, one each of L/R, P/A, S/I (e.g. 'RAS')", _orientation),
    "ct_window": ("must be two increasing numbers (HU)", _increasing_pair),
    "mr_percentiles": ("must be two increasing numbers", _increasing_pair),
    "labels": ("must map organ names to label values", _labels),
    "patch_size": ("must be an int or one int per axis", _patch_size),
    "label_free": ("must be true or false", bool),
    "integration_steps": ("must be an int >= 0 (0: the network predicts the displacement)", _steps),
    "intermod_version": ("must be a version string", str),
}


@dataclass(frozen=True)
class CheckpointMetadata:
    """The training run's choices that registration must repeat. Values are checked and normalised on
    construction (:class:`ValueError` naming the entry)."""

    method: str  # the training loss's method: dual, ct, mr or mi
    net: dict  # the network's "_target_" and every constructor argument, so the weights fit
    inference: str  # whole-volume or tiled (intermod.inference.MODES)
    spacing: tuple[float, float, float]  # mm, of the grid the network was trained on
    orientation: str  # axis codes of that grid, e.g. "RAS"
    ct_window: tuple[float, float]  # HU window of the CT normalisation (intermod.preprocessing)
    mr_percentiles: tuple[float, float]  # percentiles of the MR normalisation
    labels: dict[str, int] = field(default_factory=dict)  # organ name -> label value; none when label-free
    patch_size: int | tuple[int, ...] | None = None  # training patch size, for the record
    label_free: bool = False
    # scaling-and-squaring steps integrating the network's velocity (intermod.spatial.integrate_velocity);
    # 0: the network's output is the displacement (the paper; every format-1 checkpoint)
    integration_steps: int = 0
    intermod_version: str = intermod.__version__  # the version that wrote the checkpoint

    def __post_init__(self):
        for name, (requirement, check) in _ENTRIES.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, check(value))  # frozen: normalised once, here
            except (TypeError, ValueError):
                raise ValueError(f"'{name}' {requirement} (got {value!r})") from None

    def to_dict(self) -> dict:
        """Plain Python values (lists, not tuples), with the format version: what the checkpoint stores.
        The oldest format that holds the metadata: format 1, without ``integration_steps``, when it is 0."""
        def plain(value):
            return list(value) if isinstance(value, tuple) else value
        entries = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        if not self.integration_steps:
            del entries["integration_steps"]
            return {"format": 1, **entries}
        return {"format": FORMAT_VERSION, **entries}

    @classmethod
    def from_dict(cls, meta, source: str | Path = "checkpoint") -> CheckpointMetadata:
        """Read what :meth:`to_dict` wrote; :class:`CheckpointError` naming ``source`` (the file) when
        ``meta`` is not intermod metadata, is of another format version, or lacks or garbles an entry.
        Entries this version does not know are ignored."""
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{source}: not an intermod checkpoint (it has no '{KEY}' metadata); {FIX}")
        if meta.get("format") not in READABLE_FORMATS:
            raise CheckpointError(
                f"{source}: checkpoint from another intermod version (format {meta.get('format')!r}, written by "
                f"intermod {meta.get('intermod_version', '?')}; this is intermod {intermod.__version__}, which "
                f"reads formats {', '.join(map(str, READABLE_FORMATS))}): register with the intermod that trained "
                "it, or train again")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in meta]
        if missing:
            raise CheckpointError(f"{source}: unusable intermod checkpoint (no '{missing[0]}' in its '{KEY}' "
                                  f"metadata); {FIX}")
        try:
            return cls(**{"intermod_version": "unknown", **{k: meta[k] for k in names if k in meta}})
        except ValueError as err:
            raise CheckpointError(f"{source}: unusable intermod checkpoint ({err}); {FIX}") from None


def write_metadata(checkpoint: dict, metadata: CheckpointMetadata) -> None:
    """Store ``metadata`` in a checkpoint dict (as Lightning's ``on_save_checkpoint`` hands it)."""
    checkpoint[KEY] = metadata.to_dict()


def read_metadata(checkpoint, source: str | Path = "checkpoint") -> CheckpointMetadata:
    """The metadata of a loaded checkpoint (``torch.load``'s result); :class:`CheckpointError` as
    :meth:`CheckpointMetadata.from_dict`."""
    return CheckpointMetadata.from_dict(checkpoint.get(KEY) if isinstance(checkpoint, dict) else None, source)
