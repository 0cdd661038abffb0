"""The classical baselines' shared input checks: each case once, on check_inputs, then that every
baseline runs them before any work (so its own tests need only its own cases); and their private folder."""
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from intermod.baselines import ants, convexadam, elastix
from intermod.baselines.result import check_inputs, check_seed, private_workdir


def inputs(shape=(8, 7, 6)):
    rng = np.random.default_rng(0)
    return {"ct": rng.normal(size=shape).astype(np.float32), "mr": rng.normal(size=shape).astype(np.float32),
            "mr_labels": np.zeros(shape, np.int16), "spacing": (2.0, 2.0, 2.0)}


def with_nan(array):
    array = array.copy()
    array[1, 2, 3] = np.nan
    return array


def with_inf(array):
    array = array.copy()
    array[0, 0, 0] = -np.inf
    return array


@pytest.mark.parametrize("key, change, message", [
    ("mr", lambda a: a[..., :5], r"share one grid.*\(8, 7, 6\).*\(8, 7, 5\)"),
    ("ct", lambda a: a[None], r"ct must be a 3D \(X, Y, Z\) array, got shape \(1, 8, 7, 6\)"),
    ("mr", list, "mr must be a numpy array, got list"),
    ("ct", with_nan, "ct contains NaN"),
    ("mr", with_inf, "mr contains inf"),
    ("mr", lambda a: a.astype(np.complex64), "mr must be a real-valued array"),
    ("mr_labels", lambda a: a.astype(np.float32), "mr_labels must be an integer array, got dtype float32"),
    ("spacing", lambda s: s[:2], r"spacing must be 3 positive floats \(mm\), got \[2.0, 2.0\]"),
    ("spacing", lambda s: (2.0, 0.0, 2.0), "spacing must be 3 positive"),
    ("spacing", lambda s: "2mm", "spacing must be 3 positive"),
])
def test_check_inputs_names_what_is_wrong(key, change, message):
    given = inputs()
    given[key] = change(given[key])
    with pytest.raises(ValueError, match=message):
        check_inputs(**given)


def test_check_inputs_returns_the_spacing_as_floats():
    given = inputs()
    assert check_inputs(**{**given, "spacing": np.array([2, 2.5, 3])}) == [2.0, 2.5, 3.0]


@pytest.mark.parametrize("seed", [-1, 2**31 - 1, 1.0, True, "0"])
def test_check_seed_refuses_what_elastix_and_itk_cannot_take(seed):
    with pytest.raises(ValueError, match="seed must be an int in"):
        check_seed(seed)
    assert check_seed(np.int64(7)) == 7


@pytest.mark.parametrize("register", [lambda *a, **k: ants.register_classical(*a, method="affine", **k),
                                      convexadam.register, elastix.register], ids=["ants", "convexadam", "elastix"])
def test_every_baseline_checks_its_inputs_and_seed_first(register):
    given = inputs()
    with pytest.raises(ValueError, match="mr contains NaN"):
        register(given["ct"], with_nan(given["mr"]), given["mr_labels"], given["spacing"])
    with pytest.raises(ValueError, match="seed must be an int"):
        register(given["ct"], given["mr"], given["mr_labels"], given["spacing"], seed=-1)


def test_a_private_workdir_is_removed_when_the_process_is_terminated(tmp_path):
    # a scheduler's stop (SIGTERM) mid-registration: the folder goes, the process exits 143 (128 + 15)
    script = ("import sys, time\n"
              "from intermod.baselines.result import private_workdir\n"
              "with private_workdir('intermod-test-') as path:\n"
              "    (path / 'transform.mat').write_bytes(b'0' * 1000)\n"
              "    print(path, flush=True)\n"
              "    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmp_path)})
    path = Path(child.stdout.readline().strip())
    assert path.parent == tmp_path and (path / "transform.mat").exists()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_private_workdir_restores_the_sigterm_handler_it_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with private_workdir("intermod-test-"):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before and list(tmp_path.iterdir()) == []


def test_a_private_workdir_leaves_a_handler_someone_else_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as submitit does: it requeues on USR2 instead
    try:
        with private_workdir("intermod-test-"):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
