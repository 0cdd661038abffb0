"""The ANTs registrations of one subject (stages 1-3), run in a fresh child process for repeatability."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from intermod.baselines.ants import DEFAULT_OPTIONS, ants_random_seed, run_in_child
from intermod.data.source import SOURCE_KEYS

TRANSFORMS_DIR = "transforms"
CHILD = "intermod.pairing"  # python -m intermod.pairing WORKDIR runs pair_files (the package's __main__)

AFFINE_OPTIONS = {k: v for k, v in DEFAULT_OPTIONS.items() if k.startswith("aff_")}
SYN_OPTIONS = {k: DEFAULT_OPTIONS[k] for k in ("syn_sampling", "reg_iterations", "grad_step", "flow_sigma",
                                               "total_sigma")}
# Stage 3: full resolution gets the most iterations, the boundaries being the point of it.
LABEL_OPTIONS = {"reg_iterations": (100, 100, 200), "grad_step": 0.2, "flow_sigma": 1.0, "total_sigma": 0.0}
LABEL_SMOOTHING = 0.5  # voxels, Gaussian sigma of the one-hot organ maps
METHOD = ("SyN (ANTs, Mattes MI) then label-driven SyN (ANTs, mean squares on smoothed one-hot "
          "organ maps) standing in for the paper's Demons")


def run_pairing_job(workdir: Path, job: dict, threads: int | None) -> dict:
    """Run stages 1-3 on ``job`` in a fresh process (ITK thread count set before ANTs is imported);
    return its outputs (arrays on the CT grid, voxel fields, seconds). The transforms are left in
    ``workdir/transforms``."""
    (workdir / "job.json").write_text(json.dumps(job))
    run_in_child(CHILD, workdir, threads, f"ANTs pairing of {job['paths']['ct']} failed")
    with np.load(workdir / "result.npz") as result:
        out = {key: result[key] for key in result.files if key != "seconds"}
    out["seconds"] = json.loads((workdir / "seconds.json").read_text())
    for key in ("mr_labels", "mr_labels_paired", "ct_labels_paired"):
        out[key] = np.rint(out[key]).astype(np.uint8)
    return out


def pair_files(workdir: Path) -> None:
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

