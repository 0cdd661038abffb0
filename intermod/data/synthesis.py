"""Write the phantom (intermod.data.phantom) as a dataset in the layout, with its difficulty record."""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from intermod.data.layout import DATASET_JSON, REQUIRED_KEYS, file_name, write_dataset_json, write_subject
from intermod.data.phantom import GRIDS, LABELS, Grid, difficulty_report, grid_affine, synthesize_subject

__all__ = ["subject_seed", "synthesize_dataset"]


def subject_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th subject of a dataset synthesised with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _make_subject(out_dir: str, name: str, seed: int, grid: Grid) -> dict:
    arrays = synthesize_subject(seed, grid)
    report = difficulty_report(arrays)
    write_subject(out_dir, name, arrays, grid_affine(grid))
    return report


def synthesize_dataset(out_dir: str | Path, n_subjects: int, grid: str, seed: int, workers: int = 1,
                       overwrite: bool = False) -> dict:
    """Synthesise ``n_subjects`` phantom subjects (``sub-000``, ...) on ``GRIDS[grid]`` into ``out_dir``,
    ``workers`` at a time, and write dataset.json with each subject's difficulty (see
    :func:`intermod.data.phantom.difficulty_report`). Complete subjects already there are kept unless
    ``overwrite``. Returns the mean difficulty per organ; ValueError for an unknown grid or no subjects."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = Path(out_dir)
    names = [f"sub-{i:03d}" for i in range(n_subjects)]
    todo = [i for i, name in enumerate(names) if overwrite or not all(
        (out_dir / name / file_name(k)).exists() for k in REQUIRED_KEYS)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {names[i]: pool.submit(_make_subject, str(out_dir), names[i], subject_seed(seed, i), GRIDS[grid])
                   for i in todo}
        reports = {name: future.result() for name, future in futures.items()}
    previous = {}
    if (out_dir / DATASET_JSON).exists():
        previous = json.loads((out_dir / DATASET_JSON).read_text()).get("difficulty", {}).get("subjects", {})
    reports = {name: reports.get(name, previous.get(name)) for name in names}
    organs = list(LABELS)
    known = [r for r in reports.values() if r]
    summary = {organ: {key: float(np.mean([r[organ][key] for r in known])) for key in ("dice_before", "dice_gt")}
               for organ in organs}
    write_dataset_json(out_dir, LABELS, names, GRIDS[grid].spacing, name="intermod pelvic phantom",
                       generator={"grid": grid, "seed": seed, "shape": list(GRIDS[grid].shape)},
                       difficulty={"mean": summary, "subjects": reports})
    return summary
