"""Fixtures shared by the classical baselines' tests."""
import tempfile
from typing import NamedTuple
from pathlib import Path

import pytest


class PrivateFolders(NamedTuple):
    tmp: Path  # the system temp folder of this process and its children
    cwd: Path  # the working directory


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> PrivateFolders:
    """An empty temp folder and working directory for this test (others share /tmp), so that a test can
    assert that a baseline leaves no file in either."""
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(cwd)
    assert tempfile.gettempdir() == str(tmp)
    return PrivateFolders(tmp, cwd)
