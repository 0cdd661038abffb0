import json
import os

import numpy as np
import pytest
import torch

from intermod.data.datamodule import EpochSeededLoader, PairedDataModule
from intermod.data.layout import load_dataset


@pytest.fixture
def datamodule(tiny_dataset):
    dm = PairedDataModule(tiny_dataset, fold=0, patch_size=44, samples_per_volume=3, queue_length=12, batch_size=2)
    dm.setup()
    return dm


def test_queue_yields_paired_patches(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"ct", "mr", "ct_paired", "mr_paired", "ct_labels", "mr_labels"}
    for key, value in batch.items():
        assert value.shape == (2, 1, 44, 44, 44), key
    for key in ("ct", "mr", "ct_paired", "mr_paired"):
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0  # normalised
    # One epoch: (train subjects x 2 flips) x samples per volume patches.
    n_train = len(datamodule.split.train)
    assert len(datamodule.train_dataloader().dataset) == n_train * 2 * 3


def test_flip_is_applied_consistently_to_every_image(datamodule):
    from intermod.data.datamodule import FlipMarked, load_subject

    subject = load_subject(datamodule.spec, datamodule.split.train[0], flipped=True)
    flipped = FlipMarked()(subject)
    for key in ("ct", "mr", "ct_paired", "mr_paired", "ct_labels", "mr_labels"):
        assert torch.equal(flipped[key].data, subject[key].data.flip(1)), key
    original = load_subject(datamodule.spec, datamodule.split.train[0], flipped=False)
    assert torch.equal(FlipMarked()(original)["ct"].data, original["ct"].data)


def test_whole_volumes_for_validation(datamodule, tiny_dataset):
    item = next(iter(datamodule.val_dataloader()))
    spec = load_dataset(tiny_dataset)
    assert item["subject_id"] == list(datamodule.split.val)
    assert item["ct"].shape == (1, 1, 55, 49, 25)  # not padded: inference pads
    assert item["ct_labels"].dtype == torch.int64
    assert set(item["ct_labels"].unique().tolist()) == {0, *spec.labels.values()}
    assert np.allclose(item["spacing"][0].numpy(), [4.0, 4.0, 4.0])


def test_ct_normalisation_is_the_hu_window(datamodule):
    item = next(iter(datamodule.val_dataloader()))
    ct = item["ct"]
    # The default soft-tissue window [-160, 240] HU: air maps to 0, water (0 HU) to 0.4.
    assert ct.min() == 0.0
    urine = ct[item["ct_labels"] == 1]
    assert 0.38 < urine.median() < 0.46


def test_invalid_sampler_raises(tiny_dataset):
    with pytest.raises(ValueError, match="sampler"):
        PairedDataModule(tiny_dataset, sampler="random")


def test_more_patches_per_volume_than_half_the_queue(tiny_dataset):
    """TorchIO's queue breaks when samples_per_volume > queue_length / 2 (the paper's 9.4K per pair):
    each volume is then loaded several times per epoch, and a whole epoch still runs."""
    dm = PairedDataModule(tiny_dataset, fold=0, patch_size=44, samples_per_volume=20, queue_length=8, batch_size=4)
    dm.setup()
    loader = dm.train_dataloader()
    n_patches = sum(batch["ct"].shape[0] for batch in loader)
    assert n_patches == len(dm.split.train) * 2 * 20  # 5 loads of 4 patches per volume


@pytest.mark.parametrize("size, shape", [(44, (44, 44, 44)), ([52, 48, 44], (52, 48, 44)), ((44, 44, 48), (44, 44, 48))])
def test_patch_sizes_are_one_int_or_one_per_axis(size, shape):
    from intermod.data.datamodule import patch_shape

    assert patch_shape(size) == shape


@pytest.mark.parametrize("size", [0, [44, 44], [44, 44, 0], 44.0, "44"])
def test_invalid_patch_sizes_raise(size):
    from intermod.data.datamodule import patch_shape

    with pytest.raises(ValueError, match="patch_size"):
        patch_shape(size)


def test_queue_cuts_per_axis_patches(tiny_dataset):
    dm = PairedDataModule(tiny_dataset, fold=0, patch_size=[52, 48, 44], samples_per_volume=2, queue_length=4)
    batch = next(iter(dm.train_dataloader()))
    assert all(value.shape == (2, 1, 52, 48, 44) for value in batch.values())


def test_ground_truth_field_warps_the_mr_onto_its_paired_version(datamodule):
    from intermod.metrics import ncc
    from intermod.spatial import warp

    batch = next(iter(datamodule.test_dataloader()))
    field = datamodule.ground_truth_field(batch["subject_id"][0])
    assert field.shape == (1, 3, *batch["mr"].shape[2:]) and field.dtype == torch.float32
    assert field.abs().max() > 0.5  # a real deformation, in voxels
    warped = warp(batch["mr"], field)
    assert ncc(warped[0, 0].numpy(), batch["mr_paired"][0, 0].numpy()) > 0.98
    assert ncc(warped[0, 0].numpy(), batch["mr_paired"][0, 0].numpy()) > ncc(batch["mr"][0, 0].numpy(),
                                                                             batch["mr_paired"][0, 0].numpy())


def test_no_ground_truth_field_is_none(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    dm = PairedDataModule(root, fold=0)
    subject = dm.labels and dm.split.test[0]
    (root / subject / "gt_field.nii.gz").unlink()
    assert dm.ground_truth_field(subject) is None


def test_the_loader_tells_the_queues_subject_sampler_each_epoch_as_it_begins():
    """Under DDP the queue's DistributedSampler reshuffles subjects only when told the epoch; the data
    module's loader tells it (the LightningModule need not know where the sampler is)."""
    class Sampler:
        epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    epoch = iter(range(3, 10))
    loader = EpochSeededLoader(list(range(4)), batch_size=2, epoch=lambda: next(epoch), subject_sampler=Sampler())
    assert [len(list(loader)) for _ in range(2)] == [2, 2]
    assert Sampler.epochs == [3, 4]


SHARD_PROBE = """
import json, sys
import torch.distributed as dist
from intermod.data.datamodule import EpochSeededLoader, PairedDataModule
dist.init_process_group("gloo")
datamodule = PairedDataModule(sys.argv[1], patch_size=16, margin=0, samples_per_volume=2, queue_length=4)
queue = datamodule.train_dataloader().dataset
patches = [queue[i] for i in range(len(queue))]
print(json.dumps(sorted({(patch["subject_id"], bool(patch["flipped"])) for patch in patches})))
"""


def test_each_ddp_rank_draws_patches_from_its_own_subjects(tiny_dataset):
    """Two gloo processes, as under trainer=ddp: the 6 training volumes (3 subjects, each also x-flipped)
    are split 3 and 3, with none in both."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", SHARD_PROBE, str(tiny_dataset)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(rank)}) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), [err[-2000:] for _, err in outputs]
    shards = [{tuple(volume) for volume in json.loads(out.strip().splitlines()[-1])} for out, _ in outputs]
    assert len(shards[0]) == len(shards[1]) == 3 and not shards[0] & shards[1]
    datamodule = PairedDataModule(tiny_dataset)
    datamodule.setup()
    assert shards[0] | shards[1] == {(s, f) for s in datamodule.split.train for f in (False, True)}
