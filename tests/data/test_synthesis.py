"""intermod.data.synthesis: the phantom written as a dataset, and intermod-synth, its thin CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from intermod.data.layout import check_dataset
from intermod.data.synthesis import synthesize_dataset


def test_a_synthesised_dataset_is_valid_records_its_difficulty_and_keeps_finished_subjects(tmp_path):
    root = tmp_path / "phantom"
    summary = synthesize_dataset(root, n_subjects=1, grid="tiny", seed=0)
    assert check_dataset(root) == []
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["subjects"] == ["sub-000"] and meta["generator"] == {"grid": "tiny", "seed": 0, "shape": [55, 49, 25]}
    assert meta["difficulty"]["mean"] == summary
    assert all(row["dice_gt"] > row["dice_before"] for row in summary.values())
    written = (root / "sub-000" / "ct.nii.gz").stat().st_mtime_ns
    assert synthesize_dataset(root, n_subjects=1, grid="tiny", seed=0) == summary  # kept, its record reused
    assert (root / "sub-000" / "ct.nii.gz").stat().st_mtime_ns == written


@pytest.mark.parametrize("grid, n_subjects, message", [("huge", 1, "grid must be one of"),
                                                        ("tiny", 0, "n_subjects must be >= 1")])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, grid, n_subjects, message):
    with pytest.raises(ValueError, match=message):
        synthesize_dataset(tmp_path / "phantom", n_subjects, grid, seed=0)
    assert not (tmp_path / "phantom").exists()


def test_the_cli_reports_a_bad_grid_in_one_line(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "intermod.cli.synth", f"out_dir={tmp_path / 'p'}", "grid=huge"],
                          capture_output=True, text=True, cwd=repo, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("intermod-synth: grid must be one of")
