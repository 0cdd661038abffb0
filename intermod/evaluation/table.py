"""Table 1 of the paper from a Hydra multirun: every job's metrics.json pooled per method, and per swept
value where the sweep varied more than method, fold and seed (an ablation: one column per value).

Each cell is the mean ± sample standard deviation (ddof=1; the paper does not say which) over the
test subjects of all folds pooled, after registration. A subject tested by several jobs of the same
method and fold (several seeds) counts once, with its values averaged over those jobs, so that
subjects stay the unit of both the statistics and the paired tests. NaN values (an organ empty in a
label map) are left out of the statistics and counted. Beside the methods stand two reference columns
read from the same files: Before (no registration) and, on a phantom, Ground truth (its exact field).

A reference column (Dual by default, or any column named) is compared with every other by a two-sided
paired Wilcoxon signed-rank test per organ and metric, pairing by (fold, subject). Failed, corrupt and
missing jobs are listed, never averaged over silently.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from intermod.evaluation.report import IMAGE_METRICS, SPREAD, Metric, sample_statistics
from intermod.io import atomic_write_text
from intermod.runs import FAILED_FILE, METRICS_FILE
from intermod.wandb_mode import offline_unless_logged_in

# Two reference columns come from every job's metrics.json: the subjects before registration and, on a
# phantom, registered with its ground-truth field (what a perfect method would reach at this resolution).
BEFORE, TRUTH = "before", "truth"
REFERENCE_COLUMNS = (BEFORE, TRUTH)
METHOD_ORDER = (BEFORE, "affine", "syn", "ct", "mr", "dual", TRUTH)
DISPLAY = {BEFORE: "Before", "affine": "Affine", "syn": "SyN", "ct": "CT", "mr": "MR", "dual": "Dual", "mi": "MI",
           TRUTH: "Ground truth"}
REFERENCE_METHOD = "dual"
MIN_PAIRS = 6
FEW_PAIRS = (f"fewer than {MIN_PAIRS} pairs (with {MIN_PAIRS - 1} or fewer the smallest exact two-sided p is "
             f"2/32 = 0.0625, so the test could never reach 0.05)")
ALL_ZERO = "all paired differences are zero (the methods agree on every pair)"


METRICS = (Metric("dice", "DSC (%)", "%", 100.0, 1, True), Metric("asd", "ASD (mm)", "mm", 1.0, 2, False))
IMAGE_ROW = "whole image"
# Folding of the field: % voxels whose Jacobian determinant is <= 0 (0 before registration).
FOLDING = Metric("folding", "Folding (% det J <= 0)", "%", 1.0, 3, False)
FIELD_ROW = "whole field"
NO_ORGANS_NOTE = ("no organ labels in these runs (label-free dataset): DSC and ASD are not reported, "
                  "only image similarity")

# Cao et al., MLMI 2018, Table 1: (mean, std) per organ for Affine (MI), SyN (MI), CT, MR, Dual.
PAPER_COLUMNS = ("Affine (MI)", "SyN (MI)", "CT", "MR", "Dual (proposed)")
PAPER_TABLE1 = {
    "dice": {"bladder": ((85.7, 5.3), (87.4, 4.9), (89.8, 3.6), (90.3, 4.0), (90.5, 3.8)),
             "prostate": ((81.9, 4.7), (84.3, 3.5), (86.1, 3.3), (85.9, 4.1), (87.3, 4.2)),
             "rectum": ((79.4, 5.1), (81.8, 4.7), (83.6, 5.0), (84.2, 4.3), (85.4, 4.5))},
    "asd": {"bladder": ((1.83, 0.71), (1.69, 0.63), (1.51, 0.57), (1.47, 0.51), (1.23, 0.43)),
            "prostate": ((1.91, 0.55), (1.75, 0.41), (1.63, 0.40), (1.72, 0.42), (1.58, 0.36)),
            "rectum": ((2.28, 0.68), (2.06, 0.62), (1.94, 0.43), (1.83, 0.44), (1.44, 0.40))},
}


class NoResultsError(ValueError):
    """The multirun folder does not exist or holds no readable metrics.json."""


def column_key(method: str, swept: dict[str, str] | None = None) -> str:
    """A job's column: its method, with its swept values where a sweep varied more, e.g.
    'dual[method.loss.lambda_l2=0.1]'."""
    return f"{method}[{','.join(f'{k}={v}' for k, v in sorted(swept.items()))}]" if swept else method


@dataclass
class Job:
    """One finished job: values[(metric, row)][subject] after registration, in metrics.json units; a
    row is an organ, or IMAGE_ROW for image similarity."""
    path: Path
    method: str
    fold: int
    seed: int | None
    name: str | None
    organs: list[str]
    values: dict[tuple[str, str], dict[str, float]]


@dataclass
class Problem:
    """A job that gave no usable metrics: failed, corrupt, or never written."""
    method: str | None
    fold: int | None
    reason: str
    path: Path | None = None

    def describe(self) -> str:
        where = f"{self.method or '?'}, fold {'?' if self.fold is None else self.fold}"
        return f"{where}: {self.reason}" + (f" ({self.path})" if self.path else "")


@dataclass
class Collection:
    """Everything found under the multirun folders read."""
    roots: list[Path]
    jobs: list[Job]
    problems: list[Problem]


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


# ---------------------------------------------------------------- reading


def _as_float(value) -> float:
    """A metric value; JSON null (how some writers store NaN) reads as NaN."""
    return math.nan if value is None else float(value)


def _values(results: dict[str, dict], organs: list[str], when: str) -> dict[tuple[str, str], dict[str, float]]:
    """values[(metric, row)][subject] of per-subject results, ``when`` "after" or "before" registration."""
    values = {(m.key, organ): {subject: _as_float(result["organs"][organ][f"{m.key}_{when}"])
                               for subject, result in results.items()}
              for m in METRICS for organ in organs}
    if all("images" in result for result in results.values()):  # older runs have none
        values.update({(m.key, IMAGE_ROW): {subject: _as_float(result["images"][f"{m.key}_{when}"])
                                            for subject, result in results.items()}
                       for m in IMAGE_METRICS})
    if when == "before":
        values[FOLDING.key, FIELD_ROW] = dict.fromkeys(results, 0.0)  # the identity folds nothing
    elif all(result.get("folding") for result in results.values()):
        values[FOLDING.key, FIELD_ROW] = {subject: _as_float(result["folding"]["percent_nonpositive_jacobian"])
                                          for subject, result in results.items()}
    return values


def parse_metrics(path: Path) -> list[Job]:
    """The job of one metrics.json, then its subjects before registration and, where every subject has
    one, with the ground-truth field (the reference columns). Raises ValueError, KeyError, TypeError or
    AttributeError when the file is malformed."""
    data = json.loads(path.read_text())
    organs, subjects = list(data["labels"]), data["subjects"]

    def job(method: str, results: dict, when: str) -> Job:
        return Job(path=path, method=method, fold=int(data["fold"]), seed=data.get("seed"), name=data.get("name"),
                   organs=organs, values=_values(results, organs, when))

    jobs = [job(column_key(str(data["method"]), data.get("swept")), subjects, "after"), job(BEFORE, subjects, "before")]
    if subjects and all("ground_truth" in result for result in subjects.values()):
        jobs.append(job(TRUTH, {s: result["ground_truth"] for s, result in subjects.items()}, "after"))
    return jobs


def _guess_method_fold(folder: Path) -> tuple[str | None, int | None]:
    """(method, fold) from Hydra's sweep layout <method>[/<swept values>]/fold<k>-seed<s>, for files too broken
    to say."""
    match = re.match(r"fold(\d+)", folder.name)
    if not match:
        return None, None
    parent = folder.parent
    method = f"{parent.parent.name}[{parent.name}]" if "=" in parent.name else parent.name
    return method, int(match.group(1))


def _read_failure(path: Path) -> Problem:
    """The Problem recorded by a failed run's failed.json (its error's first line)."""
    try:
        data = json.loads(path.read_text())
        error = str(data.get("error", "unknown error")).strip().splitlines() or ["unknown error"]
        fold = None if data.get("fold") is None else int(data["fold"])
        method = None if data.get("method") is None else column_key(str(data["method"]), data.get("swept"))
        return Problem(method, fold, f"failed: {error[0]}", path)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        return Problem(*_guess_method_fold(path.parent), f"failed (unreadable failed.json: {err})", path)


def _read_folder(folder: Path) -> list[Job] | Problem:
    """The job in one folder: a failed.json newer than metrics.json wins (a forced re-run that failed)."""
    metrics, failed = folder / METRICS_FILE, folder / FAILED_FILE
    if failed.exists() and (not metrics.exists() or failed.stat().st_mtime >= metrics.stat().st_mtime):
        problem = _read_failure(failed)
        if metrics.exists():
            problem.reason += f" (the older {METRICS_FILE} beside it is not used)"
        return problem
    try:
        return parse_metrics(metrics)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return Problem(*_guess_method_fold(folder), f"corrupt metrics.json ({type(err).__name__}: {err})", metrics)


def collect(*multirun_dirs: str | Path) -> Collection:
    """Every job under the folders (searched recursively; several: one sweep's jobs run in several places);
    raises NoResultsError if there is none."""
    roots = [Path(d) for d in multirun_dirs]
    for root in roots:
        if not root.is_dir():
            raise NoResultsError(f"{root} does not exist or is not a folder")
    folders = sorted({p.parent for root in roots for name in (METRICS_FILE, FAILED_FILE) for p in root.rglob(name)})
    found = [_read_folder(folder) for folder in folders]
    jobs = [j for jobs in found if isinstance(jobs, list) for j in jobs]
    problems = [p for p in found if isinstance(p, Problem)]
    if not jobs:
        detail = f" ({len(problems)} failed or corrupt job(s))" if problems else ""
        verb = "holds" if len(roots) == 1 else "hold"
        raise NoResultsError(f"{', '.join(map(str, roots))} {verb} no readable {METRICS_FILE}{detail}")
    return Collection(roots, jobs, problems)


# ---------------------------------------------------------------- aggregating


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
    if any((FOLDING.key, FIELD_ROW) in j.values for j in jobs if j.method not in REFERENCE_COLUMNS):
        blocks.append((FOLDING, [FIELD_ROW]))
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
    return Table1(roots=collection.roots, methods=columns, organs=organs, blocks=blocks, folds=folds, cells=cells,
                  pvalues=pvalues, coverage={method: _coverage(jobs, method) for method in columns},
                  problems=_missing(collection, columns, folds), reference=reference, notes=_notes(jobs, columns))


# ---------------------------------------------------------------- formatting


def display_name(column: str) -> str:
    """'dual' -> 'Dual'; 'dual[method.loss.lambda_l2=0.1]' -> 'Dual, lambda_l2=0.1' (each key by its last part)."""
    method, _, swept = column.partition("[")
    name = DISPLAY.get(method, method)
    if not swept:
        return name
    # a comma starts a new item only where a key follows: list values such as [84,84,60] keep theirs
    items = re.split(r",(?=[\w./+~-]+=)", swept.removesuffix("]"))
    values = [re.split(r"[./]", key)[-1] + "=" + value for key, _, value in (item.partition("=") for item in items)]
    return f"{name}, {', '.join(values)}"


def format_cell(cell: Cell, digits: int, plus_minus: str = "±") -> str:
    """'mean ± std' with the paper's decimals; '—' when there is no value, 'n/a' for the std of one."""
    if cell.n == 0:
        return "—"
    std = f"{cell.std:.{digits}f}" if math.isfinite(cell.std) else "n/a"
    return f"{cell.mean:.{digits}f} {plus_minus} {std}"


def best_methods(table: Table1, metric: Metric, organ: str) -> set[str]:
    """The registration methods with the best mean as displayed (ties, after rounding, all count); the
    reference columns (before, ground truth) are not candidates."""
    shown = {method: round(table.cells[metric.key, organ, method].mean, metric.digits)
             for method in table.methods
             if method not in REFERENCE_COLUMNS and table.cells[metric.key, organ, method].n}
    if not shown:
        return set()
    best = max(shown.values()) if metric.higher_is_better else min(shown.values())
    return {method for method, value in shown.items() if value == best}


def format_p(value: PValue, marks: dict[str, str]) -> str:
    if value.p is None:
        return f"n/a{marks[value.reason]} (n={value.n_pairs})"
    p = f"{value.p:.1e}" if value.p < 1e-3 else f"{value.p:.3f}"
    return f"{p} (n={value.n_pairs})"


def _markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _block_rows(blocks: list[tuple[Metric, list[str]]], cells_of) -> list[list[str]]:
    """Rows of every metric block, the metric named on its first row only, as in the paper."""
    return [[m.label if i == 0 else "", row, *cells_of(m, row)] for m, rows in blocks for i, row in enumerate(rows)]


def _results_markdown(table: Table1) -> list[str]:
    def cells_of(m: Metric, organ: str) -> list[str]:
        best = best_methods(table, m, organ)
        texts = [format_cell(table.cells[m.key, organ, method], m.digits) for method in table.methods]
        return [f"**{t}**" if method in best else t for method, t in zip(table.methods, texts)]

    header = ["Metric", "Organ", *map(display_name, table.methods)]
    return _markdown_rows(header, _block_rows(table.blocks, cells_of))


def _coverage_lines(table: Table1) -> list[str]:
    """Per method: n subjects from how many folds, seeds, and NaNs left out."""
    lines = []
    for method in table.methods:
        cov = table.coverage[method]
        line = (f"- {display_name(method)}: n = {cov.n_subjects} subjects from {len(cov.folds)} "
                f"of {len(table.folds)} folds")
        gone = [f for f in table.folds if f not in cov.folds]
        if gone:
            line += f" (missing fold{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))})"
        if len(cov.seeds) > 1:
            line += f"; seeds {', '.join(map(str, cov.seeds))} averaged per subject"
        nans = sum(table.cells[m.key, row, method].n_nan for m, rows in table.blocks for row in rows)
        if nans:
            line += f"; {nans} NaN value(s) (empty organ or diverged run) left out"
        lines.append(line)
    return lines


def _pvalue_markdown(table: Table1) -> list[str]:
    if not table.pvalues:
        why = (f"no {display_name(REFERENCE_METHOD)} column (name one with --reference)" if table.reference is None
               else "no other method to compare with")
        return [f"No paired tests: {why}."]
    others = [m for m in table.methods if m != table.reference]
    reasons = sorted({v.reason for v in table.pvalues.values() if v.reason})
    marks = {reason: "¹²"[i] for i, reason in enumerate(reasons)}
    ref = display_name(table.reference)
    header = ["Metric", "Organ", *(f"{ref} vs {display_name(m)}" for m in others)]
    rows = _block_rows(table.blocks, lambda m, row: [format_p(table.pvalues[m.key, row, o], marks)
                                                     for o in others])
    notes = ["Pairs: (fold, test subject) with a finite value for both methods; n = number of pairs."]
    notes += [f"{mark} n/a: {reason}." for reason, mark in marks.items()]
    return _markdown_rows(header, rows) + [""] + [n + "  " for n in notes]


def _problem_lines(table: Table1) -> list[str]:
    return [f"- {p.describe()}" for p in table.problems] or ["None."]


def _reference_markdown() -> list[str]:
    organs = list(PAPER_TABLE1["dice"])
    rows = _block_rows([(m, organs) for m in METRICS],
                       lambda m, organ: [f"{mean:.{m.digits}f} ± {std:.{m.digits}f}"
                                         for mean, std in PAPER_TABLE1[m.key][organ]])
    return _markdown_rows(["Metric", "Organ", *PAPER_COLUMNS], rows)


def to_markdown(table: Table1) -> str:
    """The whole report: results, samples, p-values, missing jobs, and the paper's Table 1."""
    shown = ", ".join(m.label + (f" ({m.unit})" if m.unit and m.unit not in m.label else "") for m, _ in table.blocks)
    lines = [f"# Table 1: {shown} after registration", "",
             f"From {', '.join(f'`{root}`' for root in table.roots)}. Each cell: mean ± {SPREAD} over the test subjects of all folds "
             f"pooled; best of each row in bold (lowest ASD, highest of the others).", "",
             *_results_markdown(table), "", *_coverage_lines(table), *[f"- Note: {n}" for n in table.notes], "",
             f"## Paired Wilcoxon signed-rank tests, {display_name(table.reference or REFERENCE_METHOD)} vs each method "
             f"(two-sided p)", "", *_pvalue_markdown(table), "",
             "## Missing or failed jobs", "", *_problem_lines(table), "",
             "## Reference: Cao et al., MLMI 2018, Table 1", "", *_reference_markdown(), ""]
    return "\n".join(lines)


def _number(value: float | None) -> float | str:
    return "" if value is None or not math.isfinite(value) else value


def csv_rows(table: Table1) -> tuple[list[str], list[list]]:
    """Header and rows (one per metric x organ), numbers in display units, '' for none."""
    others = [m for m in table.methods if m != table.reference] if table.pvalues else []
    header = ["metric", "unit", "organ"]
    header += [f"{m}_{s}" for m in table.methods for s in ("mean", "std", "n", "nan")]
    header += [f"{table.reference}_vs_{m}_{s}" for m in others for s in ("p", "pairs")]
    rows = []
    for m, block_rows in table.blocks:
        for organ in block_rows:
            row = [m.key, m.unit, organ]
            for method in table.methods:
                cell = table.cells[m.key, organ, method]
                row += [_number(cell.mean), _number(cell.std), cell.n, cell.n_nan]
            for other in others:
                value = table.pvalues[m.key, organ, other]
                row += [_number(value.p), value.n_pairs]
            rows.append(row)
    return header, rows


def to_csv(table: Table1) -> str:
    header, rows = csv_rows(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def to_latex(table: Table1) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); the best of each row in bold."""
    lines = ["% Table 1 (intermod-table1); needs \\usepackage{booktabs}",
             "\\begin{tabular}{ll" + "c" * len(table.methods) + "}", "\\toprule",
             " & ".join(["Metric", "Organ", *(latex_escape(display_name(m)) for m in table.methods)]) + " \\\\",
             "\\midrule"]
    for k, (m, rows) in enumerate(table.blocks):
        if k:
            lines.append("\\midrule")
        best = {organ: best_methods(table, m, organ) for organ in rows}
        for i, organ in enumerate(rows):
            texts = [format_cell(table.cells[m.key, organ, method], m.digits, "$\\pm$") for method in table.methods]
            texts = [f"\\textbf{{{t}}}" if method in best[organ] else t for method, t in zip(table.methods, texts)]
            lines.append(" & ".join([latex_escape(m.label) if i == 0 else "", latex_escape(organ), *texts]) + " \\\\")
    # The footer is part of the tabular, so the convention travels with the table into any document.
    footer = (f"\\multicolumn{{{2 + len(table.methods)}}}{{l}}{{\\footnotesize Each cell: mean $\\pm$ {SPREAD} "
              "over the test subjects of all folds pooled.} \\\\")
    return "\n".join(lines + ["\\bottomrule", footer, "\\end{tabular}", ""])


# ---------------------------------------------------------------- writing


def write_outputs(table: Table1, out_dir: str | Path, name: str = "table1") -> dict[str, Path]:
    """<name>.md, <name>.csv and <name>.tex in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    texts = {"md": to_markdown(table), "csv": to_csv(table), "tex": to_latex(table)}
    return {kind: atomic_write_text(out / f"{name}.{kind}", text) for kind, text in texts.items()}


def log_to_wandb(table: Table1, out_dir: str | Path, name: str = "table1") -> Path | None:
    """Log the CSV rows as a W&B Table under key ``name``; returns the run folder (None if W&B is disabled)."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb  # slow to import: only when asked for

    offline_unless_logged_in()

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    header, rows = csv_rows(table)
    run = wandb.init(project="intermod", job_type="table1", dir=str(out_dir), name=name,
                     config={"multirun_dir": ", ".join(map(str, table.roots)), "methods": table.methods})
    try:
        run.log({name: wandb.Table(columns=header, data=[[None if v == "" else v for v in r] for r in rows])})
        return Path(run.dir).parent
    finally:
        run.finish()
