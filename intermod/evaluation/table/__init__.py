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
from intermod.evaluation.report import METRICS
from intermod.evaluation.table.reading import (BEFORE, FIELD_ROW, IMAGE_ROW, REFERENCE_COLUMNS, TIME_ROW, TRUTH, Collection,
                                               Job, NoResultsError, Problem, collect, column_key, parse_metrics)
from intermod.evaluation.table.render import (DISPLAY, PAPER_COLUMNS, PAPER_TABLE1, best_methods, csv_rows,
                                              display_name, format_cell, format_p, latex_escape, to_csv, to_latex,
                                              to_markdown, write_outputs)
from intermod.evaluation.table.statistics import (ALL_ZERO, FEW_PAIRS, METHOD_ORDER, MIN_PAIRS, NO_ORGANS_NOTE,
                                                  REFERENCE_METHOD, Cell, Coverage, PValue, Table1, build_table,
                                                  cell_statistics, column_order, paired_wilcoxon, subject_values)
from intermod.evaluation.table.wandb_log import log_to_wandb

__all__ = ["BEFORE", "TRUTH", "REFERENCE_COLUMNS", "METRICS", "IMAGE_ROW", "FIELD_ROW", "TIME_ROW", "NoResultsError",
           "column_key", "Job", "Problem", "Collection", "parse_metrics", "collect",
           "METHOD_ORDER", "REFERENCE_METHOD", "MIN_PAIRS", "FEW_PAIRS", "ALL_ZERO", "NO_ORGANS_NOTE", "Cell", "PValue",
           "Coverage", "Table1", "column_order", "subject_values", "cell_statistics", "paired_wilcoxon", "build_table",
           "DISPLAY", "PAPER_COLUMNS", "PAPER_TABLE1", "display_name", "format_cell", "best_methods", "format_p",
           "to_markdown", "csv_rows", "to_csv", "latex_escape", "to_latex", "write_outputs", "log_to_wandb"]
