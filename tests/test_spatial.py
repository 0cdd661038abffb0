import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import expm
from scipy.ndimage import gaussian_filter, map_coordinates

from intermod.metrics import jacobian_determinant
from intermod.spatial import SpatialTransformer, crop_center, field_offset, integrate_velocity, warp, warp_labels


def smooth_field(shape, amplitude, seed):
    """(1, 3, *shape) float64 smooth random displacement of about +-amplitude voxels."""
    rng = np.random.default_rng(seed)
    phi = np.stack([gaussian_filter(rng.standard_normal(shape), 2.0) for _ in range(3)])
    phi *= amplitude / np.abs(phi).max()
    return torch.from_numpy(phi)[None]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_zero_field_is_exact_identity(mode):
    torch.manual_seed(0)
    moving = torch.randn(2, 2, 9, 10, 13)
    full = warp(moving, torch.zeros(2, 3, 9, 10, 13), mode=mode)
    assert torch.equal(full, moving)
    central = warp(moving, torch.zeros(2, 3, 5, 4, 7), mode=mode)
    assert central.shape == (2, 2, 5, 4, 7)
    assert torch.equal(central, crop_center(moving, (5, 4, 7)))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_integer_translation_is_a_shift(mode):
    torch.manual_seed(0)
    moving = torch.randn(1, 1, 12, 14, 16)
    phi = torch.zeros(1, 3, 6, 8, 10)  # offset (3, 3, 3)
    phi[:, 0], phi[:, 1], phi[:, 2] = 2.0, -3.0, 1.0
    expected = moving[..., 3 + 2:3 + 2 + 6, 3 - 3:3 - 3 + 8, 3 + 1:3 + 1 + 10]
    assert torch.equal(warp(moving, phi, mode=mode), expected)


def test_padding_modes_outside_the_image():
    moving = torch.arange(1.0, 6.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 3).contiguous()
    phi = torch.zeros(1, 3, 5, 2, 3)
    phi[:, 0] = 10.0  # every sample lands past the last X voxel
    assert torch.equal(warp(moving, phi), torch.full_like(moving, 5.0))
    assert torch.equal(warp(moving, phi, padding_mode="zeros"), torch.zeros_like(moving))


def test_gradients_reach_phi():
    torch.manual_seed(0)
    moving = torch.randn(1, 1, 8, 9, 10)
    phi = (0.3 * torch.randn(1, 3, 4, 5, 6)).requires_grad_()
    warp(moving, phi).square().sum().backward()
    assert phi.grad is not None
    for d in range(3):  # every component gets a gradient
        assert phi.grad[:, d].abs().sum() > 0


@pytest.mark.parametrize("field_shape", [(8, 9, 11), (4, 5, 7)])
def test_matches_scipy_map_coordinates(field_shape):
    shape = (8, 9, 11)  # non-cubic: catches axis-order mistakes
    vol = np.random.default_rng(1).standard_normal(shape)
    phi = smooth_field(field_shape, amplitude=3.0, seed=2)  # also reaches outside the image
    off = field_offset(shape, field_shape)
    grid = np.meshgrid(*[np.arange(n) + o for n, o in zip(field_shape, off)], indexing="ij")
    coords = np.stack([g + phi[0, d].numpy() for d, g in enumerate(grid)])
    expected = map_coordinates(vol, coords, order=1, mode="nearest")
    out = warp(torch.from_numpy(vol)[None, None], phi)[0, 0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_matches_grid_sample_with_zyx_grid():
    """grid_sample's last grid dim is (z, y, x) for input dims (D, H, W) = (X, Y, Z)."""
    shape = (7, 9, 12)
    moving = torch.from_numpy(np.random.default_rng(3).standard_normal(shape))[None, None]
    phi = smooth_field(shape, amplitude=2.0, seed=4)
    pos = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))[None] + phi
    norm = torch.stack([2 * pos[:, d] / (n - 1) - 1 for d, n in enumerate(shape)], -1).flip(-1)
    expected = F.grid_sample(moving, norm, align_corners=True, padding_mode="border")
    torch.testing.assert_close(warp(moving, phi), expected, atol=1e-10, rtol=0)


def test_warp_labels_keeps_dtype_and_label_set():
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, 4, size=(1, 1, 8, 9, 10))).to(torch.uint8)
    labels[labels == 2] = 7
    phi = smooth_field((6, 7, 8), amplitude=2.5, seed=6).float()
    out = warp_labels(labels, phi)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 6, 7, 8)
    assert set(out.unique().tolist()) <= {0, 1, 3, 7}
    assert torch.equal(warp_labels(labels, torch.zeros(1, 3, 8, 9, 10)), labels)
    with pytest.raises(ValueError, match="integer"):
        warp_labels(labels.float(), phi)


def test_spatial_transformer_wraps_warp():
    torch.manual_seed(0)
    moving, phi = torch.randn(1, 1, 6, 7, 8), torch.randn(1, 3, 4, 5, 6)
    assert torch.equal(SpatialTransformer()(moving, phi), warp(moving, phi))
    assert torch.equal(SpatialTransformer("nearest")(moving, phi), warp(moving, phi, mode="nearest"))


def test_crop_center():
    x = torch.arange(6 * 7 * 8).view(1, 1, 6, 7, 8)
    assert torch.equal(crop_center(x, 4), x[..., 1:5, 1:5, 2:6])
    assert torch.equal(crop_center(x, (2, 7, 3)), x[..., 2:4, :, 2:5])
    with pytest.raises(ValueError, match="exceeds"):
        crop_center(x, (7, 7, 8))


@pytest.mark.parametrize(
    "moving_shape, phi_shape, match",
    [
        ((1, 1, 8, 8, 8), (1, 3, 5, 6, 6), "even"),
        ((1, 1, 8, 8, 8), (1, 3, 10, 8, 8), "even"),
        ((1, 1, 8, 8, 8), (1, 2, 8, 8, 8), "phi must be"),
        ((1, 8, 8, 8), (1, 3, 8, 8, 8), "moving must be"),
        ((2, 1, 8, 8, 8), (1, 3, 8, 8, 8), "batch"),
    ],
)
def test_invalid_shapes_raise(moving_shape, phi_shape, match):
    with pytest.raises(ValueError, match=match):
        warp(torch.zeros(moving_shape), torch.zeros(phi_shape))


def test_invalid_options_raise():
    moving, phi = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        warp(moving, phi, mode="bicubic")
    with pytest.raises(ValueError, match="padding_mode"):
        warp(moving, phi, padding_mode="reflection")
    with pytest.raises(ValueError, match="floating-point"):
        warp(moving.long(), phi)


def test_a_bfloat16_field_samples_at_float32_positions():
    """bfloat16 holds whole voxels only between 128 and 256: positions must not be formed in the field's dtype."""
    ramp = torch.arange(300, dtype=torch.float32).view(1, 1, 300, 1, 1).expand(1, 1, 300, 2, 2).contiguous()
    phi = torch.zeros(1, 3, 300, 2, 2, dtype=torch.bfloat16)
    phi[:, 0] = 0.25  # exact in bfloat16
    warped = warp(ramp, phi)
    assert warped.dtype == torch.float32
    torch.testing.assert_close(warped[0, 0, :299, 0, 0], torch.arange(299, dtype=torch.float32) + 0.25)


# integrate_velocity: scaling and squaring (the diffeomorphic option, model.integration_steps)

def test_zero_integration_steps_return_the_velocity_itself():
    v = smooth_field((6, 7, 8), amplitude=2.0, seed=7)
    assert integrate_velocity(v, 0) is v


@pytest.mark.parametrize("steps", [1, 4, 7, 10])
def test_a_constant_velocity_integrates_to_the_same_constant_displacement(steps):
    """The flow of a constant velocity is a translation by it; border replication keeps it constant."""
    v = torch.empty(2, 3, 6, 7, 9, dtype=torch.float64)
    v[0, 0], v[0, 1], v[0, 2] = 2.5, -1.25, 0.3
    v[1] = -3.7
    torch.testing.assert_close(integrate_velocity(v, steps), v, atol=1e-12, rtol=0)


def test_a_rotation_velocity_integrates_to_the_rotation():
    """v(x) = A (x - c) with A skew: the flow is exp(A), a rotation of 0.3 rad about the Z axis. A linear field
    is interpolated exactly, so inside (where no composition reads beyond the grid) scaling and squaring gives
    (I + A / 2^N)^(2^N) - I: within 0.003 voxel of the analytic field at 7 steps, 1e-4 at 12."""
    n, centre, angle = 33, 16, 0.3
    a = angle * np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    r = np.indices((n, n, n)).astype(np.float64) - centre
    v = torch.from_numpy(np.einsum("ij,j...->i...", a, r))[None]
    exact = np.einsum("ij,j...->i...", expm(a) - np.eye(3), r)
    inside = (slice(None), slice(9, 24), slice(9, 24), slice(9, 24))  # |u| <= 3 voxels there
    error = {steps: np.abs(integrate_velocity(v, steps)[0].numpy() - exact)[inside].max() for steps in (0, 7, 12)}
    assert np.linalg.norm(exact[inside], axis=0).max() > 2.9
    assert error[0] > 0.3 and error[7] < 0.005 and error[12] < 2e-4


def sinusoidal_velocity(points: np.ndarray, amplitude: float = 3.0, wavelength: float = 24.0) -> np.ndarray:
    """A smooth velocity (3, ...) at ``points`` (3, ...): each component a sine wave along another axis."""
    k = 2 * np.pi / wavelength
    return amplitude * np.stack([np.sin(k * points[1]), np.sin(k * points[2]), np.sin(k * points[0])])


def test_seven_steps_match_twelve_and_the_ode_flow_of_a_smooth_velocity():
    """Against 12 steps: within 0.01 voxel everywhere (3-voxel velocity). Against the flow of the analytic
    velocity (RK4, 200 steps): within 0.1 voxel inside, the trilinear interpolation of the sampled velocity
    (at the border the ODE sees the sine go on while the warp replicates the edge)."""
    grid = np.indices((32, 32, 32)).astype(np.float64)
    v = torch.from_numpy(sinusoidal_velocity(grid))[None]
    seven, twelve = (integrate_velocity(v, steps)[0].numpy() for steps in (7, 12))
    assert np.abs(seven - twelve).max() < 0.015 and np.abs(twelve).max() > 2.5
    points, h = grid.copy(), 1 / 200
    for _ in range(200):
        k1 = sinusoidal_velocity(points)
        k2 = sinusoidal_velocity(points + h / 2 * k1)
        k3 = sinusoidal_velocity(points + h / 2 * k2)
        k4 = sinusoidal_velocity(points + h * k3)
        points = points + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    inside = (slice(None), *(slice(8, 24),) * 3)
    assert np.abs(seven - (points - grid))[inside].max() < 0.1
    assert np.abs(v[0].numpy() - (points - grid))[inside].max() > 0.5  # the velocity itself is no flow


@pytest.mark.parametrize("seed", [0, 1])
def test_a_large_smooth_velocity_integrates_without_folding_where_it_folds_as_a_displacement(seed):
    rng = np.random.default_rng(seed)
    v = np.stack([gaussian_filter(rng.standard_normal((40, 40, 40)), 4.0, mode="wrap") for _ in range(3)])
    v *= 8.0 / np.abs(v).max()  # up to 8 voxels
    assert jacobian_determinant(v).min() < -0.3  # as a displacement: folds (2 - 5% of the voxels)
    u = integrate_velocity(torch.from_numpy(v)[None], 7)[0].numpy()
    assert jacobian_determinant(u).min() > 0.02 and np.abs(u).max() > 5.0


def test_integration_runs_in_float32_for_bfloat16_and_passes_gradients():
    v = smooth_field((8, 9, 10), amplitude=2.0, seed=8).float()
    u = integrate_velocity(v.bfloat16(), 7)
    assert u.dtype == torch.float32
    torch.testing.assert_close(u, integrate_velocity(v.bfloat16().float(), 7))
    v.requires_grad_()
    integrate_velocity(v, 7).square().sum().backward()
    assert v.grad is not None and all(v.grad[:, d].abs().sum() > 0 for d in range(3))


@pytest.mark.parametrize("velocity, steps, match", [
    (torch.zeros(1, 3, 4, 4, 4), -1, "int >= 0"),
    (torch.zeros(1, 3, 4, 4, 4), 2.0, "int >= 0"),
    (torch.zeros(1, 3, 4, 4, 4), True, "int >= 0"),
    (torch.zeros(1, 2, 4, 4, 4), 7, r"\(B, 3, X, Y, Z\)"),
    (torch.zeros(3, 4, 4, 4), 7, r"\(B, 3, X, Y, Z\)"),
    (torch.zeros(1, 3, 4, 4, 4, dtype=torch.long), 7, "floating point"),
])
def test_integrate_velocity_rejects_bad_inputs(velocity, steps, match):
    with pytest.raises(ValueError, match=match):
        integrate_velocity(velocity, steps)
