import copy

import pytest
import torch

from intermod.inference import (InferenceNetwork, fold_batchnorm, native_bf16, predict_field, predict_network_output,
                                register_volumes, resolve_precision)
from intermod.networks.unet import RegistrationUNet
from intermod.spatial import integrate_velocity, warp


@pytest.fixture(scope="module")
def trained_like_net():
    """A narrow net with non-trivial weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    net = RegistrationUNet(widths=(4, 8, 8))
    torch.nn.init.normal_(net.head.weight, std=0.1)  # the real init is ~0: make the field visible
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 2, 52, 52, 52))  # populate running statistics
    return net.eval()


@pytest.mark.parametrize("shape", [(30, 26, 17), (57, 44, 29)])
def test_tiled_and_whole_volume_fields_are_equal(trained_like_net, shape):
    torch.manual_seed(1)
    ct, mr = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    whole = predict_field(trained_like_net, ct, mr, mode="whole")
    tiled = predict_field(trained_like_net, ct, mr, mode="tiled", tile=52)
    assert whole.shape == tiled.shape == (1, 3, *shape)  # every voxel gets a displacement
    assert whole.abs().max() > 1e-3  # a non-trivial field, so equality means something
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_a_velocity_is_integrated_once_over_the_whole_volume_so_tiled_and_whole_agree(voxel_field_net, volume_pair):
    """The diffeomorphic option: the stitched velocity is integrated, not each tile's (no seams, no
    dependence on the tiling)."""
    velocity = predict_network_output(voxel_field_net, *volume_pair)
    whole = predict_field(voxel_field_net, *volume_pair, mode="whole", integration_steps=7)
    tiled = predict_field(voxel_field_net, *volume_pair, mode="tiled", tile=52, integration_steps=7)
    torch.testing.assert_close(whole, integrate_velocity(velocity, 7))
    assert (whole - velocity).abs().max() > 0.5  # velocities of a few voxels: the integration matters
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-4)
    assert torch.equal(predict_field(voxel_field_net, *volume_pair), velocity)  # 0 steps: the network's output


def test_register_volumes_warps_by_the_integrated_field_and_returns_the_velocity(trained_like_net):
    ct, mr = torch.rand(1, 1, 20, 18, 16), torch.rand(1, 1, 20, 18, 16)
    labels = torch.randint(0, 4, (1, 1, 20, 18, 16))
    out = register_volumes(trained_like_net, ct, mr, labels, integration_steps=5)
    torch.testing.assert_close(out["field"], integrate_velocity(out["velocity"], 5))
    torch.testing.assert_close(out["velocity"], predict_network_output(trained_like_net, ct, mr))
    torch.testing.assert_close(out["mr_warped"], warp(mr, out["field"]))
    assert "velocity" not in register_volumes(trained_like_net, ct, mr, labels)


def test_register_volumes_warps_image_and_labels(trained_like_net):
    ct, mr = torch.rand(1, 1, 20, 18, 16), torch.rand(1, 1, 20, 18, 16)
    labels = torch.randint(0, 4, (1, 1, 20, 18, 16))
    out = register_volumes(trained_like_net, ct, mr, labels)
    assert out["mr_warped"].shape == mr.shape and out["mr_labels_warped"].dtype == labels.dtype
    assert set(out["mr_labels_warped"].unique().tolist()) <= {0, 1, 2, 3}


def test_bad_inputs_raise(trained_like_net):
    with pytest.raises(ValueError, match="inference mode"):
        predict_field(trained_like_net, torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), mode="sliding")
    with pytest.raises(ValueError, match="share one grid"):
        predict_field(trained_like_net, torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))


def test_folding_batchnorm_keeps_the_field(trained_like_net):
    x = torch.rand(1, 2, 48, 52, 44)
    folded = fold_batchnorm(trained_like_net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in trained_like_net.modules())  # the original is kept
    with torch.no_grad():
        torch.testing.assert_close(folded(x), trained_like_net(x), rtol=1e-4, atol=1e-5)


def test_float32_inference_network_gives_the_networks_field(trained_like_net):
    torch.manual_seed(2)
    ct, mr = torch.rand(1, 1, 30, 26, 17), torch.rand(1, 1, 30, 26, 17)
    fast = predict_field(InferenceNetwork(trained_like_net, "fp32"), ct, mr)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, predict_field(trained_like_net, ct, mr), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def volume_pair():
    torch.manual_seed(3)
    return torch.rand(1, 1, 40, 36, 28), torch.rand(1, 1, 40, 36, 28)


@pytest.fixture(scope="module")
def voxel_field_net(trained_like_net, volume_pair):
    """``trained_like_net`` with displacements of a few voxels on ``volume_pair``, as a trained network gives."""
    net = copy.deepcopy(trained_like_net)
    with torch.no_grad():
        net.head.weight.mul_(4.0 / predict_field(net, *volume_pair).abs().max())
    return net


def test_bfloat16_field_is_within_hundredths_of_a_voxel_of_float32(voxel_field_net, volume_pair):
    bf16 = InferenceNetwork(voxel_field_net, "bf16")
    assert bf16.net.enc0[0].weight.dtype == torch.bfloat16 and bf16.net.head.weight.dtype == torch.float32
    exact, fast = predict_field(voxel_field_net, *volume_pair), predict_field(bf16, *volume_pair)
    assert fast.dtype == torch.float32 and exact.abs().max() > 3.0 and exact.std() > 0.5
    error = (fast - exact).abs()
    assert error.max() < 0.05 and error.mean() < 0.01


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision"):
        InferenceNetwork(RegistrationUNet((4, 8, 8)), "auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_inference_matches_cpu_float32(voxel_field_net, volume_pair, precision):
    ct, mr = volume_pair
    net = InferenceNetwork(voxel_field_net, precision).cuda()
    field = predict_field(net, ct.cuda(), mr.cuda()).cpu()
    error = (field - predict_field(voxel_field_net, ct, mr)).abs()
    # fp32 on a GPU may use TF32 convolutions (cuDNN's default): ~1e-3 relative.
    assert error.max() < (0.05 if precision == "bf16" else 0.01) and error.mean() < 0.01


def test_autocast_bf16_validation_on_a_grid_wider_than_256_gives_the_fp32_dice():
    """Under trainer.precision=bf16-mixed validation runs in autocast: the field comes out in bfloat16, and
    positions formed in bfloat16 would round to whole voxels above 256. Labels warped through
    register_volumes must match float32's."""
    from intermod.metrics import dice

    torch.manual_seed(5)
    net = RegistrationUNet(widths=(4, 8, 8), field_resolution="half").eval()
    shape = (300, 12, 10)
    x = torch.linspace(0, 30, shape[0]).view(1, 1, -1, 1, 1).expand(1, 1, *shape)  # 0.1 per voxel
    ct, mr = torch.rand(1, 1, *shape), x.clone()
    labels = (torch.arange(shape[0]) // 20 % 3).view(1, 1, -1, 1, 1).expand(1, 1, *shape).contiguous()
    with torch.no_grad():  # displacements of a few voxels, as a trained network gives
        net.head.weight[0].mul_(3.0 / predict_field(net, ct, mr)[:, 0].abs().max())  # along the long axis
    exact = register_volumes(net, ct, mr, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = register_volumes(net, ct, mr, labels)
    assert fast["field"].dtype == torch.bfloat16 and exact["field"][:, 0].abs().max() > 1.0
    for value in (0, 1, 2):
        fixed = labels[0, 0].numpy() == value
        a = exact["mr_labels_warped"][0, 0].numpy() == value
        b = fast["mr_labels_warped"][0, 0].numpy() == value
        assert abs(dice(fixed, a) - dice(fixed, b)) < 0.005  # within 0.5 points (0.6 with bfloat16 positions)
        assert dice(a, b) > 0.99
    torch.testing.assert_close(fast["mr_warped"], exact["mr_warped"], atol=0.02, rtol=0)
