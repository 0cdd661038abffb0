"""Shared fixtures: a tiny phantom dataset (4 mm grid) made once per test session."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Six phantom subjects on the 'tiny' grid (55 x 49 x 25 at 4 mm, the paper's field of view)."""
    from intermod.data.synthesis import synthesize_dataset

    root = tmp_path_factory.mktemp("data") / "phantom_tiny"
    synthesize_dataset(root, n_subjects=6, grid="tiny", seed=0, workers=2)
    return root


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real scans not found at {REALDATA} (they live in ../shared/realdata beside the checkout)")
    return REALDATA

