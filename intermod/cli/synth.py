"""intermod-synth: write the paired CT/MR pelvic phantom in the dataset layout."""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from intermod.cli import CONF_DIR
from intermod.data.layout import REQUIRED_KEYS, file_name, write_dataset_json, write_subject
from intermod.data.phantom import GRIDS, LABELS, Grid, difficulty_report, synthesize_subject


def subject_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def grid_affine(grid: Grid) -> np.ndarray:
    """RAS affine with the volume centred on the origin."""
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = -(np.array(grid.shape) - 1) / 2 * np.array(grid.spacing)
    return affine


def _make_subject(out_dir: str, name: str, seed: int, grid: Grid) -> dict:
    arrays = synthesize_subject(seed, grid)
    report = difficulty_report(arrays)
    write_subject(out_dir, name, arrays, grid_affine(grid))
    return report


def synthesize_dataset(out_dir: str | Path, n_subjects: int, grid: str, seed: int, workers: int = 1,
                       overwrite: bool = False) -> dict:
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
    if (out_dir / "dataset.json").exists():
        previous = json.loads((out_dir / "dataset.json").read_text()).get("difficulty", {}).get("subjects", {})
    reports = {name: reports.get(name, previous.get(name)) for name in names}
    organs = list(LABELS)
    known = [r for r in reports.values() if r]
    summary = {organ: {key: float(np.mean([r[organ][key] for r in known])) for key in ("dice_before", "dice_gt")}
               for organ in organs}
    write_dataset_json(out_dir, LABELS, names, GRIDS[grid].spacing, name="intermod pelvic phantom",
                       generator={"grid": grid, "seed": seed, "shape": list(GRIDS[grid].shape)},
                       difficulty={"mean": summary, "subjects": reports})
    return summary


@hydra.main(config_path=CONF_DIR, config_name="synth", version_base="1.3")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    try:
        summary = synthesize_dataset(cfg.out_dir, cfg.n_subjects, cfg.grid, cfg.seed, cfg.workers, cfg.overwrite)
    except ValueError as err:
        print(f"intermod-synth: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {cfg.n_subjects} subjects ({cfg.grid} grid) to {cfg.out_dir} "
          f"in {time.perf_counter() - start:.1f} s")
    print(f"{'organ':<10} {'Dice before':>12} {'Dice GT-warped':>15}")
    for organ, row in summary.items():
        print(f"{organ:<10} {row['dice_before']:>12.3f} {row['dice_gt']:>15.3f}")


if __name__ == "__main__":
    main()
