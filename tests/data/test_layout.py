import json

import nibabel as nib
import numpy as np
import pytest

from intermod.cli.check_data import main as check_data_main
from intermod.data.layout import (REQUIRED_KEYS, check_dataset, load_dataset, write_dataset_json,
                                  write_subject)

LABELS = {"bladder": 1, "prostate": 2, "rectum": 3}


def _arrays(shape=(12, 10, 8)):
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 2:5, 2:5], labels[6:8, 6:8, 2:4], labels[8:10, 2:4, 5:7] = 1, 2, 3
    arrays = {k: rng.normal(size=shape).astype(np.float32) for k in ("ct", "mr", "ct_paired", "mr_paired")}
    arrays.update(ct_labels=labels, mr_labels=labels.copy())
    return arrays


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b"):
        write_subject(root, name, _arrays(), np.diag([2.0, 2.0, 3.0, 1.0]))
    write_dataset_json(root, LABELS, ["a", "b"], (2.0, 2.0, 3.0))
    return root


def _save(root, subject, key, data, affine=np.diag([2.0, 2.0, 3.0, 1.0])):
    nib.save(nib.Nifti1Image(data, affine), root / subject / f"{key}.nii.gz")


def test_valid_dataset_has_no_problems(dataset, capsys):
    assert check_dataset(dataset) == []
    assert check_data_main([str(dataset)]) == 0
    assert "OK, 2 subjects" in capsys.readouterr().out
    spec = load_dataset(dataset)
    assert spec.subjects == ("a", "b") and spec.labels == LABELS and spec.spacing == (2.0, 2.0, 3.0)


def test_write_subject_is_atomic_on_failure(tmp_path):
    arrays = _arrays()
    arrays["ct"] = object()  # not an array: writing fails half-way
    with pytest.raises(Exception):
        write_subject(tmp_path, "s", arrays, np.eye(4))
    assert list(tmp_path.iterdir()) == []  # no subject folder, no temp folder left behind


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "a" / "mr.nii.gz").unlink(), "a/mr.nii.gz: missing"),
    (lambda r: _save(r, "a", "mr", np.zeros((12, 10, 9), np.float32)), "a/mr.nii.gz: shape (12, 10, 9) differs"),
    (lambda r: _save(r, "a", "mr", np.zeros((12, 10, 8), np.float32), np.diag([1.0, 2.0, 3.0, 1.0])),
     "a/mr.nii.gz: spacing differs"),
    (lambda r: _save(r, "a", "mr", np.zeros((12, 10, 8), np.float32),
                     np.array([[2.0, 0, 0, 5], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])),
     "a/mr.nii.gz: origin differs"),
    (lambda r: _save(r, "a", "mr", np.zeros((12, 10, 8), np.float32), np.diag([-2.0, 2.0, 3.0, 1.0])),
     "a/mr.nii.gz: orientation differs"),
    (lambda r: _save(r, "b", "ct", np.full((12, 10, 8), np.nan, np.float32)), "b/ct.nii.gz: 960 voxels are NaN"),
    (lambda r: _save(r, "b", "ct_labels", np.zeros((12, 10, 8), np.uint8)), "b/ct_labels.nii.gz: label map is empty"),
    (lambda r: _save(r, "b", "mr_labels", np.full((12, 10, 8), 7, np.uint8)), "b/mr_labels.nii.gz: label values [7]"),
    (lambda r: _save(r, "b", "ct", np.zeros((12, 10), np.float32)), "b/ct.nii.gz: shape (12, 10) is not a 3D volume"),
    (lambda r: _save(r, "b", "ct", np.zeros((12, 10, 8, 2), np.float32)), "is not a 3D volume"),
    (lambda r: (r / "b" / "ct.nii.gz").write_bytes(b"\x1f\x8bnot really gzip"), "b/ct.nii.gz: unreadable"),
    (lambda r: (r / "dataset.json").write_text("{"), "dataset.json: not valid JSON"),
    (lambda r: (r / "dataset.json").write_text(json.dumps({"labels": {"bladder": 0}})), "label values must be positive"),
    (lambda r: (r / "dataset.json").write_text(json.dumps({"labels": {"bladder": 1}, "label_free": "false"})),
     "dataset.json: 'label_free' must be true or false"),
])
def test_every_problem_is_reported_with_its_file(dataset, damage, expected, capsys):
    damage(dataset)
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    problems = check_dataset(dataset)
    assert any(expected in p for p in problems), problems
    assert check_data_main([str(dataset)]) == 1
    assert expected in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before  # read-only


def test_missing_root_is_reported(tmp_path):
    problems = check_dataset(tmp_path / "nowhere")
    assert len(problems) == 1 and "dataset folder not found" in problems[0]


def test_all_required_files_are_written(dataset):
    assert sorted(p.name for p in (dataset / "a").iterdir()) == sorted(f"{k}.nii.gz" for k in REQUIRED_KEYS)
    assert nib.load(dataset / "a" / "ct_labels.nii.gz").get_data_dtype() == np.uint8
