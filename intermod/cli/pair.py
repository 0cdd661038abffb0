"""intermod-pair SRC DST: make mr_paired and ct_paired as Cao et al. (2018) made them.

SRC holds dataset.json (organ labels) and per subject ct, mr, ct_labels and mr_labels (.nii.gz); the
MR may lie on its own grid. Per subject: ANTs SyN (MI), then a label-driven SyN so organ boundaries
meet (see intermod.pairing). DST gets the full dataset layout, the transforms in
DST/<subject>/transforms/, and pairing_report.json; subjects whose Dice after pairing is below
--threshold for any organ are flagged (report and dataset.json), not dropped. Finished subjects are
kept unless --force. Exit codes: 0 done (flags are warnings, unless --strict: then 1), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

from intermod.pairing import DEFAULT_THRESHOLD, PairingInputError, PairingOptions, format_report, pair_dataset

PROG = "intermod-pair"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="source dataset (dataset.json + ct, mr, ct_labels, mr_labels per subject)")
    parser.add_argument("dst", help="output dataset folder (created; must differ from SRC)")
    parser.add_argument("--affine", action="store_true",
                        help="align the MR to the CT first (ANTs Affine, MI); for data not yet aligned")
    parser.add_argument("--force", action="store_true", help="pair finished subjects again")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"lowest acceptable Dice per organ and direction (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--seed", type=int, default=0, help="ANTs random seed (affine sampling)")
    parser.add_argument("--threads", type=int, default=1,
                        help="ITK threads per registration (default 1: repeatable; 0: all cores, not repeatable)")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when any subject is flagged")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        options = PairingOptions(affine=args.affine, threshold=args.threshold, seed=args.seed,
                                 threads=args.threads or None)
        report = pair_dataset(args.src, args.dst, options, force=args.force)
    except PairingInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    for subject, organs in report["flagged"].items():
        detail = ", ".join(f"{organ} {d:.3f}" for organ, d in organs.items())
        print(f"{PROG}: WARNING {subject} flagged: Dice below {report['threshold']:.2f} ({detail})", file=sys.stderr)
    if report["image_only"]:
        print(f"{PROG}: {len(report['image_only'])} subject(s) paired on images only (no organ labels): "
              "no Dice gate, evaluation on them has no organ Dice", file=sys.stderr)
    print(f"wrote {args.dst} ({len(report['subjects'])} subjects; report {args.dst}/pairing_report.json)")
    return 1 if args.strict and report["flagged"] else 0


if __name__ == "__main__":
    sys.exit(main())
