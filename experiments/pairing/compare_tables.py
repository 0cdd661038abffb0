"""Trained on intermod-pair's pairs vs on the phantom's exact pairs: the same runs twice, compared.

Per method, organ and metric, over the jobs (method, fold, seed) both sweeps finished: mean ± std over their
test subjects for both sweeps, the difference of the means, and a paired Wilcoxon test over (fold, subject).
Affine and SyN never read the pairs, so their rows must agree exactly: a check that both sweeps used the same
images and splits.
Writes a Markdown file and prints it.

    python experiments/pairing/compare_tables.py outputs/multiruns/table1_smoke \\
        outputs/multiruns/table1_smoke_made_pairs --out experiments/pairing/table1_smoke_made_vs_exact.md
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from intermod.evaluation.report import Metric
from intermod.evaluation.table import (METRICS, REFERENCE_COLUMNS, NoResultsError, build_table, cell_statistics,
                                       collect, display_name, format_cell, format_p, paired_wilcoxon, subject_values)
from intermod.io import atomic_write_text


def before_registration(metrics: dict, jobs, method: str, metric: Metric, organ: str) -> str:
    """The metric before registration on the method's test subjects (the starting point both runs share);
    ``metrics``: each job's metrics.json, read once."""
    values = [metrics[job.path]["subjects"][subject]["organs"][organ][f"{metric.key}_before"]
              for job in jobs if job.method == method for subject in job.values[metric.key, organ]]
    return format_cell(cell_statistics([math.nan if v is None else v for v in values], metric.scale), metric.digits)


def compare(exact_dir: Path, made_dir: Path) -> str:
    exact, made = collect(exact_dir), collect(made_dir)
    # The exact sweep may hold more folds than the made one (Table 1 cpu): compare the same jobs only, so
    # that each Δ is over the same subjects.
    made_jobs = {(job.method, job.fold, job.seed) for job in made.jobs}
    exact = replace(exact, jobs=[job for job in exact.jobs if (job.method, job.fold, job.seed) in made_jobs])
    exact_table, made_table = build_table(exact), build_table(made)
    # Before is the table's own column; the made dataset has no ground-truth field
    methods = [m for m in exact_table.methods if m in made_table.methods and m not in REFERENCE_COLUMNS]
    metrics = {job.path: json.loads(job.path.read_text()) for job in exact.jobs}
    lines = ["# Trained on intermod-pair's pairs vs on the phantom's exact pairs", "",
             f"Exact pairs: `{exact_dir}`. Made pairs: `{made_dir}`. Each cell: mean ± sample std over the test "
             "subjects of the folds both sweeps finished, pooled; Δ = made - exact; p: paired two-sided Wilcoxon over (fold, subject)."
             + (" Affine and SyN do not read the pairs: their rows agreeing exactly shows both sweeps saw the same "
                "images, labels and splits." if {"affine", "syn"} & set(methods) else ""), "",
             "| Metric | Organ | Method | before registration | exact pairs | made pairs | Δ | p |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    marks = {}
    for metric in METRICS:
        for organ in exact_table.organs:
            for method in methods:
                a = subject_values(exact.jobs, method, metric.key, organ)
                b = subject_values(made.jobs, method, metric.key, organ)
                test = paired_wilcoxon(b, a)
                if test.reason:
                    marks.setdefault(test.reason, "¹²³⁴"[len(marks)])
                cells = exact_table.cells[metric.key, organ, method], made_table.cells[metric.key, organ, method]
                delta = cells[1].mean - cells[0].mean
                lines.append(f"| {metric.label} | {organ} | {display_name(method)} | "
                             f"{before_registration(metrics, exact.jobs, method, metric, organ)} | "
                             f"{format_cell(cells[0], metric.digits)} | {format_cell(cells[1], metric.digits)} | "
                             f"{delta:+.{metric.digits}f} | "
                             f"{format_p(test, marks) if math.isfinite(delta) else '—'} |")
    lines += [""] + [f"{mark} n/a: {reason}.  " for reason, mark in marks.items()]
    problems = [f"- exact: {p.describe()}" for p in exact_table.problems] + [
        f"- made: {p.describe()}" for p in made_table.problems]
    lines += ["", "Missing or failed jobs:", ""] + (problems or ["None."])
    lines += ["", f"Written by `experiments/pairing/compare_tables.py` on {time.strftime('%Y-%m-%d')}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exact_dir", type=Path, help="run or multirun folder trained on the exact pairs")
    parser.add_argument("made_dir", type=Path, help="the same run(s) trained on intermod-pair's pairs")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    args = parser.parse_args()
    try:
        text = compare(args.exact_dir, args.made_dir)
    except NoResultsError as err:
        parser.error(str(err))  # one line naming the folder, exit code 2, nothing written
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
