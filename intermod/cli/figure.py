"""intermod-figure: a PNG of one phantom (or dataset) subject, CT and MR in three planes with label contours."""
from __future__ import annotations

import argparse
import sys

import nibabel as nib
import numpy as np

from intermod.data.layout import DatasetError, load_dataset
from intermod.data.phantom import GRIDS, LABELS, synthesize_subject
from intermod.evaluation.figures import save_figure, subject_figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intermod-figure", description=__doc__)
    parser.add_argument("--data", help="a dataset folder; default: synthesise a phantom subject in memory")
    parser.add_argument("--subject", help="subject of --data (default: the first)")
    parser.add_argument("--grid", default="paper", choices=sorted(GRIDS), help="phantom grid (without --data)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (without --data)")
    parser.add_argument("--out", default="experiments/figures/phantom_subject.png")
    args = parser.parse_args(argv)
    if args.data:
        try:
            spec = load_dataset(args.data)
        except DatasetError as err:
            print(f"intermod-figure: {err}", file=sys.stderr)
            return 2
        subject = args.subject or spec.subjects[0]
        arrays = {k: np.asarray(nib.load(spec.path(subject, k)).dataobj) for k in ("ct", "mr", "ct_labels", "mr_labels")}
        labels, title = spec.labels, f"{args.data}: {subject}"
    else:
        arrays = synthesize_subject(args.seed, GRIDS[args.grid])
        labels, title = LABELS, f"intermod phantom, seed {args.seed}, {args.grid} grid"
    fig = subject_figure(arrays["ct"], arrays["mr"], arrays["ct_labels"], arrays["mr_labels"], labels, title)
    print(f"wrote {save_figure(fig, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
