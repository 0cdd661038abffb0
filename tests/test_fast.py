"""The fast configuration (experiment=fast): composes, and its pieces run on a CPU. Speed and parity
with fp32 need a GPU: experiments/benchmarks/README.md."""
import functools
import math

import pytest
import torch
from hydra.utils import instantiate
from hydra_compose import compose_train

from intermod.data.gpu_sampler import DevicePatchDataModule
from intermod.losses import RegistrationLoss
from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet
from intermod.runner import make_datamodule

WIDTHS = (4, 6, 8)


def test_fast_experiment_holds_the_speed_options_on_the_paper_s_protocol():
    fast, paper = compose_train(["experiment=fast"]), compose_train(["experiment=paper"])
    assert fast.trainer.precision == "bf16-mixed" and fast.trainer.benchmark and fast.trainer.accelerator == "gpu"
    assert fast.model.channels_last and fast.model.compile
    assert fast.data._target_ == "intermod.data.gpu_sampler.DevicePatchDataModule"
    # Linear scaling of the learning rate with the batch size.
    lr_per_patch = [cfg.model.optimizer.lr / cfg.data.batch_size for cfg in (fast, paper)]
    assert math.isclose(*lr_per_patch)
    for key in ("root", "patch_size", "samples_per_volume", "margin"):
        assert fast.data[key] == paper.data[key], key
    assert fast.trainer.max_epochs == paper.trainer.max_epochs and fast.method == paper.method
    module = instantiate(fast.model, loss=instantiate(fast.method.loss))
    assert module.compile_network and module.memory_format == torch.channels_last_3d
    data = {k: v for k, v in fast.data.items() if k != "synthesize"}  # as the runner instantiates it
    assert isinstance(instantiate(data), DevicePatchDataModule)


def make_module(**kwargs) -> RegistrationModule:
    torch.manual_seed(0)
    return RegistrationModule(RegistrationUNet(WIDTHS), RegistrationLoss("dual"),
                              functools.partial(torch.optim.SGD, lr=0.01), **kwargs)


def patches() -> dict[str, torch.Tensor]:
    """Smooth random 44^3 patches in [0, 1]; the paired images are shifted copies, so NCC has work to do."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 2, 6, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(46, 46, 46), mode="trilinear")
    ct, mr = smooth[:, :1], 1 - smooth[:, 1:]
    crop = (..., slice(1, 45), slice(1, 45), slice(1, 45))
    shifted = (..., slice(2, 46), slice(1, 45), slice(0, 44))
    return {"ct": ct[crop], "mr": mr[crop], "ct_paired": ct[shifted], "mr_paired": mr[shifted]}


def training_loss(module: RegistrationModule, batch: dict, bf16: bool) -> torch.Tensor:
    """One step's loss as Lightning computes it (bf16-mixed autocasts the training step), then backward."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        phi = module(batch["ct"], batch["mr"])
        loss, _ = module.loss(phi.float(), batch["ct"], batch["mr"], batch["ct_paired"], batch["mr_paired"])
    loss.backward()
    return loss.detach()


def test_bf16_channels_last_step_gives_a_finite_loss_close_to_fp32():
    batch = patches()
    fp32 = training_loss(make_module(), batch, bf16=False)
    fast = make_module(channels_last=True)
    bf16 = training_loss(fast, batch, bf16=True)
    assert torch.isfinite(bf16) and abs(bf16 - fp32) < 0.01 * abs(fp32)
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_fast_experiment_trains_a_step_on_cpu(tiny_dataset, tmp_path):
    cfg = compose_train(["experiment=fast", "trainer=cpu", "model=unet_small", "model.compile=false", "logger=none",
                         f"data.root={tiny_dataset}", "data.patch_size=44", "data.batch_size=2",
                         "data.samples_per_volume=2", "data.num_workers=0", "+trainer.max_steps=1",
                         "+trainer.limit_val_batches=0"])
    datamodule = make_datamodule(cfg)
    module = instantiate(cfg.model, loss=instantiate(cfg.method.loss))
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=datamodule)
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
    assert datamodule.volumes is None  # freed when fitting ends


def compiled_matches_eager(module: RegistrationModule) -> None:
    x = torch.rand(1, 1, 44, 44, 44)
    module.eval()
    eager = module(x, x)
    keys = list(module.state_dict())
    module.configure_model()
    module.configure_model()  # every trainer stage calls the hook; compiling once is enough
    assert torch.allclose(module(x, x), eager, atol=1e-6)
    assert list(module.state_dict()) == keys  # checkpoints stay loadable by the eager network


def test_compile_option_gives_the_eager_output(monkeypatch):
    # Inductor's code generation takes about a minute on 2 CPU cores (the slow test below runs it);
    # AOTAutograd's eager backend still checks that the network compiles whole and computes the same.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled_matches_eager(make_module(compile=True))


@pytest.mark.slow
def test_compile_option_with_inductor_gives_the_eager_output():
    compiled_matches_eager(make_module(compile=True))
