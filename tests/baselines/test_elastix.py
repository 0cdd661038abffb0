"""elastix baseline: units, axis order and sign on known shifts, determinism, inputs, temp files.

Small volumes (40x36x32 voxels) and short schedules (2 levels of 100 iterations per stage) keep a
registration to ~5-30 s on 2 busy cores; the expensive results are computed once per module.
"""

import numpy as np
import pytest

from intermod.baselines.elastix import DEFAULT_BSPLINE, _as_strings, register
from intermod.baselines.result import ClassicalResult
from known_shift import (INTERIOR, SHIFT, assert_result_shapes, dice, ellipsoid_labels, phantom_dice, shifted_pair,
                         texture)

SPACING = (2.0, 2.5, 3.0)  # anisotropic: mm -> voxels must divide per axis
FAST = {"NumberOfResolutions": 2, "MaximumNumberOfIterations": 100}
FAST_BSPLINE = {**FAST, "GridSpacingSchedule": [2, 1], "FinalGridSpacingInPhysicalUnits": 15.0}


def fast_register(*args, **kwargs):
    return register(*args, affine=FAST, bspline=FAST_BSPLINE, **kwargs)


@pytest.fixture(scope="module")
def pair():
    return shifted_pair()


@pytest.fixture(scope="module")
def shifted(pair):
    fixed, moving, _, moving_labels = pair
    return fast_register(fixed, moving, moving_labels, SPACING)


def test_result_types_and_shapes(shifted):
    assert isinstance(shifted, ClassicalResult)
    assert_result_shapes(shifted, np.uint8)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_known_shift_recovered_in_voxels_per_axis(shifted, axis):
    """Component i is the displacement along array axis i (ITK's axis i after the transpose), in
    voxels (mm / that axis's spacing), pull-back, sign included."""
    component = shifted.field[axis][INTERIOR]
    assert abs(component.mean() - SHIFT[axis]) < 0.15, (axis, component.mean())
    assert component.std() < 0.3


def test_warped_labels_match_fixed_labels(shifted, pair):
    _, _, fixed_labels, moving_labels = pair
    for label in (1, 2):
        assert dice(fixed_labels, moving_labels, label) < 0.75
        assert dice(fixed_labels, shifted.warped_labels, label) > 0.9, label


def test_same_seed_is_bit_identical_other_seed_is_not(shifted, pair):
    fixed, moving, _, moving_labels = pair
    again = fast_register(fixed, moving, moving_labels, SPACING, seed=0)
    assert np.array_equal(again.field, shifted.field)
    assert np.array_equal(again.warped, shifted.warped)
    assert np.array_equal(again.warped_labels, shifted.warped_labels)
    other = fast_register(fixed, moving, moving_labels, SPACING, seed=1)
    assert not np.array_equal(other.field, shifted.field)  # the seed reaches elastix's sampler


def test_identity_pair_gives_zero_field_and_leaves_no_files(private_tmp, capfd):
    image = 100.0 * texture(1)
    labels = ellipsoid_labels((20.0, 14.0, 16.0))
    result = fast_register(image, image.copy(), labels, SPACING)
    # Not exactly 0: stochastic gradient descent on 2048 random samples per step (0.17 voxel at most here)
    assert np.abs(result.field).max() < 0.3 and np.abs(result.field).mean() < 0.05
    assert np.array_equal(result.warped_labels, labels)
    tmp, cwd = private_tmp
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []  # transformix wrote into cwd before
    out, err = capfd.readouterr()
    assert "elastix" not in (out + err).lower()  # no log on the console


def test_a_failing_registration_explains_itself_and_leaves_no_files(private_tmp, pair):
    fixed, moving, _, moving_labels = pair
    with pytest.raises(RuntimeError, match="elastix registration failed:(.|\n)*GridSpacingSchedule"):
        register(fixed, moving, moving_labels, SPACING, affine=FAST,
                 bspline={**FAST, "GridSpacingSchedule": [4, 2, 1]})  # 3 entries for 2 levels
    tmp, cwd = private_tmp
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []


def test_a_misspelt_parameter_is_named_not_ignored(private_tmp, pair):
    fixed, moving, _, moving_labels = pair
    with pytest.raises(ValueError, match=r"did not use the parameter\(s\) bspline \['MaximumNumberOfIteratons'\]: "
                                         r"it ignores names it does not know"):
        register(fixed, moving, moving_labels, SPACING, affine=FAST,
                 bspline={**FAST_BSPLINE, "MaximumNumberOfIteratons": 500})
    tmp, cwd = private_tmp
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []


def test_an_unused_parameter_is_blamed_on_the_stage_that_did_not_use_it(pair):
    # control-point spacing means nothing to the affine stage, and is the B-spline stage's own (FAST_BSPLINE)
    fixed, moving, _, moving_labels = pair
    with pytest.raises(ValueError, match=r"parameter\(s\) affine \['FinalGridSpacingInPhysicalUnits'\]: ") as error:
        register(fixed, moving, moving_labels, SPACING, affine={**FAST, "FinalGridSpacingInPhysicalUnits": 15.0},
                 bspline=FAST_BSPLINE)
    assert "bspline" not in str(error.value).split(":")[0]


def test_dice_improves_on_a_phantom_pair():
    before, after = phantom_dice(register)
    assert np.mean(after) > np.mean(before) + 0.01, (before, after)  # 0.846 -> 0.877
    assert after[0] > before[0] + 0.03, (before, after)  # the bladder, that elastix's default maps moved away


def small_inputs(shape=(12, 12, 12)):
    image = texture()[: shape[0], : shape[1], : shape[2]].copy()
    return image, image.copy(), np.zeros(shape, np.int16)


@pytest.mark.parametrize("options, message", [
    ({"bspline": {"RandomSeed": 3}}, r"bspline parameters \['RandomSeed'\] are set by"),
    ({"affine": {"WriteResultImage": True}}, r"affine parameters \['WriteResultImage'\]"),
    ({"affine": [("Transform", "AffineTransform")]}, "affine must be a mapping"),
    ({"bspline": {"MaximumNumberOfIterations": None}}, "bspline parameter MaximumNumberOfIterations must be"),
    ({"bspline": {"GridSpacingSchedule": []}}, "bspline parameter GridSpacingSchedule is an empty list"),
    ({"threads": 0}, "threads must be an int >= 1"),
])
def test_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        register(*small_inputs(), SPACING, **options)


def test_rejects_bad_inputs():
    """Its own check; the shared ones are tests/baselines/test_result.py's."""
    ct, mr, labels = small_inputs()
    with pytest.raises(ValueError, match="ct is constant"):
        register(np.zeros_like(ct), mr, labels, SPACING)


def test_parameter_values_become_elastix_strings():
    assert _as_strings(True) == ("true",)
    assert _as_strings(256) == ("256",)
    assert _as_strings(np.int64(3)) == ("3",)
    assert _as_strings(10.0) == ("10.0",)
    assert _as_strings([2, 1.5, "x"]) == ("2", "1.5", "x")
    assert _as_strings("AdvancedMattesMutualInformation") == ("AdvancedMattesMutualInformation",)
    assert DEFAULT_BSPLINE["FinalGridSpacingInPhysicalUnits"] == 10.0


def test_method_config_instantiates_with_the_module_defaults():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "method" / "elastix.yaml")
    assert cfg.name == "elastix" and cfg.procedure == "intermod.runner.register_classically"
    assert OmegaConf.to_container(cfg.register.bspline) == DEFAULT_BSPLINE
    partial = instantiate(cfg.register)
    assert partial.func is register and partial.keywords["threads"] == 1
