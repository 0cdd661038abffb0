"""Gold Atlas male pelvis (Nyholm et al., Med Phys 2018): CT, T2 MR, a deformed CT and structure sets.

Assumed layout (from the dataset's description; verified here only against DICOM fixtures written
in this layout with pydicom, not against the download)::

    SRC/<patient>/**/<any file name>    every DICOM file of the patient, at any depth

One folder per patient (its name becomes the subject name). Files that are not DICOM are ignored.
Series are grouped by SeriesInstanceUID (0020,000E) and told apart by Modality (0008,0060) and
SeriesDescription (0008,103E), case-insensitively:

* planning CT: Modality ``CT`` whose description does not contain ``deform``;
* deformed CT: Modality ``CT`` whose description contains ``deform`` (the CT deformably registered
  to the T2, on the T2 grid);
* T2 MR: Modality ``MR`` whose description contains ``t2``; other MR series (T1) are ignored;
* structure sets: Modality ``RTSTRUCT``. Each is drawn on the image series it references
  (ReferencedFrameOfReferenceSequence > RTReferencedStudySequence > RTReferencedSeriesSequence >
  SeriesInstanceUID) or, when that series is not among the above, on the image(s) sharing its
  FrameOfReferenceUID. Drawn on the planning CT it gives ``ct_labels``; on the T2 or the deformed
  CT (the MR's anatomy) it gives ``mr_labels``. Exactly one structure set per anatomy.

Images are read with SimpleITK from the files ordered along the slice normal (HU from the rescale
attributes). Per patient the output is: ``ct`` = planning CT; ``mr`` = T2 and ``ct_paired`` = the
deformed CT, both resampled onto the CT grid in scanner coordinates (so the CT and T2 are assumed to
share scanner coordinates roughly, as a deformed CT on the T2 grid implies; ``intermod-pair`` refines
the rest, and cannot use ``--affine`` here since the deformed CT is tied to the T2's position);
``ct_labels`` and ``mr_labels`` = the structure sets rasterised on the grid they were drawn on and
resampled (nearest neighbour) onto the CT grid. The dataset has no ``mr_paired``: run
``intermod-pair`` next, which keeps the provided ``ct_paired`` (dataset.json ``"provided_pairs"``).

Organs: ROI names (StructureSetROISequence > ROIName) in the normalised form of ``organ_name``
("Femoral Head L" -> ``femoral_head_l``). By default every ROI present in both structure sets of
every patient, except those interpreted as ``EXTERNAL`` (RTROIObservationsSequence >
RTROIInterpretedType), valued 1, 2, ... in name order; ``organs`` picks and orders them. Overlapping
structures are painted largest first, so a structure inside another keeps its voxels.

Rasterisation (our own, pydicom + matplotlib.path): each ``CLOSED_PLANAR`` contour
(ROIContourSequence > ContourSequence > ContourData, LPS mm) is mapped to voxel indices of the
image it was drawn on, must lie in one slice plane of it (within 0.25 voxel), and fills the voxels
whose centres lie inside the polygon. Contours of one ROI on one slice are combined by exclusive or,
so a contour inside another is a hole.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib.path import Path as Polygon
from pydicom.errors import InvalidDicomError

from intermod.importers import Case, Found, ImportDataError, organ_name, select_organs

PLANE_TOLERANCE = 0.25  # voxels: how far off a slice plane a contour may lie


@dataclass
class Series:
    """One DICOM series of a patient: its role, frame of reference and files."""

    uid: str
    modality: str
    description: str
    frame_of_reference: str
    files: list[Path] = field(default_factory=list)

    @property
    def role(self) -> str | None:
        """'ct', 'deformed_ct', 't2', 'rtstruct' or None (ignored)."""
        text = self.description.lower()
        if self.modality == "CT":
            return "deformed_ct" if "deform" in text else "ct"
        if self.modality == "MR":
            return "t2" if "t2" in text else None
        return "rtstruct" if self.modality == "RTSTRUCT" else None


@dataclass
class Patient:
    """A patient's series by role, and for each anatomy ('ct', 'mr') its structure set and the
    image it was drawn on."""

    folder: Path
    images: dict[str, Series]
    structures: dict[str, tuple[Path, Series]]

    def rois(self, anatomy: str) -> dict[str, str]:
        """ROI name (normalised) -> RTROIInterpretedType of the anatomy's structure set."""
        return _roi_types(pydicom.dcmread(self.structures[anatomy][0], stop_before_pixels=True))


def find_cases(src: Path, organs: list[str] | None) -> Found:
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    patients = [_scan_patient(folder) for folder in folders]
    patients = [p for p in patients if p is not None]
    if not patients:
        raise ImportDataError(f"{src}: no patient folder with DICOM files (expected SRC/<patient>/...)")
    common = None
    for patient in patients:
        ct_rois, mr_rois = patient.rois("ct"), patient.rois("mr")
        names = {n for n in set(ct_rois) & set(mr_rois) if "EXTERNAL" not in (ct_rois[n], mr_rois[n])}
        common = names if common is None else common & names
    if not common:
        raise ImportDataError(f"{src}: no ROI name is in the CT and the MR structure sets of every patient")
    available = {name: value for value, name in enumerate(sorted(common), 1)}
    labels = select_organs(available, organs, f"{src} (ROIs in the CT and MR structure sets of every patient)")
    labels = {name: value for value, name in enumerate(labels, 1)}
    meta = {"name": "Gold Atlas male pelvis", "source": {"dataset": "goldatlas", "root": str(src)},
            "provided_pairs": ["ct_paired"],
            "provided_note": "ct_paired is the dataset's deformed CT (CT registered to the T2 by its authors)"}
    return Found([Case(p.folder.name, partial(_load, p, labels)) for p in patients], labels, meta)


def _scan_patient(folder: Path) -> Patient | None:
    """Group the patient's DICOM files into series and attribute the structure sets; None when the
    folder holds no DICOM file."""
    series: dict[str, Series] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            continue
        if uid not in series:
            series[uid] = Series(uid, str(ds.get("Modality", "")).upper(), str(ds.get("SeriesDescription", "")),
                                 str(ds.get("FrameOfReferenceUID", "")) or _rtstruct_frame(ds))
        series[uid].files.append(path)
    if not series:
        return None
    images = {}
    for role, what in (("ct", "planning CT"), ("deformed_ct", "deformed CT"), ("t2", "T2")):
        found = [s for s in series.values() if s.role == role]
        if len(found) != 1:
            descriptions = ", ".join(repr(s.description) for s in found)
            raise ImportDataError(f"{folder}: found {len(found)} {what} series ({descriptions}); expected exactly one "
                                  f"(told apart by Modality and SeriesDescription, see the importer's doc)")
        images[role] = found[0]
    structures: dict[str, list] = defaultdict(list)
    for rt in (s for s in series.values() if s.role == "rtstruct"):
        for path in rt.files:
            anatomy, drawn_on = _attribute(pydicom.dcmread(path, stop_before_pixels=True), images, path)
            structures[anatomy].append((path, drawn_on))
    for anatomy in ("ct", "mr"):
        if len(structures[anatomy]) != 1:
            files = ", ".join(str(p) for p, _ in structures[anatomy]) or "none"
            raise ImportDataError(f"{folder}: expected one structure set drawn on the "
                                  f"{'planning CT' if anatomy == 'ct' else 'T2 (or the deformed CT)'}, found {files}")
    return Patient(folder, images, {a: structures[a][0] for a in ("ct", "mr")})


def _attribute(ds, images: dict[str, Series], path: Path) -> tuple[str, Series]:
    """(anatomy, image series the structure set was drawn on)."""
    anatomy_of = {"ct": "ct", "deformed_ct": "mr", "t2": "mr"}
    referenced = {str(series.SeriesInstanceUID)
                  for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
                  for study in frame.get("RTReferencedStudySequence", [])
                  for series in study.get("RTReferencedSeriesSequence", [])}
    for role, series in images.items():
        if series.uid in referenced:
            return anatomy_of[role], series
    frame = _rtstruct_frame(ds)
    anatomies = {anatomy_of[role] for role, s in images.items() if s.frame_of_reference == frame}
    if len(anatomies) != 1:
        raise ImportDataError(f"{path}: cannot tell which image the structure set was drawn on (its referenced "
                              f"series is none of the CT, deformed CT and T2, and its frame of reference matches "
                              f"{'none' if not anatomies else 'both anatomies'})")
    anatomy = anatomies.pop()
    role = "ct" if anatomy == "ct" else "t2" if images["t2"].frame_of_reference == frame else "deformed_ct"
    return anatomy, images[role]


def _rtstruct_frame(ds) -> str:
    frames = ds.get("ReferencedFrameOfReferenceSequence", [])
    return str(frames[0].FrameOfReferenceUID) if frames else ""


def _roi_types(ds) -> dict[str, str]:
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "")).upper()
             for o in ds.get("RTROIObservationsSequence", [])}
    return {organ_name(roi.ROIName): types.get(int(roi.ROINumber), "") for roi in ds.StructureSetROISequence}


def _load(patient: Patient, labels: dict[str, int]) -> dict[str, sitk.Image]:
    images = {"ct": read_series(patient.images["ct"]), "mr": read_series(patient.images["t2"]),
              "ct_paired": read_series(patient.images["deformed_ct"])}
    image_of_role = {"ct": "ct", "t2": "mr", "deformed_ct": "ct_paired"}
    for anatomy in ("ct", "mr"):
        path, drawn_on = patient.structures[anatomy]
        reference = images[image_of_role[drawn_on.role]]
        images[f"{anatomy}_labels"] = rasterise_structure_set(pydicom.dcmread(path), reference, labels, path)
    return images


def read_series(series: Series) -> sitk.Image:
    """A DICOM image series as a float32 SimpleITK image, slices ordered along their normal."""
    def position(path: Path) -> float:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.cross(orientation[:3], orientation[3:]), np.asarray(ds.ImagePositionPatient, float)))

    try:
        files = sorted(series.files, key=position) if len(series.files) > 1 else series.files
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        image = reader.Execute()
    except (AttributeError, RuntimeError) as err:
        raise ImportDataError(f"{series.files[0].parent}: series {series.description!r} unreadable "
                              f"({type(err).__name__}: {str(err).strip().splitlines()[-1]})") from None
    return sitk.Cast(image, sitk.sitkFloat32)


# --------------------------------------------------------------------------------------------------
# The RTSTRUCT rasteriser

def rasterise_structure_set(ds, reference: sitk.Image, labels: dict[str, int], path: Path | str = "RTSTRUCT"
                            ) -> sitk.Image:
    """The ROIs of ``labels`` (normalised name -> value) in an RTSTRUCT dataset as a label image on
    ``reference``'s grid; larger structures are painted first so nested ones stay visible."""
    numbers = {int(roi.ROINumber): organ_name(roi.ROIName) for roi in ds.StructureSetROISequence}
    masks = {}
    for roi in ds.get("ROIContourSequence", []):
        name = numbers.get(int(roi.ReferencedROINumber))
        if name in labels:
            masks[name] = rasterise_roi(roi, reference, f"{path}: ROI {name!r}")
    missing = sorted(set(labels) - set(masks))
    if missing:
        raise ImportDataError(f"{path}: no contours for ROIs {missing}")
    array = np.zeros(reference.GetSize(), np.uint16)  # (X, Y, Z)
    for name in sorted(masks, key=lambda n: -int(masks[n].sum())):
        array[masks[name]] = labels[name]
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.CopyInformation(reference)
    return image


def rasterise_roi(roi, reference: sitk.Image, where: str) -> np.ndarray:
    """One ROIContourSequence item as a boolean (X, Y, Z) mask on ``reference``'s grid."""
    size = reference.GetSize()
    to_index = np.linalg.inv(np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing()))
    origin = np.asarray(reference.GetOrigin())
    mask = np.zeros(size, dtype=bool)
    for contour in roi.get("ContourSequence", []):
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
            continue  # points and open polylines enclose nothing
        points = (np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - origin) @ to_index.T
        k = int(np.rint(points[:, 2].mean()))
        if np.abs(points[:, 2] - k).max() > PLANE_TOLERANCE:
            raise ImportDataError(f"{where}: a contour does not lie in a slice plane of the image it was drawn on "
                                  f"(slice index {points[:, 2].min():.2f} to {points[:, 2].max():.2f})")
        if not 0 <= k < size[2]:
            continue
        lo = np.maximum(np.floor(points[:, :2].min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(points[:, :2].max(0)).astype(int) + 1, size[:2])
        if np.any(hi <= lo):
            continue
        ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
        inside = Polygon(points[:, :2]).contains_points(np.column_stack([ii.ravel(), jj.ravel()]))
        mask[lo[0]:hi[0], lo[1]:hi[1], k] ^= inside.reshape(ii.shape)
    return mask
