import pytest
import torch

from intermod.networks.unet import RegistrationUNet, upsample_half_resolution

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


@pytest.mark.parametrize("shape, out", [((68, 68, 68), (28, 28, 28)), ((44, 48, 52), (4, 8, 12)),
                                        ((148, 136, 88), (108, 96, 48))])
def test_half_resolution_field_has_the_full_field_s_shape(shape, out):
    net = RegistrationUNet(WIDTHS, field_resolution="half")
    assert net(torch.randn(1, 2, *shape)).shape == (1, 3, *out)
    assert not hasattr(net, "dec0")  # the costliest level is not built


def test_half_resolution_upsampling_reproduces_a_linear_field_at_the_output_positions():
    """Level-1 voxel j sits on output voxel 2j - 1.5; a field linear in j must read (i + 1.5) / 2 at output i."""
    m = (6, 7, 8)
    j = [torch.arange(n, dtype=torch.float64) for n in m]
    field = torch.stack(torch.meshgrid(*j, indexing="ij"))[None]  # component d = j_d
    out = upsample_half_resolution(field)
    assert out.shape == (1, 3, 8, 10, 12)  # 2m - 4: the n - 40 output of an input of 2m + 36
    for d, n in enumerate(out.shape[2:]):
        i = torch.arange(n, dtype=torch.float64)
        view = [1, 1, 1]
        view[d] = -1
        torch.testing.assert_close(out[0, d], ((i + 1.5) / 2).view(view).expand(out.shape[2:]))


def test_half_resolution_sizes_agree_with_the_full_network():
    """An input of n gives a level-1 field of n/2 - 18, up-sampled to exactly n - 40."""
    net = RegistrationUNet(WIDTHS, field_resolution="half")
    captured = {}

    def record(module, args, output):
        captured["level1"] = output.shape

    net.head.register_forward_hook(record)
    net(torch.randn(1, 2, 68, 72, 76))
    assert tuple(captured["level1"][2:]) == (16, 18, 20)


def test_half_resolution_eval_mode_translation_equivariance_in_steps_of_4():
    torch.manual_seed(0)
    net = RegistrationUNet(WIDTHS, field_resolution="half")
    with torch.no_grad():
        net(torch.randn(2, 2, 44, 44, 44))
        torch.nn.init.normal_(net.head.weight)
    net.eval()
    x = torch.randn(1, 2, 52, 48, 56)
    with torch.no_grad():
        whole, tile = net(x), net(x[..., 4:52, 0:48, 8:56])
    assert whole.abs().max() > 0.01
    torch.testing.assert_close(tile, whole[..., 4:12, 0:8, 8:16], atol=1e-5, rtol=1e-5)


def test_invalid_field_resolution_raises():
    with pytest.raises(ValueError, match="field_resolution"):
        RegistrationUNet(WIDTHS, field_resolution="quarter")
