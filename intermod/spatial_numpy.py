"""The pull-back warp of :mod:`intermod.spatial` on numpy arrays, for data made and checked outside torch.

Same convention as :func:`intermod.spatial.warp`: ``warped(x) = image(x + field(x))`` with the field in
voxels along the array axes and edges replicated; here the field covers the whole image and is laid out
(X, Y, Z, 3), as ``gt_field`` is stored. The phantom warps its paired images with it and intermod-pair
its consistency check; torch code (training, registration) uses :func:`intermod.spatial.warp`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["warp_array"]


def warp_array(image: np.ndarray, field: np.ndarray, order: int = 1) -> np.ndarray:
    """Pull-back warp ``image(x + field(x))``; ``field`` is (X, Y, Z, 3) in voxels. Order 1 for
    images (trilinear), 0 for labels (nearest); edges replicate (mode='nearest')."""
    coords = np.indices(image.shape, dtype=np.float32)
    coords += np.moveaxis(field, -1, 0)
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest", output=image.dtype)
