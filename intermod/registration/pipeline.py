"""Register an MR to a CT: model grid, pre-alignment, network field, one composed field on the CT's grid, report."""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk
import torch

import intermod
from intermod.geometry import (InputError, field_image, index_to_physical, read_image, reference_grid, resample,
                               to_array, voxel_to_lps)
from intermod.inference import predict_field
from intermod.metrics import folding_statistics, histogram_mutual_information, organ_metrics
from intermod.preprocessing import normalise_ct, normalise_mr
from intermod.registration.model import Model, load_model
from intermod.registration.outputs import RegistrationResult, check_out_dir, write_outputs
from intermod.refinement import Refinement, refine_field
from intermod.registration.prealign import AIR_HU, prealign
from intermod.spatial import warp

MIN_OVERLAP = 0.01  # fraction of the CT's field of view that must see the MR after pre-alignment
MI_MAX_VOXELS = 2 ** 17  # MI in the report on a regular subsample: ~0.1 s and bounded memory at 1 mm


@contextmanager
def _timed(timings: dict, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 4)


def _overlap(mr: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of the grid's voxels that the transform maps inside the MR's field of view."""
    ones = sitk.Image(mr.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(mr)
    inside = resample(ones, grid, transform, labels=True)  # kept alive: an array view does not own its memory
    return float(sitk.GetArrayViewFromImage(inside).mean())


def normalise(ct: np.ndarray, mr: np.ndarray, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """CT and MR (X, Y, Z) normalised exactly as in training, as (1, 1, X, Y, Z) tensors."""
    return (torch.from_numpy(normalise_ct(ct, model.ct_window))[None, None],
            torch.from_numpy(normalise_mr(mr, model.mr_percentiles))[None, None])


def _mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mutual information (nats, as in metrics.json) of two volumes on a regular subsample."""
    step = max(1, math.ceil(a.numel() / MI_MAX_VOXELS))
    a, b = (x.flatten()[::step].float().cpu().numpy() for x in (a, b))
    return histogram_mutual_information(a, b)


def compose_field(affine: sitk.AffineTransform, deformation: np.ndarray, grid: sitk.Image,
                  reference: sitk.Image) -> np.ndarray:
    """Affine + deformable as one displacement field (X, Y, Z, 3), LPS mm, on ``reference``'s grid.

    ``deformation`` is the network's field (3, X, Y, Z) in voxels of ``grid``: a grid point x reads the
    affinely resampled MR at x + v(x), i.e. the MR at A(x + v(x)) = A(x) + M v(x). The displacement is
    therefore A(x) - x + M v(x), with v interpolated linearly onto ``reference``.
    """
    physical = field_image(voxel_to_lps(deformation, index_to_physical(grid)), grid)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat64)
    # The grid covers the reference's box; extrapolation only guards its outermost half voxel.
    resampler.SetUseNearestNeighborExtrapolator(True)
    v = to_array(resampler.Execute(physical))
    affine_part = to_array(sitk.TransformToDisplacementField(
        affine, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection()))
    matrix = np.asarray(affine.GetMatrix()).reshape(3, 3)
    return affine_part + v @ matrix.T


def _label_names(model: Model, *maps: np.ndarray) -> dict[str, int]:
    """Name -> value for every non-zero value in the label maps; names from the checkpoint where known."""
    known = {v: k for k, v in model.labels.items()}
    values = sorted(set().union(*(np.unique(m).tolist() for m in maps)) - {0})
    return {known.get(v, f"label_{v}"): v for v in values}


def _label_metrics(ct: sitk.Image, ct_labels: sitk.Image, mr_labels: sitk.Image, affine: sitk.Transform,
                   warped: sitk.Image, model: Model) -> dict:
    """Dice, ASD and HD95 per label on the CT grid: MR labels as they lie, after the affine, after all."""
    fixed = to_array(resample(ct_labels, ct, labels=True))
    stages = {"before": to_array(resample(mr_labels, ct, labels=True)),
              "affine": to_array(resample(mr_labels, ct, affine, labels=True)), "after": to_array(warped)}
    names = _label_names(model, fixed, *stages.values())
    results = {stage: organ_metrics(fixed, moving, names, ct.GetSpacing()) for stage, moving in stages.items()}
    return {organ: {f"{metric}_{stage}": results[stage][organ][metric] for metric in ("dice", "asd", "hd95")
                    for stage in stages} for organ in names}


def register_images(ct: sitk.Image, mr: sitk.Image, model: Model, mr_labels: sitk.Image | None = None,
                    ct_labels: sitk.Image | None = None, affine: bool = True, ct_name: str = "CT",
                    mr_name: str = "MR", refinement: Refinement = Refinement()) -> RegistrationResult:
    """Register ``mr`` to ``ct`` (any grids, orientations, overlaps); the outputs lie on ``ct``'s grid.

    ``ct_labels`` serve only the report (Dice, ASD per label, with ``mr_labels``). ``affine=False`` skips
    the pre-alignment (the images must already be aligned in world space). ``refinement`` (none by default)
    optimises the network's field further on this pair alone (:mod:`intermod.refinement`). Raises :class:`InputError`
    (naming ``mr_name``) when CT and MR do not overlap after pre-alignment.
    """
    timings: dict[str, float] = {}
    with _timed(timings, "grid"):
        grid = reference_grid(ct, model.spacing, model.orientation)
        # Padding (e.g. -2048 outside the scan circle) and anything outside the CT read as air.
        ct_air = sitk.Clamp(ct, sitk.sitkFloat32, lowerBound=AIR_HU)
        ct_grid = resample(ct_air, grid, default=AIR_HU)
    with _timed(timings, "affine"):
        transform, search = prealign(ct_grid, mr) if affine else (sitk.AffineTransform(3), None)
        overlap = _overlap(mr, grid, transform)
    if overlap < MIN_OVERLAP:
        raise InputError(f"{mr_name}: no overlap with the CT {ct_name} after pre-alignment ({100 * overlap:.2f}% of "
                         f"the CT's field of view lies inside the MR{'' if affine else '; pre-alignment was skipped'})")
    with _timed(timings, "resample"):
        ct_n, mr_n = normalise(to_array(ct_grid), to_array(resample(mr, grid, transform)), model)
    with _timed(timings, "network"):
        ct_d, mr_d = ct_n.to(model.device), mr_n.to(model.device)
        field = predict_field(model.net, ct_d, mr_d, model.inference, integration_steps=model.integration_steps)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    with _timed(timings, "refine"):
        field = refine_field(ct_d, mr_d, field, refinement, model.integration_steps)
        mr_warped_grid = warp(mr_d, field)
    deformation = field[0].double().cpu().numpy()
    with _timed(timings, "compose"):
        composed = compose_field(transform, deformation, grid, ct)
        # The same transform class and interpolation that readers of the written field use.
        pullback = sitk.DisplacementFieldTransform(field_image(composed, ct))
        mr_warped = sitk.Resample(mr, ct, pullback, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        labels_warped = (None if mr_labels is None else
                         sitk.Resample(mr_labels, ct, pullback, sitk.sitkNearestNeighbor, 0, mr_labels.GetPixelID()))
    with _timed(timings, "metrics"):
        ct_before = normalise(to_array(ct_grid), to_array(resample(mr, grid)), model)
        report = {
            "network": {"device": str(model.device), "precision": model.precision, "inference": model.inference,
                        **({"integration_steps": model.integration_steps} if model.integration_steps else {})},
            "refinement": dataclasses.asdict(refinement),
            "model_grid": {"size": list(grid.GetSize()), "spacing": list(grid.GetSpacing()),
                           "orientation": model.orientation, "origin_lps": list(grid.GetOrigin())},
            "affine": {"enabled": affine, "overlap_fraction": overlap,
                       "matrix": list(transform.GetMatrix()), "translation": list(transform.GetTranslation()),
                       "center": list(transform.GetCenter()), **(search or {})},
            "mutual_information": {"before": _mi(*ct_before), "after_affine": _mi(ct_n, mr_n),
                                   "after": _mi(ct_n, mr_warped_grid)},
            "folding": folding_statistics(deformation),
            "max_displacement_mm": float(np.linalg.norm(voxel_to_lps(deformation, index_to_physical(grid)),
                                                         axis=-1).max()),
        }
        if mr_labels is not None and ct_labels is not None:
            report["labels"] = _label_metrics(ct, ct_labels, mr_labels, transform, labels_warped, model)
    report["timings_s"] = timings
    return RegistrationResult(ct=ct, mr_warped=mr_warped, mr_labels_warped=labels_warped, affine=transform,
                              field=composed, report=report)


def register_files(ct: str | Path, mr: str | Path, checkpoint: str | Path, out_dir: str | Path,
                   mr_labels: str | Path | None = None, ct_labels: str | Path | None = None, device: str = "cpu",
                   affine: bool = True, precision: str = "auto", refinement: Refinement = Refinement()) -> dict:
    """The whole of ``intermod-register``: read and validate, register, write into ``out_dir``.

    Every problem with an input raises :class:`InputError` before anything is written. Returns the report.
    """
    check_out_dir(Path(out_dir).absolute())
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        model = load_model(checkpoint, device, precision)
        ct_image, mr_image = read_image(ct), read_image(mr)
        mr_label_image = None if mr_labels is None else read_image(mr_labels, labels=True)
        ct_label_image = None if ct_labels is None else read_image(ct_labels, labels=True)
    result = register_images(ct_image, mr_image, model, mr_label_image, ct_label_image, affine, str(ct), str(mr),
                             refinement)
    result.report["timings_s"] = {**timings, **result.report["timings_s"]}
    result.report["inputs"] = {"ct": str(ct), "mr": str(mr), "checkpoint": str(checkpoint),
                               "mr_labels": None if mr_labels is None else str(mr_labels),
                               "ct_labels": None if ct_labels is None else str(ct_labels),
                               "device": device, "method": model.method, "intermod_version": intermod.__version__}
    write_outputs(result, out_dir)
    return result.report
