import pytest
import torch

from intermod.networks.unet import RegistrationUNet

WIDTHS = (4, 6, 8)  # tiny: the tests check shapes and wiring, not capacity


@pytest.fixture
def net():
    torch.manual_seed(0)
    return RegistrationUNet(WIDTHS)


def test_paper_size_68_to_28(net):
    out = net(torch.randn(1, 2, 68, 68, 68))
    assert out.shape == (1, 3, 28, 28, 28)
    assert RegistrationUNet.output_size(68) == 28 and RegistrationUNet.margin == 20


def test_non_cubic_valid_size(net):
    assert net(torch.randn(2, 2, 44, 48, 52)).shape == (2, 3, 4, 8, 12)


@pytest.mark.parametrize("n, valid", [(44, True), (68, True), (72, True), (40, False), (46, False), (66, False)])
def test_valid_input_size(n, valid):
    assert RegistrationUNet.valid_input_size(n) is valid


@pytest.mark.parametrize("shape", [(1, 2, 46, 48, 48), (1, 2, 40, 48, 48), (1, 1, 48, 48, 48), (2, 48, 48, 48)])
def test_invalid_input_raises(net, shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        net(torch.zeros(shape))
    with pytest.raises(ValueError):
        RegistrationUNet.output_size(46)


def test_invalid_widths_raise():
    with pytest.raises(ValueError, match="widths"):
        RegistrationUNet((8, 16))


def test_initial_output_is_near_zero(net):
    out = net(torch.randn(2, 2, 48, 48, 48))
    assert out.abs().max() < 1e-3
    assert RegistrationUNet().head.bias.abs().max() == 0  # default widths too


def test_gradients_reach_first_conv(net):
    net(torch.randn(2, 2, 44, 44, 48)).square().sum().backward()
    first = net.enc0[0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_eval_mode_translation_equivariance_in_steps_of_4(net):
    """Output of a crop == crop of the output for crop offsets that are multiples of 4."""
    with torch.no_grad():
        net(torch.randn(2, 2, 44, 44, 44))  # train-mode pass: non-trivial BatchNorm running stats
        torch.nn.init.normal_(net.head.weight)  # O(1) outputs make the comparison meaningful
    net.eval()
    x = torch.randn(1, 2, 52, 48, 56)
    with torch.no_grad():
        whole = net(x)
        tile = net(x[..., 4:52, 0:48, 8:56])
    assert whole.shape == (1, 3, 12, 8, 16) and tile.shape == (1, 3, 8, 8, 8)
    assert whole.abs().max() > 0.1
    torch.testing.assert_close(tile, whole[..., 4:12, 0:8, 8:16], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cut", ["up0", "up1"])
def test_skip_connections_are_centred(cut):
    """Output voxel i sits on input voxel i + margin: with an up-conv zeroed, only skip paths remain,
    and their receptive field must be centred there (deep paths: within half a voxel)."""
    torch.manual_seed(0)
    net = RegistrationUNet(WIDTHS).eval()
    with torch.no_grad():
        getattr(net, cut).weight.zero_()
        getattr(net, cut).bias.zero_()
    x = torch.randn(1, 2, 48, 52, 56, requires_grad=True)
    i = (3, 4, 5)
    net(x)[0, :, i[0], i[1], i[2]].sum().backward()
    support = x.grad.abs().sum((0, 1)).nonzero()
    for d in range(3):
        centre = (support[:, d].min() + support[:, d].max()).item() / 2
        assert abs(centre - (i[d] + RegistrationUNet.margin)) <= 0.5
