"""What every registration method reports: per-subject, per-organ metrics before and after, and metrics.json."""
from __future__ import annotations

import math

import numpy as np

from intermod.evaluation.metrics import folding_statistics, organ_metrics

METRICS = ("dice", "asd", "hd95")


def evaluate_subject(ct_labels: np.ndarray, mr_labels: np.ndarray, warped_labels: np.ndarray,
                     field: np.ndarray | None, labels: dict[str, int], spacing) -> dict:
    """Dice, ASD and HD95 of the CT labels against the MR labels before and after registration.

    ``field`` is the displacement (3, X, Y, Z) in voxels, or None for methods that do not give one.
    """
    before = organ_metrics(ct_labels, mr_labels, labels, spacing)
    after = organ_metrics(ct_labels, warped_labels, labels, spacing)
    organs = {organ: {f"{m}_{when}": float(values[organ][m]) for when, values in (("before", before), ("after", after))
                      for m in METRICS} for organ in labels}
    return {"organs": organs, "folding": folding_statistics(field) if field is not None else None}


def summarise(subjects: dict[str, dict], labels: dict[str, int]) -> dict:
    """Mean and std over subjects of each organ metric (NaNs, i.e. empty organs, left out and counted)."""
    summary = {}
    for organ in labels:
        row = {}
        for m in METRICS:
            for when in ("before", "after"):
                values = np.array([s["organs"][organ][f"{m}_{when}"] for s in subjects.values()], dtype=float)
                finite = values[np.isfinite(values)]
                row[f"{m}_{when}"] = {"mean": float(finite.mean()) if finite.size else math.nan,
                                      "std": float(finite.std()) if finite.size else math.nan,
                                      "n": int(finite.size)}
        summary[organ] = row
    return summary


def format_table(summary: dict) -> str:
    """A Markdown table of Dice (%) and ASD (mm) per organ, before vs after registration."""
    lines = ["| organ | Dice before (%) | Dice after (%) | ASD before (mm) | ASD after (mm) | HD95 after (mm) |",
             "|---|---|---|---|---|---|"]
    for organ, row in summary.items():
        def cell(key, scale=1.0, digits=2):
            return f"{row[key]['mean'] * scale:.{digits}f} ± {row[key]['std'] * scale:.{digits}f}"
        lines.append(f"| {organ} | {cell('dice_before', 100, 1)} | {cell('dice_after', 100, 1)} | "
                     f"{cell('asd_before')} | {cell('asd_after')} | {cell('hd95_after')} |")
    return "\n".join(lines)
