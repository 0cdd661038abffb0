"""intermod-check-data ROOT: report every problem of a dataset; exit 1 if there is any. Read-only."""
from __future__ import annotations

import argparse
import sys

from intermod.data.layout import check_dataset, load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intermod-check-data", description=__doc__)
    parser.add_argument("root", help="dataset folder (dataset.json + one folder per subject)")
    args = parser.parse_args(argv)
    problems = check_dataset(args.root)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if problems:
        print(f"{args.root}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    spec = load_dataset(args.root)
    print(f"{args.root}: OK, {len(spec.subjects)} subjects, labels {spec.labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
