"""intermod.checkpoint: the metadata a trained checkpoint carries, written by training, read by registration."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import intermod
from intermod.checkpoint import (FORMAT_VERSION, KEY, CheckpointError, CheckpointMetadata, read_metadata,
                                 write_metadata)

# The metadata exactly as RegistrationModule wrote it before this module existed (a label-free 2 mm run):
# such checkpoints must keep registering.
WRITTEN = {"format": 1, "labels": {}, "intermod_version": "0.1.0", "method": "dual",
           "net": {"_target_": "intermod.networks.unet.RegistrationUNet", "widths": [16, 32, 64],
                   "field_resolution": "half"},
           "inference": "whole", "spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "patch_size": [60, 56, 48],
           "label_free": True, "ct_window": [-160.0, 240.0], "mr_percentiles": [0.5, 99.5]}


def metadata(**changes) -> CheckpointMetadata:
    fields = dict(method="dual", net={"_target_": "intermod.networks.unet.RegistrationUNet", "widths": [4, 8, 8]},
                  inference="tiled", spacing=[1.5, 1.5, 3.0], orientation="LPS", ct_window=[-160, 240],
                  mr_percentiles=[0.5, 99.5], labels={"bladder": 1, "rectum": 3}, patch_size=68)
    return CheckpointMetadata(**{**fields, **changes})


def test_a_checkpoint_written_before_this_module_reads_back_unchanged():
    meta = CheckpointMetadata.from_dict(WRITTEN, "best.ckpt")
    assert meta.spacing == (2.0, 2.0, 2.0) and meta.orientation == "RAS" and meta.label_free is True
    assert meta.ct_window == (-160.0, 240.0) and meta.mr_percentiles == (0.5, 99.5)
    assert meta.net["field_resolution"] == "half" and meta.patch_size == (60, 56, 48)
    assert meta.integration_steps == 0  # before the diffeomorphic option: the network predicted the displacement
    assert meta.to_dict() == WRITTEN  # what training writes now is what it wrote then


def test_values_are_normalised_and_round_trip_through_a_saved_checkpoint(tmp_path):
    meta = metadata()
    assert meta.spacing == (1.5, 1.5, 3.0) and meta.ct_window == (-160.0, 240.0)
    assert meta.intermod_version == intermod.__version__
    checkpoint = {"state_dict": {}}
    write_metadata(checkpoint, meta)
    assert checkpoint[KEY]["format"] == 1 and checkpoint[KEY]["spacing"] == [1.5, 1.5, 3.0]
    torch.save(checkpoint, tmp_path / "model.ckpt")
    assert read_metadata(torch.load(tmp_path / "model.ckpt", weights_only=False), tmp_path / "model.ckpt") == meta


def test_older_optional_entries_default_and_unknown_entries_are_ignored():
    required = {k: v for k, v in WRITTEN.items() if k not in ("labels", "patch_size", "label_free", "intermod_version")}
    meta = CheckpointMetadata.from_dict({**required, "written_by_a_later_release": 1})
    assert (meta.labels, meta.patch_size, meta.label_free, meta.intermod_version) == ({}, None, False, "unknown")


def test_a_diffeomorphic_checkpoint_records_its_steps_in_a_format_older_readers_refuse(tmp_path):
    """A reader of format 1 ignores entries it does not know: it would warp by the velocity as if it were the
    displacement. integration_steps > 0 is therefore written as format 2, which such a reader refuses (as this
    one refuses format 3); 0 steps stays format 1, without the entry."""
    meta = metadata(integration_steps=7)
    written = meta.to_dict()
    assert written["format"] == FORMAT_VERSION == 2 and written["integration_steps"] == 7
    checkpoint = {"state_dict": {}}
    write_metadata(checkpoint, meta)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    read = read_metadata(torch.load(tmp_path / "model.ckpt", weights_only=False), tmp_path / "model.ckpt")
    assert read == meta and read.integration_steps == 7
    assert "integration_steps" not in metadata().to_dict() and metadata(integration_steps=0).to_dict()["format"] == 1
    assert CheckpointMetadata.from_dict({**WRITTEN, "format": 2}).integration_steps == 0


@pytest.mark.parametrize("version", [0, 3, None])
def test_another_format_version_is_refused_saying_which_and_what_to_do(version):
    written = {**WRITTEN, "format": version} if version is not None else {k: v for k, v in WRITTEN.items()
                                                                         if k != "format"}
    with pytest.raises(CheckpointError) as caught:
        CheckpointMetadata.from_dict(written, "runs/old/best.ckpt")
    assert str(caught.value) == (
        f"runs/old/best.ckpt: checkpoint from another intermod version (format {version!r}, written by intermod "
        f"0.1.0; this is intermod {intermod.__version__}, which reads formats 1, 2): register with the intermod that "
        "trained it, or train again")


@pytest.mark.parametrize("entry", ["method", "net", "inference", "spacing", "orientation", "ct_window",
                                   "mr_percentiles"])
def test_a_missing_entry_is_named(entry):
    with pytest.raises(CheckpointError) as caught:
        CheckpointMetadata.from_dict({k: v for k, v in WRITTEN.items() if k != entry}, "m.ckpt")
    assert str(caught.value).startswith(f"m.ckpt: unusable intermod checkpoint (no '{entry}' in its 'intermod' "
                                        "metadata); register with a checkpoint written by intermod-train")


@pytest.mark.parametrize("entry, value, problem", [
    ("spacing", [2.0, -2.0, 2.0], "must be 3 positive numbers (mm)"),
    ("spacing", [2.0, 2.0], "must be 3 positive numbers (mm)"),
    ("orientation", "RAX", "must be 3 axis codes"),
    ("inference", "sliding", "must be one of ('whole', 'tiled')"),
    ("ct_window", [240.0, -160.0], "must be two increasing numbers"),
    ("mr_percentiles", "high", "must be two increasing numbers"),
    ("net", None, "must name the network class ('_target_')"),
    ("labels", [1, 2], "must map organ names to label values"),
    ("integration_steps", -1, "must be an int >= 0"),
    ("integration_steps", 7.5, "must be an int >= 0"),
    ("integration_steps", True, "must be an int >= 0"),
])
def test_a_bad_entry_is_named_with_its_value(entry, value, problem):
    with pytest.raises(CheckpointError) as caught:
        CheckpointMetadata.from_dict({**WRITTEN, entry: value}, "m.ckpt")
    message = str(caught.value)
    assert message.startswith(f"m.ckpt: unusable intermod checkpoint ('{entry}' ") and problem in message
    assert f"(got {value!r})" in message and len(message.splitlines()) == 1


def test_training_cannot_write_metadata_registration_would_refuse():
    with pytest.raises(ValueError, match="'inference' must be one of"):
        metadata(inference="sliding")
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata().spacing = (1.0, 1.0, 1.0)


@pytest.mark.parametrize("checkpoint", [{"state_dict": {}}, {KEY: "dual"}, ["not", "a", "dict"]])
def test_a_checkpoint_without_intermod_metadata_is_not_an_intermod_checkpoint(checkpoint):
    with pytest.raises(CheckpointError, match=r"^x.ckpt: not an intermod checkpoint \(it has no 'intermod' metadata\)"):
        read_metadata(checkpoint, "x.ckpt")
