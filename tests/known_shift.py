"""The classical baselines' shared test cases: an inverted-contrast pair moved by a known shift per axis, and
a small phantom subject."""
import numpy as np
from scipy.ndimage import gaussian_filter, shift as nd_shift

SHAPE = (40, 36, 32)  # 40 is not a multiple of ConvexAdam's grid_sp=6: its padding path runs
SHIFT = (3.0, -2.0, 1.5)  # voxels: distinct per axis, both signs, one sub-voxel
INTERIOR = (slice(8, -8),) * 3  # away from the borders, where the wrapped texture meets edge padding


def texture(seed=0):
    """A smooth periodic random texture, so a wrapped shift of it is an exact translation."""
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(size=SHAPE), 2.0, mode="wrap").astype(np.float32)


def ellipsoid_labels(center, dtype=np.uint8):
    """Label 1 in an ellipsoid and 2 in a smaller one beside it, centred in continuous voxel coordinates."""
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    labels = np.zeros(SHAPE, dtype)
    for label, offset, radii in ((1, (0, 0, 0), (7, 6, 5)), (2, (0, 9, 0), (4, 3, 4))):
        c = np.add(center, offset)
        labels[sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, radii)) <= 1] = label
    return labels


def shifted_pair(label_dtype=np.uint8):
    """CT-like fixed image and an MR-like moving one with inverted contrast, moved by SHIFT:
    moving(x) = fixed(x - SHIFT), so the pull-back field is +SHIFT everywhere."""
    fixed = 40.0 + 300.0 * texture()
    moving = 500.0 - 200.0 * nd_shift(texture(), SHIFT, order=3, mode="grid-wrap")
    center = (18.0, 12.0, 16.0)
    return (fixed.astype(np.float32), moving.astype(np.float32), ellipsoid_labels(center, label_dtype),
            ellipsoid_labels(np.add(center, SHIFT), label_dtype))


def dice(a, b, label):
    a, b = a == label, b == label
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def assert_result_shapes(result, label_dtype):
    """What every classical method returns for the pair: SHAPE-sized float32 field, MR and labels of the pair's."""
    assert result.field.shape == (3, *SHAPE) and result.field.dtype == np.float32
    assert result.warped.shape == SHAPE and result.warped.dtype == np.float32
    assert result.warped_labels.shape == SHAPE and result.warped_labels.dtype == label_dtype
    assert set(np.unique(result.warped_labels)) <= {0, 1, 2}
    assert result.seconds > 0


def phantom_dice(register) -> tuple[list[float], list[float]]:
    """Dice per organ before and after ``register(ct, mr, mr_labels, spacing)`` on a tiny phantom subject
    (55x49x25 voxels at 4 mm)."""
    from intermod.data.phantom import GRIDS, LABELS, synthesize_subject

    grid = GRIDS["tiny"]
    subject = synthesize_subject(3, grid)
    result = register(subject["ct"], subject["mr"], subject["mr_labels"], grid.spacing)
    before = [dice(subject["ct_labels"], subject["mr_labels"], v) for v in LABELS.values()]
    after = [dice(subject["ct_labels"], result.warped_labels, v) for v in LABELS.values()]
    return before, after
