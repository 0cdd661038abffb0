"""The LightningModule: the U-Net, the warp and the intra-modality losses (paper Fig. 2)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from intermod.checkpoint import CheckpointMetadata, write_metadata
from intermod.evaluation.report import IMAGE_METRICS, evaluate_subject, subject_volumes
from intermod.inference import register_volumes
from intermod.losses import RegistrationLoss
from intermod.refinement import Refinement, refine_field
from intermod.spatial import integrate_velocity, warp, warp_labels


class RegistrationModule(pl.LightningModule):
    """Trains ``net`` on patches with ``loss``; validates and tests by registering whole volumes.

    Validation logs the whole-volume loss, image similarity and, where the dataset has organ labels,
    Dice/ASD per organ (``val/dice_mean``, else ``val/loss``, picks the best checkpoint). Test results
    are kept in ``test_results`` (subject -> metrics) for metrics.json.
    ``compile``: torch.compile the network (``compile_mode``: torch.compile's ``mode``) when the trainer
    configures the model; in place, so checkpoints keep the eager network's parameter names.
    ``scheduler_interval``: step the learning-rate scheduler every "epoch" (the paper's halving) or "step".
    ``refinement``: test-time refinement of each test subject's field (validation never refines, so it picks
    checkpoints by the network alone); its seconds per subject (``refine_s``) go into the test results, beside each
    registration's total ``seconds``.
    ``integration_steps`` (the diffeomorphic option, ours; 0, the default, is the paper's displacement): the
    network predicts a stationary velocity field, integrated by that many scaling-and-squaring steps
    (:func:`intermod.spatial.integrate_velocity`) into the displacement that the loss's data terms, the
    validation and test metrics and the checkpoint's users (intermod-register) warp with. Training integrates
    each patch's velocity; validation and test integrate the whole volume's (see :mod:`intermod.inference`).
    Eq. 4 regularises the velocity (:class:`intermod.losses.RegistrationLoss`). Checkpoints record it.
    """

    def __init__(self, net: nn.Module, loss: RegistrationLoss, optimizer: Callable, scheduler: Callable | None = None,
                 scheduler_interval: str = "epoch", labels: dict[str, int] | None = None, inference: str = "whole", channels_last: bool = False,
                 figure_callback: Callable | None = None, compile: bool = False, compile_mode: str | None = None,
                 integration_steps: int = 0, refinement: Refinement = Refinement()):
        super().__init__()
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0 (0: the network predicts the displacement), "
                             f"got {integration_steps!r}")
        self.integration_steps = integration_steps
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        self.labels = dict(labels or {})
        self.inference = inference
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.figure_callback = figure_callback
        self.refinement = refinement
        self.compile_network, self.compile_mode = compile, compile_mode  # `compile` is nn.Module's method
        self._network_compiled = False
        self.checkpoint_metadata: CheckpointMetadata | None = None  # set by the runner, which knows the data
        self.test_results: dict[str, dict] = {}
        if channels_last:
            self.net.to(memory_format=self.memory_format)

    def configure_model(self) -> None:
        # Every fit/validate/test calls this hook; compile once per process.
        if self.compile_network and not self._network_compiled:
            self.net.compile(mode=self.compile_mode)
            self._network_compiled = True

    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
        x = torch.cat([ct, mr], dim=1).contiguous(memory_format=self.memory_format)
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        phi = self(batch["ct"], batch["mr"]).float()
        velocity = None
        if self.integration_steps:
            velocity, phi = phi, integrate_velocity(phi, self.integration_steps)
        loss, parts = self.loss(phi, batch["ct"], batch["mr"], batch["ct_paired"], batch["mr_paired"],
                                velocity=velocity)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "total"}, on_step=True, on_epoch=True,
                      batch_size=phi.shape[0])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=phi.shape[0])
        return loss

    def register_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """The whole-volume field, warped MR and warped MR labels of a validation/test batch."""
        return register_volumes(self.net, batch["ct"], batch["mr"], batch["mr_labels"], self.inference,
                                integration_steps=self.integration_steps)

    def evaluate_batch(self, batch: dict, out: dict[str, torch.Tensor]) -> dict:
        """Organ and image metrics of a registered batch (``evaluation.report.evaluate_subject``)."""
        return evaluate_subject(subject_volumes(batch, out), out["field"][0].float().cpu().numpy(), self.labels,
                                batch["spacing"][0].tolist())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.register_batch(batch)
        velocity = out["velocity"].float() if "velocity" in out else None
        loss, _ = self.loss(out["field"].float(), batch["ct"], batch["mr"], batch["ct_paired"], batch["mr_paired"],
                            velocity=velocity)
        result = self.evaluate_batch(batch, out)
        metrics = {"val/loss": loss, **{f"val/{m.key}": result["images"][f"{m.key}_after"] for m in IMAGE_METRICS}}
        if result["organs"]:
            dice = {organ: v["dice_after"] for organ, v in result["organs"].items()}
            metrics["val/dice_mean"] = float(np.mean(list(dice.values())))
            metrics.update({f"val/dice_{organ}": v for organ, v in dice.items()})
            # every key on every rank (NaN for an empty organ): sync_dist reduces key by key
            metrics.update({f"val/asd_{organ}": v["asd_after"] for organ, v in result["organs"].items()})
        self.log_dict(metrics, batch_size=1, sync_dist=True)
        if (batch_idx == 0 and self.figure_callback is not None and self.trainer.is_global_zero
                and not self.trainer.sanity_checking):
            self.figure_callback(batch, out, self.labels, stage="val", loggers=self.loggers,
                                 epoch=self.current_epoch, step=self.global_step)

    def refine_batch(self, batch: dict, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` with its field refined on the batch's own CT and MR, and the MR and labels warped again."""
        field = refine_field(batch["ct"], batch["mr"], out["field"].float(), self.refinement,
                             self.integration_steps)
        return {"field": field, "mr_warped": warp(batch["mr"], field),
                "mr_labels_warped": warp_labels(batch["mr_labels"], field)}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        start = time.perf_counter()
        out = self.register_batch(batch)
        timing = {}
        if self.refinement.steps:
            refined = time.perf_counter()
            out = self.refine_batch(batch, out)
            timing["refine_s"] = time.perf_counter() - refined
        # the registration's own time, as the classical methods report it: network (and refinement), no metrics
        timing["seconds"] = time.perf_counter() - start
        self.test_results[batch["subject_id"][0]] = {**self.evaluate_batch(batch, out), **timing}
        if self.figure_callback is not None:
            self.figure_callback(batch, out, self.labels, stage="test", loggers=self.loggers)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                                         "interval": self.scheduler_interval}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What intermod-register needs to rebuild the network and check compatibility. The runner sets what it
        # knows (the data, the network's arguments); the integration is the module's own.
        if self.checkpoint_metadata is not None:
            write_metadata(checkpoint, replace(self.checkpoint_metadata, integration_steps=self.integration_steps))
