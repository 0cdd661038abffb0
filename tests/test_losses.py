import math

import pytest
import torch

from intermod.losses import RegistrationLoss, laplacian, local_ncc, parzen_mutual_information, ncc, smoothness
from intermod.spatial import crop_center, warp


@pytest.fixture
def image():
    torch.manual_seed(0)
    return torch.rand(2, 1, 8, 9, 10, dtype=torch.float64)


def test_ncc_analytic_values(image):
    assert ncc(image, image).shape == (2,)
    torch.testing.assert_close(ncc(image, image), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(ncc(image, -image), -torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(ncc(image, 3.5 * image - 2.0), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(ncc(image, torch.rand_like(image))).max() < 0.2
    assert torch.equal(ncc(image, torch.ones_like(image)), torch.zeros(2, dtype=torch.float64))


def test_ncc_float32_is_accurate():
    x = torch.rand(1, 1, 28, 28, 28)
    assert abs(ncc(x, x).item() - 1) < 1e-5


def test_local_ncc(image):
    torch.testing.assert_close(local_ncc(image, image, window=5), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(local_ncc(image, 1 - image, window=5), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    noise = torch.rand_like(image)
    assert (local_ncc(image, noise, window=5) < 0.5).all()
    with pytest.raises(ValueError, match="window"):
        local_ncc(image, image, window=9)


def grid(shape, dtype=torch.float64):
    return torch.meshgrid(*[torch.arange(n, dtype=dtype) for n in shape], indexing="ij")


def test_laplacian_of_quadratic_and_linear_fields():
    x, y, z = grid((5, 6, 7))
    quad = torch.stack([0.5 * x**2 + 2 * y**2 - z**2, x**2, 3 * z**2])[None]
    lap = laplacian(quad)
    assert lap.shape == (1, 3, 3, 4, 5)
    for c, value in enumerate([2 * (0.5 + 2 - 1), 2.0, 6.0]):
        torch.testing.assert_close(lap[0, c], torch.full_like(lap[0, c], value))
    linear = torch.stack([x + 2 * y - z, 3 * z, -y])[None]
    assert laplacian(linear).abs().max() < 1e-12


def test_smoothness_analytic_values():
    total, lap, l2 = smoothness(torch.zeros(2, 3, 5, 5, 5))
    assert torch.equal(total, torch.zeros(2)) and torch.equal(lap, torch.zeros(2)) and torch.equal(l2, torch.zeros(2))
    c = 1.5
    total, lap, l2 = smoothness(torch.full((1, 3, 4, 5, 6), c), lambda_laplacian=0.5, lambda_l2=0.01)
    torch.testing.assert_close(total, torch.tensor([0.01 * c**2]))
    assert torch.equal(lap, torch.zeros(1))
    x, _, _ = grid((5, 5, 5))
    phi = torch.stack([x**2, torch.zeros_like(x), torch.zeros_like(x)])[None]  # Laplacian 2 in one of 3 components
    _, lap, l2 = smoothness(phi, lambda_laplacian=0.5, lambda_l2=0.01)
    torch.testing.assert_close(lap, torch.tensor([0.5 * 4 / 3], dtype=torch.float64))
    torch.testing.assert_close(l2, torch.tensor([0.01 * (x**4).mean().item() / 3], dtype=torch.float64))


def test_parzen_mutual_information(image):
    mi_self = parzen_mutual_information(image, image)
    mi_noise = parzen_mutual_information(image, torch.rand_like(image))
    assert mi_self.shape == (2,)
    assert (mi_self > mi_noise + 1.0).all()
    assert (mi_self <= math.log(32) + 1e-6).all()
    torch.testing.assert_close(parzen_mutual_information(image, 1 - image), mi_self, atol=1e-4, rtol=0)
    a = image.clone().requires_grad_()
    parzen_mutual_information(a, image.flip(2)).sum().backward()
    assert a.grad.abs().sum() > 0


def test_registration_loss_dual_hand_computed(image):
    ct, mr = image, image.square()
    ct_paired, mr_paired = 0.5 * image + torch.rand_like(image), 1 - image
    phi = torch.zeros(2, 3, 4, 5, 6, dtype=torch.float64)
    total, parts = RegistrationLoss("dual")(phi, ct, mr, ct_paired, mr_paired)
    sim_ct = 1 - ncc(crop_center(ct, (4, 5, 6)), crop_center(ct_paired, (4, 5, 6)))
    sim_mr = 1 - ncc(crop_center(mr_paired, (4, 5, 6)), crop_center(mr, (4, 5, 6)))
    torch.testing.assert_close(total, (0.5 * sim_ct + 0.5 * sim_mr).mean())
    torch.testing.assert_close(parts["sim_ct"], sim_ct.mean())
    torch.testing.assert_close(parts["sim_mr"], sim_mr.mean())
    assert parts["laplacian"] == 0 and parts["l2"] == 0 and parts["total"] == total
    assert set(parts) == {"sim_ct", "sim_mr", "laplacian", "l2", "total"}


def test_registration_loss_single_modality_weights_are_one(image):
    ct, mr, ct_p, mr_p = image, image.square(), image.flip(3), image.flip(4)
    phi = 0.5 * torch.ones(2, 3, 4, 5, 6, dtype=torch.float64)
    reg = smoothness(phi)[0].mean()
    total, parts = RegistrationLoss("ct")(phi, ct, mr, ct_paired=ct_p)
    expected = (1 - ncc(crop_center(ct, (4, 5, 6)), warp(ct_p, phi))).mean() + reg
    torch.testing.assert_close(total, expected)
    assert "sim_mr" not in parts
    total, parts = RegistrationLoss("mr")(phi, ct, mr, mr_paired=mr_p)
    expected = (1 - ncc(crop_center(mr_p, (4, 5, 6)), warp(mr, phi))).mean() + reg
    torch.testing.assert_close(total, expected)
    total, parts = RegistrationLoss("mi", mi_bins=16)(phi, ct, mr)
    mi = parzen_mutual_information(crop_center(ct, (4, 5, 6)), warp(mr, phi), bins=16)
    torch.testing.assert_close(total, (1 - mi / math.log(16)).mean() + reg)
    assert set(parts) == {"sim_mi", "laplacian", "l2", "total"}


def test_with_a_velocity_the_data_terms_warp_by_phi_and_eq4_regularises_the_velocity(image):
    """The diffeomorphic option: phi is the integrated displacement, the velocity what the network predicted."""
    ct, mr, ct_p, mr_p = image, image.square(), image.flip(3), image.flip(4)
    torch.manual_seed(1)
    phi, velocity = (0.5 * torch.randn(2, 3, 4, 5, 6, dtype=torch.float64) for _ in range(2))
    loss = RegistrationLoss("dual")
    total, parts = loss(phi, ct, mr, ct_p, mr_p, velocity=velocity)
    reference, reference_parts = loss(phi, ct, mr, ct_p, mr_p)
    for key in ("sim_ct", "sim_mr"):
        assert parts[key] == reference_parts[key]
    reg, lap, l2 = smoothness(velocity)
    torch.testing.assert_close(parts["laplacian"], lap.mean())
    torch.testing.assert_close(parts["l2"], l2.mean())
    torch.testing.assert_close(total, reference - smoothness(phi)[0].mean() + reg.mean())
    with pytest.raises(ValueError, match="velocity shape"):
        loss(phi, ct, mr, ct_p, mr_p, velocity=velocity[..., :5])


@pytest.mark.parametrize("method, similarity", [("dual", "ncc"), ("dual", "lncc"), ("mi", "ncc")])
def test_registration_loss_gradients_reach_phi(image, method, similarity):
    phi = (0.3 * torch.randn(2, 3, 6, 7, 8, dtype=torch.float64)).requires_grad_()
    loss_fn = RegistrationLoss(method, similarity=similarity, ncc_window=3)
    total, parts = loss_fn(phi, image, image.square(), image.flip(2), image.flip(3))
    total.backward()
    assert total.ndim == 0 and all(not v.requires_grad for v in parts.values())
    assert phi.grad.abs().sum() > 0


def test_registration_loss_invalid_arguments(image):
    with pytest.raises(ValueError, match="dual.*ct.*mr.*mi"):
        RegistrationLoss("ssd")
    with pytest.raises(ValueError, match="similarity"):
        RegistrationLoss(similarity="mse")
    phi = torch.zeros(2, 3, 4, 5, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="missing: ct_paired, mr_paired"):
        RegistrationLoss("dual")(phi, image, image)
    with pytest.raises(ValueError, match="missing: mr_paired"):
        RegistrationLoss("mr")(phi, image, image, ct_paired=image)
    with pytest.raises(ValueError, match="differs from ct shape"):
        RegistrationLoss("ct")(phi, image, image, ct_paired=image[..., :8])


def test_local_ncc_matches_a_direct_window_computation():
    """The separable box mean gives VoxelMorph's windowed cc: cov^2 / (var_f var_m) over each full window."""
    torch.manual_seed(0)
    f, m = torch.rand(1, 1, 9, 8, 7, dtype=torch.float64), torch.rand(1, 1, 9, 8, 7, dtype=torch.float64)
    w = 5
    values = []
    for i in range(9 - w + 1):
        for j in range(8 - w + 1):
            for k in range(7 - w + 1):
                a, b = f[0, 0, i:i + w, j:j + w, k:k + w].flatten(), m[0, 0, i:i + w, j:j + w, k:k + w].flatten()
                cross = ((a - a.mean()) * (b - b.mean())).sum()
                values.append(cross**2 / (((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum() + 1e-5))
    torch.testing.assert_close(local_ncc(f, m, window=w), torch.stack(values).mean()[None], rtol=1e-10, atol=1e-12)
