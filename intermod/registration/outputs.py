"""Write a registration's outputs and report.json into a folder, all or nothing (staged beside it, then moved)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from intermod.geometry import InputError, write_displacement_field

OUTPUT_NAMES = {"mr_warped": "mr_warped.nii.gz", "mr_labels_warped": "mr_labels_warped.nii.gz",
                "affine": "affine.mat", "field": "displacement_field.nii.gz", "report": "report.json"}


@dataclass
class RegistrationResult:
    """Outputs on the CT's own grid: warped MR (and labels), the affine, the composed field, the report."""

    ct: sitk.Image
    mr_warped: sitk.Image
    mr_labels_warped: sitk.Image | None
    affine: sitk.AffineTransform
    field: np.ndarray  # (X, Y, Z, 3) LPS mm on the CT grid: CT point x maps to MR point x + field(x)
    report: dict


def _json_safe(value):
    """NaN/inf (e.g. ASD of an absent organ) become null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out exists and is not a folder")


def write_outputs(result: RegistrationResult, out_dir: str | Path) -> dict[str, str]:
    """Write the outputs and ``report.json`` into ``out_dir``, all or nothing.

    Files are written into a temporary folder beside ``out_dir`` and moved in only when all are written,
    so a failure leaves ``out_dir`` as it was. Files of the same names already there are replaced.
    Returns output name -> path.
    """
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (unlike mkdtemp) honours the umask: the folder may become out_dir itself.
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    names = {k: v for k, v in OUTPUT_NAMES.items() if k != "mr_labels_warped" or result.mr_labels_warped is not None}
    try:
        start = time.perf_counter()
        sitk.WriteImage(result.mr_warped, str(staging / names["mr_warped"]))
        if result.mr_labels_warped is not None:
            sitk.WriteImage(result.mr_labels_warped, str(staging / names["mr_labels_warped"]))
        sitk.WriteTransform(result.affine, str(staging / names["affine"]))
        write_displacement_field(staging / names["field"], result.field, result.ct)
        timings = result.report["timings_s"]
        timings["write"] = round(time.perf_counter() - start, 4)
        timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 4)
        report = {**result.report, "outputs": {k: v for k, v in names.items() if k != "report"}}
        (staging / names["report"]).write_text(json.dumps(_json_safe(report), indent=2) + "\n")
        if out_dir.exists():
            for name in names.values():
                os.replace(staging / name, out_dir / name)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {k: str(out_dir / v) for k, v in names.items()}
