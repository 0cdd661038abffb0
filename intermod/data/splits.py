"""Repeated train/validation/test splits (the paper's 12/1/2 over 15 subjects, repeated 5 times)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    fold: int
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def make_split(subjects: list[str] | tuple[str, ...], fold: int, seed: int = 0,
               n_test: int = 2, n_val: int = 1, n_folds: int = 5) -> Split:
    """Split for one fold: a seeded permutation, cut into consecutive test blocks.

    Test sets of different folds are disjoint whenever n_folds * n_test <= len(subjects), so every
    subject is tested at most once (10 of 15 with the paper's numbers); the validation subjects are
    the ones that follow the fold's test block in the permutation.
    """
    subjects = sorted(subjects)
    n = len(subjects)
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
    if n < n_test + n_val + 1:
        raise ValueError(f"{n} subjects cannot give {n_test} test, {n_val} validation and >= 1 training subject")
    order = np.random.default_rng(seed).permutation(n)
    start = fold * n_test
    test = [subjects[order[(start + i) % n]] for i in range(n_test)]
    val = [subjects[order[(start + n_test + i) % n]] for i in range(n_val)]
    held_out = set(test) | set(val)
    train = [s for s in subjects if s not in held_out]
    return Split(fold, seed, tuple(train), tuple(val), tuple(test))
