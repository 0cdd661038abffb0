"""Tests for intermod.evaluation.table and intermod-table1 on fake multirun folders with known numbers."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from intermod.cli.table1 import main
from intermod.evaluation.table import (ALL_ZERO, FEW_PAIRS, IMAGE_ROW, build_table, collect, display_name,
                                      paired_wilcoxon, to_latex, to_markdown)

PELVIS = ("bladder", "prostate", "rectum")


def write_job(root, method, fold, subjects, seed=0, labels=PELVIS, name="table1", images=None, swept=None):
    """A job folder as a Hydra sweep lays it out; subjects: {subject: {organ: (dice, asd)}};
    images: {subject: (mi, ncc_mr)} after registration, or None for a run of an older version;
    swept: the job's swept values besides method, fold and seed (an ablation)."""
    variant = ",".join(f"{k}={v}" for k, v in (swept or {}).items())
    folder = root / method / variant / f"fold{fold}-seed{seed}"
    folder.mkdir(parents=True)
    results = {s: {"organs": {o: {"dice_before": 0.5, "asd_before": 9.0, "hd95_before": 20.0,
                                  "dice_after": d, "asd_after": a, "hd95_after": 5.0}
                              for o, (d, a) in organs.items()}, "folding": None}
               for s, organs in subjects.items()}
    for s, (mi, ncc_mr) in (images or {}).items():
        results[s]["images"] = {"mi_before": 0.2, "mi_after": mi, "ncc_mr_before": 0.5, "ncc_mr_after": ncc_mr}
    payload = {"method": method, "fold": fold, "seed": seed, "name": name, "swept": swept or {},
               "labels": {o: i + 1 for i, o in enumerate(labels)}, "subjects": results, "summary": {}}
    (folder / "metrics.json").write_text(json.dumps(payload))
    return folder


def write_failure(root, method, fold, error, seed=0):
    folder = root / method / f"fold{fold}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "failed.json").write_text(json.dumps({"error": error, "method": method, "fold": fold}))
    return folder


def same_for_all(dice, asd, organs=PELVIS):
    return {o: (dice, asd) for o in organs}


def random_multirun(root, methods, folds, per_fold, seed=0, shift=None):
    """Every method on every fold with random values; ``shift`` adds per-method offsets to Dice."""
    rng = np.random.default_rng(seed)
    shift = shift or {}
    for fold in folds:
        for method in methods:
            subjects = {f"sub-{fold}{k}": {o: (0.8 + shift.get(method, 0) + 0.05 * rng.standard_normal(),
                                             2.0 + 0.3 * rng.standard_normal()) for o in PELVIS}
                        for k in range(per_fold)}
            write_job(root, method, fold, subjects)


def test_cells_are_the_mean_and_sample_std_over_subjects_of_all_folds(tmp_path):
    # fold 0: sub-a, sub-b; fold 1: sub-c, sub-d. Dice 0.80, 0.90, 0.70, 0.84 (affine) and ASD 2, 3, 1, 4.
    affine = [(0.80, 2.0), (0.90, 3.0), (0.70, 1.0), (0.84, 4.0)]
    dual = [(0.88, 2.5), (0.92, 3.5), (0.86, 1.5), (0.90, 4.5)]  # better Dice, worse ASD
    for method, values in (("affine", affine), ("dual", dual)):
        write_job(tmp_path, method, 0, {"sub-a": same_for_all(*values[0]), "sub-b": same_for_all(*values[1])})
        write_job(tmp_path, method, 1, {"sub-c": same_for_all(*values[2]), "sub-d": same_for_all(*values[3])})
    table = build_table(collect(tmp_path))

    assert table.methods == ["before", "affine", "dual"] and table.organs == list(PELVIS)
    dice = np.array([v[0] for v in affine]) * 100
    cell = table.cells["dice", "prostate", "affine"]
    assert (cell.mean, cell.std, cell.n, cell.n_nan) == (pytest.approx(dice.mean()), pytest.approx(dice.std(ddof=1)),
                                                          4, 0)
    assert table.cells["asd", "rectum", "dual"].std == pytest.approx(np.std([2.5, 3.5, 1.5, 4.5], ddof=1))
    markdown = to_markdown(table)
    # Dice: affine 81.0 ± 8.4, dual 89.0 ± 2.6 (bold, highest); ASD: affine 2.50 ± 1.29 (bold, lowest),
    # dual 3.00 ± 1.29
    assert "| DSC (%) | bladder | 50.0 ± 0.0 | 81.0 ± 8.4 | **89.0 ± 2.6** |" in markdown
    assert "|  | prostate | 50.0 ± 0.0 | 81.0 ± 8.4 | **89.0 ± 2.6** |" in markdown
    assert "| ASD (mm) | bladder | 9.00 ± 0.00 | **2.50 ± 1.29** | 3.00 ± 1.29 |" in markdown
    assert "- Affine: n = 4 subjects from 2 of 2 folds" in markdown
    assert "\\textbf{89.0 $\\pm$ 2.6}" in to_latex(table) and "\\textbf{2.50 $\\pm$ 1.29}" in to_latex(table)
    assert "## Reference: Cao et al., MLMI 2018, Table 1" in markdown
    paper_row = "| ASD (mm) | bladder | 1.83 ± 0.71 | 1.69 ± 0.63 | 1.51 ± 0.57 | 1.47 ± 0.51 | 1.23 ± 0.43 |"
    assert paper_row in markdown


def test_nan_values_are_left_out_and_counted_and_seeds_average_per_subject(tmp_path):
    # an empty organ: NaN as Python's json writes it, or null
    write_job(tmp_path, "ct", 0, {"s1": same_for_all(0.8, 1.0),
                                  "s2": {**same_for_all(0.6, 3.0), "rectum": (math.nan, math.nan)}})
    write_job(tmp_path, "ct", 0, {"s1": same_for_all(0.9, 2.0),
                                  "s2": {**same_for_all(0.7, 4.0), "rectum": (None, None)}}, seed=1)
    table = build_table(collect(tmp_path))
    prostate = table.cells["dice", "prostate", "ct"]
    assert prostate.n == 2 and prostate.mean == pytest.approx(75.0)  # subjects (85, 65): seeds averaged first
    assert prostate.std == pytest.approx(np.std([85.0, 65.0], ddof=1))
    rectum = table.cells["dice", "rectum", "ct"]
    assert (rectum.n, rectum.n_nan, rectum.mean) == (1, 1, pytest.approx(85.0))
    assert "85.0 ± n/a" in to_markdown(table)  # no std from one subject
    assert ("seeds 0, 1 averaged per subject; 2 NaN value(s) (empty organ or diverged run) left out"
            in to_markdown(table))


def test_wilcoxon_matches_scipy_on_the_pairs_and_needs_six(tmp_path):
    random_multirun(tmp_path, ["affine", "syn", "dual"], folds=[0, 1, 2], per_fold=3, shift={"dual": 0.03})
    (tmp_path / "syn" / "fold2-seed0" / "metrics.json").unlink()  # syn's pairs with dual drop to 6
    table = build_table(collect(tmp_path))

    def values(method):
        out = {}
        for path in sorted((tmp_path / method).rglob("metrics.json")):
            data = json.loads(path.read_text())
            out.update({(data["fold"], s): r["organs"]["prostate"]["dice_after"] for s, r in data["subjects"].items()})
        return out

    dual, affine, syn = values("dual"), values("affine"), values("syn")
    keys = sorted(dual)
    expected = stats.wilcoxon([dual[k] for k in keys], [affine[k] for k in keys]).pvalue
    assert table.pvalues["dice", "prostate", "affine"].p == pytest.approx(expected)
    assert table.pvalues["dice", "prostate", "affine"].n_pairs == 9
    keys = sorted(syn)
    expected = stats.wilcoxon([dual[k] for k in keys], [syn[k] for k in keys]).pvalue
    assert table.pvalues["dice", "prostate", "syn"].n_pairs == 6
    assert table.pvalues["dice", "prostate", "syn"].p == pytest.approx(expected)
    assert "| DSC (%) | bladder | " in to_markdown(table) and "Dual vs SyN" in to_markdown(table)

    few = {(0, f"s{i}"): 0.1 * i for i in range(5)}
    assert paired_wilcoxon(few, {k: v + 1 for k, v in few.items()}).reason == FEW_PAIRS
    same = {(0, f"s{i}"): 0.1 * i for i in range(8)}
    assert paired_wilcoxon(same, dict(same)).reason == ALL_ZERO
    assert paired_wilcoxon(same, {**same, (0, "s0"): math.nan}).n_pairs == 7  # NaN pairs are not pairs


def test_na_p_values_are_marked_and_explained(tmp_path):
    random_multirun(tmp_path, ["mr", "dual"], folds=[0], per_fold=4)
    markdown = to_markdown(build_table(collect(tmp_path)))
    assert "| DSC (%) | bladder | n/a¹ (n=4) |" in markdown
    assert f"¹ n/a: {FEW_PAIRS}." in markdown


def test_failed_corrupt_and_missing_jobs_are_listed_and_other_cells_filled(tmp_path, capsys):
    random_multirun(tmp_path, ["ct", "dual"], folds=[0, 1, 2], per_fold=2)
    (tmp_path / "dual" / "fold1-seed0" / "metrics.json").unlink()
    write_failure(tmp_path, "dual", 1, "RuntimeError: CUDA out of memory\nTraceback ...")
    (tmp_path / "ct" / "fold2-seed0" / "metrics.json").write_text('{"method": "ct", "fold": 2, "subj')  # cut short
    write_job(tmp_path, "mr", 0, {"s": same_for_all(0.8, 2.0)})

    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr()
    section = out.out.split("## Missing or failed jobs")[1].split("##")[0]
    assert "- dual, fold 1: failed: RuntimeError: CUDA out of memory (" in section and "Traceback" not in section
    assert "- ct, fold 2: corrupt metrics.json (JSONDecodeError" in section
    assert str(tmp_path / "ct" / "fold2-seed0" / "metrics.json") in section
    assert "- mr, fold 1: no metrics.json" in section and "- mr, fold 2: no metrics.json" in section
    assert "4 missing or failed job(s)" in out.err
    assert section.index("- ct, fold 2") < section.index("- mr, fold 1") < section.index("- dual, fold 1")
    assert "- Dual: n = 4 subjects from 2 of 3 folds (missing fold 1)" in out.out
    assert "- MR: n = 1 subjects from 1 of 3 folds (missing folds 1, 2)" in out.out
    assert "| DSC (%) | bladder | " in out.out and "| — |" not in out.out  # every cell has a value


def test_a_failure_newer_than_metrics_wins(tmp_path):
    # a forced re-run that failed leaves its old metrics.json beside failed.json: the job counts as failed
    random_multirun(tmp_path, ["ct", "dual"], folds=[0, 1], per_fold=2)
    failed = write_failure(tmp_path, "dual", 1, "ValueError: bad config") / "failed.json"
    metrics = failed.parent / "metrics.json"
    os.utime(metrics, (1_000_000, 1_000_000))
    table = build_table(collect(tmp_path))
    assert table.coverage["dual"].folds == [0]
    assert [p.describe() for p in table.problems] == [
        f"dual, fold 1: failed: ValueError: bad config (the older metrics.json beside it is not used) ({failed})"]
    os.utime(failed, (1_000, 1_000))  # metrics.json newer: the re-run succeeded
    assert build_table(collect(tmp_path)).problems == []


def test_csv_and_latex_files_parse(tmp_path, capsys):
    random_multirun(tmp_path / "runs", ["affine", "syn", "ct", "mr", "dual"], folds=[0, 1], per_fold=3,
                    shift={"dual": 0.05})
    assert main([str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--name", "t1"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "t1.md").read_text().strip() in printed

    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "t1.csv").read_text())))
    assert [(r["metric"], r["organ"]) for r in rows] == [(m, o) for m in ("dice", "asd", "hd95") for o in PELVIS]
    assert {"affine_mean", "dual_std", "syn_n", "dual_vs_affine_p", "dual_vs_mr_pairs"} <= set(rows[0])
    assert int(rows[0]["dual_n"]) == 6 and int(rows[0]["dual_vs_ct_pairs"]) == 6
    assert 0 < float(rows[0]["dual_vs_ct_p"]) <= 1

    tex = (tmp_path / "out" / "t1.tex").read_text()
    assert tex.count("\\begin{tabular}") == 1 and "\\toprule" in tex and "\\bottomrule" in tex
    header = next(line for line in tex.splitlines() if line.startswith("Metric"))
    assert header == "Metric & Organ & Before & Affine & SyN & CT & MR & Dual \\\\"
    assert "DSC (\\%)" in tex
    dice_row = next(line for line in tex.splitlines() if line.startswith("DSC"))
    assert dice_row.split(" & ")[-1].startswith("\\textbf{")  # dual has the highest Dice
    # What ± means travels with the tabular (8 columns), as the Markdown says it under its title.
    assert tex.splitlines()[-3:-1] == ["\\bottomrule", "\\multicolumn{8}{l}{\\footnotesize Each cell: mean $\\pm$ "
                                       "sample std (ddof=1) over the test subjects of all folds pooled.} \\\\"]
    assert "Each cell: mean ± sample std (ddof=1) over the test subjects" in (tmp_path / "out" / "t1.md").read_text()
    assert not list(tmp_path.glob("out/.t1*.tmp"))  # atomic writes leave no temporary file


def test_other_organs_and_methods_and_column_order(tmp_path):
    organs = ("liver", "kidney_left")
    for method in ("mi", "dual", "affine"):
        write_job(tmp_path, method, 0, {"s1": same_for_all(0.7, 2.0, organs)}, labels=organs)
    table = build_table(collect(tmp_path))
    assert table.organs == ["liver", "kidney_left"] and table.methods == ["before", "affine", "dual", "mi"]
    assert "| ASD (mm) | liver |" in to_markdown(table) and "kidney\\_left" in to_latex(table)
    chosen = build_table(collect(tmp_path), ["dual", "mi", "mr"])
    assert chosen.methods == ["dual", "mi", "mr"]
    markdown = to_markdown(chosen)
    assert "| Metric | Organ | Dual | MI | MR |" in markdown and "- mr, fold 0: no metrics.json" in markdown
    assert "methods found but not shown (--methods): affine" in markdown


def test_missing_folder_or_no_metrics_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"intermod-table1: error: {missing} does not exist or is not a folder"
    write_failure(tmp_path / "empty", "dual", 0, "boom")
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"intermod-table1: error: {tmp_path / 'empty'} holds no readable metrics.json "
                   "(1 failed or corrupt job(s))"]


def test_wandb_offline_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    random_multirun(tmp_path / "runs", ["ct", "dual"], folds=[0], per_fold=6)
    assert main([str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--wandb"]) == 0
    assert "W&B table logged offline to " in capsys.readouterr().out
    (path,) = (tmp_path / "out" / "wandb").glob("offline-run-*/files/media/table/**/*.table.json")
    logged = json.loads(path.read_text())
    assert logged["columns"][:3] == ["metric", "unit", "organ"] and "dual_vs_ct_p" in logged["columns"]
    assert [row[:3] for row in logged["data"]] == [[m, u, o] for m, u in (("dice", "%"), ("asd", "mm"), ("hd95", "mm"))
                                                  for o in PELVIS]
    assert logged["data"][0][logged["columns"].index("dual_n")] == 6

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([str(tmp_path / "runs"), "--out-dir", str(tmp_path / "off"), "--wandb"]) == 0
    assert "W&B: not logged (WANDB_MODE=disabled)" in capsys.readouterr().out
    assert not (tmp_path / "off" / "wandb").exists()


def test_image_similarity_rows_follow_the_organs_and_a_label_free_table_has_only_them(tmp_path):
    labelled, label_free = tmp_path / "labelled", tmp_path / "label_free"
    for method, shift in (("syn", 0.0), ("dual", 0.1)):
        images = {f"sub-{k}": (0.3 + shift + 0.01 * k, 0.8 + shift) for k in range(6)}
        write_job(labelled, method, 0, {s: same_for_all(0.8, 2.0) for s in images}, images=images)
        write_job(label_free, method, 0, {s: {} for s in images}, labels=(), images=images)
    write_job(tmp_path / "old", "dual", 0, {"sub-0": same_for_all(0.8, 2.0)})  # no images: no such rows

    table = build_table(collect(labelled))
    assert [(m.key, rows) for m, rows in table.blocks] == [("dice", list(PELVIS)), ("asd", list(PELVIS)),
                                                           ("hd95", list(PELVIS)), ("mi", [IMAGE_ROW]),
                                                           ("ncc_mr", [IMAGE_ROW])]
    cell = table.cells["mi", IMAGE_ROW, "dual"]
    assert (cell.mean, cell.std, cell.n) == (pytest.approx(0.425), pytest.approx(np.std(np.arange(6) / 100, ddof=1)), 6)
    # every subject better by 0.1: the exact two-sided p of 6 pairs all one way is 2/2^6
    assert table.pvalues["ncc_mr", IMAGE_ROW, "syn"].p == pytest.approx(2 / 64)
    markdown = to_markdown(table)
    assert "| MI (CT, MR) | whole image | 0.200 ± 0.000 | 0.325 ± 0.019 | **0.425 ± 0.019** |" in markdown
    assert "| NCC (paired MR, MR) | whole image | 0.500 ± 0.000 | 0.800 ± 0.000 | **0.900 ± 0.000** |" in markdown
    assert "label-free" not in markdown

    table = build_table(collect(label_free))
    assert table.organs == [] and [m.key for m, _ in table.blocks] == ["mi", "ncc_mr"]
    assert "Note: no organ labels in these runs (label-free dataset)" in to_markdown(table)
    assert "\\textbf{0.425 $\\pm$ 0.019}" in to_latex(table)

    assert [m.key for m, _ in build_table(collect(tmp_path / "old")).blocks] == ["dice", "asd", "hd95"]
    # an older job pooled with newer ones: its subjects are missing from the image rows, and the table says so
    write_job(labelled, "syn", 1, {"sub-9": same_for_all(0.8, 2.0)})
    table = build_table(collect(labelled))
    assert table.cells["dice", "bladder", "syn"].n == 7 and table.cells["mi", IMAGE_ROW, "syn"].n == 6
    assert "Note: 1 job(s) wrote no image similarity" in to_markdown(table) and "syn fold 1" in to_markdown(table)


def test_before_and_ground_truth_columns_and_the_folding_row(tmp_path):
    """Before comes from every job's *_before values, Ground truth from the subjects' ground_truth results;
    neither is ever bold, and Dual is tested against both."""
    for fold in (0, 1, 2):
        for method, dice in (("syn", 0.85), ("dual", 0.9)):
            folder = write_job(tmp_path, method, fold, {f"sub-{fold}{k}": same_for_all(dice + 0.01 * k, 2.0)
                                                        for k in range(2)})
            data = json.loads((folder / "metrics.json").read_text())
            for k, result in enumerate(data["subjects"].values()):
                result["folding"] = {"percent_nonpositive_jacobian": 0.01 * k if method == "dual" else 0.0}
                result["ground_truth"] = {"organs": {o: {"dice_after": 0.97, "asd_after": 0.5, "hd95_after": 1.0}
                                                     for o in PELVIS}, "folding": {"percent_nonpositive_jacobian": 0.0}}
            (folder / "metrics.json").write_text(json.dumps(data))
    table = build_table(collect(tmp_path))
    assert table.methods == ["before", "syn", "dual", "truth"]
    assert table.cells["dice", "bladder", "before"].mean == pytest.approx(50.0)  # dice_before 0.5, counted once
    assert table.cells["dice", "bladder", "before"].n == 6 and table.cells["dice", "bladder", "truth"].n == 6
    assert table.cells["dice", "bladder", "truth"].mean == pytest.approx(97.0)
    assert table.cells["folding", "whole field", "dual"].mean == pytest.approx(0.005)
    assert table.cells["folding", "whole field", "before"].mean == 0.0
    assert table.pvalues["dice", "bladder", "before"].p == pytest.approx(2 / 64)  # all 6 pairs one way
    markdown = to_markdown(table)
    assert "| Metric | Organ | Before | SyN | Dual | Ground truth |" in markdown
    assert "| DSC (%) | bladder | 50.0 ± 0.0 | 85.5 ± 0.5 | **90.5 ± 0.5** | 97.0 ± 0.0 |" in markdown
    assert "| Folding (% det J <= 0) | whole field |" in markdown
    assert "before, fold" not in markdown and "truth, fold" not in markdown  # never listed as missing jobs


def test_an_ablation_gets_a_column_per_swept_value_tested_against_the_reference_value_named(tmp_path):
    # lambda_l2 = 0.01 (reference), 0.1 (+2 Dice points on every subject), 1 (fold 1 failed)
    for fold in (0, 1):
        for value, shift in (("0.01", 0.0), ("0.1", 0.02), ("1", -0.05)):
            if (fold, value) == (1, "1"):
                folder = tmp_path / "dual" / "method.loss.lambda_l2=1" / "fold1-seed0"
                folder.mkdir(parents=True)
                (folder / "failed.json").write_text(json.dumps({"error": "diverged", "method": "dual", "fold": 1,
                                                                "swept": {"method.loss.lambda_l2": "1"}}))
                continue
            write_job(tmp_path, "dual", fold, {f"sub-{fold}{k}": same_for_all(0.80 + 0.01 * k + shift, 2.0)
                                               for k in range(4)}, swept={"method.loss.lambda_l2": value})
    reference = "dual[method.loss.lambda_l2=0.01]"
    table = build_table(collect(tmp_path), reference=reference)
    assert table.methods == ["before", reference, "dual[method.loss.lambda_l2=0.1]", "dual[method.loss.lambda_l2=1]"]
    assert table.cells["dice", "rectum", "dual[method.loss.lambda_l2=0.1]"].mean == pytest.approx(83.5)
    assert table.cells["dice", "rectum", reference].mean == pytest.approx(81.5)
    assert table.cells["dice", "rectum", "dual[method.loss.lambda_l2=1]"].n == 4  # fold 0 only
    # 8 pairs, every difference +2 points: the exact two-sided p of 8 same-signed ranks is 2 / 2^8
    assert table.pvalues["dice", "rectum", "dual[method.loss.lambda_l2=0.1]"].p == pytest.approx(2 / 256)
    assert [(p.method, p.fold) for p in table.problems] == [("dual[method.loss.lambda_l2=1]", 1)]
    markdown = to_markdown(table)
    assert "| Metric | Organ | Before | Dual, lambda_l2=0.01 | Dual, lambda_l2=0.1 | Dual, lambda_l2=1 |" in markdown
    assert "Dual, lambda_l2=0.01 vs Dual, lambda_l2=0.1" in markdown and "diverged" in markdown
    with pytest.raises(ValueError, match="the columns are: before, dual"):
        build_table(collect(tmp_path), reference="dual")
    assert main([str(tmp_path), "--reference", reference, "--out-dir", str(tmp_path / "out"), "--name", "l2"]) == 0
    header = (tmp_path / "out" / "l2.csv").read_text().splitlines()[0]
    assert f"{reference}_vs_dual[method.loss.lambda_l2=0.1]_p" in header
    assert main([str(tmp_path), "--reference", "nope", "--out-dir", str(tmp_path / "out")]) == 2


def test_a_swept_columns_display_name_keeps_list_values_whole():
    assert display_name("dual") == "Dual" and display_name("syn") == "SyN"
    assert display_name("dual[data.patch_size=[84,84,60],method.loss.lambda_l2=0.1]") == (
        "Dual, patch_size=[84,84,60], lambda_l2=0.1")
    assert display_name("dual[model/optimizer=adamw]") == "Dual, optimizer=adamw"


def test_jobs_of_one_sweep_run_in_several_places_make_one_table(tmp_path):
    write_job(tmp_path / "here", "affine", 0, {"sub-a": same_for_all(0.8, 2.0)})
    write_job(tmp_path / "committed", "dual", 0, {"sub-a": same_for_all(0.9, 1.0)})
    table = build_table(collect(tmp_path / "here", tmp_path / "committed"))
    assert table.methods == ["before", "affine", "dual"] and not table.problems
    assert table.roots == [tmp_path / "here", tmp_path / "committed"]
    assert f"From `{tmp_path / 'here'}`, `{tmp_path / 'committed'}`." in to_markdown(table)


def test_learn2reg_rows_hd95_sdlogj_and_seconds_with_their_units(tmp_path):
    """HD95 per organ, SDlogJ of the field (0 before registration) and seconds per registration (none
    before registration or for the ground truth) are rows of every table, each label with its unit."""
    for fold in (0, 1, 2):
        for method, seconds in (("syn", 60.0), ("dual", 0.5)):
            folder = write_job(tmp_path, method, fold, {f"sub-{fold}{k}": same_for_all(0.9, 2.0) for k in range(2)})
            data = json.loads((folder / "metrics.json").read_text())
            for k, result in enumerate(data["subjects"].values()):
                result["folding"] = {"percent_nonpositive_jacobian": 0.0, "std_log_jacobian": 0.1 + 0.1 * k}
                result["seconds"] = seconds + k
            (folder / "metrics.json").write_text(json.dumps(data))
    table = build_table(collect(tmp_path))
    assert [m.key for m, _ in table.blocks] == ["dice", "asd", "hd95", "folding", "sdlogj", "seconds"]
    assert table.cells["hd95", "rectum", "syn"].mean == pytest.approx(5.0)
    assert table.cells["sdlogj", "whole field", "dual"].mean == pytest.approx(0.15)
    assert table.cells["sdlogj", "whole field", "before"].mean == 0.0
    assert table.cells["seconds", "per registration", "syn"].mean == pytest.approx(60.5)
    assert table.cells["seconds", "per registration", "before"].n == 0
    assert table.pvalues["seconds", "per registration", "syn"].p == pytest.approx(stats.wilcoxon(
        [0.5, 1.5] * 3, [60.5, 61.5] * 3).pvalue)
    markdown = to_markdown(table)
    assert "| HD95 (mm) | bladder | 20.00 ± 0.00 | **5.00 ± 0.00** | **5.00 ± 0.00** |" in markdown
    assert "| SDlogJ | whole field | 0.000 ± 0.000 | **0.150 ± 0.055** | **0.150 ± 0.055** |" in markdown
    assert "| Time (s) | per registration | n/a | 60.5 ± 0.5 | **1.0 ± 0.5** |" in markdown  # not applicable


def test_made_vs_exact_pairs_compares_only_the_jobs_both_sweeps_finished(tmp_path):
    """Table 1 cpu holds five Dual folds, a made-pairs sweep maybe one: Δ must be over the same subjects."""
    spec = importlib.util.spec_from_file_location(
        "compare_tables", Path(__file__).parents[2] / "experiments" / "pairing" / "compare_tables.py")
    compare_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_tables)
    exact, made = tmp_path / "exact", tmp_path / "made"
    write_job(exact, "dual", 0, {"sub-a": same_for_all(0.85, 2.0), "sub-b": same_for_all(0.85, 2.0)})
    write_job(exact, "dual", 1, {"sub-c": same_for_all(0.99, 1.0), "sub-d": same_for_all(0.99, 1.0)})
    write_job(made, "dual", 0, {"sub-a": same_for_all(0.80, 2.5), "sub-b": same_for_all(0.80, 2.5)})
    text = compare_tables.compare(exact, made)
    assert "| Before |" not in text  # no registration is the "before registration" column, not a method row
    rows = [line for line in text.splitlines() if line.startswith("| DSC")]
    assert len(rows) == len(PELVIS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:7] == ["50.0 ± 0.0", "85.0 ± 0.0", "80.0 ± 0.0", "-5.0"]


def test_the_share_of_the_ground_truth_s_gain_is_over_each_method_s_own_subjects(tmp_path, capsys):
    """Before 50 %, ground truth 90 % on fold 0 and 70 % on fold 1: Dual (fold 0 only, 80 %) recovers
    (80 - 50) / (90 - 50) = 0.75, not the 1.0 that fold 1's ground truth would make of it; SyN (both folds,
    45 %) recovers (45 - 50) / (80 - 50) = -1/6, worse than no registration."""
    for method, folds, dice in (("syn", (0, 1), 0.45), ("dual", (0,), 0.8)):
        for fold in folds:
            folder = write_job(tmp_path, method, fold, {f"sub-{fold}{k}": same_for_all(dice, 2.0) for k in range(2)})
            data = json.loads((folder / "metrics.json").read_text())
            for result in data["subjects"].values():
                result["ground_truth"] = {"organs": {o: {"dice_after": 0.9 if fold == 0 else 0.7, "asd_after": 0.5,
                                                         "hd95_after": 1.0} for o in PELVIS}}
            (folder / "metrics.json").write_text(json.dumps(data))
    table = build_table(collect(tmp_path))
    for organ in PELVIS:
        assert table.recovery[organ, "dual"].share == pytest.approx(0.75) and table.recovery[organ, "dual"].n == 2
        assert table.recovery[organ, "syn"].share == pytest.approx(-1 / 6) and table.recovery[organ, "syn"].n == 4
    assert ("before" not in {m for _, m in table.recovery}) and ("truth" not in {m for _, m in table.recovery})
    assert "| DSC (%) | bladder | -0.17 (n=4) | 0.75 (n=2) |" in to_markdown(table)
    assert main([str(tmp_path), "--out-dir", str(tmp_path / "out"), "--name", "t"]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "t.csv").read_text())))
    shares = {r["organ"]: r for r in rows if r["metric"] == "dice_recovery"}
    assert float(shares["rectum"]["dual_mean"]) == pytest.approx(0.75) and shares["rectum"]["dual_n"] == "2"
    assert shares["rectum"]["before_mean"] == "" and shares["rectum"]["truth_mean"] == ""



def test_no_share_of_the_gain_without_a_ground_truth(tmp_path):
    """Real scans have no exact field: no share is computed and the section is left out."""
    random_multirun(tmp_path, ["syn", "dual"], folds=(0, 1), per_fold=3)
    table = build_table(collect(tmp_path))
    assert table.recovery == {} and "Share of the ground truth" not in to_markdown(table)
