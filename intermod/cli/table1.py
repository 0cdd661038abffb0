"""intermod-table1 MULTIRUN_DIR [MORE_DIRS...]: the paper's Table 1 (DSC and ASD per organ and method, then
image similarity; image similarity alone for a label-free dataset) from a multirun's metrics.json. A sweep
over more than method, fold and seed (an ablation) gets one column per swept value:

    intermod-table1 outputs/multiruns/ablation_l2 --reference "dual[method.loss.lambda_l2=0.01]"

Writes <name>.md, <name>.csv and <name>.tex into --out-dir (default MULTIRUN_DIR) and prints the Markdown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from intermod.evaluation.table import (METHOD_ORDER, NoResultsError, build_table, collect, log_to_wandb,
                                       to_markdown, write_outputs)

PROG = "intermod-table1"


def parse_methods(text: str) -> list[str]:
    """'affine, syn,ct' -> ['affine', 'syn', 'ct'] (an argparse type)."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise argparse.ArgumentTypeError("give at least one method, e.g. affine,syn,ct,mr,dual")
    return methods


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dirs", nargs="+", metavar="multirun_dir",
                        help="folder(s) searched recursively for metrics.json and failed.json")
    parser.add_argument("--out-dir", help="where the tables go (default: MULTIRUN_DIR)")
    parser.add_argument("--name", default="table1", help="file stem of the outputs and W&B table key")
    parser.add_argument("--methods", type=parse_methods,
                        help=f"columns, in order (default: {','.join(METHOD_ORDER)} among those found, "
                             "others appended)")
    parser.add_argument("--reference", help="the column every other is tested against (default: dual); a swept "
                                            "value is named as its column, e.g. 'dual[method.loss.lambda_l2=0.01]'")
    parser.add_argument("--wandb", action="store_true", help="also log the table to W&B (offline without a key)")
    return parser


def report_wandb(run_dir: Path | None) -> None:
    if run_dir is None:
        print("W&B: not logged (WANDB_MODE=disabled)")
    elif run_dir.name.startswith("offline-run-"):
        print(f"W&B table logged offline to {run_dir}; upload it with `wandb sync {run_dir}`")
    else:
        print(f"W&B table logged (run files in {run_dir})")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        table = build_table(collect(*args.multirun_dirs), args.methods, args.reference)
    except (NoResultsError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or args.multirun_dirs[0]
    paths = write_outputs(table, out_dir, args.name)
    print(to_markdown(table))
    if table.problems:
        print(f"{len(table.problems)} missing or failed job(s): see 'Missing or failed jobs' above", file=sys.stderr)
    if args.wandb:
        report_wandb(log_to_wandb(table, out_dir, args.name))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
