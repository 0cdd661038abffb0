"""The affine pre-alignment: an orientation search (robust to scans 180 degrees apart), then an ANTs affine."""
from __future__ import annotations

import ants
import numpy as np
import SimpleITK as sitk

from intermod.baselines.ants import ants_random_seed, ants_workdir
from intermod.geometry import index_to_physical, to_array

AIR_HU = -1024.0  # CT values below (scanner padding, e.g. -2048) are air, not anatomy
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
