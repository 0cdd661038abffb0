"""Learn2Reg 2021 AbdomenMRCT (task 1): paired abdominal MR and CT with four organ labels.

Assumed layout (the challenge's documented release; verified here only against fixtures built in
that layout, not against the download)::

    SRC/imagesTr/AbdomenMRCT_XXXX_0000.nii.gz   MR of case XXXX
    SRC/imagesTr/AbdomenMRCT_XXXX_0001.nii.gz   CT of case XXXX
    SRC/labelsTr/AbdomenMRCT_XXXX_0000.nii.gz   MR labels
    SRC/labelsTr/AbdomenMRCT_XXXX_0001.nii.gz   CT labels
    SRC/AbdomenMRCT_dataset.json                optional (or SRC/dataset.json)

Only cases with both images are paired (0001-0016 in the release; the others are single-modality
and left out), and of those only cases with both label maps are imported (the others are listed as
skipped). Label names come from the dataset.json ``"labels"`` (``{"1": "liver", ...}``; background 0
dropped) and the CT/MR suffixes from its ``"modality"`` (``{"0": "MR", "1": "CT"}``) when present;
otherwise liver 1, spleen 2, right kidney 3, left kidney 4 and MR ``_0000``, CT ``_0001``. Label
values are kept as in the files (``--organs`` sets the others to background).
"""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import SimpleITK as sitk

from intermod.importers import Case, Found, ImportDataError, keep_labels, organ_name, read_nifti, select_organs

DEFAULT_LABELS = {"liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}
DEFAULT_SUFFIX = {"mr": "0000", "ct": "0001"}
JSON_NAMES = ("AbdomenMRCT_dataset.json", "dataset.json")
PATTERN = re.compile(r"^AbdomenMRCT_(\d{4})_(\d{4})\.nii\.gz$")


def find_cases(src: Path, organs: list[str] | None) -> Found:
    images, labels_dir = src / "imagesTr", src / "labelsTr"
    if not images.is_dir():
        raise ImportDataError(f"{images}: missing (expected SRC/imagesTr/AbdomenMRCT_XXXX_0000.nii.gz)")
    json_path = next((src / n for n in JSON_NAMES if (src / n).is_file()), None)
    available, suffix = _read_json(json_path) if json_path else (dict(DEFAULT_LABELS), dict(DEFAULT_SUFFIX))
    labels = select_organs(available, organs, str(json_path or src))
    files = {}
    for path in images.iterdir():
        match = PATTERN.match(path.name)
        if match:
            files.setdefault(match[1], set()).add(match[2])
    cases, skipped = [], []
    for number in sorted(files):
        if not set(suffix.values()) <= files[number]:
            continue  # a single-modality case: not a pair
        name = f"AbdomenMRCT_{number}"
        missing = [p.name for p in (labels_dir / f"{name}_{s}.nii.gz" for s in suffix.values()) if not p.is_file()]
        if missing:
            skipped.append(f"{name}: no label map {', '.join(missing)} in {labels_dir}")
            continue
        cases.append(Case(name, partial(_load, src, name, suffix, tuple(labels.values()))))
    meta = {"name": "Learn2Reg 2021 AbdomenMRCT",
            "source": {"dataset": "learn2reg-abdomenmrct", "root": str(src),
                       "dataset_json": str(json_path) if json_path else None}}
    return Found(cases, labels, meta, skipped)


def _read_json(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Organ name -> value and modality -> file suffix from the release's dataset.json."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ImportDataError(f"{path}: not valid JSON ({err})") from None
    labels = {organ_name(name): int(value) for value, name in meta.get("labels", {}).items()
              if int(value) != 0} or dict(DEFAULT_LABELS)
    modality = {str(m).strip().upper().rstrip("I"): f"{int(k):04d}" for k, m in meta.get("modality", {}).items()}
    suffix = {"mr": modality.get("MR"), "ct": modality.get("CT")}
    if None in suffix.values():
        suffix = dict(DEFAULT_SUFFIX)
    return labels, suffix


def _load(src: Path, name: str, suffix: dict[str, str], values: tuple[int, ...]) -> dict[str, sitk.Image]:
    images = {key: read_nifti(src / "imagesTr" / f"{name}_{s}.nii.gz") for key, s in suffix.items()}
    labels = {f"{key}_labels": keep_labels(read_nifti(src / "labelsTr" / f"{name}_{s}.nii.gz", labels=True), values)
              for key, s in suffix.items()}
    return {**images, **labels}
