"""The on-disk dataset contract that every part of intermod reads, and its checks.

A dataset is a folder with a ``dataset.json`` and one sub-folder per subject::

    ROOT/dataset.json
    ROOT/<subject>/ct.nii.gz          CT, fixed image (HU)
    ROOT/<subject>/mr.nii.gz          MR, moving image (affinely pre-aligned to the CT)
    ROOT/<subject>/ct_paired.nii.gz   the CT deformably aligned to the MR's anatomy
    ROOT/<subject>/mr_paired.nii.gz   the MR deformably aligned to the CT's anatomy
    ROOT/<subject>/ct_labels.nii.gz   organ labels on the CT
    ROOT/<subject>/mr_labels.nii.gz   organ labels on the MR
    ROOT/<subject>/gt_field.nii.gz    optional: displacement (X, Y, Z, 3) in voxels with
                                      warp(mr, gt_field) == mr_paired (phantoms only)

All files of a subject share one grid (shape, spacing, origin, orientation). ``dataset.json``
holds ``labels`` (organ name -> integer value, 0 is background), ``modalities``, ``spacing`` and
``version``; ``"label_free": true`` marks a dataset without organ labels (a body mask stands in for
the label maps), which is evaluated on image similarity only, never by Dice. Writers here are atomic:
a subject appears complete or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from intermod.io import atomic_write_json

LAYOUT_VERSION = 1
IMAGE_KEYS = ("ct", "mr", "ct_paired", "mr_paired")
LABEL_KEYS = ("ct_labels", "mr_labels")
FIELD_KEY = "gt_field"
REQUIRED_KEYS = IMAGE_KEYS + LABEL_KEYS
DATASET_JSON = "dataset.json"


def file_name(key: str) -> str:
    return f"{key}.nii.gz"


@dataclass(frozen=True)
class DatasetSpec:
    root: Path
    labels: dict[str, int]
    subjects: tuple[str, ...]
    spacing: tuple[float, float, float] | None
    meta: dict

    @property
    def label_free(self) -> bool:
        """No organ labels: the label maps hold a body mask, so Dice on them would mean nothing."""
        return bool(self.meta.get("label_free", False))

    def path(self, subject: str, key: str) -> Path:
        return self.root / subject / file_name(key)


class DatasetError(ValueError):
    """A dataset does not follow the layout; the message names the file and the fix."""


def _subject_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise DatasetError(f"{path}: missing; every dataset root needs a dataset.json "
                           f"(create one with intermod-synth, or write it as the README describes)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{path}: 'labels' must map organ names to integer values, e.g. "
                           '{"bladder": 1, "prostate": 2, "rectum": 3}')
    bad = {k: v for k, v in labels.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0}
    if bad:
        raise DatasetError(f"{path}: label values must be positive integers (0 is background); got {bad}")
    if not isinstance(meta.get("label_free", False), bool):  # "false" as a string would read as true
        raise DatasetError(f"{path}: 'label_free' must be true or false (JSON booleans, no quotes); "
                           f"got {meta['label_free']!r}")
    return meta


def load_dataset(root: str | Path) -> DatasetSpec:
    """Read ``dataset.json`` and list the subjects; does not open the images (see check_dataset)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (make one with `intermod-synth out_dir={root}`)")
    meta = read_dataset_json(root)
    subjects = tuple(meta.get("subjects") or _subject_dirs(root))
    if not subjects:
        raise DatasetError(f"{root}: no subject folders")
    spacing = tuple(float(s) for s in meta["spacing"]) if meta.get("spacing") else None
    return DatasetSpec(root, dict(meta["labels"]), subjects, spacing, meta)


# What write_dataset_json writes itself; anything else in a dataset.json is a producer's extra.
DATASET_JSON_KEYS = frozenset({"version", "labels", "modalities", "spacing", "subjects", "files"})


def write_dataset_json(root: str | Path, labels: dict[str, int], subjects: list[str],
                       spacing: tuple[float, ...], **extra) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"version": LAYOUT_VERSION, "labels": dict(labels), "modalities": {"ct": "CT", "mr": "MR"},
            "spacing": [float(s) for s in spacing], "subjects": list(subjects),
            "files": {k: file_name(k) for k in REQUIRED_KEYS + (FIELD_KEY,)}, **extra}
    path = root / DATASET_JSON
    atomic_write_json(path, meta)
    return path


def write_subject(root: str | Path, subject: str, arrays: dict[str, np.ndarray], affine: np.ndarray) -> Path:
    """Write one subject's arrays as NIfTI, all with ``affine``; a temp folder renamed at the end."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"subject {subject}: missing arrays {missing}")
    return write_volumes(root, subject, arrays, affine)


def write_volumes(root: str | Path, subject: str, arrays: dict[str, np.ndarray], affine: np.ndarray) -> Path:
    """``ROOT/<subject>/<key>.nii.gz`` for each array (labels as uint8, images as float32), written
    into a hidden folder and renamed into place: a subject appears complete or not at all."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{subject}."))
    try:
        for key, array in arrays.items():
            dtype = np.uint8 if key in LABEL_KEYS else np.float32
            nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), tmp / file_name(key))
        return replace_folder(tmp, root / subject)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(folder: Path, final: Path) -> Path:
    """Move a complete ``folder`` to ``final``, replacing what was there."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)
    return final


def _load(path: Path, problems: list[str]):
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt/truncated files
        problems.append(f"{path}: unreadable ({type(err).__name__}: {err}); re-export the file")
        return None, None
    return image, data


def check_subject(spec: DatasetSpec, subject: str) -> list[str]:
    """Every problem of one subject, each naming its file."""
    problems: list[str] = []
    folder = spec.root / subject
    if not folder.is_dir():
        return [f"{folder}: subject folder listed in dataset.json does not exist"]
    reference = None  # (path, shape, affine) of the first readable image
    allowed = set(spec.labels.values()) | {0}
    keys = REQUIRED_KEYS + ((FIELD_KEY,) if spec.path(subject, FIELD_KEY).exists() else ())
    for key in keys:
        path = spec.path(subject, key)
        if not path.exists():
            problems.append(f"{path}: missing (every subject needs {', '.join(file_name(k) for k in REQUIRED_KEYS)})")
            continue
        image, data = _load(path, problems)
        if image is None:
            continue
        expected_ndim = 4 if key == FIELD_KEY else 3
        if data.ndim != expected_ndim or (key == FIELD_KEY and data.shape[-1] != 3):
            what = "a 3-vector per voxel (X, Y, Z, 3)" if key == FIELD_KEY else "a 3D volume"
            problems.append(f"{path}: shape {data.shape} is not {what}")
            continue
        shape = data.shape[:3]
        if reference is None:
            reference = (path, shape, image.affine)
        else:
            ref_path, ref_shape, ref_affine = reference
            if shape != ref_shape:
                problems.append(f"{path}: shape {shape} differs from {ref_path.name} {ref_shape}; "
                                f"resample all files of a subject onto one grid")
            elif not np.allclose(image.affine, ref_affine, atol=1e-3):
                spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
                ref_spacing = np.linalg.norm(ref_affine[:3, :3], axis=0)
                what = ("spacing" if not np.allclose(spacing, ref_spacing, atol=1e-3) else
                        "origin" if not np.allclose(image.affine[:3, 3], ref_affine[:3, 3], atol=1e-3) else
                        "orientation")
                problems.append(f"{path}: {what} differs from {ref_path.name} (affine "
                                f"{np.round(image.affine, 3).tolist()} vs {np.round(ref_affine, 3).tolist()})")
        if key in LABEL_KEYS:
            values = np.unique(data)
            if not np.all(np.mod(values, 1) == 0):
                problems.append(f"{path}: label map holds non-integer values; labels must be integers")
                continue
            unknown = sorted(set(values.astype(int).tolist()) - allowed)
            if unknown:
                problems.append(f"{path}: label values {unknown} are not declared in dataset.json "
                                f"labels {spec.labels}")
            absent = [name for name, value in spec.labels.items() if value not in values]
            if len(values) == 1 and values[0] == 0:
                problems.append(f"{path}: label map is empty (only background)")
            elif absent:
                problems.append(f"{path}: organs {absent} are absent from the label map")
        elif not np.all(np.isfinite(data)):
            problems.append(f"{path}: {int(np.size(data) - np.isfinite(data).sum())} voxels are NaN or Inf")
    return problems


def check_dataset(root: str | Path) -> list[str]:
    """Every problem of a dataset, each naming its file; an empty list means the dataset is valid."""
    try:
        spec = load_dataset(root)
    except DatasetError as err:
        return [str(err)]
    problems = []
    if spec.spacing is not None and len(spec.spacing) != 3:
        problems.append(f"{spec.root / DATASET_JSON}: 'spacing' must have 3 values, got {list(spec.spacing)}")
    for subject in spec.subjects:
        problems.extend(check_subject(spec, subject))
    return problems
