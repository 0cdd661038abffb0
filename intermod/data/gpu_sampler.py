"""Patches cut on the training device: a data path that keeps up with a fast GPU.

The TorchIO queue crops every patch in the main process on the CPU (six 68^3 copies per patch, then a
collate and a host-to-device copy), which caps it at a few hundred patches per second whatever the
number of workers. Here the training volumes go through the same pipeline as the queue's once
(normalised, x-flipped copies, padded by the margin), are held on the device, and each batch is cut
there in one indexing operation. Patch positions are uniform, as ``tio.UniformSampler``'s: every voxel
of the padded volume can be in a patch, and every original voxel can be the centre of an output region.

Use it when the volumes fit in device memory (18 bytes per padded voxel: four float32 images and two
uint8 label maps; the paper's 24 training volumes of 258 x 236 x 140 take 3.7 GB) and the GPU is fast
enough for the queue to be the bottleneck; experiments/benchmarks/train_throughput.md measures both.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import torch
import torchio as tio
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from intermod.data.datamodule import PairedDataModule, patch_shape
from intermod.data.layout import IMAGE_KEYS, LABEL_KEYS

CROPS = ("gather", "slice")


class _StackedVolumes(Dataset):
    """Each transformed subject as (images (4, X, Y, Z) float32, labels (2, X, Y, Z)), for loader workers."""

    def __init__(self, subjects: tio.SubjectsDataset):
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        subject = self.subjects[index]
        images = torch.cat([subject[k][tio.DATA] for k in IMAGE_KEYS]).float()
        labels = torch.cat([subject[k][tio.DATA] for k in LABEL_KEYS])
        return images, labels


class DeviceVolumes:
    """Many volumes side by side on one device: images (4, N) and label maps (2, N), N = all voxels.

    Volume ``v`` occupies columns ``first_voxels[v]`` to ``first_voxels[v] + X*Y*Z`` in C order, so one flat index
    tensor addresses patches of different volumes (even of different shapes) in a single gather.
    """

    def __init__(self, volumes: Sequence[tuple[Tensor, Tensor]], names: Sequence[str] = ()):
        if not volumes:
            raise ValueError("DeviceVolumes needs at least one volume")
        self.names = list(names)
        self.shapes = [tuple(images.shape[1:]) for images, _ in volumes]
        self.images = torch.cat([images.reshape(len(IMAGE_KEYS), -1) for images, _ in volumes], 1)
        self.labels = torch.cat([labels.reshape(len(LABEL_KEYS), -1) for _, labels in volumes], 1)
        self.device = self.images.device
        sizes = torch.tensor(self.shapes, dtype=torch.long)
        self.sizes = sizes  # (V, 3), on the CPU: patch positions are drawn there
        counts = sizes.prod(1)
        self.first_voxels = (counts.cumsum(0) - counts).tolist()  # host copy: slicing needs no device sync
        self.starts = torch.tensor(self.first_voxels, device=self.device)
        self.stride_x = (sizes[:, 1] * sizes[:, 2]).to(self.device)
        self.stride_y = sizes[:, 2].to(self.device)

    @classmethod
    def load(cls, subjects: tio.SubjectsDataset, device: torch.device | str, num_workers: int = 0,
             names: Sequence[str] = ()) -> "DeviceVolumes":
        """Run the subjects' transform (in ``num_workers`` processes) and move each volume to ``device``."""
        loader = DataLoader(_StackedVolumes(subjects), batch_size=None, num_workers=num_workers)
        # One volume at a time on the host; the device holds them all (and briefly twice, while concatenating).
        return cls([(images.to(device), labels.to(device)) for images, labels in loader], names)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def volume(self, index: int) -> tuple[Tensor, Tensor]:
        """Views of volume ``index``: images (4, X, Y, Z) and labels (2, X, Y, Z)."""
        shape, start = self.shapes[index], self.first_voxels[index]
        stop = start + math.prod(shape)
        return self.images[:, start:stop].view(-1, *shape), self.labels[:, start:stop].view(-1, *shape)

    def _flat_index(self, volumes: Tensor, corners: Tensor, size: tuple[int, int, int]) -> Tensor:
        """(B, PX, PY, PZ) flat voxel indices of the patches with the given volumes and first corners (on any device)."""
        steps = [torch.arange(n, device=self.device) for n in size]
        volumes, corners = volumes.to(self.device), corners.to(self.device)
        x = (corners[:, 0, None] + steps[0]) * self.stride_x[volumes, None]
        y = (corners[:, 1, None] + steps[1]) * self.stride_y[volumes, None]
        z = corners[:, 2, None] + steps[2]
        return (self.starts[volumes, None, None, None] + x[:, :, None, None] + y[:, None, :, None]
                + z[:, None, None, :])

    def crop(self, volumes: Tensor, corners: Tensor, size: int | Sequence[int],
             method: str = "gather") -> dict[str, Tensor]:
        """Patches of ``size`` (an int or (X, Y, Z)) voxels: patch b of volume ``volumes[b]`` from voxel
        ``corners[b]`` on.

        Returns the queue's batch dict, {key: (B, 1, PX, PY, PZ)}. ``method``: "gather" cuts the whole
        batch with one index_select per tensor; "slice" stacks B sliced views (B small copies).
        """
        if method not in CROPS:
            raise ValueError(f"crop method must be one of {CROPS}, got {method!r}")
        batch, size = len(volumes), patch_shape(size)
        sx, sy, sz = size
        if method == "gather":
            index = self._flat_index(volumes, corners, size).flatten()
            images = self.images.index_select(1, index).view(-1, batch, *size)
            labels = self.labels.index_select(1, index).view(-1, batch, *size)
        else:
            views = [self.volume(v) for v in volumes.tolist()]
            cuts = [(slice(None), slice(x, x + sx), slice(y, y + sy), slice(z, z + sz))
                    for x, y, z in corners.tolist()]
            images = torch.stack([im[cut] for (im, _), cut in zip(views, cuts)], 1)
            labels = torch.stack([lab[cut] for (_, lab), cut in zip(views, cuts)], 1)
        # Channel c of (C, B, P, P, P) is a contiguous (B, P, P, P) block: no copy to split the keys.
        patches = {k: images[i].unsqueeze(1) for i, k in enumerate(IMAGE_KEYS)}
        patches.update({k: labels[i].unsqueeze(1) for i, k in enumerate(LABEL_KEYS)})
        return patches


class DevicePatches(IterableDataset):
    """An epoch of batches cut from :class:`DeviceVolumes`, like the queue's: ``samples_per_volume``
    uniform patches from every volume, shuffled together; only whole batches (a fixed batch shape spares
    re-compilation and cuDNN re-tuning; at most ``batch_size - 1`` patches an epoch are left out).

    Positions are drawn on the CPU from a generator seeded with ``seed + rank``, so a run is repeatable
    whatever the device; under DDP each of ``world_size`` ranks draws its own share of the epoch.
    """

    def __init__(self, volumes: DeviceVolumes, patch_size: int | Sequence[int], samples_per_volume: int, batch_size: int,
                 seed: int = 0, crop: str = "gather", rank: int = 0, world_size: int = 1):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        patch_size = patch_shape(patch_size)
        too_small = [s for s in volumes.shapes if any(n < p for n, p in zip(s, patch_size))]
        if too_small:
            raise ValueError(f"patch size {patch_size} exceeds padded volume shapes {too_small}")
        self.volumes, self.patch_size, self.crop = volumes, patch_size, crop
        self.samples_per_volume, self.batch_size, self.world_size = samples_per_volume, batch_size, world_size
        self.generator = torch.Generator().manual_seed(seed + rank)

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_volume // self.world_size // self.batch_size

    def plan(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of (volume indices (B,), first corners (B, 3)), on the CPU; advances the generator."""
        slots = torch.arange(len(self.volumes)).repeat_interleave(self.samples_per_volume)
        order = slots[torch.randperm(len(slots), generator=self.generator)]
        positions = self.volumes.sizes - torch.tensor(self.patch_size) + 1  # corners per axis
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            volumes = order[start:start + self.batch_size]
            fraction = torch.rand(len(volumes), 3, generator=self.generator, dtype=torch.float64)
            yield volumes, (fraction * positions[volumes]).long()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        plan = list(self.plan())
        if self.crop == "gather" and plan:
            # One host-to-device copy an epoch: a copy per batch from pageable memory would wait for the GPU.
            device = self.volumes.device
            plan = zip(torch.stack([v for v, _ in plan]).to(device), torch.stack([c for _, c in plan]).to(device))
        for volumes, corners in plan:
            yield self.volumes.crop(volumes, corners, self.patch_size, self.crop)


class DevicePatchDataModule(PairedDataModule):
    """:class:`PairedDataModule` with training patches cut on the training device (validation and
    testing are unchanged: whole volumes).

    ``device``: where the volumes live (None: the trainer's device, else CUDA when present).
    ``crop``: "gather" or "slice" (see :meth:`DeviceVolumes.crop`). ``seed`` seeds patch positions.
    ``num_workers`` loads the volumes in parallel, once; ``queue_length`` and ``pin_memory`` do not apply.
    Patch positions are uniform only: ``sampler="label"`` needs the queue.
    """

    def __init__(self, *args, device: str | None = None, crop: str = "gather", seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sampler_name != "uniform":
            raise ValueError(f"the device sampler draws uniform patches only; sampler={self.sampler_name!r} "
                             "needs the TorchIO queue (PairedDataModule)")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.device, self.crop, self.seed = device, crop, seed
        self.volumes: DeviceVolumes | None = None

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def load_volumes(self) -> DeviceVolumes:
        """The padded training volumes on the device, loaded on first use."""
        if self.volumes is None:
            subjects = self.training_subjects()
            names = [f"{s['subject_id']}{'-flipped' if s['flipped'] else ''}" for s in subjects.dry_iter()]
            self.volumes = DeviceVolumes.load(subjects, self._device(), self.num_workers, names)
        return self.volumes

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self.volumes = None  # gives the device memory back for testing

    def train_dataloader(self) -> DataLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        patches = DevicePatches(self.load_volumes(), self.patch_size, self.samples_per_volume, self.batch_size,
                                seed=self.seed, crop=self.crop, rank=rank, world_size=world_size)
        # Batches come out ready: no workers, no collation, no pinning (the tensors are on the device).
        # One process draws every batch, so the length Lightning warns about is exact.
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        return DataLoader(patches, batch_size=None, num_workers=0)
