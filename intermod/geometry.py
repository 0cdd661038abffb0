"""Image grids, resampling and displacement fields in ITK's physical space (LPS, millimetres).

Conventions:

- Images are SimpleITK images. A *grid* is an image's size, spacing, origin and direction; the columns of
  the direction matrix are the LPS directions of the array axes (i, j, k). :func:`to_array` returns voxels
  with axes (X, Y, Z) = (i, j, k), the order nibabel and the network use (SimpleITK's own arrays are
  (Z, Y, X)).
- A voxel-unit displacement field ``u`` of shape (3, X, Y, Z) (:mod:`intermod.spatial`) and a physical
  field ``v`` of shape (X, Y, Z, 3) in LPS mm are related by ``v = D diag(spacing) u``
  (:func:`index_to_physical`). Equivalently, with nibabel's RAS affine ``A``: ``v = A[:3, :3] u`` with
  the signs of x and y flipped.
- Displacement field files follow ITK/ANTs: NIfTI, float32, shape (X, Y, Z, 1, 3), intent ``vector``,
  vectors in LPS mm (ITK writes and reads the vector values unchanged; only the grid goes through the
  RAS affine), sform = qform = the grid's RAS affine. A point ``x`` of the grid maps to ``x + v(x)`` in
  the moving image: the pull-back convention of :func:`intermod.spatial.warp`, of ITK's
  ``DisplacementFieldTransform`` and of ``antsApplyTransforms``.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

__all__ = ["InputError", "read_image", "to_array", "from_array", "index_to_physical", "ras_affine",
           "orientation_direction", "reference_grid", "resample", "voxel_to_lps", "lps_to_voxel",
           "field_image", "write_displacement_field", "read_displacement_field"]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
# LPS unit vector of each axis code (nibabel's codes name the direction an axis increases towards).
_CODE_VECTORS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


class InputError(ValueError):
    """An input that cannot be used; the message names the file (or option) and the problem."""


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series; pass a folder with exactly one")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def _nifti_voxels(path: Path) -> np.ndarray:
    """A NIfTI file's voxels as nibabel reads them: all of them, or :class:`InputError` if the file is
    cut short or corrupt (ITK reads a truncated .nii.gz without a word, filling in what is missing)."""
    try:
        return np.asanyarray(nib.load(path).dataobj)
    except (EOFError, OSError, ValueError, zlib.error, ImageFileError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path}: file is truncated or corrupt ({reason}); copy or export it again") from None


def read_image(path: str | Path, labels: bool = False) -> sitk.Image:
    """Read a 3D scalar image (NIfTI, NRRD, MHA, any format SimpleITK reads, or a DICOM series folder).

    Returns float32 for images and int32 for ``labels`` (which must hold whole numbers). Raises
    :class:`InputError` naming ``path`` for a missing or unreadable file, an image that is not 3D
    (2D, a single slice, 4D), a vector image, non-finite voxels or (not ``labels``) a constant image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as err:
        # ITK's messages span several lines; the last non-empty one says what went wrong.
        reason = [line for line in str(err).splitlines() if line.strip()][-1].strip()
        raise InputError(f"{path}: cannot read as an image ({reason})") from None
    size = image.GetSize()
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D image, got {image.GetDimension()}D with size {size}")
    if min(size) < 2:
        raise InputError(f"{path}: expected a 3D volume, got a single slice (size {size})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    bad = np.count_nonzero(~np.isfinite(values))
    if path.name.endswith((".nii", ".nii.gz")):
        # ITK's NIfTI reader silently turns NaN into 0; the file itself tells the truth.
        bad = max(bad, np.count_nonzero(~np.isfinite(_nifti_voxels(path))))
    if bad:
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite")
    if not labels and values.min() == values.max():
        raise InputError(f"{path}: image is constant (every voxel is {values.flat[0]:g})")
    if labels:
        if not np.array_equal(values, np.round(values)):
            raise InputError(f"{path}: not a label map (voxel values must be whole numbers)")
        image = sitk.Cast(image, sitk.sitkInt32)
    return image


def to_array(image: sitk.Image) -> np.ndarray:
    """Voxels as a numpy array with axes (X, Y, Z) (or (X, Y, Z, C) for a vector image); a copy."""
    array = sitk.GetArrayFromImage(image)
    axes = (2, 1, 0, 3) if array.ndim == 4 else (2, 1, 0)
    return np.ascontiguousarray(array.transpose(axes))


def from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image on ``reference``'s grid from an (X, Y, Z) array, or an (X, Y, Z, C) array as a vector image."""
    array = np.asarray(array)
    if array.shape[:3] != reference.GetSize() or array.ndim not in (3, 4):
        raise ValueError(f"array of shape {array.shape} does not fit the grid of size {reference.GetSize()}")
    vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose((2, 1, 0, 3) if vector else (2, 1, 0))),
                                   isVector=vector)
    image.CopyInformation(reference)
    return image


def index_to_physical(image: sitk.Image) -> np.ndarray:
    """The 3x3 matrix D diag(spacing) mapping a step in voxel indices to an LPS step in mm."""
    return np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine nibabel would give the image (ITK's LPS geometry with x, y negated)."""
    affine = np.eye(4)
    affine[:3, :3] = RAS_FROM_LPS @ index_to_physical(image)
    affine[:3, 3] = RAS_FROM_LPS @ np.asarray(image.GetOrigin())
    return affine


def orientation_direction(codes: str) -> np.ndarray:
    """LPS direction matrix (columns = axis directions) of nibabel axis codes such as "RAS" or "LPS"."""
    codes = str(codes).upper()
    pairs = {"L": "LR", "R": "LR", "P": "PA", "A": "PA", "S": "SI", "I": "SI"}
    if len(codes) != 3 or any(c not in pairs for c in codes) or len({pairs[c] for c in codes}) != 3:
        raise ValueError(f"orientation must be 3 axis codes, one each of L/R, P/A, S/I (e.g. 'RAS'), got {codes!r}")
    return np.array([_CODE_VECTORS[c] for c in codes], dtype=np.float64).T


def _corners(image: sitk.Image) -> np.ndarray:
    """LPS positions (3, 8) of the corners of the image's box (voxel edges, not centres)."""
    size = np.asarray(image.GetSize())
    index = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1)
    return index_to_physical(image) @ index + np.asarray(image.GetOrigin())[:, None]


def reference_grid(image: sitk.Image, spacing: Sequence[float], orientation: str | None = None) -> sitk.Image:
    """A float32 grid with ``spacing`` and ``orientation`` (default: ``image``'s own direction)
    covering ``image``'s box, centred on it.

    When ``image`` already has that spacing and orientation, the grid is the image's own grid.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be 3 positive values in mm, got {tuple(spacing)}")
    direction = (np.asarray(image.GetDirection()).reshape(3, 3) if orientation is None
                 else orientation_direction(orientation))
    coords = direction.T @ _corners(image)  # corner coordinates along the new axes
    low, high = coords.min(1), coords.max(1)
    # The tolerance keeps an exact fit (e.g. the image's own grid) from gaining a voxel to rounding.
    size = [max(1, math.ceil((h - lo) / s - 1e-6)) for lo, h, s in zip(low, high, spacing)]
    first = (low + high) / 2 - (np.asarray(size) - 1) / 2 * spacing
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((direction @ first).tolist())
    return grid


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             labels: bool = False, default: float = 0.0) -> sitk.Image:
    """``image`` on ``reference``'s grid: value(x) = image(transform(x)), linear (nearest for ``labels``).

    Points outside ``image`` read ``default``. The pixel type is kept.
    """
    transform = sitk.Transform(3, sitk.sitkIdentity) if transform is None else transform
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(image, reference, transform, interpolator, default, image.GetPixelID())


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (3, 3) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError(f"expected an invertible 3x3 index-to-physical matrix, got {matrix.tolist()}")
    return matrix


def voxel_to_lps(field: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Voxel displacements (3, X, Y, Z) along the array axes -> LPS mm (X, Y, Z, 3).

    ``matrix`` is :func:`index_to_physical` of the grid the field lives on.
    """
    field = np.asarray(field)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"expected a voxel displacement field (3, X, Y, Z), got shape {field.shape}")
    return np.einsum("ij,j...->...i", _check_matrix(matrix), field)


def lps_to_voxel(field: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """LPS mm displacements (X, Y, Z, 3) -> voxel displacements (3, X, Y, Z); inverse of :func:`voxel_to_lps`."""
    field = np.asarray(field)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"expected a physical displacement field (X, Y, Z, 3), got shape {field.shape}")
    return np.einsum("ij,...j->i...", np.linalg.inv(_check_matrix(matrix)), field)


def field_image(field: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An LPS mm field (X, Y, Z, 3) as a float64 vector image, the type ``sitk.DisplacementFieldTransform`` takes."""
    field = np.asarray(field, dtype=np.float64)
    if field.shape != (*reference.GetSize(), 3):
        raise ValueError(f"field of shape {field.shape} does not fit the grid of size {reference.GetSize()}")
    return from_array(field, reference)


def write_displacement_field(path: str | Path, field: np.ndarray, reference: sitk.Image) -> Path:
    """Write an LPS mm field (X, Y, Z, 3) on ``reference``'s grid as an ITK/ANTs displacement-field NIfTI."""
    field = np.asarray(field, dtype=np.float32)
    if field.shape != (*reference.GetSize(), 3):
        raise ValueError(f"field of shape {field.shape} does not fit the grid of size {reference.GetSize()}")
    affine = ras_affine(reference)
    nifti = nib.Nifti1Image(field[:, :, :, None, :], affine)
    nifti.header.set_intent("vector")
    nifti.header.set_xyzt_units("mm")
    # Both codes set, as ITK writes them: readers that prefer either one agree.
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nib.save(nifti, str(path))
    return Path(path)


def read_displacement_field(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement-field NIfTI: the LPS mm field (X, Y, Z, 3) and the grid's RAS affine."""
    nifti = nib.load(str(path))
    shape = nifti.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] != 3 or nifti.header.get_intent()[0] != "vector":
        raise InputError(f"{path}: not a displacement field (expected shape (X, Y, Z, 1, 3) with intent "
                         f"'vector', got {shape} with intent {nifti.header.get_intent()[0]!r})")
    return np.asarray(nifti.dataobj, dtype=np.float32)[:, :, :, 0, :], nifti.affine
