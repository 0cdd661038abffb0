"""Importers: public CT/MR datasets -> the source layout of ``intermod-pair``.

``import_dataset(dataset, src, dst)`` writes, per subject, ``ct``, ``mr``, ``ct_labels`` and
``mr_labels`` (and ``ct_paired`` where the dataset provides one) as NIfTI on one grid: the CT's, or
with ``spacing`` a grid of that spacing covering the CT (same orientation, same centre). Other images
are resampled onto it in scanner coordinates (linear; nearest neighbour for labels; outside a
scan: the CT's minimum, MR 0, label 0). ``dataset.json`` carries the organ names and values, where the
data came from, and:

* ``"provided_pairs"``: pairs the dataset itself provides (the Gold Atlas' deformed CT), which
  ``intermod-pair`` keeps;
* ``"label_free": true`` for datasets without organ labels (SynthRAD2023). Our layout needs label
  maps, so their body mask stands in: ``"labels": {"body": 1}``, the same map as ``ct_labels`` and
  ``mr_labels``. ``intermod-pair`` then pairs on images only and reports image measures instead of
  the Dice gate, and training and ``intermod-table1`` report image similarity instead of Dice (which
  would measure body outlines, not organs).

The output is the input of ``intermod-pair``: it lacks ``mr_paired`` (and ``ct_paired`` unless
provided), so ``intermod-check-data`` passes only on what ``intermod-pair`` writes from it.

Each dataset module has ``find_cases(src, organs) -> Found`` (cheap: headers only) and documents the
folder layout it assumes. Subjects already imported are kept unless ``force`` or the dataset, organs or
spacing differ from the previous import's (dataset.json ``"import"``).
"""
from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from intermod.data.layout import DATASET_JSON, LABEL_KEYS, file_name, write_dataset_json
from intermod.data.source import MAX_LABEL_VALUE, SOURCE_KEYS, write_source_subject
from intermod.geometry import ras_affine, reference_grid

DATASETS = {"goldatlas": "intermod.importers.goldatlas",
            "synthrad2023": "intermod.importers.synthrad",
            "learn2reg-abdomenmrct": "intermod.importers.learn2reg"}


class ImportDataError(ValueError):
    """Source data an importer cannot use; the message names the file or folder and the fix."""


@dataclass
class Case:
    """One subject found in the source: its name and how to load its images (SimpleITK, LPS).

    ``load()`` returns ``ct``, ``mr``, ``ct_labels``, ``mr_labels`` (integer images, values of
    ``Found.labels``) and optionally ``ct_paired``, each on any grid.
    """

    name: str
    load: Callable[[], dict[str, sitk.Image]]


@dataclass
class Found:
    """What an importer found in the source folder."""

    cases: list[Case]
    labels: dict[str, int]  # organ name -> value in the label images load() returns
    meta: dict = field(default_factory=dict)  # dataset.json extras (name, source, label_free, ...)
    skipped: list[str] = field(default_factory=list)  # one line per source case left out, and why


def import_dataset(dataset: str, src: str | Path, dst: str | Path, organs: Sequence[str] | None = None,
                   spacing: Sequence[float] | None = None, force: bool = False,
                   log: Callable[[str], None] = print) -> Found:
    """Import ``src`` (layout of ``dataset``, see DATASETS) into ``dst``; return what was found."""
    if dataset not in DATASETS:
        raise ImportDataError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ImportDataError(f"{src}: source folder not found")
    if dst.resolve() == src.resolve():
        raise ImportDataError(f"{dst}: the output folder must differ from the source folder")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ImportDataError(f"spacing must be 3 positive values in mm, got {list(spacing)}")
    wanted = [organ_name(o) for o in organs] if organs else None
    found = importlib.import_module(DATASETS[dataset]).find_cases(src, wanted)
    if not found.cases:
        raise ImportDataError(f"{src}: no subject found for {dataset} (see `intermod-import --help` for the layout)")
    for line in found.skipped:
        log(f"skipped {line}")
    settings = {"dataset": dataset, "organs": wanted, "spacing": list(spacing) if spacing else None}
    if (dst / DATASET_JSON).is_file() and json.loads((dst / DATASET_JSON).read_text()).get("import") != settings:
        force = True  # subjects imported with other organs or spacing would not match this dataset.json
    spacings = []
    for index, case in enumerate(found.cases, 1):
        done = all((dst / case.name / file_name(k)).is_file() for k in SOURCE_KEYS)
        if force or not done:
            arrays, affine = on_reference_grid(case.load(), spacing)
            _check_subject(case.name, arrays, found.labels)
            write_source_subject(dst, case.name, arrays, affine)
        spacings.append(tuple(np.round(nib.load(str(dst / case.name / file_name("ct"))).header.get_zooms(), 4)))
        log(f"[{index}/{len(found.cases)}] {case.name}: {'imported' if force or not done else 'kept'}")
    common = spacings[0] if len(set(spacings)) == 1 else ()  # dataset.json spacing only when shared
    write_dataset_json(dst, found.labels, [c.name for c in found.cases], common, **found.meta, **{"import": settings})
    return found


def _check_subject(name: str, arrays: dict[str, np.ndarray], labels: dict[str, int]) -> None:
    """Refuse what the pairing step or the layout would reject later, naming the subject."""
    for key in ("ct", "mr"):
        if arrays[key].min() == arrays[key].max():
            raise ImportDataError(f"subject {name}: {key} is constant on the CT grid (does the {key} overlap "
                                  f"the CT in scanner coordinates?)")
    for key in LABEL_KEYS:
        absent = [organ for organ, value in labels.items() if not (arrays[key] == value).any()]
        if absent:
            raise ImportDataError(f"subject {name}: organs {absent} are absent from {key} on the CT grid; "
                                  f"choose the organs with --organs")


# --------------------------------------------------------------------------------------------------
# Helpers shared by the dataset modules

def organ_name(text: str) -> str:
    """A label name for dataset.json: 'Right Kidney' -> 'right_kidney'."""
    return re.sub(r"[^0-9a-z]+", "_", str(text).strip().lower()).strip("_")


def select_organs(available: dict[str, int], organs: Sequence[str] | None, where: str) -> dict[str, int]:
    """``available`` (name -> value) restricted to ``organs`` (all when None), in that order."""
    if organs is None:
        return dict(available)
    missing = [o for o in organs if o not in available]
    if missing:
        raise ImportDataError(f"{where}: organs {missing} not found; available: {sorted(available)}")
    return {o: available[o] for o in organs}


def keep_labels(image: sitk.Image, values: Sequence[int]) -> sitk.Image:
    """An integer label image with every value outside ``values`` set to background."""
    array = sitk.GetArrayFromImage(image)
    kept = sitk.GetImageFromArray(np.where(np.isin(array, list(values)), array, 0).astype(np.uint16))
    kept.CopyInformation(image)
    return kept


def read_nifti(path: Path, labels: bool = False) -> sitk.Image:
    """A 3D NIfTI as a SimpleITK image (float32, or uint16 for labels), errors naming the file."""
    if not path.is_file():
        raise ImportDataError(f"{path}: missing")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = [line for line in str(err).splitlines() if line.strip()][-1].strip()
        raise ImportDataError(f"{path}: unreadable ({reason})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImportDataError(f"{path}: expected a 3D scalar image, got {image.GetDimension()}D with "
                              f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    if labels:
        array = sitk.GetArrayViewFromImage(image)
        if array.min() < 0 or array.max() > MAX_LABEL_VALUE or not np.array_equal(array, np.round(array)):
            raise ImportDataError(f"{path}: a label map must hold whole numbers in [0, {MAX_LABEL_VALUE}]")
        return sitk.Cast(image, sitk.sitkUInt16)
    return sitk.Cast(image, sitk.sitkFloat32)


def on_reference_grid(images: dict[str, sitk.Image], spacing: Sequence[float] | None
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All images resampled onto the reference grid (scanner coordinates) as (X, Y, Z) arrays, and
    the grid's RAS affine (nibabel's convention)."""
    # the CT's own grid, or one of ``spacing`` mm covering its box with its direction and centre
    grid = images["ct"] if spacing is None else reference_grid(images["ct"], spacing)
    ct_air = float(sitk.GetArrayViewFromImage(images["ct"]).min())
    arrays = {}
    for key, image in images.items():
        labels = key in LABEL_KEYS
        default = 0.0 if labels or key.startswith("mr") else ct_air
        interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
        resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, image.GetPixelID())
        arrays[key] = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    return arrays, ras_affine(grid)
