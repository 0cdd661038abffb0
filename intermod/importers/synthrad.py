"""SynthRAD2023 task 1, pelvis (Thummerer et al., Med Phys 2023): MR and CT without organ labels.

Assumed layout (the challenge's documented release; verified here only against fixtures built in
that layout, not against the download)::

    SRC/Task1/pelvis/<ID>/mr.nii.gz     T1-weighted gradient-echo MR (moving)
    SRC/Task1/pelvis/<ID>/ct.nii.gz     CT in HU (fixed), rigidly registered to the MR
    SRC/Task1/pelvis/<ID>/mask.nii.gz   body outline (non-zero inside)

``SRC`` may also be the ``Task1/pelvis`` folder itself; folders without ``ct.nii.gz`` (e.g.
``overview``) are ignored. The release puts MR, CT and mask on one grid; any other grid is resampled
onto the CT's. No organ labels: the mask stands in (``"labels": {"body": 1}``, the same map for CT and
MR) and dataset.json says ``"label_free": true``, so ``intermod-pair`` pairs on images only (no
label refinement, no Dice gate) and runs on it are evaluated by image similarity, not Dice.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import SimpleITK as sitk

from intermod.importers import Case, Found, ImportDataError, read_nifti

LABELS = {"body": 1}
FILES = ("ct", "mr", "mask")


def find_cases(src: Path, organs: list[str] | None) -> Found:
    if organs:
        raise ImportDataError("synthrad2023 has no organ labels (only a body mask): --organs does not apply")
    root = src / "Task1" / "pelvis" if (src / "Task1" / "pelvis").is_dir() else src
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "ct.nii.gz").is_file())
    if not folders:
        raise ImportDataError(f"{root}: no case folder with ct.nii.gz, mr.nii.gz and mask.nii.gz "
                              "(expected SRC/Task1/pelvis/<ID>/)")
    meta = {"name": "SynthRAD2023 task 1 pelvis", "source": {"dataset": "synthrad2023", "root": str(root)},
            "label_free": True,
            "label_note": "no organ labels: the body mask stands in for ct_labels and mr_labels"}
    return Found([Case(p.name, partial(_load, p)) for p in folders], dict(LABELS), meta)


def _load(folder: Path) -> dict[str, sitk.Image]:
    ct, mr, mask = (read_nifti(folder / f"{name}.nii.gz", labels=name == "mask") for name in FILES)
    body = sitk.Cast(mask > 0, sitk.sitkUInt16)
    return {"ct": ct, "mr": mr, "ct_labels": body, "mr_labels": body}
