"""intermod-import DATASET SRC DST: convert a public CT/MR dataset into the input of intermod-pair.

DATASET is one of:
  goldatlas              Gold Atlas pelvis: SRC/<patient>/**/ DICOM (planning CT, deformed CT, T2, RTSTRUCTs)
  synthrad2023           SynthRAD2023 task 1 pelvis: SRC/Task1/pelvis/<ID>/{mr,ct,mask}.nii.gz (no organ labels)
  learn2reg-abdomenmrct  Learn2Reg AbdomenMRCT: SRC/imagesTr/AbdomenMRCT_XXXX_000{0,1}.nii.gz + labelsTr/

DST gets dataset.json and per subject ct, mr, ct_labels, mr_labels (+ ct_paired where the dataset
provides it) on the CT grid. Next: intermod-pair DST PAIRED, then intermod-check-data PAIRED.
Exit codes: 0 done, 2 bad input (one line on stderr naming the file).
"""
from __future__ import annotations

import argparse
import sys

from intermod.importers import DATASETS, ImportDataError, import_dataset

PROG = "intermod-import"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS), help="source layout")
    parser.add_argument("src", help="the dataset as downloaded")
    parser.add_argument("dst", help="output folder (the source of intermod-pair)")
    parser.add_argument("--organs", nargs="+", metavar="NAME",
                        help="organs to keep, in this order (names as in the dataset, case and spaces ignored)")
    parser.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"),
                        help="resample onto a grid of this spacing in mm covering the CT (default: the CT's grid)")
    parser.add_argument("--force", action="store_true", help="import subjects already in DST again")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        found = import_dataset(args.dataset, args.src, args.dst, organs=args.organs, spacing=args.spacing,
                               force=args.force)
    except ImportDataError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(found.cases)} subjects to {args.dst}, labels {found.labels}"
          + (" (label-free: body mask only)" if found.meta.get("label_free") else ""))
    print(f"next: intermod-pair {args.dst} <paired dataset folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
