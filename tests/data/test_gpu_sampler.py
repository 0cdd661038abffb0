"""The device patch sampler: the queue's batches, cut from device-resident volumes."""
import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from intermod.data.datamodule import FlipMarked, PairedDataModule, load_subject
from intermod.data.gpu_sampler import DevicePatchDataModule, DevicePatches, DeviceVolumes

PATCH, MARGIN, SAMPLES, BATCH = 44, 20, 4, 4


def make_datamodule(root, device="cpu", **kwargs) -> DevicePatchDataModule:
    dm = DevicePatchDataModule(root, fold=0, patch_size=PATCH, margin=MARGIN, samples_per_volume=SAMPLES,
                               batch_size=BATCH, device=device, **kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def datamodule(tiny_dataset):
    dm = make_datamodule(tiny_dataset)
    dm.load_volumes()
    return dm


def first_batch_plan(volumes: DeviceVolumes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return next(DevicePatches(volumes, PATCH, SAMPLES, BATCH, seed=seed).plan())


def test_batches_have_the_queue_s_keys_shapes_and_dtypes(datamodule, tiny_dataset):
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    queue_dm = PairedDataModule(tiny_dataset, fold=0, patch_size=PATCH, samples_per_volume=2, queue_length=4,
                                batch_size=BATCH)
    reference = next(iter(queue_dm.train_dataloader()))
    assert set(batch) == set(reference)
    for key, value in batch.items():
        assert value.shape == (BATCH, 1, PATCH, PATCH, PATCH) and value.dtype == reference[key].dtype, key
        assert value.is_contiguous(), key
    n_volumes = 2 * len(datamodule.split.train)  # each subject and its x-flipped copy
    assert len(datamodule.load_volumes()) == n_volumes
    assert len(loader) == n_volumes * SAMPLES // BATCH


def reference_volumes(dm: DevicePatchDataModule, name: str) -> tuple[dict, dict]:
    """Padded volume ``name`` two ways: images through the queue's TorchIO pipeline, labels straight from
    the files with NumPy (pad, then flip)."""
    subject_id, flipped = name.removesuffix("-flipped"), name.endswith("-flipped")
    subject = tio.Compose([dm.normalise, FlipMarked(), tio.Pad(MARGIN, padding_mode=0)])(
        load_subject(dm.spec, subject_id, flipped))
    images = {k: subject[k].data[0] for k in ("ct", "mr", "ct_paired", "mr_paired")}
    labels = {}
    for key in ("ct_labels", "mr_labels"):
        array = np.pad(np.asarray(nib.load(dm.spec.path(subject_id, key)).dataobj), MARGIN)
        labels[key] = torch.from_numpy(np.ascontiguousarray(array[::-1] if flipped else array))
    return images, labels


@pytest.mark.parametrize("method", ["gather", "slice"])
def test_patches_are_crops_of_the_sampled_volumes_at_the_sampled_corners(datamodule, method):
    volumes = datamodule.load_volumes()
    indices, corners = first_batch_plan(volumes)
    batch = volumes.crop(indices, corners, PATCH, method)
    for b, (v, (x, y, z)) in enumerate(zip(indices.tolist(), corners.tolist())):
        images, labels = reference_volumes(datamodule, volumes.names[v])
        for key, volume in {**images, **labels}.items():
            expected = volume[x:x + PATCH, y:y + PATCH, z:z + PATCH]
            assert torch.equal(batch[key][b, 0], expected.to(batch[key].dtype)), (key, volumes.names[v])


@pytest.mark.parametrize("method", ["gather", "slice"])
def test_per_axis_patches_are_crops_at_the_sampled_corners(datamodule, method):
    size = (52, 48, 44)
    volumes = datamodule.load_volumes()
    indices, corners = next(DevicePatches(volumes, size, SAMPLES, BATCH, seed=3).plan())
    assert all(((volumes.sizes[v] - torch.tensor(size)) >= c).all() for v, c in zip(indices, corners))
    batch = volumes.crop(indices, corners, size, method)
    for b, (v, (x, y, z)) in enumerate(zip(indices.tolist(), corners.tolist())):
        images, labels = reference_volumes(datamodule, volumes.names[v])
        for key, volume in {**images, **labels}.items():
            expected = volume[x:x + size[0], y:y + size[1], z:z + size[2]]
            assert torch.equal(batch[key][b, 0], expected.to(batch[key].dtype)), (key, volumes.names[v])


def test_every_key_of_a_flipped_volume_is_flipped(datamodule):
    volumes = datamodule.load_volumes()
    pairs = [(volumes.names.index(n), volumes.names.index(f"{n}-flipped")) for n in volumes.names if "-" not in n]
    for plain, flipped in pairs:
        for a, b in zip(volumes.volume(plain), volumes.volume(flipped)):  # images, then labels
            assert torch.equal(a.flip(1), b)


def test_an_epoch_draws_samples_per_volume_patches_of_every_volume_at_valid_corners(datamodule):
    volumes = datamodule.load_volumes()
    plan = list(DevicePatches(volumes, PATCH, SAMPLES, BATCH, seed=0).plan())
    indices = torch.cat([v for v, _ in plan])
    corners = torch.cat([c for _, c in plan])
    assert torch.bincount(indices, minlength=len(volumes)).tolist() == [SAMPLES] * len(volumes)
    assert (corners >= 0).all() and (corners <= volumes.sizes[indices] - PATCH).all()


def test_patch_positions_are_seeded(datamodule):
    volumes = datamodule.load_volumes()

    def epoch(seed, **kwargs):
        return [torch.cat([v[:, None], c], 1) for v, c in DevicePatches(volumes, PATCH, SAMPLES, BATCH, seed=seed,
                                                                          **kwargs).plan()]

    assert all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(0)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(1)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(0, rank=1, world_size=2)))
    stream = DevicePatches(volumes, PATCH, SAMPLES, BATCH, seed=0)
    first, second = list(stream.plan()), list(stream.plan())
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, second))  # a new epoch, new patches
    assert len(DevicePatches(volumes, PATCH, SAMPLES, BATCH, rank=1, world_size=2)) == len(stream) // 2


def test_iteration_crops_the_plan(datamodule):
    volumes = datamodule.load_volumes()
    indices, corners = first_batch_plan(volumes, seed=3)
    batch = next(iter(DevicePatches(volumes, PATCH, SAMPLES, BATCH, seed=3)))
    expected = volumes.crop(indices, corners, PATCH)
    assert all(torch.equal(batch[k], expected[k]) for k in expected)


def test_invalid_options_raise(tiny_dataset, datamodule):
    with pytest.raises(ValueError, match="uniform"):
        DevicePatchDataModule(tiny_dataset, sampler="label")
    with pytest.raises(ValueError, match="crop"):
        DevicePatchDataModule(tiny_dataset, crop="unfold")
    with pytest.raises(ValueError, match="exceeds"):
        DevicePatches(datamodule.load_volumes(), 200, SAMPLES, BATCH)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(tiny_dataset, datamodule):
    cuda = make_datamodule(tiny_dataset, device="cuda")
    assert cuda.load_volumes().images.is_cuda
    for method in ("gather", "slice"):
        for cpu_batch, gpu_batch in zip(DevicePatches(datamodule.load_volumes(), PATCH, SAMPLES, BATCH, crop=method),
                                        DevicePatches(cuda.load_volumes(), PATCH, SAMPLES, BATCH, crop=method)):
            for key in cpu_batch:
                assert gpu_batch[key].is_cuda and torch.equal(gpu_batch[key].cpu(), cpu_batch[key]), (method, key)
