"""ANTsPy baselines on a small synthetic pelvis (48x44x24 voxels at 4 mm).

Every registration runs in a child process (~2-3 s to start and import ANTs), so the expensive
results are computed once per module.
"""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from intermod.baselines import ants as baseline
from intermod.baselines.ants import ClassicalResult, fit_shrink_factors, register_classical
from known_shift import dice, phantom_dice

SHAPE = (48, 44, 24)
SPACING = (4.0, 4.0, 4.0)
LABELS = (1, 2, 3)  # bladder, prostate, rectum


def ellipsoid(center, radii):
    """Boolean ellipsoid on the SHAPE grid; center and radii in voxels."""
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def anatomy(bladder_scale=1.0):
    """Label map and body/bone masks of a crude pelvis; a larger bladder gives local deformation."""
    X, Y, Z = SHAPE
    labels = np.zeros(SHAPE, np.int16)
    s = bladder_scale
    labels[ellipsoid((0.5 * X, 0.38 * Y, 0.5 * Z), (0.16 * X * s, 0.13 * Y * s, 0.25 * Z * s))] = 1
    labels[ellipsoid((0.5 * X, 0.58 * Y, 0.5 * Z), (0.08 * X, 0.07 * Y, 0.18 * Z))] = 2
    labels[ellipsoid((0.5 * X, 0.74 * Y, 0.5 * Z), (0.07 * X, 0.06 * Y, 0.25 * Z))] = 3
    body = ellipsoid((X / 2, Y / 2, Z / 2), (0.42 * X, 0.42 * Y, 0.6 * Z))
    bone = (ellipsoid((0.2 * X, 0.55 * Y, 0.5 * Z), (0.06 * X, 0.1 * Y, 0.4 * Z))
            | ellipsoid((0.8 * X, 0.55 * Y, 0.5 * Z), (0.06 * X, 0.1 * Y, 0.4 * Z)))
    return labels, body, bone


def render(labels, body, bone, values, background, rng):
    """Piecewise-constant image, slightly blurred, with noise."""
    image = np.full(SHAPE, float(background))
    image[body] = values["body"]
    for label, name in zip(LABELS, ("bladder", "prostate", "rectum")):
        image[labels == label] = values[name]
    image[bone] = values["bone"]
    return (gaussian_filter(image, 0.7) + rng.normal(0, 10, SHAPE)).astype(np.float32)


def move(volume, scale, shift):
    """Nearest-neighbour pull-back of ``volume``: scaling about the centre, then a shift."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij"))
    center = np.array(SHAPE, float)[:, None, None, None] / 2
    coords = center + (grid - center) / np.array(scale)[:, None, None, None]
    coords -= np.array(shift)[:, None, None, None]
    return map_coordinates(volume, coords, order=0, mode="nearest")


def make_pair():
    """CT + labels, and an MR with other contrast whose anatomy is scaled, shifted and has a larger
    bladder (the local deformation affine cannot undo)."""
    rng = np.random.default_rng(0)
    ct_labels, body, bone = anatomy()
    ct = render(ct_labels, body, bone, {"body": 40, "bladder": -150, "prostate": 150,
                                        "rectum": -500, "bone": 700}, -1000, rng)
    moved = [move(v.astype(np.int16), (1.06, 0.95, 1.0), (2.5, -2.0, 1.0)) for v in anatomy(1.3)]
    mr_labels, mr_body, mr_bone = moved[0], moved[1].astype(bool), moved[2].astype(bool)
    mr = render(mr_labels, mr_body, mr_bone, {"body": 300, "bladder": 900, "prostate": 500,
                                              "rectum": 150, "bone": 100}, 0, rng)
    return ct, ct_labels, mr, mr_labels


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def results(pair):
    ct, _, mr, mr_labels = pair
    return {method: register_classical(ct, mr, mr_labels, SPACING, method)
            for method in ("affine", "syn")}


def mean_dice(a, b):
    return np.mean([dice(a, b, label) for label in LABELS])


def pull_back_coords(field):
    """Voxel coordinates x + u(x) and where they fall inside the moving grid."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij"))
    coords = grid + field
    upper = np.array(SHAPE, float)[:, None, None, None] - 1
    return coords, np.all((coords >= 0) & (coords <= upper), axis=0)


@pytest.mark.parametrize("method", ["affine", "syn"])
def test_result_shapes_dtypes_and_time(results, method):
    result = results[method]
    assert isinstance(result, ClassicalResult)
    assert result.warped.shape == SHAPE and result.warped.dtype == np.float32
    assert result.warped_labels.shape == SHAPE and result.warped_labels.dtype == np.int16
    assert set(np.unique(result.warped_labels)) <= {0, *LABELS}
    assert result.field.shape == (3, *SHAPE) and result.field.dtype == np.float32
    assert np.isfinite(result.field).all()
    assert result.seconds > 0


def test_affine_improves_dice_over_identity(results, pair):
    _, ct_labels, _, mr_labels = pair
    before = mean_dice(ct_labels, mr_labels)
    after = mean_dice(ct_labels, results["affine"].warped_labels)
    assert after > before + 0.3, (before, after)


def test_syn_improves_at_least_as_much_as_affine(results, pair):
    _, ct_labels, _, _ = pair
    affine = mean_dice(ct_labels, results["affine"].warped_labels)
    syn = mean_dice(ct_labels, results["syn"].warped_labels)
    assert syn >= affine, (affine, syn)
    # The bladder grew: only the deformable method can shrink it back.
    bladder = {method: dice(ct_labels, results[method].warped_labels, 1) for method in results}
    assert bladder["syn"] > bladder["affine"] + 0.05, bladder


@pytest.mark.parametrize("method", ["affine", "syn"])
def test_field_reproduces_ants_resampling(results, pair, method):
    _, _, mr, mr_labels = pair
    result = results[method]
    coords, inside = pull_back_coords(result.field)
    assert inside.mean() > 0.8  # ANTs fills points outside the MR grid with 0: compare inside only
    warped = map_coordinates(mr, coords, order=1)
    assert np.corrcoef(warped[inside], result.warped[inside])[0, 1] > 0.999
    assert np.abs(warped[inside] - result.warped[inside]).mean() < 1e-3 * np.ptp(mr)
    # ANTs' genericLabel = per-label linear interpolation of the one-hot maps, then the arg max.
    one_hot = [map_coordinates((mr_labels == k).astype(np.float32), coords, order=1, mode="nearest")
               for k in (0, *LABELS)]
    labels = np.array((0, *LABELS))[np.argmax(one_hot, axis=0)]
    for label in LABELS:
        assert dice(labels, result.warped_labels, label) >= 0.99


def test_same_seed_is_bit_identical_other_seed_is_not(results, pair):
    ct, _, mr, mr_labels = pair
    again = register_classical(ct, mr, mr_labels, SPACING, "syn", seed=0)
    assert np.array_equal(again.warped_labels, results["syn"].warped_labels)
    assert np.array_equal(again.field, results["syn"].field)
    assert np.array_equal(again.warped, results["syn"].warped)
    other = register_classical(ct, mr, mr_labels, SPACING, "affine", seed=1)
    assert not np.array_equal(other.field, results["affine"].field)  # the seed reaches ANTs


def test_no_temp_files_left(private_tmp, pair):
    ct, _, mr, mr_labels = pair
    # Options as Hydra hands them over: lists, not tuples.
    register_classical(ct, mr, mr_labels, SPACING, "affine", aff_iterations=[100, 50, 20, 0],
                       aff_shrink_factors=[4, 2, 1, 1], aff_smoothing_sigmas=[2, 1, 0, 0])
    assert list(private_tmp.tmp.iterdir()) == []


def test_no_temp_files_left_when_a_call_raises(private_tmp, pair, monkeypatch):
    ct, _, mr, mr_labels = pair
    with pytest.raises(RuntimeError, match="ANTs registration failed"):
        # Four affine levels but two iteration counts: ANTsPy rejects it inside the child.
        register_classical(ct, mr, mr_labels, SPACING, "affine", aff_iterations=[10, 10])
    assert list(private_tmp.tmp.iterdir()) == []

    real_run_in_child = baseline.run_in_child

    def run_then_fail(module, workdir, threads, failure):
        real_run_in_child(module, workdir, threads, failure)
        assert any(workdir.glob("*GenericAffine.mat"))  # ANTs' own files are in our folder
        raise KeyboardInterrupt

    monkeypatch.setattr(baseline, "run_in_child", run_then_fail)
    with pytest.raises(KeyboardInterrupt):
        register_classical(ct, mr, mr_labels, SPACING, "affine", aff_iterations=[20, 10, 0, 0])
    assert list(private_tmp.tmp.iterdir()) == []


def small_inputs():
    volume = np.zeros((6, 5, 4), np.float32)
    return volume, volume.copy(), np.zeros(volume.shape, np.int16)


def test_rejects_unknown_method():
    with pytest.raises(ValueError, match=r"'demons'.*\['affine', 'syn'\]"):
        register_classical(*small_inputs(), SPACING, "demons")


def test_rejects_huge_labels():
    """Its own check (ANTs' images are float32: labels above 2**24 would merge); the shared ones are
    tests/baselines/test_result.py's."""
    ct, mr, labels = small_inputs()
    with pytest.raises(ValueError, match="2\\*\\*24"):
        register_classical(ct, mr, labels.astype(np.int32) + 2**24, SPACING, "affine")


def test_rejects_unknown_and_reserved_options():
    with pytest.raises(ValueError, match="unknown ants.registration options.*reg_iteration"):
        register_classical(*small_inputs(), SPACING, "syn", reg_iteration=(10, 0))
    with pytest.raises(ValueError, match="syn_metric"):
        register_classical(*small_inputs(), SPACING, "syn", syn_metric="CC")


def test_ct_in_hounsfield_units_registers_like_shifted_ct():
    """Negative HU (air -1000) must not break ANTs' centre-of-mass initialisation (it did)."""
    before, after = phantom_dice(lambda *pair: register_classical(*pair, "affine"))
    assert np.mean(after) > np.mean(before) - 0.01, (before, after)
    assert min(after) > 0.75


def test_shrink_factors_keep_a_coarsest_level_of_twelve_voxels():
    assert fit_shrink_factors((6, 4, 2, 1), (218, 196, 100)) == [6, 4, 2, 1]  # 1 mm: unchanged
    assert fit_shrink_factors((6, 4, 2, 1), (109, 98, 50)) == [4, 4, 2, 1]  # 2 mm: 27x24x12 at the top
    assert fit_shrink_factors((6, 4, 2, 1), (55, 49, 25)) == [2, 2, 2, 1]  # 4 mm: not 9x8x4
    assert fit_shrink_factors((6, 4, 2, 1), (20, 20, 8)) == [1, 1, 1, 1]
