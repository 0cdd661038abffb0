"""Tests for intermod.data.phantom: API, determinism, contrast, fold-free exact fields, difficulty."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from intermod.data import phantom as P
from intermod.data.phantom import GRIDS, LABELS, TISSUES, difficulty_report, synthesize_subject
from intermod.data.phantom.deformation import _half_extent
from intermod.metrics import dice, jacobian_determinant
from intermod.spatial_numpy import warp_array

SMALL_SEEDS = (0, 1, 2, 3)
KEYS = ("ct", "mr", "ct_paired", "mr_paired", "ct_labels", "mr_labels", "gt_field")


@pytest.fixture(scope="module")
def small():
    return {seed: P.synthesize_phantom(seed, GRIDS["small"]) for seed in SMALL_SEEDS}


@pytest.fixture(scope="module")
def paper():
    return P.synthesize_phantom(0, GRIDS["paper"])


@pytest.fixture(scope="module")
def small_reports(small):
    return {seed: difficulty_report(ph.arrays) for seed, ph in small.items()}


def _median(image, tissue_map, names, erode=0):
    mask = np.isin(tissue_map, [TISSUES[n] for n in names])
    if erode:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    assert mask.sum() > 20, f"too few voxels of {names}"
    return float(np.median(image[mask]))


def test_paper_and_small_grids_share_the_field_of_view():
    fov = {tuple(np.array(GRIDS[g].shape) * np.array(GRIDS[g].spacing)) for g in ("paper", "small")}
    assert fov == {(218.0, 196.0, 100.0)}
    assert LABELS == {"bladder": 1, "prostate": 2, "rectum": 3}


def test_shapes_and_dtypes(small):
    arrays = small[0].arrays
    shape = GRIDS["small"].shape
    assert set(arrays) == set(KEYS)
    for key in ("ct", "mr", "ct_paired", "mr_paired"):
        assert arrays[key].shape == shape and arrays[key].dtype == np.float32
        assert np.isfinite(arrays[key]).all()
    for key in ("ct_labels", "mr_labels"):
        assert arrays[key].shape == shape and arrays[key].dtype == np.uint8
        assert set(np.unique(arrays[key])) == {0, *LABELS.values()}
    assert arrays["gt_field"].shape == (*shape, 3) and arrays["gt_field"].dtype == np.float32
    assert arrays["mr"].min() >= 0


def test_deterministic_per_seed(small):
    again = synthesize_subject(0, GRIDS["small"])
    for key in KEYS:
        assert np.array_equal(again[key], small[0].arrays[key]), key
    other = small[1].arrays
    for key in KEYS:
        assert not np.array_equal(other[key], again[key]), key


def test_anatomy_and_deformation_do_not_depend_on_the_grid(small, paper):
    a, b = small[0].deformation, paper.deformation
    for field in ("matrix", "shift", "centres", "sigmas", "amplitudes", "radial"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    # Same organs: volumes agree to within the 2 mm sampling.
    for value in LABELS.values():
        v_small = (small[0].arrays["ct_labels"] == value).sum() * 8.0
        v_paper = float((paper.arrays["ct_labels"] == value).sum())
        assert abs(v_small - v_paper) / v_paper < 0.05


def test_paired_images_are_literal_warps(small):
    ph = small[2]
    arrays = ph.arrays
    assert np.array_equal(arrays["mr_paired"], warp_array(arrays["mr"], arrays["gt_field"], order=1))
    assert np.array_equal(arrays["ct_paired"], warp_array(arrays["ct"], ph.w, order=1))


def test_ct_hounsfield_units(small, paper):
    for ph in (*small.values(), paper):
        ct, tissue = ph.arrays["ct"], ph.ct_tissue
        assert -1010 <= _median(ct, tissue, ["air"]) <= -980
        assert _median(ct, tissue, ["cortex"]) > 700
        assert _median(ct, tissue, ["gas"]) < -400   # thin slivers: partial volume with stool
        assert -10 <= _median(ct, tissue, ["urine"]) <= 30
        assert -130 <= _median(ct, tissue, ["fat"]) <= -60
        assert 150 <= _median(ct, tissue, ["marrow"]) <= 450
        muscle, prostate = _median(ct, tissue, ["muscle"]), _median(ct, tissue, ["prostate_tz", "prostate_pz"])
        assert 25 <= muscle <= 65 and 25 <= prostate <= 65 and abs(muscle - prostate) <= 25


def test_mr_t2_contrast(small, paper):
    for ph in (*small.values(), paper):
        mr, tissue = ph.arrays["mr"], ph.mr_tissue
        urine = _median(mr, tissue, ["urine"])
        prostate = _median(mr, tissue, ["prostate_tz", "prostate_pz"])
        muscle = _median(mr, tissue, ["muscle"])
        assert urine > prostate > muscle
        assert _median(mr, tissue, ["prostate_pz"]) > _median(mr, tissue, ["prostate_tz"])
        assert _median(mr, tissue, ["fat"]) > 2 * muscle
        assert _median(mr, tissue, ["marrow"]) > muscle
        assert _median(mr, tissue, ["cortex"]) < muscle
        assert _median(mr, tissue, ["gas"]) < muscle


def test_contrast_away_from_partial_volume(paper):
    """On the 1 mm grid, one voxel inside thin structures: gas ~ -1000 HU, cortex bright on CT and dark
    on MR, soft tissues within a few tens of HU."""
    mr, ct = paper.arrays["mr"], paper.arrays["ct"]
    assert _median(mr, paper.mr_tissue, ["cortex"], erode=1) < 0.5 * _median(mr, paper.mr_tissue, ["muscle"])
    assert _median(ct, paper.ct_tissue, ["cortex"], erode=1) > 900
    assert _median(ct, paper.ct_tissue, ["gas"], erode=1) < -900
    soft = [_median(ct, paper.ct_tissue, [name], erode=1) for name in
            ("muscle", "prostate_tz", "prostate_pz", "bladder_wall", "rectal_wall", "seminal_vesicle")]
    assert all(15 <= v <= 70 for v in soft) and max(soft) - min(soft) <= 35, soft   # low soft-tissue contrast


def test_roughly_left_right_symmetric(small):
    for ph in small.values():
        labels, tissue = ph.arrays["ct_labels"], ph.ct_tissue
        for organ, value in LABELS.items():   # the rectum may run a little to one side
            assert dice(labels == value, labels[::-1] == value) > (0.6 if organ == "rectum" else 0.8)
        bone = np.isin(tissue, [TISSUES["cortex"], TISSUES["marrow"]])
        assert dice(bone, bone[::-1]) > 0.7


def test_fields_are_fold_free_and_exact_inverses(small):
    grid = GRIDS["small"]
    spacing = np.array(grid.spacing, np.float32)
    for ph in small.values():
        u, w = ph.arrays["gt_field"], ph.w
        assert jacobian_determinant(np.moveaxis(u, -1, 0)).min() > 0
        assert jacobian_determinant(np.moveaxis(w, -1, 0)).min() > 0

        # The local part: Jacobian norm <= 0.5 on the grid, certified < 1 where it is used.
        x = P.grid_points(grid)
        local = (ph.deformation.local(x) / spacing[:, None]).reshape(3, *grid.shape)
        jac = np.stack([np.stack(np.gradient(local[i]), -1) for i in range(3)], -2)   # (..., i, j)
        assert np.linalg.norm(jac.reshape(-1, 3, 3), ord=2, axis=(1, 2)).max() <= 0.5
        lattice_max, sup_bound = ph.deformation.lipschitz_certificate(_half_extent(grid))
        assert lattice_max <= 0.45 + 1e-3 and sup_bound <= 0.9 + 1e-6
        affine_det = np.linalg.det(ph.deformation.matrix)
        assert 0.94 <= affine_det <= 1.06

        # u inverts w: x + u(x) + w(x + u(x)) = x, exactly (analytic) and on the grid (trilinear).
        moved = x + np.moveaxis(u, -1, 0).reshape(3, -1) * spacing[:, None]
        assert np.abs(ph.deformation.mr_to_ct(moved) - x).max() < 1e-2   # mm
        w_at = np.stack([warp_array(np.ascontiguousarray(w[..., i]), u) for i in range(3)], -1)
        error = np.linalg.norm(u + w_at, axis=-1)[3:-3, 3:-3, 3:-3]
        assert error.max() < 0.05


def test_difficulty_small(small_reports):
    organs = list(LABELS)
    before = np.array([[r[o]["dice_before"] for o in organs] for r in small_reports.values()])
    after = np.array([[r[o]["dice_gt"] for o in organs] for r in small_reports.values()])
    assert np.all((before.mean(0) >= 0.75) & (before.mean(0) <= 0.90)), before.mean(0)
    # Nearest-neighbour label warping on the 2 mm grid costs the small prostate a few percent.
    assert after.min() >= 0.94 and np.all(after.mean(0) >= 0.95), after
    for report in small_reports.values():
        assert report["images"]["ncc_ct_vs_ct_paired_warped"] >= 0.95
        assert report["images"]["ncc_mr_paired_vs_mr_warped"] >= 0.95


def test_difficulty_paper(paper):
    report = difficulty_report(paper.arrays)
    for organ in LABELS:
        assert 0.7 <= report[organ]["dice_before"] <= 0.95, report
        assert report[organ]["dice_gt"] >= 0.97, report
    assert min(report["images"].values()) >= 0.95, report
