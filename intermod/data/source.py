"""The source layout: the raw CT/MR folders that importers write and intermod-pair reads.

A source is a folder like the dataset layout of :mod:`intermod.data.layout` whose subjects hold the scans
before pairing: CT and MR may lie on different grids, each label map on its image's grid::

    ROOT/dataset.json                 labels, subjects; optionally "provided_pairs", "label_free"
    ROOT/<subject>/ct.nii.gz          CT (HU)
    ROOT/<subject>/mr.nii.gz          MR
    ROOT/<subject>/ct_labels.nii.gz   organ labels on the CT (values of dataset.json "labels", <= 255)
    ROOT/<subject>/mr_labels.nii.gz   organ labels on the MR
    ROOT/<subject>/ct_paired.nii.gz   only if dataset.json "provided_pairs" names it (on the CT grid);
    ROOT/<subject>/mr_paired.nii.gz   likewise: pairs the dataset itself provides, kept by intermod-pair

``intermod.importers`` write it; :mod:`intermod.pairing` reads it and writes the dataset layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from intermod.data.layout import (DATASET_JSON, LABEL_KEYS, DatasetError, DatasetSpec, file_name, load_dataset,
                                  write_volumes)

__all__ = ["SOURCE_KEYS", "PROVIDABLE_KEYS", "MAX_LABEL_VALUE", "Source", "read_source", "write_source_subject",
           "check_source_subject"]

SOURCE_KEYS = ("ct", "mr", "ct_labels", "mr_labels")
PROVIDABLE_KEYS = ("ct_paired", "mr_paired")
MAX_LABEL_VALUE = 255  # the layout stores label maps as uint8


@dataclass(frozen=True)
class Source(DatasetSpec):
    """A dataset to pair: dataset.json and, per subject, ``SOURCE_KEYS`` (+ provided pairs)."""

    @property
    def provided(self) -> tuple[str, ...]:
        return tuple(self.meta.get("provided_pairs", ()))


def read_source(root: str | Path) -> Source:
    """Read ``root/dataset.json`` (labels, subjects, provided pairs); raise DatasetError naming the file."""
    spec = load_dataset(root)
    source = Source(**vars(spec))
    unknown = sorted(set(source.provided) - set(PROVIDABLE_KEYS))
    if unknown:
        raise DatasetError(f"{spec.root / DATASET_JSON}: 'provided_pairs' may hold only "
                           f"{list(PROVIDABLE_KEYS)}, got {unknown}")
    if set(source.provided) == set(PROVIDABLE_KEYS):
        raise DatasetError(f"{spec.root / DATASET_JSON}: both pairs are provided; nothing to pair")
    too_large = {k: v for k, v in source.labels.items() if v > MAX_LABEL_VALUE}
    if too_large:
        raise DatasetError(f"{spec.root / DATASET_JSON}: label values must be <= {MAX_LABEL_VALUE} "
                           f"(label maps are stored as uint8), got {too_large}")
    return source


def write_source_subject(root: str | Path, subject: str, arrays: dict[str, np.ndarray], affine: np.ndarray) -> Path:
    """Write one subject of a dataset to pair (``SOURCE_KEYS``, optionally provided pairs), all with
    ``affine``, atomically: a hidden folder renamed at the end (the importers' writer)."""
    missing = [k for k in SOURCE_KEYS if k not in arrays]
    unknown = sorted(set(arrays) - set(SOURCE_KEYS + PROVIDABLE_KEYS))
    if missing or unknown:
        raise ValueError(f"subject {subject}: missing arrays {missing}, unknown arrays {unknown}")
    for key in LABEL_KEYS:
        if arrays[key].min() < 0 or arrays[key].max() > MAX_LABEL_VALUE:
            raise ValueError(f"subject {subject}: {key} values must lie in [0, {MAX_LABEL_VALUE}]")
    return write_volumes(root, subject, arrays, affine)


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-3)


def check_source_subject(source: Source, subject: str) -> list[str]:
    """Every problem of one source subject, each naming its file: missing or unreadable files, label
    maps off their image's grid, undeclared label values, provided pairs off the CT grid."""
    keys = SOURCE_KEYS + source.provided
    images, problems = {}, []
    for key in keys:
        path = source.path(subject, key)
        if not path.is_file():
            problems.append(f"{path}: missing (a subject to pair needs "
                            f"{', '.join(file_name(k) for k in keys)})")
            continue
        try:
            images[key] = nib.load(str(path))
        except Exception as err:  # nibabel raises many types for corrupt files
            problems.append(f"{path}: unreadable ({type(err).__name__}: {err})")
            continue
        if len(images[key].shape) != 3:
            problems.append(f"{path}: shape {images[key].shape} is not a 3D volume")
            images.pop(key)
    grids = [("ct_labels", "ct"), ("mr_labels", "mr")] + [(key, "ct") for key in source.provided]
    for key, reference in grids:
        if key in images and reference in images and not _same_grid(images[key], images[reference]):
            problems.append(f"{source.path(subject, key)}: not on the grid of {file_name(reference)} "
                            f"(shape and affine must match)")
    allowed = set(source.labels.values()) | {0}
    for key in ("ct_labels", "mr_labels"):
        if key in images:
            values = np.unique(np.asanyarray(images[key].dataobj))
            unknown = sorted(set(values.tolist()) - allowed)
            if unknown:
                problems.append(f"{source.path(subject, key)}: label values {unknown} are not declared in "
                                f"dataset.json labels {source.labels}")
    return problems
