"""Register an MR image to a CT image with a trained network: the pipeline behind ``intermod-register``.

Stages, each a function usable from Python:

1. :func:`load_model` and :func:`intermod.geometry.read_image` validate the inputs;
2. :func:`intermod.geometry.reference_grid`: the grid the model was trained on (spacing, orientation
   from the checkpoint) over the CT's field of view; CT padding is clipped to air;
3. :func:`prealign`: an ANTs affine (Mattes MI) started from the best of an orientation search, which
   survives scans 180 degrees apart (head-first vs feet-first);
4. the network predicts the deformable field on the model grid (:func:`intermod.inference.predict_field`);
5. :func:`compose_field`: affine + deformable as one LPS displacement field on the CT's own grid, applied
   with ITK's ``DisplacementFieldTransform`` (the way ANTs, SimpleITK and 3D Slicer apply the file);
6. :func:`write_outputs`: every file into a temporary folder beside the output folder, moved into place
   only once all of them are written.

:func:`register_files` runs them all; :func:`register_images` is the in-memory part (stages 2-5).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ants
import numpy as np
import SimpleITK as sitk
import torch

import intermod
from intermod.baselines.ants import ants_random_seed, ants_workdir
from intermod.checkpoint import CheckpointError, read_metadata
from intermod.evaluation.metrics import folding_statistics, histogram_mutual_information, organ_metrics
from intermod.geometry import (InputError, field_image, index_to_physical, read_image, reference_grid, resample,
                               to_array, voxel_to_lps, write_displacement_field)
from intermod.inference import InferenceNetwork, predict_field, resolve_precision
from intermod.networks.unet import RegistrationUNet
from intermod.preprocessing import normalise_ct, normalise_mr
from intermod.spatial import warp

__all__ = ["Model", "RegistrationResult", "select_device", "load_model", "prealign", "compose_field",
           "register_images", "normalise", "write_outputs", "register_files", "OUTPUT_NAMES"]

AIR_HU = -1024.0  # CT values below (scanner padding, e.g. -2048) are air, not anatomy
UNET_TARGET = "intermod.networks.unet.RegistrationUNet"
MIN_OVERLAP = 0.01  # fraction of the CT's field of view that must see the MR after pre-alignment
# Orientation search: candidate rotations (LPS, about the centres of mass) that put a scan taken
# head-first and one taken feet-first (or prone/supine) into the same capture range. Reflections are
# left out: no repositioning of a patient mirrors the anatomy; only a wrong header does.
ORIENTATIONS = {
    "identity": np.eye(3),
    "rot180_x": np.diag([1.0, -1.0, -1.0]),
    "rot180_y": np.diag([-1.0, 1.0, -1.0]),
    "rot180_z": np.diag([-1.0, -1.0, 1.0]),
}
SEARCH_SPACING_MM = 8.0  # the search only ranks orientations: coarse images make each trial < 1 s
# The refinement's finest level. 2 mm costs 2-5x more time on 2 CPU cores (ANTs' Mattes MI is the
# bottleneck); sub-voxel residuals are what the network is trained to correct.
AFFINE_SPACING_MM = 4.0
MI_MAX_VOXELS = 2 ** 17  # MI in the report on a regular subsample: ~0.1 s and bounded memory at 1 mm
OUTPUT_NAMES = {"mr_warped": "mr_warped.nii.gz", "mr_labels_warped": "mr_labels_warped.nii.gz",
                "affine": "affine.mat", "field": "displacement_field.nii.gz", "report": "report.json"}


@dataclass(frozen=True)
class Model:
    """A trained network, ready for inference, and the preprocessing it was trained with (from the checkpoint)."""

    net: InferenceNetwork
    spacing: tuple[float, float, float]
    orientation: str
    inference: str
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]
    labels: dict[str, int]
    method: str
    device: torch.device
    precision: str  # "fp32" or "bf16": what the network runs in
    integration_steps: int = 0  # > 0: the network predicts a velocity, integrated into the field (checkpoint)


@dataclass
class RegistrationResult:
    """Outputs on the CT's own grid: warped MR (and labels), the affine, the composed field, the report."""

    ct: sitk.Image
    mr_warped: sitk.Image
    mr_labels_warped: sitk.Image | None
    affine: sitk.AffineTransform
    field: np.ndarray  # (X, Y, Z, 3) LPS mm on the CT grid: CT point x maps to MR point x + field(x)
    report: dict


@contextmanager
def _timed(timings: dict, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 4)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def select_device(device: str) -> torch.device:
    """``torch.device`` for "cpu" or "cuda[:N]"; :class:`InputError` when CUDA is asked for and absent."""
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device}: expected 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "no GPU is visible" if torch.version.cuda else "this torch build has no CUDA support"
        raise InputError(f"--device {device}: CUDA is not available ({why}, torch {torch.__version__}); "
                         "use --device cpu")
    return torch.device(device)


def load_model(path: str | Path, device: str = "cpu", precision: str = "auto") -> Model:
    """Load a network checkpoint written by :class:`intermod.module.RegistrationModule`.

    ``precision``: "fp32", "bf16" or "auto" (bf16 where the device has it natively, see
    :mod:`intermod.inference`). Refuses (:class:`InputError` naming ``path``) files that are not intermod
    checkpoints, checkpoints of another format version and runs of baseline methods, which hold no network.
    """
    path = Path(path)
    torch_device = select_device(device)
    precision = resolve_precision(precision, torch_device)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    try:
        meta = read_metadata(checkpoint, path)
    except CheckpointError as err:
        raise InputError(str(err)) from None
    target = meta.net["_target_"]
    if target != UNET_TARGET:
        raise InputError(f"{path}: network {target!r} is not supported (expected {UNET_TARGET})")
    try:
        # Every constructor argument recorded (widths, norm, ...), so the weights fit the same network.
        net = RegistrationUNet(**{k: v for k, v in meta.net.items() if k != "_target_"})
        prefix = "net."
        net.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
        network = InferenceNetwork(net, precision).to(torch_device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        missing = f"missing entry {err}" if isinstance(err, KeyError) else _first_line(err)
        raise InputError(f"{path}: unusable intermod checkpoint ({missing})") from None
    return Model(net=network, spacing=meta.spacing, orientation=meta.orientation, inference=meta.inference,
                 ct_window=meta.ct_window, mr_percentiles=meta.mr_percentiles, labels=meta.labels, method=meta.method,
                 device=torch_device, precision=precision, integration_steps=meta.integration_steps)


def _to_ants(image: sitk.Image) -> ants.ANTsImage:
    return ants.from_numpy(to_array(image).astype(np.float32), origin=image.GetOrigin(), spacing=image.GetSpacing(),
                           direction=np.asarray(image.GetDirection()).reshape(3, 3))


def _coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` averaged over bins of about ``spacing_mm`` (cheap anti-aliasing, whatever the spacing)."""
    return sitk.BinShrink(image, [max(1, round(spacing_mm / s)) for s in image.GetSpacing()])


def _centre_of_mass(image: sitk.Image, floor: float) -> np.ndarray:
    """LPS centre of mass of the intensities above ``floor`` (air)."""
    weights = np.clip(to_array(image) - floor, 0, None)
    index = np.indices(weights.shape).reshape(3, -1) @ weights.ravel() / weights.sum()
    return index_to_physical(image) @ index + np.asarray(image.GetOrigin())


def prealign(ct: sitk.Image, mr: sitk.Image, seed: int = 0) -> tuple[sitk.AffineTransform, dict]:
    """Affine transform (CT point -> MR point) maximising Mattes MI, robust to 180-degree rotations.

    ``ct`` is the CT with padding clipped to air. Each rotation of :data:`ORIENTATIONS` about the centres
    of mass starts a short rigid registration at :data:`SEARCH_SPACING_MM`; the one with the highest MI
    starts an affine registration at :data:`AFFINE_SPACING_MM`. Returns the transform and what the search
    found (MI per orientation, the one kept).
    """
    ct_search, mr_search = _coarse(ct, SEARCH_SPACING_MM), _coarse(mr, SEARCH_SPACING_MM)
    ct_centre = _centre_of_mass(ct_search, AIR_HU)
    mr_centre = _centre_of_mass(mr_search, float(np.min(to_array(mr_search))))
    fixed, moving = _to_ants(ct_search), _to_ants(mr_search)
    search_mi, starts = {}, {}
    with ants_workdir() as workdir, ants_random_seed(seed):
        for name, rotation in ORIENTATIONS.items():
            start = sitk.AffineTransform(rotation.flatten().tolist(), (mr_centre - ct_centre).tolist(),
                                         ct_centre.tolist())
            start_file = str(workdir / f"start_{name}.mat")
            sitk.WriteTransform(start, start_file)
            rigid = ants.registration(fixed, moving, "Rigid", initial_transform=start_file, aff_metric="mattes",
                                      aff_iterations=(100,), aff_shrink_factors=(1,), aff_smoothing_sigmas=(0,),
                                      aff_random_sampling_rate=1.0, outprefix=str(workdir / f"search_{name}_"))
            # ANTs reports MI negated (a cost); the report keeps MI itself.
            search_mi[name] = -float(ants.image_mutual_information(fixed, rigid["warpedmovout"]))
            starts[name] = rigid["fwdtransforms"][0]
        best = max(search_mi, key=search_mi.get)
        fixed, moving = _to_ants(_coarse(ct, AFFINE_SPACING_MM)), _to_ants(_coarse(mr, AFFINE_SPACING_MM))
        refined = ants.registration(fixed, moving, "Affine", initial_transform=starts[best], aff_metric="mattes",
                                    aff_iterations=(100, 50), aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                                    aff_random_sampling_rate=0.2, outprefix=str(workdir / "affine_"))
        # ANTs collapses the start transform into its output (-z 1), so this file is the whole affine.
        transform = sitk.ReadTransform(refined["fwdtransforms"][0])
    return sitk.AffineTransform(transform), {"orientation": best, "search_mi": search_mi}


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
                    mr_name: str = "MR") -> RegistrationResult:
    """Register ``mr`` to ``ct`` (any grids, orientations, overlaps); the outputs lie on ``ct``'s grid.

    ``ct_labels`` serve only the report (Dice, ASD per label, with ``mr_labels``). ``affine=False`` skips
    the pre-alignment (the images must already be aligned in world space). Raises :class:`InputError`
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
        mr_warped_grid = warp(mr_d, field)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
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


def _json_safe(value):
    """NaN/inf (e.g. ASD of an absent organ) become null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out exists and is not a folder")


def write_outputs(result: RegistrationResult, out_dir: str | Path) -> dict[str, str]:
    """Write the outputs and ``report.json`` into ``out_dir``, all or nothing.

    Files are written into a temporary folder beside ``out_dir`` and moved in only when all are written,
    so a failure leaves ``out_dir`` as it was. Files of the same names already there are replaced.
    Returns output name -> path.
    """
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (unlike mkdtemp) honours the umask: the folder may become out_dir itself.
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    names = {k: v for k, v in OUTPUT_NAMES.items() if k != "mr_labels_warped" or result.mr_labels_warped is not None}
    try:
        start = time.perf_counter()
        sitk.WriteImage(result.mr_warped, str(staging / names["mr_warped"]))
        if result.mr_labels_warped is not None:
            sitk.WriteImage(result.mr_labels_warped, str(staging / names["mr_labels_warped"]))
        sitk.WriteTransform(result.affine, str(staging / names["affine"]))
        write_displacement_field(staging / names["field"], result.field, result.ct)
        timings = result.report["timings_s"]
        timings["write"] = round(time.perf_counter() - start, 4)
        timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 4)
        report = {**result.report, "outputs": {k: v for k, v in names.items() if k != "report"}}
        (staging / names["report"]).write_text(json.dumps(_json_safe(report), indent=2) + "\n")
        if out_dir.exists():
            for name in names.values():
                os.replace(staging / name, out_dir / name)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {k: str(out_dir / v) for k, v in names.items()}


def register_files(ct: str | Path, mr: str | Path, checkpoint: str | Path, out_dir: str | Path,
                   mr_labels: str | Path | None = None, ct_labels: str | Path | None = None, device: str = "cpu",
                   affine: bool = True, precision: str = "auto") -> dict:
    """The whole of ``intermod-register``: read and validate, register, write into ``out_dir``.

    Every problem with an input raises :class:`InputError` before anything is written. Returns the report.
    """
    _check_out_dir(Path(out_dir).absolute())
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        model = load_model(checkpoint, device, precision)
        ct_image, mr_image = read_image(ct), read_image(mr)
        mr_label_image = None if mr_labels is None else read_image(mr_labels, labels=True)
        ct_label_image = None if ct_labels is None else read_image(ct_labels, labels=True)
    result = register_images(ct_image, mr_image, model, mr_label_image, ct_label_image, affine, str(ct), str(mr))
    result.report["timings_s"] = {**timings, **result.report["timings_s"]}
    result.report["inputs"] = {"ct": str(ct), "mr": str(mr), "checkpoint": str(checkpoint),
                               "mr_labels": None if mr_labels is None else str(mr_labels),
                               "ct_labels": None if ct_labels is None else str(ct_labels),
                               "device": device, "method": model.method, "intermod_version": intermod.__version__}
    write_outputs(result, out_dir)
    return result.report
