"""intermod-register: register an MR image to a CT image with a trained intermod network.

Writes into DIR, in the CT's own geometry: mr_warped.nii.gz, mr_labels_warped.nii.gz (with --mr-labels),
affine.mat (ITK), displacement_field.nii.gz (affine + deformable; an ITK/ANTs displacement field that
antsApplyTransforms, SimpleITK and 3D Slicer apply to the MR) and report.json. On any problem with the
inputs it prints one line on stderr, exits with status 2 and leaves DIR as it was.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intermod-register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", required=True, help="fixed CT: NIfTI, NRRD, MHA, ... or a DICOM series folder")
    parser.add_argument("--mr", required=True, help="moving MR, any grid and orientation")
    parser.add_argument("--checkpoint", required=True, help="network checkpoint written by intermod-train")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created or updated)")
    parser.add_argument("--mr-labels", help="MR label map to warp (and to score against --ct-labels)")
    parser.add_argument("--ct-labels", help="CT label map: Dice and ASD per label in the report")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="network arithmetic: bf16 is ~3x faster on CPUs with native bfloat16 and changes the "
                             "field by a few hundredths of a voxel; auto (default) takes bf16 where the device "
                             "has it natively, else fp32")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="then N Adam steps on this pair alone (test-time refinement; 0, the default: none; "
                             "50 takes seconds at 2 mm on a CPU)")
    parser.add_argument("--refine-similarity", default="mind", choices=("mind", "mi"),
                        help="what refinement maximises: MIND-SSC agreement (default) or mutual information")
    parser.add_argument("--no-affine", action="store_true",
                        help="skip the affine pre-alignment (CT and MR already aligned in world space)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before ANTs loads (see single_threaded_ants): the same inputs then give the same files.
    from intermod.baselines.ants import single_threaded_ants

    single_threaded_ants()
    # Imported here so that --help answers at once (torch and ANTs take seconds to load).
    from intermod.geometry import InputError
    from intermod.refinement import Refinement
    from intermod.registration import register_files

    if args.refine < 0:
        print(f"intermod-register: error: --refine must be >= 0 steps, got {args.refine}", file=sys.stderr)
        return 2

    try:
        report = register_files(args.ct, args.mr, args.checkpoint, args.out, mr_labels=args.mr_labels,
                                ct_labels=args.ct_labels, device=args.device, affine=not args.no_affine,
                                precision=args.precision,
                                refinement=Refinement(steps=args.refine, similarity=args.refine_similarity))
    except InputError as err:
        print(f"intermod-register: error: {err}", file=sys.stderr)
        return 2
    mi = report["mutual_information"]
    network = report["network"]
    print(f"registered {args.mr} to {args.ct} in {report['timings_s']['total']:.1f} s "
          f"(network on {network['device']}, {network['precision']}) -> {args.out}")
    if report["affine"]["enabled"]:
        print(f"pre-alignment: started from {report['affine']['orientation']}")
    print(f"mutual information CT/MR: {mi['before']:.3f} before, {mi['after_affine']:.3f} after the affine, "
          f"{mi['after']:.3f} after registration")
    for organ, row in report.get("labels", {}).items():
        print(f"{organ}: Dice {row['dice_before']:.3f} -> {row['dice_after']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
