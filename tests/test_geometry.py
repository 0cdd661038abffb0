"""Grids, image reading and the voxel <-> physical (LPS) field conventions of intermod.geometry."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermod.geometry import (InputError, from_array, index_to_physical, lps_to_voxel, orientation_direction,
                               ras_affine, read_displacement_field, read_image, reference_grid, resample, to_array,
                               voxel_to_lps, write_displacement_field)
from intermod.spatial import warp

# An oblique, axis-permuted, left-handed-in-RAS direction: catches any transposed or sign-flipped use.
_C, _S = np.cos(0.3), np.sin(0.3)
OBLIQUE = np.array([[0, _C, -_S], [0, _S, _C], [1, 0, 0]]) @ np.diag([1, -1, 1])


def _image(array: np.ndarray, spacing=(2.0, 2.0, 2.0), direction=np.eye(3), origin=(10.0, -20.0, 5.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    image.SetOrigin(origin)
    return image


def _random_volume(shape=(12, 10, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_orientation_codes_give_lps_directions():
    np.testing.assert_array_equal(orientation_direction("LPS"), np.eye(3))
    np.testing.assert_array_equal(orientation_direction("RAS"), np.diag([-1.0, -1.0, 1.0]))
    # Axis 0 of "PIR" runs posterior (+y in LPS), axis 1 inferior (-z), axis 2 right (-x).
    np.testing.assert_array_equal(orientation_direction("pir"), [[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    for bad in ("RAR", "RA", "XYZ"):
        with pytest.raises(ValueError, match="axis codes"):
            orientation_direction(bad)


def test_arrays_are_x_y_z_and_ras_affine_matches_nibabel(tmp_path):
    array = _random_volume()
    image = _image(array, spacing=(1.5, 2.0, 3.0), direction=OBLIQUE)
    np.testing.assert_array_equal(to_array(image), array)
    assert to_array(from_array(array, image)).shape == array.shape
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    loaded = nib.load(tmp_path / "image.nii.gz")
    np.testing.assert_allclose(ras_affine(image), loaded.affine, atol=1e-5)
    np.testing.assert_allclose(loaded.get_fdata(), array, atol=1e-6)


def test_voxel_physical_conversion_round_trip_and_nibabel_route():
    image = _image(_random_volume(), spacing=(1.5, 2.0, 3.0), direction=OBLIQUE)
    u = np.random.default_rng(1).normal(size=(3, 12, 10, 8))
    v = voxel_to_lps(u, index_to_physical(image))
    assert v.shape == (12, 10, 8, 3)
    # The brief's route: nibabel's affine[:3, :3] times u, then RAS -> LPS by negating x and y.
    ras = np.einsum("ij,j...->...i", ras_affine(image)[:3, :3], u)
    np.testing.assert_allclose(v, ras * [-1, -1, 1], atol=1e-12)
    np.testing.assert_allclose(lps_to_voxel(v, index_to_physical(image)), u, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        voxel_to_lps(v, index_to_physical(image))


def test_displacement_field_file_is_an_itk_vector_nifti(tmp_path):
    image = _image(_random_volume(), spacing=(1.5, 2.0, 3.0), direction=OBLIQUE)
    field = np.random.default_rng(2).normal(size=(12, 10, 8, 3)).astype(np.float32)
    path = write_displacement_field(tmp_path / "field.nii.gz", field, image)
    nifti = nib.load(path)
    assert nifti.shape == (12, 10, 8, 1, 3)
    assert nifti.header.get_intent()[0] == "vector"
    assert nifti.header["sform_code"] == 1 and nifti.header["qform_code"] == 1
    read, affine = read_displacement_field(path)
    np.testing.assert_array_equal(read, field)
    np.testing.assert_allclose(affine, ras_affine(image), atol=1e-5)
    # SimpleITK (ITK) reads the vectors unchanged, as LPS mm, on the image's grid.
    itk_field = sitk.ReadImage(str(path))
    assert itk_field.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_allclose(itk_field.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(itk_field.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(to_array(itk_field), field)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    with pytest.raises(InputError, match="not a displacement field"):
        read_displacement_field(tmp_path / "image.nii.gz")


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), OBLIQUE], ids=["LPS", "RAS", "oblique"])
def test_translation_field_shifts_image_by_exactly_that_many_mm(tmp_path, direction):
    """A constant field d (mm) written to disk and applied by SimpleITK and by ANTs gives image(x + d);
    converted to voxels it gives the same through intermod's own warp."""
    import ants

    array = _random_volume((16, 14, 12), seed=3)
    image = _image(array, spacing=(2.0, 2.0, 2.0), direction=direction)
    shift_voxels = np.array([2.0, -3.0, 1.0])  # whole voxels, so every method samples voxel centres exactly
    d = index_to_physical(image) @ shift_voxels
    path = write_displacement_field(tmp_path / "shift.nii.gz", np.broadcast_to(d, (16, 14, 12, 3)), image)
    expected = np.roll(array, (-2, 3, -1), axis=(0, 1, 2))[2:-3, 3:-3, 1:-1]  # interior: image[x + shift]

    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    by_sitk = to_array(sitk.Resample(image, image, transform, sitk.sitkLinear))
    np.testing.assert_allclose(by_sitk[2:-3, 3:-3, 1:-1], expected, atol=1e-5)

    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    moving = ants.image_read(str(tmp_path / "image.nii.gz"))
    by_ants = ants.apply_transforms(moving, moving, [str(path)], interpolator="linear").numpy()
    np.testing.assert_allclose(by_ants[2:-3, 3:-3, 1:-1], expected, atol=1e-4)

    u = lps_to_voxel(read_displacement_field(path)[0], index_to_physical(image))
    np.testing.assert_allclose(u[:, 0, 0, 0], shift_voxels, atol=1e-5)
    by_intermod = warp(torch.from_numpy(array)[None, None], torch.from_numpy(u).float()[None])[0, 0].numpy()
    np.testing.assert_allclose(by_intermod[2:-3, 3:-3, 1:-1], expected, atol=1e-5)


def test_reference_grid_is_the_image_grid_when_geometry_matches():
    image = _image(_random_volume(), direction=np.diag([-1.0, -1.0, 1.0]))
    grid = reference_grid(image, (2.0, 2.0, 2.0), "RAS")
    assert grid.GetSize() == image.GetSize()
    np.testing.assert_allclose(grid.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(grid.GetDirection(), image.GetDirection())


@pytest.mark.parametrize("orientation", ["RAS", None])
def test_reference_grid_covers_the_image_box_in_the_model_orientation(orientation):
    """In the model's orientation (registration), or in the image's own direction (importers)."""
    image = _image(_random_volume(), spacing=(1.5, 2.0, 3.0), direction=OBLIQUE)
    grid = reference_grid(image, (2.5, 2.5, 2.5), orientation)
    axes = np.asarray(image.GetDirection()).reshape(3, 3) if orientation is None else orientation_direction("RAS")
    np.testing.assert_allclose(np.asarray(grid.GetDirection()).reshape(3, 3), axes)

    def box(img):  # voxel-edge corners along the grid's axes
        size = np.asarray(img.GetSize())
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1)
        points = index_to_physical(img) @ corners + np.asarray(img.GetOrigin())[:, None]
        coords = axes.T @ points
        return coords.min(1), coords.max(1)

    (lo, hi), (glo, ghi) = box(image), box(grid)
    assert np.all(glo <= lo + 1e-9) and np.all(ghi >= hi - 1e-9)
    assert np.all(ghi - glo < hi - lo + 2.5)  # at most one extra voxel per axis
    np.testing.assert_allclose((glo + ghi) / 2, (lo + hi) / 2, atol=1e-9)


def test_resample_labels_keeps_integer_values():
    labels = _image(np.random.default_rng(4).integers(0, 4, size=(12, 10, 8)).astype(np.int32))
    out = resample(labels, reference_grid(labels, (1.0, 1.0, 1.0), "LPS"), labels=True)
    assert out.GetPixelID() == sitk.sitkInt32
    assert set(np.unique(to_array(out))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_read_image_formats_keep_values_and_geometry(tmp_path, suffix):
    image = _image(_random_volume(), spacing=(1.5, 2.0, 3.0), direction=OBLIQUE)
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(image, str(path))
    read = read_image(path)
    assert read.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(to_array(read), to_array(image), atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)


def _write_dicom_series(image: sitk.Image, folder) -> None:
    """One CT slice per file with the position and orientation tags a DICOM reader needs."""
    folder.mkdir()
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0037": "\\".join(str(direction[i]) for i in (0, 3, 6, 1, 4, 7))}
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0020|0032", "\\".join(str(p) for p in image.TransformIndexToPhysicalPoint((0, 0, k))))
        piece.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


def test_read_image_reads_a_dicom_series_folder(tmp_path):
    array = (np.random.default_rng(5).integers(-1000, 1000, size=(10, 9, 6))).astype(np.int16)
    image = _image(array, spacing=(0.8, 0.8, 2.5), origin=(-4.0, -3.6, 10.0))
    _write_dicom_series(image, tmp_path / "series")
    read = read_image(tmp_path / "series")
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(to_array(read), array)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")


def _bad_image(tmp_path, kind: str):
    if kind == "missing":
        return tmp_path / "absent.nii.gz", "no such file"
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "2d":
        image = sitk.GetImageFromArray(np.ones((8, 8), np.float32))
    elif kind == "slice":
        image = sitk.GetImageFromArray(np.arange(64, dtype=np.float32).reshape(1, 8, 8))
    elif kind == "4d":
        volume = sitk.GetImageFromArray(np.arange(216, dtype=np.float32).reshape(6, 6, 6))
        image = sitk.JoinSeries([volume, volume])  # (X, Y, Z, T)
    elif kind == "vector":
        image = sitk.GetImageFromArray(np.ones((6, 6, 6, 3), np.float32), isVector=True)
    elif kind == "nan":
        array = np.arange(216, dtype=np.float32).reshape(6, 6, 6)
        array[2, 3, 4] = np.nan
        image = sitk.GetImageFromArray(array)
    elif kind == "constant":
        image = sitk.GetImageFromArray(np.full((6, 6, 6), 7, np.float32))
    elif kind == "garbage":
        path.write_bytes(b"not an image")
        return path, "cannot read"
    elif kind in ("truncated", "truncated_nii"):  # an interrupted copy: ITK reads it, filling in the rest
        path = path if kind == "truncated" else tmp_path / "truncated.nii"
        whole = tmp_path / f"whole{''.join(path.suffixes)}"
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20, 20), np.float32)), str(whole))
        path.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
        assert sitk.ReadImage(str(path)).GetSize() == (20, 20, 20)
        return path, "file is truncated or corrupt"
    sitk.WriteImage(image, str(path))
    return path, {"2d": "expected a 3D image, got 2D", "slice": "single slice", "4d": "got 4D",
                  "vector": "scalar image", "nan": "1 voxel", "constant": "constant"}[kind]


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "truncated_nii", "2d", "slice", "4d", "vector",
                                  "nan", "constant"])
def test_read_image_rejects_unusable_files_naming_them(tmp_path, kind):
    path, problem = _bad_image(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and problem in message
    assert "\n" not in message


def test_read_labels_rejects_fractional_values(tmp_path):
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 6, 6), 0.5, np.float32)), str(path))
    with pytest.raises(InputError, match="not a label map"):
        read_image(path, labels=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 6, 6), np.float32)), str(path))
    assert read_image(path, labels=True).GetPixelID() == sitk.sitkInt32
