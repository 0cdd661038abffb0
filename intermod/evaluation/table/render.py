"""Render Table 1 as text: Markdown (the report), CSV (the numbers) and LaTeX (booktabs), and write them."""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from intermod.evaluation.report import METRICS, SPREAD, Metric
from intermod.evaluation.table.reading import BEFORE, REFERENCE_COLUMNS, TRUTH
from intermod.evaluation.table.statistics import RECOVERY_METRIC, REFERENCE_METHOD, Cell, PValue, Table1
from intermod.io import atomic_write_text

NOT_APPLICABLE = "n/a"
DISPLAY = {BEFORE: "Before", "affine": "Affine", "syn": "SyN", "elastix": "elastix", "convexadam": "ConvexAdam",
           "ct": "CT", "mr": "MR", "dual": "Dual", "dual_io": "Dual + IO", "mi": "MI", TRUTH: "Ground truth"}

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


def format_cell(cell: Cell, digits: int, plus_minus: str = "±", empty: str = "—") -> str:
    """'mean ± std' with the paper's decimals; ``empty`` when there is no value, 'n/a' for the std of one."""
    if cell.n == 0:
        return empty
    std = f"{cell.std:.{digits}f}" if math.isfinite(cell.std) else "n/a"
    return f"{cell.mean:.{digits}f} {plus_minus} {std}"


def _cell_text(table: Table1, metric: Metric, row: str, column: str, plus_minus: str = "±") -> str:
    """A cell as text. An empty cell of a method ('—') means its jobs gave no value; one of a reference
    column ('n/a') that the metric does not apply to it (the seconds of no registration)."""
    return format_cell(table.cells[metric.key, row, column], metric.digits, plus_minus,
                       NOT_APPLICABLE if column in REFERENCE_COLUMNS else "—")


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
        texts = [_cell_text(table, m, organ, method) for method in table.methods]
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


def _recovery_markdown(table: Table1) -> list[str]:
    """Each method's share of the ground truth's gain per organ, with the subjects it is over."""
    if not table.recovery:
        return []
    methods = [m for m in table.methods if m not in REFERENCE_COLUMNS]

    def cells_of(_, organ: str) -> list[str]:
        shares = [table.recovery[organ, m] for m in methods]
        return [f"{r.share:.2f} (n={r.n})" if math.isfinite(r.share) else "—" for r in shares]

    return ["## Share of the ground truth's gain", "",
            "(mean after - mean before) / (mean ground truth - mean before), each over the method's own test "
            "subjects: 1 is what the phantom's exact field reaches, 0 no registration, below 0 worse than none.", "",
            *_markdown_rows(["Metric", "Organ", *map(display_name, methods)],
                            _block_rows([(RECOVERY_METRIC, table.organs)], cells_of)), ""]


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
    rows = _block_rows([(m, organs) for m in METRICS if m.key in PAPER_TABLE1],
                       lambda m, organ: [f"{mean:.{m.digits}f} ± {std:.{m.digits}f}"
                                         for mean, std in PAPER_TABLE1[m.key][organ]])
    return _markdown_rows(["Metric", "Organ", *PAPER_COLUMNS], rows)


def to_markdown(table: Table1) -> str:
    """The whole report: results, samples, p-values, missing jobs, and the paper's Table 1."""
    shown = ", ".join(m.label + (f" ({m.unit})" if m.unit and m.unit not in m.label else "") for m, _ in table.blocks)
    lines = [f"# Table 1: {shown} after registration", "",
             f"From {', '.join(f'`{root}`' for root in table.roots)}. Each cell: mean ± {SPREAD} over the test subjects of all folds "
             f"pooled; best of each row in bold (highest DSC, MI and NCC, lowest of the others); a dash: no value "
             f"from a method's jobs, {NOT_APPLICABLE}: not applicable to a reference column.", "",
             *_results_markdown(table), "", *_coverage_lines(table), *[f"- Note: {n}" for n in table.notes], "",
             *_recovery_markdown(table),
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
    for organ in table.organs if table.recovery else []:  # the share has no spread: std and nan left empty
        row = [f"{RECOVERY_METRIC.key}_recovery", "fraction", organ]
        for method in table.methods:
            value = table.recovery.get((organ, method))
            row += ["", "", "", ""] if value is None else [_number(value.share), "", value.n, ""]
        rows.append(row + [""] * (len(header) - len(row)))
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
            texts = [_cell_text(table, m, organ, method, "$\\pm$") for method in table.methods]
            texts = [f"\\textbf{{{t}}}" if method in best[organ] else t for method, t in zip(table.methods, texts)]
            lines.append(" & ".join([latex_escape(m.label) if i == 0 else "", latex_escape(organ), *texts]) + " \\\\")
    # The footer is part of the tabular, so the convention travels with the table into any document.
    footer = (f"\\multicolumn{{{2 + len(table.methods)}}}{{l}}{{\\footnotesize Each cell: mean $\\pm$ {SPREAD} "
              "over the test subjects of all folds pooled.} \\\\")
    return "\n".join(lines + ["\\bottomrule", footer, "\\end{tabular}", ""])


def write_outputs(table: Table1, out_dir: str | Path, name: str = "table1") -> dict[str, Path]:
    """<name>.md, <name>.csv and <name>.tex in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    texts = {"md": to_markdown(table), "csv": to_csv(table), "tex": to_latex(table)}
    return {kind: atomic_write_text(out / f"{name}.{kind}", text) for kind, text in texts.items()}
