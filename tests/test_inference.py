import pytest
import torch

from intermod.inference import predict_field, register_volumes
from intermod.networks.unet import RegistrationUNet


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
