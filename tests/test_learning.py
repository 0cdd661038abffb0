"""The method works: a short training registers held-out phantom subjects better than the affine start.

Slow (about as long as `make demo`): the training path itself is covered by the fast end-to-end
tests in tests/cli/test_train.py; this one checks that the learning pays off. Run with `make test-all`.
"""
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from intermod.data.datamodule import PairedDataModule
from intermod.losses import RegistrationLoss
from intermod.module import RegistrationModule
from intermod.networks.unet import RegistrationUNet


@pytest.mark.slow
def test_dual_training_improves_dice_on_held_out_subjects(tmp_path):
    from intermod.cli.synth import synthesize_dataset

    synthesize_dataset(tmp_path / "phantom", n_subjects=15, grid="small", seed=0, workers=2)
    pl.seed_everything(0, workers=True)
    # The demo's configuration (conf/experiment/demo.yaml).
    datamodule = PairedDataModule(tmp_path / "phantom", fold=0, sampler="label", samples_per_volume=24,
                                  queue_length=96)
    datamodule.setup()
    module = RegistrationModule(RegistrationUNet((8, 16, 32)), RegistrationLoss("dual"),
                                optimizer=lambda params: torch.optim.Adam(params, lr=2e-3), labels=datamodule.labels)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)

    results = module.test_results.values()
    before = np.mean([o["dice_before"] for r in results for o in r["organs"].values()])
    after = np.mean([o["dice_after"] for r in results for o in r["organs"].values()])
    folding = max(r["folding"]["percent_nonpositive_jacobian"] for r in results)
    print(f"mean Dice before {before:.3f}, after {after:.3f}; folding {folding:.3f}%")
    assert after > before + 0.01
    assert folding < 1.0
