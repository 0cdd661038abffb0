"""RegistrationModule's diffeomorphic option (model.integration_steps): the network predicts a velocity; the
loss, validation, test and the checkpoint's users all take its integral as the displacement."""
import functools

import pytest
import torch

from intermod.checkpoint import CheckpointMetadata
from intermod.inference import predict_field, predict_network_output
from intermod.losses import RegistrationLoss
from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet
from intermod.refinement import Refinement, refine_field
from intermod.spatial import integrate_velocity

LABELS = {"bladder": 1}


def make_module(integration_steps: int, seed: int = 0) -> RegistrationModule:
    """A narrow module whose network gives velocities of a voxel or two (the real head starts near zero)."""
    torch.manual_seed(seed)
    net = RegistrationUNet((4, 8, 8))
    torch.nn.init.normal_(net.head.weight, std=0.3)
    module = RegistrationModule(net, RegistrationLoss("dual"), functools.partial(torch.optim.SGD, lr=0.01),
                                labels=LABELS, integration_steps=integration_steps)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    return module


def batch(size=(44, 48, 44), seed=0) -> dict[str, torch.Tensor]:
    """Smooth random images in [0, 1]; the paired ones shifted copies."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 2, 6, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=tuple(n + 2 for n in size), mode="trilinear")
    crop = (..., *(slice(1, n + 1) for n in size))
    shifted = (..., *(slice(2, n + 2) for n in size))
    ct, mr = smooth[:, :1], 1 - smooth[:, 1:]
    return {"ct": ct[crop], "mr": mr[crop], "ct_paired": ct[shifted], "mr_paired": mr[shifted],
            "mr_labels": (mr[crop] > 0.5).long()}


def test_training_integrates_the_patch_velocity_and_regularises_the_velocity():
    module, patches = make_module(7), batch()
    loss = module.training_step(patches, 0)
    velocity = module(patches["ct"], patches["mr"])
    phi = integrate_velocity(velocity, 7)
    assert (phi - velocity).abs().max() > 0.05
    expected, _ = module.loss(phi, patches["ct"], patches["mr"], patches["ct_paired"], patches["mr_paired"],
                              velocity=velocity)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert module.net.head.weight.grad.abs().sum() > 0  # through the compositions to the network


def test_zero_steps_train_on_the_network_output_as_before():
    module, patches = make_module(0), batch()
    phi = module(patches["ct"], patches["mr"])
    expected, _ = module.loss(phi, patches["ct"], patches["mr"], patches["ct_paired"], patches["mr_paired"])
    assert torch.equal(module.training_step(patches, 0), expected)


def test_validation_and_test_register_with_the_whole_volume_integral():
    module, volumes = make_module(7).eval(), batch((30, 26, 20))
    out = module.register_batch(volumes)
    velocity = predict_network_output(module.net, volumes["ct"], volumes["mr"])
    torch.testing.assert_close(out["velocity"], velocity)
    torch.testing.assert_close(out["field"], integrate_velocity(velocity, 7))


def test_test_time_refinement_of_a_diffeomorphic_module_composes_a_velocity_update():
    module, volumes = make_module(7).eval(), batch((30, 26, 20))
    module.refinement = Refinement(steps=3)
    out = module.register_batch(volumes)
    refined = module.refine_batch(volumes, out)
    expected = refine_field(volumes["ct"], volumes["mr"], out["field"], module.refinement, integration_steps=7)
    torch.testing.assert_close(refined["field"], expected)
    assert not torch.allclose(expected, refine_field(volumes["ct"], volumes["mr"], out["field"], module.refinement))


def test_a_diffeomorphic_checkpoint_registers_with_the_modules_field(tmp_path):
    """Saved as Lightning does (on_save_checkpoint adds the metadata), loaded by intermod-register's
    load_model: the steps come back and predict_field gives the module's own validation field."""
    from intermod.registration import load_model

    module = make_module(7).eval()
    module.checkpoint_metadata = CheckpointMetadata(
        method="dual", net={"_target_": "intermod.networks.unet.RegistrationUNet", "widths": [4, 8, 8]},
        inference="whole", spacing=(2.0, 2.0, 2.0), orientation="RAS", ct_window=(-160, 240),
        mr_percentiles=(0.5, 99.5), labels=LABELS)  # as the runner sets it: it knows nothing of the integration
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["intermod"]["format"] == 2 and checkpoint["intermod"]["integration_steps"] == 7
    torch.save(checkpoint, tmp_path / "model.ckpt")
    model = load_model(tmp_path / "model.ckpt", precision="fp32")
    assert model.integration_steps == 7
    volumes = batch((30, 26, 20))
    field = predict_field(model.net, volumes["ct"], volumes["mr"], model.inference,
                          integration_steps=model.integration_steps)
    torch.testing.assert_close(field, module.register_batch(volumes)["field"], rtol=1e-4, atol=1e-4)


def test_an_old_checkpoint_without_the_entry_registers_with_the_displacement(tmp_path):
    from intermod.registration import load_model

    module = make_module(0).eval()
    module.checkpoint_metadata = CheckpointMetadata(
        method="dual", net={"_target_": "intermod.networks.unet.RegistrationUNet", "widths": [4, 8, 8]},
        inference="whole", spacing=(2.0, 2.0, 2.0), orientation="RAS", ct_window=(-160, 240),
        mr_percentiles=(0.5, 99.5), labels=LABELS)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["intermod"]["format"] == 1 and "integration_steps" not in checkpoint["intermod"]
    torch.save(checkpoint, tmp_path / "model.ckpt")
    assert load_model(tmp_path / "model.ckpt", precision="fp32").integration_steps == 0


@pytest.mark.parametrize("steps", [-1, 2.5, True])
def test_bad_integration_steps_are_refused(steps):
    with pytest.raises(ValueError, match="integration_steps must be an int >= 0"):
        make_module(steps)
