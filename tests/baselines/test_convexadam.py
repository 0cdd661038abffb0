"""ConvexAdam baseline: units, axis order and sign on known shifts, determinism, inputs, side effects.

Small volumes (40x36x32 voxels, ~5-20 s per registration on 2 busy cores); the expensive results are
computed once per module.
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from intermod.baselines.convexadam import DEFAULT_OPTIONS, register
from intermod.baselines.result import ClassicalResult
from known_shift import (INTERIOR, SHIFT, assert_result_shapes, dice, ellipsoid_labels, phantom_dice, shifted_pair,
                         texture)

SPACING = (2.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def pair():
    return shifted_pair(np.int16)


@pytest.fixture(scope="module")
def shifted(pair):
    fixed, moving, _, moving_labels = pair
    return register(fixed, moving, moving_labels, SPACING)


def test_result_types_and_shapes(shifted, pair):
    assert isinstance(shifted, ClassicalResult)
    assert_result_shapes(shifted, np.int16)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_known_shift_recovered_in_voxels_per_axis(shifted, axis):
    """Component i is the displacement along array axis i, in voxels, pull-back, sign included;
    the (N - 1) / N shortfall of convexAdam's Adam stage is corrected (without it about 2.86, -1.89, 1.42)."""
    component = shifted.field[axis][INTERIOR]
    assert abs(component.mean() - SHIFT[axis]) < 0.15, (axis, component.mean())
    assert component.std() < 0.3


def test_warped_labels_match_fixed_labels(shifted, pair):
    _, _, fixed_labels, moving_labels = pair
    for label in (1, 2):
        assert dice(fixed_labels, moving_labels, label) < 0.75  # the shift matters
        assert dice(fixed_labels, shifted.warped_labels, label) > 0.9, label


def test_warped_image_matches_the_fixed_texture(shifted, pair):
    fixed, moving, _, _ = pair
    expected = 500.0 - 200.0 * texture()  # the moving contrast, unshifted
    corr = np.corrcoef(shifted.warped[INTERIOR].ravel(), expected[INTERIOR].ravel())[0, 1]
    assert corr > 0.98
    assert np.corrcoef(moving[INTERIOR].ravel(), expected[INTERIOR].ravel())[0, 1] < 0.8


def test_same_inputs_are_bit_identical_and_threads_restored(shifted, pair):
    fixed, moving, _, moving_labels = pair
    threads = torch.get_num_threads()
    rng_state = torch.random.get_rng_state()
    again = register(fixed, moving, moving_labels, SPACING)
    assert np.array_equal(again.field, shifted.field)
    assert np.array_equal(again.warped, shifted.warped)
    assert np.array_equal(again.warped_labels, shifted.warped_labels)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's generator is untouched


def test_field_is_invariant_to_a_linear_intensity_map(pair):
    """MIND-SSC divides patch distances by their local mean: HU or rescaled CT give one field."""
    fixed, moving, _, moving_labels = pair
    raw = register(fixed, moving, moving_labels, SPACING, normalise=False)
    mapped = register(0.01 * fixed + 7.0, 3.0 * moving, moving_labels, SPACING, normalise=False)
    difference = np.abs(raw.field - mapped.field)
    assert difference.max() < 0.02 and difference.mean() < 1e-3  # float32 rounding, carried through Adam


def test_identity_pair_gives_zero_field_no_files_no_warnings(private_tmp):
    image = 100.0 * texture(1)
    labels = ellipsoid_labels((20.0, 14.0, 16.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(image, image.copy(), labels, SPACING)
    # Not exactly 0 (0.06 voxel at most here): the discrete search's ties and Adam's steps of lr 1.
    assert np.abs(result.field).max() < 0.1 and np.abs(result.field).mean() < 0.02
    assert np.array_equal(result.warped_labels, labels)
    assert [w for w in caught if "convexAdam" in w.filename] == []  # its align_corners notices are muted
    tmp, cwd = private_tmp
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []


def test_importing_the_package_leaves_warning_filters_alone():
    """convexAdam runs warnings.filterwarnings('ignore') on import; it must not reach the process."""
    code = ("import sys, warnings\n"
            "ignore_all = ('ignore', None, Warning, None, 0)  # what filterwarnings('ignore') inserts\n"
            "assert ignore_all not in warnings.filters\n"
            "from intermod.baselines.convexadam import _import_convex_adam; _import_convex_adam()\n"
            "assert 'convexAdam.convex_adam_MIND' in sys.modules\n"
            "assert ignore_all not in warnings.filters, warnings.filters[:3]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_dice_improves_on_a_phantom_pair():
    before, after = phantom_dice(register)
    assert np.mean(after) > np.mean(before) + 0.01, (before, after)
    assert after[0] > before[0] + 0.03, (before, after)  # the bladder, the largest organ


def small_inputs(shape=(18, 18, 18)):
    image = texture()[: shape[0], : shape[1], : shape[2]].copy()
    return image, image.copy(), np.zeros(shape, np.int16)


@pytest.mark.parametrize("options, message", [
    ({"ic": False}, "issue #20"),
    ({"grid_spacing": 4}, r"unknown ConvexAdam options \['grid_spacing'\]"),
    ({"selected_smooth": 4}, "selected_smooth must be 0 or odd"),
    ({"grid_sp": 2.5}, "grid_sp must be an int"),
    ({"disp_hw": 0}, "disp_hw must be >= 1"),
    ({"lambda_weight": -1.0}, "lambda_weight must be a number >= 0"),
    ({"selected_niter": 0}, "selected_niter must be >= 1 when lambda_weight > 0"),
    ({"grid_sp": 10}, "axis 0 has 18 voxels: too few for grid_sp=10"),  # padded to 20: 2 cells

])
def test_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        register(*small_inputs(), SPACING, **options)


def test_rejects_bad_inputs():
    """Its own checks; the shared ones are tests/baselines/test_result.py's."""
    ct, mr, labels = small_inputs()
    with pytest.raises(ValueError, match="mr is constant"):
        register(ct, np.full_like(mr, 5.0), labels, SPACING)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        register(ct, mr, labels, SPACING, threads=0)


def test_defaults_are_the_packages_own():
    import inspect

    from intermod.baselines.convexadam import _import_convex_adam

    signature = inspect.signature(_import_convex_adam())
    for name, value in DEFAULT_OPTIONS.items():
        assert signature.parameters[name].default == value, name


def test_method_config_instantiates_with_the_module_defaults():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "method" / "convexadam.yaml")
    assert cfg.name == "convexadam" and cfg.procedure == "intermod.runner.register_classically"
    partial = instantiate(cfg.register)
    assert partial.func is register
    assert {k: v for k, v in partial.keywords.items() if k in DEFAULT_OPTIONS} == DEFAULT_OPTIONS
    assert partial.keywords["device"] == "cpu" and partial.keywords["threads"] == 1
