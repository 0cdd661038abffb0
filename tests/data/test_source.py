"""intermod.data.source: the folder contract between the importers and intermod-pair."""
from __future__ import annotations

import json

import numpy as np
import pytest

from intermod.data.layout import DatasetError, write_dataset_json
from intermod.data.source import SOURCE_KEYS, check_source_subject, read_source, write_source_subject

LABELS = {"bladder": 1, "rectum": 2}


def arrays(shape=(6, 5, 4)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"ct": rng.normal(size=shape), "mr": rng.normal(size=shape),
            "ct_labels": rng.integers(0, 3, shape), "mr_labels": rng.integers(0, 3, shape)}


@pytest.fixture
def source(tmp_path):
    write_source_subject(tmp_path, "sub-0", arrays(), np.eye(4))
    write_dataset_json(tmp_path, LABELS, ["sub-0"], (1.0, 1.0, 1.0))
    return tmp_path


def test_a_written_source_subject_reads_back_without_problems(source):
    spec = read_source(source)
    assert spec.subjects == ("sub-0",) and spec.provided == ()
    assert check_source_subject(spec, "sub-0") == []
    assert sorted(p.name for p in (source / "sub-0").iterdir()) == sorted(f"{k}.nii.gz" for k in SOURCE_KEYS)


def test_problems_name_the_file(source):
    (source / "sub-0" / "mr.nii.gz").unlink()
    meta = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**meta, "labels": {"bladder": 1}}))
    problems = check_source_subject(read_source(source), "sub-0")
    assert any(p.startswith(str(source / "sub-0" / "mr.nii.gz")) and "missing" in p for p in problems)
    assert any("label values [2] are not declared" in p for p in problems)


@pytest.mark.parametrize("extra, message", [({"provided_pairs": ["ct"]}, "'provided_pairs' may hold only"),
                                            ({"provided_pairs": ["ct_paired", "mr_paired"]}, "nothing to pair"),
                                            ({"labels": {"bladder": 300}}, "label values must be <= 255")])
def test_unusable_dataset_json_is_refused_naming_it(source, extra, message):
    meta = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**meta, **extra}))
    with pytest.raises(DatasetError, match=message) as err:
        read_source(source)
    assert str(source / "dataset.json") in str(err.value)


def test_the_writer_refuses_missing_unknown_and_out_of_range_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"missing arrays \['mr_labels'\], unknown arrays \['gt_field'\]"):
        write_source_subject(tmp_path, "s", {**{k: v for k, v in arrays().items() if k != "mr_labels"},
                                             "gt_field": np.zeros(3)}, np.eye(4))
    with pytest.raises(ValueError, match=r"ct_labels values must lie in \[0, 255\]"):
        write_source_subject(tmp_path, "s", {**arrays(), "ct_labels": np.full((6, 5, 4), 256)}, np.eye(4))
    assert not (tmp_path / "s").exists()
