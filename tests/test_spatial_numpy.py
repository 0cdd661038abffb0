"""intermod.spatial_numpy.warp_array is the numpy twin of intermod.spatial.warp."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from intermod.spatial import warp, warp_labels
from intermod.spatial_numpy import warp_array


@pytest.fixture
def volume_and_field():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 8, 7)).astype(np.float32)
    field = rng.uniform(-3, 3, size=(9, 8, 7, 3)).astype(np.float32)  # reaches past the edges too
    return image, field


def as_torch_field(field: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.moveaxis(field, -1, 0).copy())[None]


def test_trilinear_warp_matches_the_torch_warp(volume_and_field):
    image, field = volume_and_field
    expected = warp(torch.from_numpy(image)[None, None], as_torch_field(field))[0, 0].numpy()
    np.testing.assert_allclose(warp_array(image, field), expected, atol=1e-5)


def test_nearest_warp_matches_the_torch_label_warp(volume_and_field):
    _, field = volume_and_field
    labels = np.random.default_rng(1).integers(0, 4, size=(9, 8, 7)).astype(np.uint8)
    expected = warp_labels(torch.from_numpy(labels.astype(np.int64))[None, None], as_torch_field(field))[0, 0]
    warped = warp_array(labels, field, order=0)
    assert warped.dtype == np.uint8
    np.testing.assert_array_equal(warped, expected.numpy())
