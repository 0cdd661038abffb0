"""Read a multirun: every job's metrics.json (or failed.json) under the folders, as values per subject."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from intermod.evaluation.report import FIELD_METRICS, IMAGE_METRICS, METRICS, MISSING, SECONDS, Metric, result_value
from intermod.runs import FAILED_FILE, METRICS_FILE

# Two reference columns come from every job's metrics.json: the subjects before registration and, on a
# phantom, registered with its ground-truth field (what a perfect method would reach at this resolution).
BEFORE, TRUTH = "before", "truth"
REFERENCE_COLUMNS = (BEFORE, TRUTH)

# The rows' metrics are report.py's (METRICS, IMAGE_METRICS, FIELD_METRICS, SECONDS); these name the rows.
IMAGE_ROW = "whole image"
FIELD_ROW = "whole field"
TIME_ROW = "per registration"


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
    def after(m: Metric) -> dict[str, float] | None:
        found = {subject: result_value(result, m.path) for subject, result in results.items()}
        return None if any(v is MISSING for v in found.values()) else {s: float(v) for s, v in found.items()}

    for m in FIELD_METRICS:
        field = dict.fromkeys(results, 0.0) if when == "before" else after(m)  # the identity folds nothing
        if field is not None:
            values[m.key, FIELD_ROW] = field
    if when == "after" and (seconds := after(SECONDS)) is not None:  # older runs have none
        values[SECONDS.key, TIME_ROW] = seconds
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
