"""Aggregate a multirun into Table 1: cells (mean, spread) per column, paired tests, coverage, problems."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from intermod.evaluation.report import FIELD_METRICS, IMAGE_METRICS, METRICS, SECONDS, Metric, sample_statistics
from intermod.evaluation.table.reading import (BEFORE, FIELD_ROW, IMAGE_ROW, REFERENCE_COLUMNS, TIME_ROW, TRUTH, Collection,
                                               Job, Problem)
from intermod.runs import METRICS_FILE

METHOD_ORDER = (BEFORE, "affine", "syn", "elastix", "convexadam", "ct", "mr", "dual", "dual_io", TRUTH)
REFERENCE_METHOD = "dual"
RECOVERY_METRIC = next(m for m in METRICS if m.key == "dice")  # whose share of the ground truth's gain is shown
MIN_PAIRS = 6
FEW_PAIRS = (f"fewer than {MIN_PAIRS} pairs (with {MIN_PAIRS - 1} or fewer the smallest exact two-sided p is "
             f"2/32 = 0.0625, so the test could never reach 0.05)")
ALL_ZERO = "all paired differences are zero (the methods agree on every pair)"
NO_ORGANS_NOTE = ("no organ labels in these runs (label-free dataset): DSC and ASD are not reported, "
                  "only image similarity")


@dataclass
class Cell:
    """Statistics of one method on one organ and metric, in display units."""
    mean: float
    std: float
    n: int
    n_nan: int


@dataclass
class PValue:
    """Dual vs one method: two-sided Wilcoxon p (None when not computed, with the reason)."""
    p: float | None
    n_pairs: int
    reason: str | None = None


@dataclass
class Recovery:
    """A method's share of the ground truth's gain over no registration, on its own test subjects:
    (mean after - mean before) / (mean ground truth - mean before); 1 is the exact field, 0 no change."""
    share: float
    n: int


@dataclass
class Coverage:
    """Which test subjects, folds and seeds a method's cells come from."""
    n_subjects: int
    folds: list[int]
    seeds: list[int]


@dataclass
class Table1:
    """The aggregated table, ready to be written."""
    roots: list[Path]  # the folders its jobs were read from
    methods: list[str]
    organs: list[str]
    blocks: list[tuple[Metric, list[str]]]  # each metric with its rows (organs, or IMAGE_ROW)
    folds: list[int]
    cells: dict[tuple[str, str, str], Cell]  # (metric, row, method)
    pvalues: dict[tuple[str, str, str], PValue]  # (metric, row, other method)
    coverage: dict[str, Coverage]
    problems: list[Problem]
    reference: str | None = REFERENCE_METHOD  # the column the others are tested against
    notes: list[str] = field(default_factory=list)
    recovery: dict[tuple[str, str], Recovery] = field(default_factory=dict)  # (organ, method), on a phantom


def column_order(found: set[str], methods: list[str] | None = None) -> list[str]:
    """Columns: ``methods`` exactly when given, else the paper's order of methods among those found (a
    method's swept values in sorted order), others after."""
    if methods:
        return list(methods)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}

    def order(column: str) -> tuple:
        method = column.split("[", 1)[0]
        return (rank.get(method, len(rank)), method, column)

    return sorted(found, key=order)


def _organs(jobs: list[Job]) -> list[str]:
    """Organ names in the order of the metrics files' labels (union, first seen first)."""
    return list(dict.fromkeys(organ for job in jobs for organ in job.organs))


def subject_values(jobs: list[Job], method: str, metric: str, organ: str) -> dict[tuple[int, str], float]:
    """(fold, subject) -> value of one method, averaged over the jobs (seeds) that tested that subject."""
    pooled: dict[tuple[int, str], list[float]] = {}
    for job in jobs:
        if job.method == method:
            for subject, value in job.values.get((metric, organ), {}).items():
                pooled.setdefault((job.fold, subject), []).append(value)
    # a subject empty in one seed is empty in all (same labels), so any NaN makes the mean NaN
    return {key: float(np.mean(values)) for key, values in pooled.items()}


def cell_statistics(values: list[float], scale: float) -> Cell:
    """:func:`~intermod.evaluation.report.sample_statistics` of the values, scaled; NaNs counted, not used."""
    array = np.asarray(values, dtype=float) * scale
    summary = sample_statistics(array)
    return Cell(summary["mean"], summary["std"], summary["n"], int(array.size - summary["n"]))


def paired_wilcoxon(reference: dict, other: dict) -> PValue:
    """Two-sided Wilcoxon signed-rank test on the keys with finite values in both."""
    keys = sorted(k for k in reference.keys() & other.keys()
                  if math.isfinite(reference[k]) and math.isfinite(other[k]))
    a = np.array([reference[k] for k in keys])
    b = np.array([other[k] for k in keys])
    if len(keys) < MIN_PAIRS:
        return PValue(None, len(keys), FEW_PAIRS)
    if np.all(a == b):
        return PValue(None, len(keys), ALL_ZERO)
    return PValue(float(stats.wilcoxon(a, b, alternative="two-sided").pvalue), len(keys))


def recovery(jobs: list[Job], method: str, metric: str, organ: str) -> Recovery:
    """The method's :class:`Recovery` of ``metric`` on the subjects where it, Before and Ground truth all
    have a finite value (NaN share when there are none or the ground truth gains nothing)."""
    columns = [subject_values(jobs, column, metric, organ) for column in (method, BEFORE, TRUTH)]
    keys = [k for k in columns[0] if all(k in c and math.isfinite(c[k]) for c in columns)]
    after, before, truth = (np.mean([c[k] for k in keys]) if keys else math.nan for c in columns)
    gain = truth - before
    return Recovery(float((after - before) / gain) if keys and gain > 0 else math.nan, len(keys))


def _coverage(jobs: list[Job], method: str) -> Coverage:
    mine = [j for j in jobs if j.method == method]
    subjects = {(j.fold, s) for j in mine for values in j.values.values() for s in values}
    return Coverage(len(subjects), sorted({j.fold for j in mine}),
                    sorted({j.seed for j in mine if j.seed is not None}))


def _missing(collection: Collection, methods: list[str], folds: list[int]) -> list[Problem]:
    """Failed or corrupt jobs, then every expected (method, fold) with neither a result nor a failure."""
    done = {(j.method, j.fold) for j in collection.jobs}
    reported = {(p.method, p.fold) for p in collection.problems}
    absent = [Problem(m, f, f"no {METRICS_FILE}") for m in methods for f in folds
              if (m, f) not in done and (m, f) not in reported and m not in REFERENCE_COLUMNS]
    rank = {m: i for i, m in enumerate(methods)}  # the table's column order; unknown methods last
    return sorted(collection.problems + absent,
                  key=lambda p: (rank.get(p.method, len(rank)), str(p.method), -1 if p.fold is None else p.fold))


def _notes(jobs: list[Job], methods: list[str]) -> list[str]:
    """Warnings a reader needs: several experiments pooled, methods found but not shown."""
    notes = [] if any(j.organs for j in jobs) else [NO_ORGANS_NOTE]
    names = sorted({j.name for j in jobs if j.name})
    if len(names) > 1:
        notes.append(f"jobs of several experiments pooled: {', '.join(names)}")
    jobs = [j for j in jobs if j.method not in REFERENCE_COLUMNS]  # derived from the same files
    older = [j for j in jobs if j.organs and not any(row == IMAGE_ROW for _, row in j.values)]
    if older and len(older) < len(jobs):
        notes.append(f"{len(older)} job(s) wrote no image similarity (metrics.json from before intermod "
                     f"reported it); the MI and NCC rows leave their subjects out: "
                     f"{', '.join(f'{j.method} fold {j.fold}' for j in older)}")
    hidden = sorted({j.method for j in jobs} - set(methods))
    if hidden:
        notes.append(f"methods found but not shown (--methods): {', '.join(hidden)}")
    return notes


def build_table(collection: Collection, methods: list[str] | None = None, reference: str | None = None) -> Table1:
    """Cells, p-values, coverage and problems for the given columns (see column_order); ``reference``: the
    column tested against every other (default: Dual where shown). Raises ValueError for a reference that
    is not a column."""
    jobs = collection.jobs
    seen = {j.method for j in jobs} | {p.method for p in collection.problems if p.method}
    columns = column_order(seen, methods)
    if reference is not None and reference not in columns:
        raise ValueError(f"reference {reference!r} is not a column; the columns are: {', '.join(columns)}")
    reference = reference or (REFERENCE_METHOD if REFERENCE_METHOD in columns else None)
    organs = _organs(jobs)
    blocks = [(m, organs) for m in METRICS if organs]
    blocks += [(m, [IMAGE_ROW]) for m in IMAGE_METRICS if any((m.key, IMAGE_ROW) in j.values for j in jobs)]
    methods_jobs = [j for j in jobs if j.method not in REFERENCE_COLUMNS]
    blocks += [(m, [FIELD_ROW]) for m in FIELD_METRICS if any((m.key, FIELD_ROW) in j.values for j in methods_jobs)]
    if any((SECONDS.key, TIME_ROW) in j.values for j in methods_jobs):
        blocks.append((SECONDS, [TIME_ROW]))
    folds = sorted({j.fold for j in jobs} | {p.fold for p in collection.problems if p.fold is not None})
    cells, pvalues = {}, {}
    for m, rows in blocks:
        for row in rows:
            per_method = {method: subject_values(jobs, method, m.key, row) for method in columns}
            for method, values in per_method.items():
                cells[m.key, row, method] = cell_statistics(list(values.values()), m.scale)
            if reference is not None:
                for method in columns:
                    if method != reference:
                        pvalues[m.key, row, method] = paired_wilcoxon(per_method[reference], per_method[method])
    phantom = {BEFORE, TRUTH} <= {j.method for j in jobs}
    recoveries = {(organ, method): recovery(jobs, method, RECOVERY_METRIC.key, organ)
                  for organ in (organs if phantom else []) for method in columns if method not in REFERENCE_COLUMNS}
    return Table1(roots=collection.roots, methods=columns, organs=organs, blocks=blocks, folds=folds, cells=cells,
                  pvalues=pvalues, coverage={method: _coverage(jobs, method) for method in columns},
                  problems=_missing(collection, columns, folds), reference=reference, notes=_notes(jobs, columns),
                  recovery=recoveries)
