"""Tests for intermod.evaluation.report: what a run reports per subject and in summary, labels or none."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from intermod.evaluation.report import (FOLDING, MISSING, NO_ORGANS, SDLOGJ, SECONDS, evaluate_subject, format_table,
                                       result_value, subject_volumes, summarise, summarise_field, summarise_images)

LABELS = {"bladder": 1, "rectum": 2}


def volumes(shift: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A subject whose MR is its paired MR shifted by ``shift`` voxels along x; registration undoes it."""
    rng = np.random.default_rng(seed)
    mr_paired = rng.random((24, 20, 16))
    labels = np.zeros((24, 20, 16), np.uint8)
    labels[4:10, 4:12, 4:12], labels[12:20, 6:14, 4:12] = 1, 2
    return {"ct": 1000 * (1 - mr_paired), "mr": np.roll(mr_paired, shift, 0), "mr_paired": mr_paired,
            "mr_warped": mr_paired.copy(), "ct_labels": labels, "mr_labels": np.roll(labels, shift, 0),
            "mr_labels_warped": labels.copy()}


def test_a_perfect_registration_scores_one_after_and_less_before():
    result = evaluate_subject(volumes(), np.zeros((3, 24, 20, 16)), LABELS, (1.0, 1.0, 1.0))
    images = result["images"]
    assert images["ncc_mr_after"] == pytest.approx(1.0) and images["ncc_mr_before"] < 0.1  # noise decorrelates
    # CT is an inverted copy of the paired MR: after registration MI is the entropy of uniform noise in 32 bins
    assert images["mi_after"] == pytest.approx(math.log(32), abs=0.01) and images["mi_before"] < 0.1
    assert result["organs"]["bladder"]["dice_after"] == 1.0 and result["organs"]["bladder"]["dice_before"] == 0.5
    assert result["folding"]["percent_nonpositive_jacobian"] == 0.0


def test_without_organ_labels_there_are_no_organ_metrics_and_the_table_says_so():
    subjects = {f"s{k}": evaluate_subject(volumes(seed=k), None, {}, (1.0, 1.0, 1.0)) for k in range(3)}
    assert all(s["organs"] == {} and s["folding"] is None for s in subjects.values())
    assert summarise(subjects, {}) == {}
    images = summarise_images(subjects)
    assert images["ncc_mr_after"] == {"mean": pytest.approx(1.0), "std": pytest.approx(0.0, abs=1e-12), "n": 3}
    before = [s["images"]["mi_before"] for s in subjects.values()]
    assert images["mi_before"]["mean"] == pytest.approx(np.mean(before))
    table = format_table({}, images)
    assert NO_ORGANS in table and "Dice before" not in table
    assert "| NCC (paired MR, MR) | " in table and "| 1.000 ± 0.000 |" in table


def test_summary_leaves_empty_organs_out_and_counts_the_rest():
    a = evaluate_subject(volumes(), None, LABELS, (1.0, 1.0, 1.0))
    b = evaluate_subject(volumes(shift=0), None, LABELS, (1.0, 1.0, 1.0))
    b["organs"]["rectum"]["dice_after"] = math.nan  # as for an organ missing from one subject
    summary = summarise({"a": a, "b": b}, LABELS)
    # the sample std (ddof=1), as Table 1's: 0.5 and 1.0 spread by sqrt(0.125), not 0.25
    assert summary["bladder"]["dice_before"] == {"mean": pytest.approx(0.75), "std": pytest.approx(0.125 ** 0.5),
                                                 "n": 2}
    assert summary["rectum"]["dice_after"]["n"] == 1 and math.isnan(summary["rectum"]["dice_after"]["std"])
    table = format_table(summary)
    assert "| bladder | 75.0 ± 35.4 | 100.0 ± 0.0 |" in table and "image similarity" not in table
    assert "| rectum | 81.2 ± 26.5 | 100.0 ± n/a |" in table  # one subject left: no spread to show
    assert table.splitlines()[-1] == ("Each cell: mean ± sample std (ddof=1) over the test subjects "
                                      "(n/a for a single subject).")


def test_subject_volumes_takes_the_arrays_out_of_a_batch_and_its_registration():
    arrays = volumes()
    batch = {k: torch.from_numpy(arrays[k])[None, None] for k in ("ct", "mr", "mr_paired", "ct_labels", "mr_labels")}
    batch["mr"] = batch["mr"].to(torch.bfloat16)  # as a bf16 run leaves it: numpy has no bfloat16
    registered = {k: torch.from_numpy(arrays[k])[None, None] for k in ("mr_warped", "mr_labels_warped")}
    out = subject_volumes(batch, registered)
    assert sorted(out) == sorted(arrays) and all(v.shape == (24, 20, 16) for v in out.values())
    np.testing.assert_array_equal(out["ct_labels"], arrays["ct_labels"])
    np.testing.assert_allclose(out["mr"], arrays["mr"], rtol=1e-2)


def test_field_summary_is_folding_sdlogj_and_seconds_where_every_subject_has_them():
    subjects = {f"s{k}": {"folding": {"percent_nonpositive_jacobian": 0.0, "std_log_jacobian": 0.1 * k},
                          "seconds": 2.0 + k} for k in range(3)}
    field = summarise_field(subjects)
    assert field["sdlogj"] == {"mean": pytest.approx(0.1), "std": pytest.approx(0.1), "n": 3}
    assert field["seconds"]["mean"] == pytest.approx(3.0) and field["folding"]["mean"] == 0.0
    table = format_table({}, None, field)
    assert "| SDlogJ | 0.100 ± 0.100 |" in table and "| Time (s) | 3.0 ± 1.0 |" in table
    subjects["s0"]["folding"] = None  # a method without a field: no field rows, time still
    del subjects["s1"]["seconds"]  # a run of an older version
    assert summarise_field(subjects) == {}


def test_a_null_value_is_nan_and_a_missing_one_is_no_value():
    result = {"folding": {"percent_nonpositive_jacobian": None}, "seconds": 1.5}
    assert math.isnan(result_value(result, FOLDING.path))
    assert result_value(result, SDLOGJ.path) is MISSING and result_value({}, SECONDS.path) is MISSING
    field = summarise_field({"a": {**result, "folding": {"percent_nonpositive_jacobian": None, "std_log_jacobian": 0.2}},
                             "b": {"folding": {"percent_nonpositive_jacobian": 0.0, "std_log_jacobian": 0.4},
                                   "seconds": 2.5}})
    assert field["folding"]["n"] == 1 and field["folding"]["mean"] == 0.0  # the null left out, as NaN
    assert field["sdlogj"]["mean"] == pytest.approx(0.3) and field["seconds"]["n"] == 2
