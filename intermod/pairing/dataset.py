"""Pair a source dataset subject by subject: checks, staging and resume, the quality record and gate, the report."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from intermod.baselines.ants import ants_workdir
from intermod.data.layout import (DATASET_JSON, DATASET_JSON_KEYS, DatasetError, replace_folder, write_dataset_json,
                                  write_subject)
from intermod.data.source import SOURCE_KEYS, Source, check_source_subject, read_source
from intermod.io import atomic_write_json
from intermod.metrics import dice, folding_statistics, histogram_mutual_information, ncc
from intermod.pairing.stages import METHOD, TRANSFORMS_DIR, run_pairing_job
from intermod.spatial_numpy import warp_array

RECORD = "pairing.json"
REPORT = "pairing_report.json"
DEFAULT_THRESHOLD = 0.95
STAGING_PREFIX = ".intermod-pair-"


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
    # the source's own extras are carried over; what the layout writer sets, and earlier pairings, are not
    extra = {k: v for k, v in source.meta.items() if k not in DATASET_JSON_KEYS | {"provided_pairs", "pairing"}}
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
