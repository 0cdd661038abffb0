"""Test-time refinement and the MIND-SSC descriptor it compares CT and MR with."""
import numpy as np
import pytest
import torch

from intermod.data.phantom import GRIDS, LABELS, synthesize_subject
from intermod.metrics import dice, folding_statistics
from intermod.losses import mind_ssc
from intermod.preprocessing import normalise_ct, normalise_mr
from intermod.refinement import Refinement, refine_field
from intermod.spatial import integrate_velocity, warp, warp_labels


def blobs(shape=(24, 22, 20), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 1, *shape, generator=generator)
    for _ in range(2):  # smooth noise: structure at a few voxels, as MIND's patches expect
        image = torch.nn.functional.avg_pool3d(image, 3, stride=1, padding=1, count_include_pad=False)
    return image


def test_mind_has_twelve_channels_in_zero_one_and_is_one_on_a_constant_image():
    descriptor = mind_ssc(blobs())
    assert descriptor.shape == (1, 12, 24, 22, 20)
    assert descriptor.min() > 0 and descriptor.max() <= 1
    assert torch.allclose(mind_ssc(torch.full((1, 1, 8, 8, 8), 3.0)), torch.ones(1, 12, 8, 8, 8))


def test_mind_is_unchanged_by_an_inverted_and_rescaled_contrast():
    image = blobs()
    assert torch.allclose(mind_ssc(image), mind_ssc(0.2 - 3.0 * image), atol=1e-5)


def test_mind_rejects_a_multichannel_image():
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        mind_ssc(torch.zeros(1, 2, 8, 8, 8))


def test_zero_steps_return_the_field_unchanged():
    image, field = blobs(), torch.randn(1, 3, 24, 22, 20)
    assert refine_field(image, 1 - image, field, Refinement(steps=0)) is field


@pytest.mark.parametrize("bad, match", [(dict(steps=-1), "steps"), (dict(similarity="ssd"), "similarity"),
                                        (dict(grid=0), "grid")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Refinement(**bad)


def test_a_field_of_the_wrong_shape_is_refused_naming_the_expected_one():
    image = blobs()
    with pytest.raises(ValueError, match=r"\(1, 3, 24, 22, 20\)"):
        refine_field(image, image, torch.zeros(1, 3, 24, 22, 19), Refinement(steps=1))


@pytest.mark.parametrize("similarity, integration_steps", [("mind", 0), ("mi", 0), ("mind", 7)])
def test_a_known_shift_is_found_across_an_inverted_contrast(similarity, integration_steps):
    """The MR is the CT shifted by (+2, -2, +1) voxels with its contrast inverted: from a zero field,
    refinement moves each axis the right way, most of the distance, where the image has structure; also as
    a velocity (a constant velocity's flow is the shift itself)."""
    fixed = blobs((32, 32, 28), seed=1)
    shift = torch.tensor([2.0, -2.0, 1.0]).view(1, 3, 1, 1, 1)
    moving = 1 - warp(fixed, -shift.expand(1, 3, 32, 32, 28))  # warp(moving, shift) = 1 - fixed
    field = refine_field(fixed, moving, torch.zeros(1, 3, 32, 32, 28),
                         Refinement(steps=80, similarity=similarity, lr=0.2, lambda_laplacian=0.5), integration_steps)
    found = field[..., 8:24, 8:24, 7:21].mean((2, 3, 4)).flatten()
    assert torch.all(torch.sign(found) == torch.sign(shift.flatten())), found
    assert torch.all((found - shift.flatten()).abs() < 0.5 * shift.flatten().abs()), found


def test_a_diffeomorphic_network_s_field_is_refined_by_composition_and_stays_fold_free():
    """A strongly compressive fold-free start (the flow of a sinusoidal velocity, min det J 0.38) and a weakly
    regularised, fast refinement: added as a displacement the update folds the field; as a velocity whose
    flow is composed with the start's, it moves the field as far and folds nothing."""
    fixed, moving = blobs((32, 32, 28), seed=1), blobs((32, 32, 28), seed=2)
    x = torch.arange(32.0).view(-1, 1, 1).expand(32, 32, 28)
    velocity = torch.zeros(1, 3, 32, 32, 28)
    velocity[0, 0] = 2.5 * torch.sin(2 * np.pi * x / 16)
    start = integrate_velocity(velocity, 7)
    assert folding_statistics(start[0].numpy())["percent_nonpositive_jacobian"] == 0
    fast = Refinement(steps=60, lr=2.0, lambda_laplacian=0.02)
    added, composed = (refine_field(fixed, moving, start, fast, steps) for steps in (0, 7))
    assert folding_statistics(added[0].numpy())["percent_nonpositive_jacobian"] > 2.0  # 11 %
    assert folding_statistics(composed[0].numpy())["min_jacobian"] > 0  # 0.05
    assert (composed - start).abs().mean() > 0.75 * (added - start).abs().mean()  # 2.2 vs 2.5 voxels


def test_refinement_from_no_field_raises_dice_on_a_phantom_pair_without_folding():
    subject = synthesize_subject(3, GRIDS["tiny"])
    ct = torch.from_numpy(normalise_ct(subject["ct"]))[None, None]
    mr = torch.from_numpy(normalise_mr(subject["mr"]))[None, None]
    labels = torch.from_numpy(subject["mr_labels"].astype(np.int64))[None, None]

    def mean_dice(field):
        warped = warp_labels(labels, field)[0, 0].numpy()
        return np.mean([dice(subject["ct_labels"] == v, warped == v) for v in LABELS.values()])

    zero = torch.zeros(1, 3, *ct.shape[2:])
    field = refine_field(ct, mr, zero, Refinement(steps=50, lr=0.2))
    assert mean_dice(field) > mean_dice(zero) + 0.01
    assert folding_statistics(field[0].numpy())["percent_nonpositive_jacobian"] == 0.0


def test_refinement_runs_under_inference_mode_as_lightning_tests():
    image = blobs()
    with torch.inference_mode():
        field = refine_field(image, 1 - image, torch.zeros(1, 3, 24, 22, 20), Refinement(steps=3))
    assert field.abs().max() > 0
