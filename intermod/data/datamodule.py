"""TorchIO pipeline: paired subjects, per-modality normalisation, x-flip augmentation, a patch queue."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from intermod.data.layout import FIELD_KEY, IMAGE_KEYS, LABEL_KEYS, DatasetSpec, load_dataset
from intermod.data.splits import Split, make_split
from intermod.preprocessing import CT_WINDOW, MR_PERCENTILES, normalise_ct, normalise_mr

CT_KEYS = ("ct", "ct_paired")
MR_KEYS = ("mr", "mr_paired")
VOLUME_KEYS = IMAGE_KEYS + LABEL_KEYS


def patch_shape(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """A patch size as three ints: one for every axis, or one per axis (the 2 mm grid's z axis is short)."""
    size = (patch_size,) * 3 if isinstance(patch_size, (int, float, str)) else tuple(patch_size)
    if len(size) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        raise ValueError(f"patch_size must be a positive int or 3 positive ints (X, Y, Z), got {patch_size!r}")
    return size


def load_subject(spec: DatasetSpec, subject: str, flipped: bool = False) -> tio.Subject:
    """A lazily loaded tio.Subject with the four images and two label maps of one subject."""
    images = {k: tio.ScalarImage(spec.path(subject, k)) for k in IMAGE_KEYS}
    labels = {k: tio.LabelMap(spec.path(subject, k)) for k in LABEL_KEYS}
    return tio.Subject(**images, **labels, subject_id=subject, flipped=flipped)


class FlipMarked(tio.Transform):
    """The paper's x-flip augmentation: flips every image and label of subjects marked ``flipped``.

    The flip is a fixed copy (2 pairs per subject, as in the paper), not a random transform.
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        return tio.Flip(axes=(0,))(subject) if subject["flipped"] else subject


class Normalisation(tio.Transform):
    """:mod:`intermod.preprocessing` on a subject: the CT window on the CTs (ct, ct_paired), the MR
    percentiles on the MRs (mr, mr_paired)."""

    def __init__(self, ct_window: Sequence[float] = CT_WINDOW, mr_percentiles: Sequence[float] = MR_PERCENTILES):
        super().__init__()
        self.ct_window, self.mr_percentiles = tuple(ct_window), tuple(mr_percentiles)
        self.args_names = ["ct_window", "mr_percentiles"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for keys, normalise, parameter in ((CT_KEYS, normalise_ct, self.ct_window),
                                           (MR_KEYS, normalise_mr, self.mr_percentiles)):
            for key in keys:
                if key in subject:
                    subject[key].set_data(torch.from_numpy(normalise(subject[key].data.numpy(), parameter)))
        return subject


class EpochSeededLoader(DataLoader):
    """A DataLoader that reseeds Python's, NumPy's and torch's generators from (seed, global step, rank)
    whenever an epoch's iteration begins, so an epoch's patches depend on nothing before it: a run resumed
    from an end-of-epoch checkpoint draws what the uninterrupted run drew, and ends with its weights.
    (The step, not the epoch: Lightning resumes such a checkpoint before counting its epoch as done.)

    ``subject_sampler`` (the DDP sampler inside the patch queue, out of reach of Lightning's own
    ``set_epoch`` call, which sees only this loader's sampler) is told ``epoch()`` then too: it reshuffles
    the subjects only when told."""

    def __init__(self, *args, seed: int = 0, position: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 epoch: Callable[[], int] = lambda: 0, subject_sampler: DistributedSampler | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.position = seed, position
        self.epoch, self.subject_sampler = epoch, subject_sampler

    def __iter__(self):
        if self.subject_sampler is not None:
            self.subject_sampler.set_epoch(self.epoch())
        epoch_seed = int(np.random.SeedSequence([self.seed, *self.position()]).generate_state(1)[0])
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        return super().__iter__()


def collate_patches(samples: list[tio.Subject]) -> dict[str, torch.Tensor]:
    """Stack queue patches into {key: (B, 1, X, Y, Z)}; the module never sees TorchIO types."""
    return {k: torch.stack([s[k][tio.DATA] for s in samples]) for k in VOLUME_KEYS}


class WholeVolumes(Dataset):
    """Whole normalised volumes for validation and testing, as plain tensors."""

    def __init__(self, subjects: tio.SubjectsDataset):
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict:
        subject = self.subjects[index]
        item = {k: subject[k][tio.DATA] for k in IMAGE_KEYS}
        item.update({k: subject[k][tio.DATA].round().long() for k in LABEL_KEYS})
        item["subject_id"] = subject["subject_id"]
        item["spacing"] = torch.tensor(subject["ct"].spacing, dtype=torch.float64)
        return item


class PairedDataModule(pl.LightningDataModule):
    """Train on a tio.Queue of patches from paired subjects (and their x-flipped copies);
    validate and test on whole volumes.

    ``patch_size``: one int, or (X, Y, Z). Training volumes are padded by ``margin`` (half of what the valid-convolution network loses per
    axis), so every original voxel can be the centre of a patch's output region.
    """

    def __init__(self, root: str | Path, fold: int = 0, split_seed: int = 0, n_folds: int = 5,
                 n_test: int = 2, n_val: int = 1, patch_size: int | Sequence[int] = 68, margin: int = 20,
                 samples_per_volume: int = 64, queue_length: int = 256, batch_size: int = 2,
                 num_workers: int = 0, flip_augment: bool = True, sampler: str = "uniform",
                 ct_window: Sequence[float] = CT_WINDOW, mr_percentiles: Sequence[float] = MR_PERCENTILES,
                 pin_memory: bool = False, seed: int = 0):
        super().__init__()
        if sampler not in ("uniform", "label"):
            raise ValueError(f"sampler must be 'uniform' or 'label', got {sampler!r}")
        self.root = Path(root)
        self.fold, self.split_seed = fold, split_seed
        self.split_sizes = dict(n_folds=n_folds, n_test=n_test, n_val=n_val)
        self.patch_size, self.margin = patch_shape(patch_size), margin
        self.samples_per_volume, self.queue_length = samples_per_volume, queue_length
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.flip_augment, self.sampler_name = flip_augment, sampler
        self.seed = seed
        self.normalise = Normalisation(ct_window, mr_percentiles)
        self.spec: DatasetSpec | None = None
        self.split: Split | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.spec is not None:
            return
        self.spec = load_dataset(self.root)
        self.split = make_split(self.spec.subjects, self.fold, self.split_seed, **self.split_sizes)

    @property
    def labels(self) -> dict[str, int]:
        """The organs to evaluate: none for a label-free dataset (its label maps hold a body mask)."""
        self.setup()
        return {} if self.spec.label_free else self.spec.labels

    @property
    def spacing(self) -> list[float]:
        """Voxel size (mm) of the training grid, recorded in checkpoints for registration: dataset.json's
        ``spacing``, else the first subject's CT header (datasets whose subjects' spacings differ have none)."""
        self.setup()
        if self.spec.spacing is not None:
            return list(self.spec.spacing)
        zooms = nib.load(self.spec.path(self.spec.subjects[0], "ct")).header.get_zooms()[:3]
        return [float(z) for z in zooms]

    @property
    def orientation(self) -> str:
        """Axis codes of the training grid (e.g. "RAS"), recorded in checkpoints for registration."""
        self.setup()
        return "".join(nib.aff2axcodes(nib.load(self.spec.path(self.spec.subjects[0], "ct")).affine))

    def ground_truth_field(self, subject: str) -> torch.Tensor | None:
        """The subject's known displacement (1, 3, X, Y, Z) in voxels (phantoms), or None where it has none."""
        self.setup()
        path = self.spec.path(subject, FIELD_KEY)
        if not path.exists():
            return None
        field = torch.from_numpy(np.asarray(nib.load(path).dataobj, dtype=np.float32))
        return field.permute(3, 0, 1, 2)[None].contiguous()

    def _sampler(self) -> tio.data.PatchSampler:
        if self.sampler_name == "label":
            # Organs and their surroundings matter for registration; background still gets half.
            probabilities = {0: 1.0, **{v: 1.0 / len(self.spec.labels) for v in self.spec.labels.values()}}
            return tio.LabelSampler(self.patch_size, label_name="ct_labels", label_probabilities=probabilities)
        return tio.UniformSampler(self.patch_size)

    def training_subjects(self, loads_per_volume: int = 1) -> tio.SubjectsDataset:
        """Training subjects (and their x-flipped copies), normalised and padded by the margin, each
        listed ``loads_per_volume`` times."""
        self.setup()
        flips = (False, True) if self.flip_augment else (False,)
        subjects = [load_subject(self.spec, s, f) for s in self.split.train for f in flips
                    for _ in range(loads_per_volume)]
        transform = tio.Compose([self.normalise, FlipMarked(), tio.Pad(self.margin, padding_mode=0)])
        return tio.SubjectsDataset(subjects, transform=transform)

    def train_dataloader(self) -> DataLoader:
        # TorchIO's queue fails once samples_per_volume exceeds half its length (the paper's 9.4K
        # patches per pair would need a queue of ~70 GB): such a volume is loaded several times per
        # epoch instead, each load giving an equal share of its patches.
        loads = math.ceil(self.samples_per_volume / max(1, self.queue_length // 2))
        per_load = math.ceil(self.samples_per_volume / loads)
        dataset = self.training_subjects(loads)
        # Under DDP each rank draws patches from its own share of the subjects (TorchIO's recipe);
        # the trainer must then not wrap the queue in another DistributedSampler.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        subject_sampler = DistributedSampler(dataset, shuffle=True, seed=self.split_seed) if distributed else None
        queue = tio.Queue(dataset, self.queue_length, per_load, self._sampler(),
                          subject_sampler=subject_sampler, shuffle_subjects=subject_sampler is None,
                          num_workers=self.num_workers)
        # The queue owns the workers and the shuffling; this loader only batches (and seeds each epoch).
        return EpochSeededLoader(queue, batch_size=self.batch_size, num_workers=0, collate_fn=collate_patches,
                                 pin_memory=self.pin_memory, seed=self.seed, position=self._step_and_rank,
                                 epoch=self._epoch, subject_sampler=subject_sampler)

    def _step_and_rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_step, trainer.global_rank) if trainer is not None else (0, 0)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def _whole_volume_loader(self, names: Sequence[str]) -> DataLoader:
        self.setup()
        subjects = [load_subject(self.spec, s) for s in names]
        return DataLoader(WholeVolumes(tio.SubjectsDataset(subjects, transform=self.normalise)), batch_size=1,
                          num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._whole_volume_loader(self.split.val)

    def test_dataloader(self) -> DataLoader:
        return self._whole_volume_loader(self.split.test)
