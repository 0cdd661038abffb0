"""Make the paired data of Cao et al. (2018, Section 3): ``mr_paired`` and ``ct_paired`` per subject.

The paper made its paired data by "fine-tuning the roughly aligned CT and MR images of the same
subject": a non-rigid SyN registration, then Demons on the manual labels of the organs, "after that,
the boundaries of the anatomical structures are well aligned". ``pair_dataset`` does the same with
ANTs, one subject at a time, the CT fixed and the MR moving:

1. ``affine`` (only with ``affine=True``, for data not yet aligned): ANTs Affine, Mattes MI, the
   schedule of ``intermod.baselines.ants``. The MR and its labels are resampled onto the CT grid
   through it. Without it the MR is resampled onto the CT grid in scanner coordinates (identity),
   which is a no-op when the MR already lies on the CT grid.
2. ``syn``: ANTs SyN (``SyNOnly`` after the step above), Mattes MI, the SyN schedule and
   regularisation of the baseline ("SyN (ANTs, MI)" of Table 1).
3. ``labels``: the label-driven refinement. Our choice for the paper's Demons: ANTs SyN with a
   mean-squares metric on one-hot organ maps, one metric per organ (multivariate), the maps smoothed
   by a Gaussian of ``LABEL_SMOOTHING`` voxels so boundaries have sub-voxel positions and gradients.
   Mean squares on label maps gives the Demons force (intensity difference times gradient); the SyN
   transform keeps the result diffeomorphic and, unlike SimpleITK's Demons filters, gives its
   inverse and handles any number of organs at once. Regularisation is lighter than in stage 2
   (update field smoothed by 1 voxel, not 3) so that organ boundaries can meet to sub-voxel accuracy;
   forces exist only near organ boundaries, elsewhere the SyN field of stage 2 is kept.

Datasets whose dataset.json says ``"label_free": true`` (the body mask stands in for labels, see
``intermod.importers``) skip stage 3: the pairing is image-only.

What is written (``dst``, the dataset layout of ``intermod.data.layout``):

* ``<subject>/`` with ``ct``, ``ct_labels`` (copied), ``mr``, ``mr_labels`` (on the CT grid, after
  stage 1), ``mr_paired`` (the MR through stages 1-3: MR intensities on the CT's anatomy) and
  ``ct_paired`` (the CT through the inverse of stages 2-3: CT intensities on the MR's anatomy, on the
  same grid). A ``ct_paired`` or ``mr_paired`` the source provides (dataset.json
  ``"provided_pairs"``, e.g. the Gold Atlas' deformed CT) is copied instead of made.
* ``<subject>/transforms/``: ``mr_to_ct_warp.nii.gz`` (stages 2-3 composed) and
  ``ct_to_mr_warp.nii.gz`` (their inverse), ITK/ANTs displacement fields on the CT grid (LPS mm), and
  with ``affine=True`` ``mr_to_ct_affine.mat`` (stage 1, ITK format). With ANTsPy,
  ``ants.apply_transforms(ct, mr_source, [mr_to_ct_warp, mr_to_ct_affine])`` gives ``mr_paired``
  (without the affine, ``mr`` in place of ``mr_source``) and
  ``ants.apply_transforms(ct, ct, [ct_to_mr_warp])`` gives ``ct_paired``.
* ``<subject>/pairing.json``: the subject's quality record; its presence marks a finished subject.
* ``pairing_report.json`` and ``dataset.json`` (with a ``"pairing"`` entry naming flagged subjects).

Quality gate. Per subject and organ, the Dice of the CT labels with the MR labels carried onto the
CT's anatomy (``mr_paired`` direction) and of the MR labels with the CT labels carried onto the MR's
anatomy (``ct_paired`` direction), labels resampled with ANTs' ``genericLabel``. A subject whose
lowest Dice is below ``threshold`` is flagged: still written, and named in the report and in
dataset.json. Label-free subjects get no Dice and are never flagged; their record says so
(``"gate": "image"``) and carries the image measures every subject gets: the mutual information of
CT and MR before and after pairing (stage 2 maximises it), and ``ncc_consistency``, the NCC of the CT
and ``ct_paired`` warped back by the ``mr_paired`` field (the paper's CT loss term at the pairing
field: near 1 when the two pairs describe one deformation). The folding of both fields is recorded.

Determinism and clean-up. Each subject runs in a fresh Python process with ITK's thread count set
before ANTs is imported and ANTs' seed fixed (see ``intermod.baselines.ants``): with one thread the
result is bit-identical for a seed. ANTs writes into a private temporary folder, removed afterwards
(also on error). A subject is built in a hidden staging folder inside ``dst`` and renamed into place
when complete, so an interrupted run leaves no half-written subject; staging folders left by a
killed run are removed by the next run. Finished subjects are skipped unless ``force``. One run per
``dst`` at a time.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from intermod.baselines.ants import DEFAULT_OPTIONS, ants_random_seed, ants_workdir, run_in_child
from intermod.data.layout import DATASET_JSON, DatasetError, replace_folder, write_dataset_json, write_subject
from intermod.data.source import SOURCE_KEYS, Source, check_source_subject, read_source
from intermod.io import atomic_write_json
from intermod.metrics import dice, folding_statistics, histogram_mutual_information, ncc
from intermod.spatial_numpy import warp_array

TRANSFORMS_DIR = "transforms"
RECORD = "pairing.json"
REPORT = "pairing_report.json"
DEFAULT_THRESHOLD = 0.95
STAGING_PREFIX = ".intermod-pair-"
# dataset.json keys the layout writer sets itself; everything else in the source's is carried over.
_LAYOUT_META = {"version", "labels", "modalities", "spacing", "subjects", "files"}

AFFINE_OPTIONS = {k: v for k, v in DEFAULT_OPTIONS.items() if k.startswith("aff_")}
SYN_OPTIONS = {k: DEFAULT_OPTIONS[k] for k in ("syn_sampling", "reg_iterations", "grad_step", "flow_sigma",
                                               "total_sigma")}
# Stage 3: full resolution gets the most iterations, the boundaries being the point of it.
LABEL_OPTIONS = {"reg_iterations": (100, 100, 200), "grad_step": 0.2, "flow_sigma": 1.0, "total_sigma": 0.0}
LABEL_SMOOTHING = 0.5  # voxels, Gaussian sigma of the one-hot organ maps
METHOD = ("SyN (ANTs, Mattes MI) then label-driven SyN (ANTs, mean squares on smoothed one-hot "
          "organ maps) standing in for the paper's Demons")


class PairingInputError(ValueError):
    """A source dataset ``intermod-pair`` cannot use; the message names the file and the fix."""


@dataclass(frozen=True)
class PairingOptions:
    affine: bool = False  # run stage 1 (ANTs Affine, MI) before SyN
    threshold: float = DEFAULT_THRESHOLD  # lowest acceptable Dice per organ and direction
    seed: int = 0
    threads: int | None = 1  # ITK threads per registration; None: all cores, not repeatable

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise PairingInputError(f"threshold must be within [0, 1], got {self.threshold}")
        if not 0 <= self.seed < 2**31 - 1:
            raise PairingInputError(f"seed must be in [0, 2**31 - 1), got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise PairingInputError(f"threads must be >= 1 or None, got {self.threads}")


# --------------------------------------------------------------------------------------------------
# Pairing a dataset

def pair_dataset(src: str | Path, dst: str | Path, options: PairingOptions = PairingOptions(),
                 force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Pair every subject of ``src`` into ``dst`` (see the module doc); return the report.

    Every source subject is checked before any registration starts (PairingInputError naming the
    first problem and counting the others). Finished subjects in ``dst`` are kept unless ``force``;
    their gate is re-evaluated with ``options.threshold``.
    """
    try:
        source = read_source(src)
    except DatasetError as err:
        raise PairingInputError(str(err)) from None
    dst = Path(dst)
    if dst.resolve() == source.root.resolve():
        raise PairingInputError(f"{dst}: the output folder must differ from the source folder")
    if options.affine and source.provided:
        raise PairingInputError(f"{source.root / DATASET_JSON}: the provided {list(source.provided)} are tied "
                                "to the MR's position; --affine would move the MR away from them")
    problems = [p for subject in source.subjects for p in check_source_subject(source, subject)]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PairingInputError(problems[0] + more)
    dst.mkdir(parents=True, exist_ok=True)
    for stale in dst.glob(f"{STAGING_PREFIX}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)

    records = {}
    for index, subject in enumerate(source.subjects, 1):
        record_path = dst / subject / RECORD
        if record_path.is_file() and not force:
            records[subject] = {**json.loads(record_path.read_text()), "status": "kept"}
        else:
            records[subject] = {**_pair_subject(source, subject, dst, options), "status": "paired"}
        records[subject]["passed"] = _passed(records[subject], options.threshold)
        log(f"[{index}/{len(source.subjects)}] {subject}: {records[subject]['status']}"
            + ("" if records[subject]["status"] == "kept" else f" in {records[subject]['seconds']['total']:.1f} s"))
    return _write_outputs(source, dst, records, options)


def _pair_subject(source: Source, subject: str, dst: Path, options: PairingOptions) -> dict:
    """Register one subject, write it into ``dst`` atomically, return its record."""
    ct_image = nib.load(str(source.path(subject, "ct")))
    ct = np.asarray(ct_image.dataobj, dtype=np.float32)
    ct_labels = np.asarray(nib.load(str(source.path(subject, "ct_labels"))).dataobj).astype(np.uint8)
    job = {"paths": {k: str(source.path(subject, k)) for k in SOURCE_KEYS}, "affine": options.affine,
           "seed": options.seed, "refine_values": [] if source.label_free else sorted(source.labels.values())}
    staging = Path(tempfile.mkdtemp(dir=dst, prefix=STAGING_PREFIX))
    try:
        with ants_workdir() as workdir:
            out = run_pairing_job(workdir, job, options.threads)
            arrays = {"ct": ct, "ct_labels": ct_labels, "mr": out["mr"], "mr_labels": out["mr_labels"],
                      "mr_paired": out["mr_paired"], "ct_paired": out["ct_paired"]}
            for key in source.provided:
                arrays[key] = np.asarray(nib.load(str(source.path(subject, key))).dataobj, dtype=np.float32)
            record = measure_pairing(arrays, out, source, options)
            folder = write_subject(staging, subject, arrays, ct_image.affine)
            shutil.move(workdir / TRANSFORMS_DIR, folder / TRANSFORMS_DIR)
        atomic_write_json(folder / RECORD, record)
        replace_folder(folder, dst / subject)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def measure_pairing(arrays: dict[str, np.ndarray], out: dict, source: Source, options: PairingOptions) -> dict:
    """The quality record of one subject (see the module doc) from the written ``arrays`` and the
    registration outputs ``out``."""
    u = np.moveaxis(out["field_mr_to_ct"], 0, -1)  # (X, Y, Z, 3): warp(mr, u) ~ mr_paired
    record = {
        "gate": "image" if source.label_free else "dice",
        "affine": options.affine, "seed": options.seed, "method": METHOD,
        "provided": list(source.provided),
        "images": {"mi_before": histogram_mutual_information(arrays["ct"], arrays["mr"]),
                   "mi_after": histogram_mutual_information(arrays["ct"], arrays["mr_paired"]),
                   "ncc_consistency": ncc(arrays["ct"], warp_array(arrays["ct_paired"], u))},
        "folding": {"mr_to_ct": folding_statistics(out["field_mr_to_ct"]),
                    "ct_to_mr": folding_statistics(out["field_ct_to_mr"])},
        "seconds": out["seconds"],
    }
    if not source.label_free:
        ct_labels, mr_labels = arrays["ct_labels"], arrays["mr_labels"]
        # A provided pair comes without its field: that direction cannot be measured (None).
        pairs = {"mr_paired": (ct_labels, out["mr_labels_paired"]), "ct_paired": (mr_labels, out["ct_labels_paired"])}
        record["dice_before"] = {organ: dice(ct_labels == v, mr_labels == v) for organ, v in source.labels.items()}
        record["dice"] = {organ: {key: None if key in source.provided else dice(target == v, carried == v)
                                  for key, (target, carried) in pairs.items()}
                          for organ, v in source.labels.items()}
    return record


def _passed(record: dict, threshold: float) -> bool | None:
    """True/False from the lowest Dice; None for an image-only (label-free) subject."""
    if record["gate"] != "dice":
        return None
    return min_dice(record) >= threshold


def organ_dice(record: dict) -> dict[str, float]:
    """Per organ, the lower Dice of the measured directions."""
    return {organ: min(d for d in directions.values() if d is not None)
            for organ, directions in record["dice"].items()}


def min_dice(record: dict) -> float:
    return min(organ_dice(record).values())


def _write_outputs(source: Source, dst: Path, records: dict, options: PairingOptions) -> dict:
    """pairing_report.json and dataset.json, flags recorded in both."""
    flagged = {s: {organ: d for organ, d in organ_dice(r).items() if d < options.threshold}
               for s, r in records.items() if r["passed"] is False}
    image_only = [s for s, r in records.items() if r["passed"] is None]
    summary = {"method": METHOD, "threshold": options.threshold, "affine": options.affine,
               "flagged": flagged, "image_only": image_only, "provided": list(source.provided),
               "report": REPORT}
    report = {**summary, "source": str(source.root), "labels": source.labels, "subjects": records}
    atomic_write_json(dst / REPORT, report)
    extra = {k: v for k, v in source.meta.items() if k not in _LAYOUT_META | {"provided_pairs", "pairing"}}
    write_dataset_json(dst, source.labels, list(source.subjects), source.meta.get("spacing") or (),
                       **extra, pairing=summary)
    return report


def format_report(report: dict) -> str:
    """The report as a plain-text table: Dice per organ (mr_paired / ct_paired direction) or, for
    image-only subjects, mutual information before -> after and the consistency NCC."""
    organs = list(report["labels"])
    width = max([15] + [len(o) + 2 for o in organs])
    lines = [f"pairing gate: Dice >= {report['threshold']:.2f} per organ, both directions (mr_paired/ct_paired)",
             f"{'subject':<16}" + "".join(f"{o:>{width}}" for o in organs) + f"{'min':>7}  status"]
    if len(report["image_only"]) == len(report["subjects"]):
        lines = ["pairing on images only: no organ labels, no Dice gate"]
    for subject, r in report["subjects"].items():
        if r["gate"] == "dice":
            cells = "".join(f"{_pair_cell(r['dice'][o]):>{width}}" for o in organs)
            verdict = "ok" if r["passed"] else "FLAGGED"
            lines.append(f"{subject:<16}{cells}{min_dice(r):>7.3f}  {verdict} ({r['status']})")
        else:
            images = r["images"]
            lines.append(f"{subject:<16}image-only (no organ labels): MI {images['mi_before']:.3f} -> "
                         f"{images['mi_after']:.3f}, NCC consistency {images['ncc_consistency']:.3f} "
                         f"({r['status']})")
    return "\n".join(lines)


def _pair_cell(directions: dict) -> str:
    return "/".join("prov" if d is None else f"{d:.3f}" for d in directions.values())


# --------------------------------------------------------------------------------------------------
# The registration, in a child process

def run_pairing_job(workdir: Path, job: dict, threads: int | None) -> dict:
    """Run stages 1-3 on ``job`` in a fresh process (ITK thread count set before ANTs is imported);
    return its outputs (arrays on the CT grid, voxel fields, seconds). The transforms are left in
    ``workdir/transforms``."""
    (workdir / "job.json").write_text(json.dumps(job))
    run_in_child(__name__, workdir, threads, f"ANTs pairing of {job['paths']['ct']} failed")
    with np.load(workdir / "result.npz") as result:
        out = {key: result[key] for key in result.files if key != "seconds"}
    out["seconds"] = json.loads((workdir / "seconds.json").read_text())
    for key in ("mr_labels", "mr_labels_paired", "ct_labels_paired"):
        out[key] = np.rint(out[key]).astype(np.uint8)
    return out


def _pair_files(workdir: Path) -> None:
    """The child's work: stages 1-3 on the files named in ``workdir/job.json``, seeded."""
    job = json.loads((workdir / "job.json").read_text())
    with ants_random_seed(job["seed"]):
        _pair_stages(workdir, job)


def _pair_stages(workdir: Path, job: dict) -> None:
    import ants

    ct, mr, ct_labels, mr_labels = (ants.image_read(job["paths"][k]) for k in SOURCE_KEYS)
    transforms = workdir / TRANSFORMS_DIR
    transforms.mkdir()
    # ANTs' centre-of-mass initialisation is meaningless on HU (air -1000); MI ignores the shift.
    fixed, moving = ct - ct.min(), mr - mr.min()
    seconds, start = {}, time.perf_counter()

    initial = None
    if job["affine"]:
        reg = ants.registration(fixed, moving, "Affine", aff_metric="mattes", outprefix=f"{workdir}/affine_",
                                **AFFINE_OPTIONS)
        initial = reg["fwdtransforms"]
        seconds["affine"] = time.perf_counter() - start
    reg = ants.registration(fixed, moving, "SyNOnly", syn_metric="mattes", initial_transform=initial,
                            outprefix=f"{workdir}/syn_", **SYN_OPTIONS)
    syn = _split_transforms(reg)
    linear = syn["affine"]  # stage 1's affine (collapsed into the SyN output) or the identity
    if job["affine"]:
        shutil.copy(linear, transforms / "mr_to_ct_affine.mat")
    forward, backward = [syn["warp"]], [syn["inverse"]]  # points pass first to last
    seconds["syn"] = time.perf_counter() - start - sum(seconds.values())

    values = [v for v in job["refine_values"] if (ct_labels.numpy() == v).any() and (mr_labels.numpy() == v).any()]
    if values:
        fixed_maps = [_smoothed_mask(ct_labels, v) for v in values]
        moving_maps = [_apply(ants, ct, _smoothed_mask(mr_labels, v), forward + [linear]) for v in values]
        extras = [("meansquares", f, m, 1, 0) for f, m in zip(fixed_maps[1:], moving_maps[1:])]
        reg = ants.registration(fixed_maps[0], moving_maps[0], "SyNOnly", syn_metric="meansquares", syn_sampling=0,
                                multivariate_extras=extras or None, outprefix=f"{workdir}/labels_", **LABEL_OPTIONS)
        refine = _split_transforms(reg)
        forward = [refine["warp"], refine["affine"]] + forward
        backward = backward + [(refine["affine"], True), refine["inverse"]]
        seconds["labels"] = time.perf_counter() - start - sum(seconds.values())

    ct_air = float(ct.min())
    arrays = {
        "mr": _apply(ants, ct, mr, [linear]),
        "mr_labels": _apply(ants, ct, mr_labels, [linear], "genericLabel"),
        "mr_paired": _apply(ants, ct, mr, forward + [linear]),
        "mr_labels_paired": _apply(ants, ct, mr_labels, forward + [linear], "genericLabel"),
        "ct_paired": _apply(ants, ct, ct, backward, default=ct_air),
        "ct_labels_paired": _apply(ants, ct, ct_labels, backward, "genericLabel"),
    }
    arrays = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}
    for name, chain in (("mr_to_ct", forward), ("ct_to_mr", backward)):
        path = transforms / f"{name}_warp.nii.gz"
        os.replace(_apply(ants, ct, mr, chain, compose=f"{workdir}/{name}_"), path)
        arrays[f"field_{name}"] = _voxel_field(ants.image_read(str(path)), ct)
    seconds["total"] = time.perf_counter() - start
    np.savez(workdir / "result.npz", **arrays)
    (workdir / "seconds.json").write_text(json.dumps(seconds))


def _split_transforms(reg: dict) -> dict[str, str]:
    """The files of one ANTs SyN stage: forward warp, inverse warp and (collapsed) affine."""
    files = reg["fwdtransforms"] + reg["invtransforms"]
    inverse = next(f for f in files if f.endswith("InverseWarp.nii.gz"))
    warp = next(f for f in files if f.endswith("Warp.nii.gz") and f != inverse)
    affine = next(f for f in files if f.endswith("GenericAffine.mat"))
    return {"warp": warp, "inverse": inverse, "affine": affine}


def _apply(ants, reference, image, chain: list, interpolator: str = "linear", default: float = 0.0,
           compose: str | None = None):
    """``image`` resampled onto ``reference`` through ``chain`` (points pass first to last); an entry
    ``(path, True)`` is an inverted affine. With ``compose``, the composed field's file instead."""
    paths = [entry[0] if isinstance(entry, tuple) else entry for entry in chain]
    inverted = [isinstance(entry, tuple) and entry[1] for entry in chain]
    return ants.apply_transforms(reference, image, paths, interpolator=interpolator, whichtoinvert=inverted,
                                 defaultvalue=default, compose=compose)


def _smoothed_mask(labels, value: int):
    """The organ ``value`` of an ANTs label image as a float map smoothed by LABEL_SMOOTHING voxels."""
    from scipy.ndimage import gaussian_filter

    mask = (labels.numpy() == value).astype(np.float32)
    return labels.new_image_like(gaussian_filter(mask, LABEL_SMOOTHING)).clone("float")


def _voxel_field(field_image, reference) -> np.ndarray:
    """An ANTs displacement field (X, Y, Z, 3) in LPS mm on ``reference``'s grid -> (3, X, Y, Z) voxels
    along the array axes (the pull-back convention of ``intermod.spatial`` and ``gt_field``)."""
    index_to_lps = np.asarray(reference.direction) * np.asarray(reference.spacing)
    field = np.einsum("ij,...j->i...", np.linalg.inv(index_to_lps), field_image.numpy())
    return np.ascontiguousarray(field, dtype=np.float32)


if __name__ == "__main__":
    _pair_files(Path(sys.argv[1]))
