"""What every registration method reports: per-subject metrics before and after, and metrics.json.

Organ metrics (Dice, ASD, HD95) need organ labels; image similarity needs none and is reported for
every dataset, so a label-free one (``"label_free": true`` in dataset.json) is evaluated by it alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from intermod.metrics import folding_statistics, histogram_mutual_information, ncc, organ_metrics


@dataclass(frozen=True)
class Metric:
    """One block of rows: the metrics.json key, its row label, scale to display units, decimals, best, and
    for a field or time metric where it is in one subject's results."""
    key: str
    label: str
    unit: str
    scale: float
    digits: int
    higher_is_better: bool
    path: tuple[str, ...] = ()


# Organ metrics (each row label carries its unit): what metrics.organ_metrics computes, by its keys.
METRICS = (Metric("dice", "DSC (%)", "%", 100.0, 1, True), Metric("asd", "ASD (mm)", "mm", 1.0, 2, False),
           Metric("hd95", "HD95 (mm)", "mm", 1.0, 2, False))
# Image similarity, before and after registration: all a label-free dataset has.
IMAGE_METRICS = (Metric("mi", "MI (CT, MR)", "nats", 1.0, 3, True),
                 Metric("ncc_mr", "NCC (paired MR, MR)", "", 1.0, 3, True))
WHEN = ("before", "after")
NO_ORGANS = "no organ labels (label-free dataset): Dice, ASD and HD95 are not computed"
# Every table's ± (this per-run one and Table 1) is the sample std, and each says so.
SPREAD = "sample std (ddof=1)"


def image_similarity(ct: np.ndarray, mr: np.ndarray, mr_warped: np.ndarray, mr_paired: np.ndarray) -> dict:
    """Before and after registration: MI of the CT and the MR (what a user without pairs can measure)
    and NCC of the paired MR and the MR (the MR term of the paper's loss, Eq. 2)."""
    return {"mi_before": histogram_mutual_information(ct, mr), "mi_after": histogram_mutual_information(ct, mr_warped),
            "ncc_mr_before": ncc(mr_paired, mr), "ncc_mr_after": ncc(mr_paired, mr_warped)}


def subject_volumes(batch: dict, registered: dict) -> dict[str, np.ndarray]:
    """The (X, Y, Z) arrays :func:`evaluate_subject` reads, from a one-subject whole-volume batch
    (tensors (1, 1, X, Y, Z)) and its registration (``mr_warped``, ``mr_labels_warped``)."""
    def array(tensor) -> np.ndarray:
        return tensor[0, 0].float().cpu().numpy()
    volumes = {key: array(batch[key]) for key in ("ct", "mr", "mr_paired", "ct_labels", "mr_labels")}
    volumes.update({key: array(registered[key]) for key in ("mr_warped", "mr_labels_warped")})
    return volumes


def evaluate_subject(volumes: dict[str, np.ndarray], field: np.ndarray | None, labels: dict[str, int],
                     spacing) -> dict:
    """Organ metrics of the CT labels against the MR labels (none when ``labels`` is empty), image
    similarity, and folding of ``field``, before and after registration.

    ``volumes``: (X, Y, Z) arrays ``ct``, ``mr``, ``mr_paired``, ``mr_warped``, ``ct_labels``,
    ``mr_labels``, ``mr_labels_warped`` (see :func:`subject_volumes`). ``field``: displacement
    (3, X, Y, Z) in voxels, or None for methods that do not give one.
    """
    before = organ_metrics(volumes["ct_labels"], volumes["mr_labels"], labels, spacing)
    after = organ_metrics(volumes["ct_labels"], volumes["mr_labels_warped"], labels, spacing)
    organs = {organ: {f"{m.key}_{when}": float(values[organ][m.key])
                      for when, values in (("before", before), ("after", after)) for m in METRICS} for organ in labels}
    images = image_similarity(volumes["ct"], volumes["mr"], volumes["mr_warped"], volumes["mr_paired"])
    return {"organs": organs, "images": images,
            "folding": folding_statistics(field) if field is not None else None}


def sample_statistics(values) -> dict:
    """Mean and sample std (ddof=1; NaN for fewer than two) of the finite values (NaNs, i.e. empty
    organs, left out), and how many there were: the statistics of every table's cells."""
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    return {"mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan, "n": int(finite.size)}


def summarise(subjects: dict[str, dict], labels: dict[str, int]) -> dict:
    """Per organ, mean and std over subjects of each organ metric."""
    return {organ: {f"{m.key}_{when}": sample_statistics([s["organs"][organ][f"{m.key}_{when}"]
                                                          for s in subjects.values()])
                    for m in METRICS for when in WHEN} for organ in labels}


def summarise_images(subjects: dict[str, dict]) -> dict:
    """Mean and std over subjects of each image similarity, before and after."""
    return {f"{m.key}_{when}": sample_statistics([s["images"][f"{m.key}_{when}"] for s in subjects.values()])
            for m in IMAGE_METRICS for when in WHEN}


# Learn2Reg's field and time metrics after registration. Regularity of the field: % voxels whose Jacobian
# determinant is <= 0, and the std of log det J (SDlogJ); the identity has 0 for both. Seconds of one
# registration: the network and any refinement, or the classical method's own time.
FOLDING = Metric("folding", "Folding (% det J <= 0)", "%", 1.0, 3, False, ("folding", "percent_nonpositive_jacobian"))
SDLOGJ = Metric("sdlogj", "SDlogJ", "", 1.0, 3, False, ("folding", "std_log_jacobian"))
FIELD_METRICS = (FOLDING, SDLOGJ)
SECONDS = Metric("seconds", "Time (s)", "s", 1.0, 1, False, ("seconds",))
SUMMARY_FIELD_METRICS = (*FIELD_METRICS, SECONDS)  # a run's field_summary and its table's "field and time" rows


MISSING = object()


def result_value(result: dict, path: tuple[str, ...]):
    """The value at ``path`` in one subject's results (JSON null, how some writers store NaN, as NaN), or
    MISSING where any part is absent (a method without a field has no folding; older runs no seconds)."""
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return MISSING
        result = result[key]
    return math.nan if result is None else result


def summarise_field(subjects: dict[str, dict]) -> dict:
    """Mean and std over subjects of folding, SDlogJ and seconds per registration, each where every
    subject has it."""
    return {m.key: sample_statistics([result_value(s, m.path) for s in subjects.values()])
            for m in SUMMARY_FIELD_METRICS
            if subjects and all(result_value(s, m.path) is not MISSING for s in subjects.values())}


def format_table(summary: dict, image_summary: dict | None = None, field_summary: dict | None = None) -> str:
    """Markdown: Dice (%) and ASD (mm) per organ before vs after registration (or why there are none),
    then the image similarity, folding, SDlogJ and time when given; a footer says what ± is."""
    def cell(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
        std = row[key]["std"] * scale
        return f"{row[key]['mean'] * scale:.{digits}f} ± {f'{std:.{digits}f}' if math.isfinite(std) else 'n/a'}"

    if summary:
        lines = ["| organ | Dice before (%) | Dice after (%) | ASD before (mm) | ASD after (mm) | HD95 after (mm) |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {organ} | {cell(row, 'dice_before', 100, 1)} | {cell(row, 'dice_after', 100, 1)} | "
                  f"{cell(row, 'asd_before')} | {cell(row, 'asd_after')} | {cell(row, 'hd95_after')} |"
                  for organ, row in summary.items()]
    else:
        lines = [f"({NO_ORGANS})"]
    if image_summary:
        lines += ["", "| image similarity | before | after |", "|---|---|---|"]
        lines += [f"| {m.label}{f', {m.unit}' if m.unit else ''} | "
                  f"{cell(image_summary, f'{m.key}_before', m.scale, m.digits)} | "
                  f"{cell(image_summary, f'{m.key}_after', m.scale, m.digits)} |" for m in IMAGE_METRICS]
    if field_summary:
        lines += ["", "| field and time | after |", "|---|---|"]
        lines += [f"| {m.label} | {cell(field_summary, m.key, m.scale, m.digits)} |"
                  for m in SUMMARY_FIELD_METRICS if m.key in field_summary]
    if summary or image_summary or field_summary:
        lines += ["", f"Each cell: mean ± {SPREAD} over the test subjects (n/a for a single subject)."]
    return "\n".join(lines)
