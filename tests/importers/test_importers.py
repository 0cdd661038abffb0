"""intermod-import on small fixtures written in each dataset's documented layout.

The real datasets cannot be downloaded here: the fixtures are an analytic pelvis rendered on small
grids and written as the documented files (DICOM series and RTSTRUCTs with pydicom, NIfTI with
nibabel). The Gold Atlas and SynthRAD imports are then paired (one ANTs run each, a few seconds) to
check that the chain ends in a valid dataset.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_erosion
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RTStructureSetStorage, generate_uid

from intermod.cli.import_data import main
from intermod.cli.pair import main as pair_main
from intermod.data.layout import check_dataset
from intermod.geometry import RAS_FROM_LPS
from intermod.importers.goldatlas import rasterise_roi
from intermod.metrics import dice

# The analytic anatomy (LPS mm): name -> (centre, radii, CT HU, MR value). The MR shows it shifted.
BODY = ((0.0, 0.0, 0.0), (42.0, 32.0, 30.0), 40.0, 300.0)
ORGANS = {"Bladder": ((-10.0, -6.0, 2.0), (12.0, 10.0, 10.0), 10.0, 900.0),
          "Femoral Head L": ((22.0, 4.0, -4.0), (8.0, 8.0, 9.0), 700.0, 150.0),
          "Rectum": ((2.0, 16.0, 0.0), (7.0, 6.0, 14.0), -200.0, 100.0)}
MR_SHIFT = np.array([1.5, -1.0, 1.0])


def make_grid(size, spacing, centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin((np.asarray(centre) - (np.asarray(size) - 1) / 2 * np.asarray(spacing)).tolist())
    return grid


CT_GRID = dict(size=(36, 30, 16), spacing=(2.5, 2.5, 4.0))
T2_GRID = dict(size=(40, 32, 22), spacing=(2.2, 2.2, 3.0), centre=(1.0, -1.0, 0.5))


def points(grid: sitk.Image) -> np.ndarray:
    """LPS mm of every voxel centre, (X, Y, Z, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.GetSize()], indexing="ij"), -1)
    return np.asarray(grid.GetOrigin()) + index * np.asarray(grid.GetSpacing())


def inside(p: np.ndarray, centre, radii) -> np.ndarray:
    return (((p - centre) / radii) ** 2).sum(-1) <= 1.0


def render(grid: sitk.Image, shift=(0.0, 0.0, 0.0), modality="ct", labels=None):
    """(image, label map) on ``grid`` of the anatomy moved by ``shift`` mm; labels: name -> value."""
    p = points(grid) - np.asarray(shift)
    column = 2 if modality == "ct" else 3
    image = np.where(inside(p, BODY[0], BODY[1]), BODY[column], -1000.0 if modality == "ct" else 0.0)
    label = np.zeros(p.shape[:3], np.uint8)
    for name, organ in ORGANS.items():
        mask = inside(p, organ[0], organ[1])
        image[mask] = organ[column]
        if labels and name in labels:
            label[mask] = labels[name]
    return image.astype(np.float32), label


def to_sitk(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.CopyInformation(grid)
    return image


def save_nifti(array: np.ndarray, grid: sitk.Image, path: Path) -> None:
    affine = np.eye(4)
    affine[:3, :3] = RAS_FROM_LPS @ np.diag(grid.GetSpacing())
    affine[:3, 3] = RAS_FROM_LPS @ np.asarray(grid.GetOrigin())
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


# --------------------------------------------------------------------------------------------------
# DICOM writers

def base_dataset(sop_class, modality: str, series_uid: str, description: str, study_uid: str, frame: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = "GA-01", "Anonymous"
    ds.Modality, ds.SeriesDescription = modality, description
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
    return ds


def write_series(folder: Path, array: np.ndarray, grid: sitk.Image, modality: str, description: str,
                 study_uid: str, frame: str) -> str:
    """One slice file per z index (written in reverse order, as file order must not matter)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    intercept = -1024.0 if modality == "CT" else 0.0
    spacing = grid.GetSpacing()
    for k in reversed(range(array.shape[2])):
        ds = base_dataset(sop_class, modality, series_uid, description, study_uid, frame)
        ds.ImagePositionPatient = [round(v, 4) for v in grid.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.InstanceNumber = intercept, 1, k + 1
        ds.PixelData = np.ascontiguousarray((array[:, :, k].T - intercept).astype(np.int16)).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return series_uid


def ellipse_contours(grid: sitk.Image, shift, names) -> dict[str, list[np.ndarray]]:
    """Per ROI, one 48-gon per slice of ``grid`` crossing it (LPS mm, (N, 3))."""
    zs = [grid.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(grid.GetSize()[2])]
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    contours = {}
    for name in names:
        centre, radii = np.asarray(ORGANS.get(name, BODY)[0]) + shift, ORGANS.get(name, BODY)[1]
        contours[name] = []
        for z in zs:
            scale = 1 - ((z - centre[2]) / radii[2]) ** 2
            if scale > 0:
                x = centre[0] + radii[0] * np.sqrt(scale) * np.cos(angles)
                y = centre[1] + radii[1] * np.sqrt(scale) * np.sin(angles)
                contours[name].append(np.column_stack([x, y, np.full_like(x, z)]))
    return contours


def write_rtstruct(path: Path, contours: dict[str, list[np.ndarray]], image_series: str | None, study_uid: str,
                   frame: str, external=("BODY",)) -> None:
    ds = base_dataset(RTStructureSetStorage, "RTSTRUCT", generate_uid(), "structures", study_uid, frame)
    del ds.FrameOfReferenceUID  # an RTSTRUCT names its frame in ReferencedFrameOfReferenceSequence
    series = [Dataset()]
    series[0].SeriesInstanceUID = image_series or generate_uid()
    study = Dataset()
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = study_uid, series
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID, frame_item.RTReferencedStudySequence = frame, [study]
    ds.ReferencedFrameOfReferenceSequence = [frame_item]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, polygons) in enumerate(contours.items(), 1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ContourSequence = number, []
        for polygon in polygons:
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(polygon)
            contour.ContourData = [round(float(v), 3) for v in polygon.ravel()]
            roi_contour.ContourSequence.append(contour)
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "EXTERNAL" if name in external else "ORGAN"
        ds.RTROIObservationsSequence.append(observation)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def goldatlas(tmp_path_factory) -> Path:
    """Two patients: planning CT, deformed CT and T2 (own grid, anatomy shifted), a T1, structure sets
    on the CT (with an extra PTV) and on the T2 (patient 1) or the deformed CT (patient 2)."""
    src = tmp_path_factory.mktemp("goldatlas") / "GoldAtlas"
    ct_grid, t2_grid = make_grid(**CT_GRID), make_grid(**T2_GRID)
    for patient in ("1_01_P", "2_03_P"):
        folder, study = src / patient, generate_uid()
        ct_frame, mr_frame = generate_uid(), generate_uid()
        ct_series = write_series(folder / "CT", render(ct_grid)[0], ct_grid, "CT", "Planning CT", study, ct_frame)
        write_series(folder / "dCT", render(t2_grid, MR_SHIFT)[0], t2_grid, "CT", "Deformed CT to T2", study, mr_frame)
        t2_series = write_series(folder / "MR" / "T2", render(t2_grid, MR_SHIFT, "mr")[0], t2_grid, "MR",
                                 "T2 TSE axial", study, mr_frame)
        write_series(folder / "MR" / "T1", render(t2_grid, MR_SHIFT, "mr")[0] * 0.5, t2_grid, "MR", "T1 VIBE",
                     study, mr_frame)
        names = [*ORGANS, "BODY"]
        ct_contours = ellipse_contours(ct_grid, np.zeros(3), names)
        write_rtstruct(folder / "RS_CT.dcm", {**ct_contours, "PTV": ct_contours["Bladder"]}, ct_series, study, ct_frame)
        # Patient 2's MR structure set names no series: found by its frame of reference.
        drawn_on = t2_series if patient == "1_01_P" else None
        write_rtstruct(folder / "RS_MR.dcm", ellipse_contours(t2_grid, MR_SHIFT, names), drawn_on, study, mr_frame)
        (folder / "README.txt").write_text("not DICOM")
    return src


def expected_labels(grid: sitk.Image, shift, labels) -> np.ndarray:
    return render(grid, shift, labels=labels)[1]


def test_goldatlas_import_then_pairing(goldatlas, tmp_path, capsys):
    dst = tmp_path / "imported"
    assert main(["goldatlas", str(goldatlas), str(dst)]) == 0
    meta = json.loads((dst / "dataset.json").read_text())
    labels = {"bladder": 1, "femoral_head_l": 2, "rectum": 3}  # BODY (EXTERNAL) and PTV (CT only) left out
    assert meta["labels"] == labels and meta["subjects"] == ["1_01_P", "2_03_P"]
    assert meta["provided_pairs"] == ["ct_paired"] and meta["spacing"] == [2.5, 2.5, 4.0]
    assert "intermod-pair" in capsys.readouterr().out

    ct_grid = make_grid(**CT_GRID)
    named = {name: labels[name.lower().replace(" ", "_")] for name in ORGANS}
    for patient in meta["subjects"]:
        folder = dst / patient
        ct = nib.load(str(folder / "ct.nii.gz"))
        assert ct.shape == tuple(CT_GRID["size"])
        assert np.allclose(ct.affine[:3, 3], RAS_FROM_LPS @ np.asarray(ct_grid.GetOrigin()))
        np.testing.assert_allclose(np.asarray(ct.dataobj), render(ct_grid)[0])  # HU from the rescale attributes
        ct_labels = np.asarray(nib.load(str(folder / "ct_labels.nii.gz")).dataobj)
        mr_labels = np.asarray(nib.load(str(folder / "mr_labels.nii.gz")).dataobj)
        for organ, value in named.items():
            truth_ct = expected_labels(ct_grid, np.zeros(3), named) == value
            truth_mr = expected_labels(ct_grid, MR_SHIFT, named) == value
            assert dice(ct_labels == value, truth_ct) > 0.95, organ
            assert dice(mr_labels == value, truth_mr) > 0.85, organ  # rasterised on the T2, then resampled
        # The T2 and the deformed CT show the shifted anatomy, resampled onto the CT grid.
        mr = np.asarray(nib.load(str(folder / "mr.nii.gz")).dataobj)
        ct_paired = np.asarray(nib.load(str(folder / "ct_paired.nii.gz")).dataobj)
        core = binary_erosion(expected_labels(ct_grid, MR_SHIFT, named) == named["Bladder"])
        assert np.median(mr[core]) == pytest.approx(900.0) and np.median(ct_paired[core]) == pytest.approx(10.0)

    paired = tmp_path / "paired"
    assert pair_main([str(dst), str(paired)]) == 0
    assert check_dataset(paired) == []
    report = json.loads((paired / "pairing_report.json").read_text())
    assert report["provided"] == ["ct_paired"]
    for patient in meta["subjects"]:
        record = report["subjects"][patient]
        assert all(d["ct_paired"] is None for d in record["dice"].values())  # provided: not measured
        assert min(d["mr_paired"] for d in record["dice"].values()) >= 0.95 and record["passed"] is True
        kept = np.asarray(nib.load(str(paired / patient / "ct_paired.nii.gz")).dataobj)
        np.testing.assert_array_equal(kept, np.asarray(nib.load(str(dst / patient / "ct_paired.nii.gz")).dataobj))


def test_goldatlas_organ_choice_and_layout_errors(goldatlas, tmp_path, capsys):
    dst = tmp_path / "rectum_only"
    assert main(["goldatlas", str(goldatlas), str(dst), "--organs", "Rectum", "Femoral Head L"]) == 0
    assert json.loads((dst / "dataset.json").read_text())["labels"] == {"rectum": 1, "femoral_head_l": 2}

    assert main(["goldatlas", str(goldatlas), str(tmp_path / "x"), "--organs", "prostate"]) == 2
    assert "organs ['prostate'] not found" in capsys.readouterr().err

    second_t2 = goldatlas / "1_01_P" / "MR" / "T2"
    for path in second_t2.iterdir():  # a second T2 series makes the patient ambiguous
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.save_as(goldatlas / "1_01_P" / f"copy_{path.name}")
    try:
        assert main(["goldatlas", str(goldatlas), str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "1_01_P: found 2 T2 series" in err
    finally:
        for path in goldatlas.glob("1_01_P/copy_*"):
            path.unlink()


def test_rasteriser_holes_and_off_plane_contours():
    grid = make_grid((20, 20, 3), (1.0, 1.0, 2.0))
    z = grid.TransformIndexToPhysicalPoint((0, 0, 1))[2]

    def square(half):
        return np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])

    roi = Dataset()
    roi.ContourSequence = []
    for half in (6.2, 2.2):  # a ring: the inner contour is a hole
        contour = Dataset()
        contour.ContourGeometricType, contour.ContourData = "CLOSED_PLANAR", square(half).ravel().tolist()
        roi.ContourSequence.append(contour)
    mask = rasterise_roi(roi, grid, "ring")
    centres = points(grid)
    outer = (np.abs(centres[..., 0]) < 6.2) & (np.abs(centres[..., 1]) < 6.2)
    hole = (np.abs(centres[..., 0]) < 2.2) & (np.abs(centres[..., 1]) < 2.2)
    np.testing.assert_array_equal(mask[:, :, 1], (outer & ~hole)[:, :, 1])
    assert not mask[:, :, [0, 2]].any()

    roi.ContourSequence[0].ContourData = (square(6.2) + [0, 0, 0.9]).ravel().tolist()  # between slices
    with pytest.raises(ValueError, match="does not lie in a slice plane"):
        rasterise_roi(roi, grid, "ring")


# --------------------------------------------------------------------------------------------------
# SynthRAD2023 and Learn2Reg

def test_synthrad_import_is_label_free_and_pairs_on_images(tmp_path, capsys):
    src = tmp_path / "synthrad"
    grid = make_grid((30, 26, 14), (3.0, 3.0, 4.0))
    for case in ("1PA001", "1PA004"):
        folder = src / "Task1" / "pelvis" / case
        ct, _ = render(grid)
        mr, _ = render(grid, MR_SHIFT, "mr")
        save_nifti(ct, grid, folder / "ct.nii.gz")
        save_nifti(mr, grid, folder / "mr.nii.gz")
        save_nifti((ct > -500).astype(np.uint8), grid, folder / "mask.nii.gz")
    (src / "Task1" / "pelvis" / "overview").mkdir()

    dst = tmp_path / "imported"
    assert main(["synthrad2023", str(src), str(dst)]) == 0
    assert "label-free" in capsys.readouterr().out
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == {"body": 1} and meta["label_free"] is True and meta["subjects"] == ["1PA001", "1PA004"]
    mask = np.asarray(nib.load(str(src / "Task1" / "pelvis" / "1PA001" / "mask.nii.gz")).dataobj)
    for key in ("ct_labels", "mr_labels"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(dst / "1PA001" / f"{key}.nii.gz")).dataobj), mask)

    coarse = tmp_path / "coarse"  # --spacing: a coarser grid over the same box, same centre
    assert main(["synthrad2023", str(src), str(coarse), "--spacing", "6", "6", "8"]) == 0
    assert json.loads((coarse / "dataset.json").read_text())["spacing"] == [6.0, 6.0, 8.0]
    fine, rough = (nib.load(str(root / "1PA001" / "ct.nii.gz")) for root in (dst, coarse))
    assert rough.shape == (15, 13, 7)
    centres = [image.affine @ [*(np.array(image.shape) - 1) / 2, 1] for image in (rough, fine)]
    np.testing.assert_allclose(*centres, atol=1e-4)

    assert main(["synthrad2023", str(src), str(tmp_path / "x"), "--organs", "bladder"]) == 2
    assert "no organ labels" in capsys.readouterr().err

    meta["subjects"] = ["1PA001"]  # one ANTs run is enough here
    (dst / "dataset.json").write_text(json.dumps(meta))
    paired = tmp_path / "paired"
    assert pair_main([str(dst), str(paired)]) == 0
    captured = capsys.readouterr()
    assert "image-only (no organ labels)" in captured.out and "no Dice gate" in captured.err
    assert check_dataset(paired) == []
    report = json.loads((paired / "pairing_report.json").read_text())
    record = report["subjects"]["1PA001"]
    assert report["image_only"] == ["1PA001"] and record["gate"] == "image" and record["passed"] is None
    assert "dice" not in record and record["images"]["mi_after"] > record["images"]["mi_before"]
    assert json.loads((paired / "dataset.json").read_text())["label_free"] is True


def test_learn2reg_import_reads_names_skips_unpaired_and_unlabelled_cases(tmp_path, capsys):
    src = tmp_path / "AbdomenMRCT"
    grid = make_grid((24, 20, 12), (4.0, 4.0, 4.0))
    values = {"Bladder": 1, "Femoral Head L": 2, "Rectum": 4}  # stand-ins for liver, spleen, left kidney
    for number in ("0001", "0002", "0017"):
        for suffix, modality, shift in (("0000", "mr", MR_SHIFT), ("0001", "ct", np.zeros(3))):
            if number == "0017" and suffix == "0001":
                continue  # an MR-only case
            image, label = render(grid, shift, modality, values)
            save_nifti(image, grid, src / "imagesTr" / f"AbdomenMRCT_{number}_{suffix}.nii.gz")
            if number == "0001":
                save_nifti(label, grid, src / "labelsTr" / f"AbdomenMRCT_{number}_{suffix}.nii.gz")
    (src / "AbdomenMRCT_dataset.json").write_text(json.dumps({
        "name": "AbdomenMRCT", "modality": {"0": "MR", "1": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "right kidney", "4": "left kidney"}}))

    dst = tmp_path / "imported"
    assert main(["learn2reg-abdomenmrct", str(src), str(dst), "--organs", "Left Kidney", "liver"]) == 0
    out = capsys.readouterr().out
    assert "skipped AbdomenMRCT_0002: no label map" in out
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == {"left_kidney": 4, "liver": 1} and meta["subjects"] == ["AbdomenMRCT_0001"]
    ct_labels = np.asarray(nib.load(str(dst / "AbdomenMRCT_0001" / "ct_labels.nii.gz")).dataobj)
    assert sorted(np.unique(ct_labels).tolist()) == [0, 1, 4]  # spleen (2) set to background
    ct = np.asarray(nib.load(str(dst / "AbdomenMRCT_0001" / "ct.nii.gz")).dataobj)
    np.testing.assert_allclose(ct, render(grid)[0])  # _0001 is the CT, as dataset.json says

    assert main(["learn2reg-abdomenmrct", str(src), str(dst), "--organs", "left kidney", "liver"]) == 0
    assert "AbdomenMRCT_0001: kept" in capsys.readouterr().out
    assert main(["learn2reg-abdomenmrct", str(src), str(dst), "--organs", "liver", "spleen"]) == 0
    assert "AbdomenMRCT_0001: imported" in capsys.readouterr().out  # other organs: imported again
    assert json.loads((dst / "dataset.json").read_text())["labels"] == {"liver": 1, "spleen": 2}

    assert main(["learn2reg-abdomenmrct", str(src), str(tmp_path / "all")]) == 2  # no right kidney here
    assert "organs ['right_kidney'] are absent from ct_labels" in capsys.readouterr().err

    assert main(["learn2reg-abdomenmrct", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "imagesTr: missing" in capsys.readouterr().err
    assert main(["learn2reg-abdomenmrct", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert main(["learn2reg-abdomenmrct", str(src), str(src)]) == 2
    assert "must differ from the source" in capsys.readouterr().err
