"""intermod-pair on tiny phantoms (4 mm grid), whose exact pairs are known.

The expensive runs happen once per module: two subjects paired with an interruption in between
(then resumed), and one subject whose MR was moved (--affine). Each subject is ~10 s of ANTs.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import intermod.pairing.dataset as pairing  # where write_subject is looked up
from intermod.cli.pair import main
from intermod.data.layout import check_dataset
from intermod.data.synthesis import synthesize_dataset
from intermod.metrics import ncc
from intermod.pairing import REPORT


def load(root: Path, subject: str, key: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / subject / f"{key}.nii.gz")).dataobj)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pair") / "phantom"
    synthesize_dataset(root, n_subjects=2, grid="tiny", seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def paired(phantom, tmp_path_factory):
    """Pair the phantom, interrupted (KeyboardInterrupt) while writing the second subject, then resumed.

    Returns (dst, state after the interruption, report of the resumed run, leftover temp entries).
    """
    dst = phantom.parent / "paired"
    tmp = tmp_path_factory.mktemp("tmp")  # ANTs' and our temporary folders go here, to be checked
    real_write = pairing.write_subject

    def interrupted_write(root, subject, arrays, affine):
        folder = real_write(root, subject, arrays, affine)
        if subject == "sub-001":  # written to staging, not yet moved into place
            raise KeyboardInterrupt
        return folder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmp))
        mp.setattr(tempfile, "tempdir", str(tmp))
        mp.setattr(pairing, "write_subject", interrupted_write)
        with pytest.raises(KeyboardInterrupt):
            main([str(phantom), str(dst)])
        after_interrupt = sorted(p.name for p in dst.iterdir())
        mp.setattr(pairing, "write_subject", real_write)
        assert main([str(phantom), str(dst)]) == 0
        leftovers = sorted(p.name for p in tmp.iterdir())
    report = json.loads((dst / REPORT).read_text())
    return dst, after_interrupt, report, leftovers


def test_interrupted_run_leaves_no_half_subject_and_resumes(paired):
    dst, after_interrupt, report, leftovers = paired
    assert after_interrupt == ["sub-000"]  # no sub-001, no staging folder, no dataset.json yet
    assert [report["subjects"][s]["status"] for s in ("sub-000", "sub-001")] == ["kept", "paired"]
    assert leftovers == []  # ANTs' outputs removed
    assert not list(dst.glob(".*"))


def test_pairs_reach_the_dice_gate_and_match_the_exact_pairs(phantom, paired):
    dst, _, report, _ = paired
    assert report["flagged"] == {} and report["image_only"] == []
    for subject in ("sub-000", "sub-001"):
        record = report["subjects"][subject]
        assert record["passed"] is True and record["gate"] == "dice"
        for organ, directions in record["dice"].items():
            assert min(directions.values()) >= 0.95, (subject, organ, directions)
            assert directions["mr_paired"] > record["dice_before"][organ] + 0.05
        for key, source_key in (("mr_paired", "mr"), ("ct_paired", "ct")):
            exact = load(phantom, subject, key)
            assert ncc(load(dst, subject, key), exact) > max(0.95, ncc(load(phantom, subject, source_key), exact))
        assert record["folding"]["mr_to_ct"]["percent_nonpositive_jacobian"] == 0.0
        assert record["images"]["mi_after"] > record["images"]["mi_before"]
        assert record["images"]["ncc_consistency"] > 0.95
        # Everything but the pairs is the source's, on the CT grid.
        for key in ("ct", "mr", "ct_labels", "mr_labels"):
            np.testing.assert_allclose(load(dst, subject, key), load(phantom, subject, key), atol=1e-3)


def test_output_is_a_valid_dataset_with_the_pairing_recorded(paired):
    dst, _, report, _ = paired
    assert check_dataset(dst) == []
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == {"bladder": 1, "prostate": 2, "rectum": 3}
    assert meta["pairing"]["flagged"] == {} and meta["pairing"]["threshold"] == 0.95
    record = json.loads((dst / "sub-000" / "pairing.json").read_text())
    assert record["dice"] == report["subjects"]["sub-000"]["dice"]


def test_kept_transforms_reproduce_the_pairs(paired):
    ants = pytest.importorskip("ants")
    dst, _, _, _ = paired
    folder = dst / "sub-000"
    assert sorted(p.name for p in (folder / "transforms").iterdir()) == ["ct_to_mr_warp.nii.gz", "mr_to_ct_warp.nii.gz"]
    ct, mr = ants.image_read(str(folder / "ct.nii.gz")), ants.image_read(str(folder / "mr.nii.gz"))
    mr_paired = ants.apply_transforms(ct, mr, [str(folder / "transforms" / "mr_to_ct_warp.nii.gz")])
    ct_paired = ants.apply_transforms(ct, ct, [str(folder / "transforms" / "ct_to_mr_warp.nii.gz")],
                                      defaultvalue=float(ct.min()))
    # The written pairs were resampled once from the source through the same chain of transforms.
    assert ncc(mr_paired.numpy(), load(dst, "sub-000", "mr_paired")) > 0.999
    assert ncc(ct_paired.numpy(), load(dst, "sub-000", "ct_paired")) > 0.999


def test_subjects_below_the_threshold_are_flagged_not_dropped(phantom, paired, capsys):
    dst, _, _, _ = paired
    assert main([str(phantom), str(dst), "--threshold", "0.999"]) == 0  # subjects kept: no ANTs
    captured = capsys.readouterr()
    assert "FLAGGED (kept)" in captured.out and "WARNING sub-000 flagged" in captured.err
    meta = json.loads((dst / "dataset.json").read_text())
    report = json.loads((dst / REPORT).read_text())
    assert set(meta["pairing"]["flagged"]) == set(report["flagged"]) == {"sub-000", "sub-001"}
    assert meta["subjects"] == ["sub-000", "sub-001"] and check_dataset(dst) == []
    assert main([str(phantom), str(dst), "--threshold", "0.999", "--strict"]) == 1
    assert main([str(phantom), str(dst)]) == 0  # back to the default gate


def test_affine_stage_recovers_a_moved_mr(phantom, tmp_path):
    """The MR header moved by 5 degrees and ~13 mm: without --affine the organs barely overlap."""
    src = tmp_path / "moved"
    shutil.copytree(phantom, src)
    meta = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps({**meta, "subjects": ["sub-000"]}))
    angle = np.radians(5)
    move = np.eye(4)
    move[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    move[:3, 3] = [10.0, -7.0, 5.0]
    for key in ("mr", "mr_labels"):
        image = nib.load(str(src / "sub-000" / f"{key}.nii.gz"))
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), move @ image.affine), src / "sub-000" / f"{key}.nii.gz")

    assert main([str(src), str(tmp_path / "out"), "--affine"]) == 0
    record = json.loads((tmp_path / "out" / REPORT).read_text())["subjects"]["sub-000"]
    assert record["affine"] is True and "affine" in record["seconds"]
    assert (tmp_path / "out" / "sub-000" / "transforms" / "mr_to_ct_affine.mat").is_file()
    # After the affine stage the organs overlap as in the unmoved phantom (Dice 0.74-0.85).
    assert min(record["dice_before"].values()) > 0.7
    assert min(d["mr_paired"] for d in record["dice"].values()) >= 0.95
    assert check_dataset(tmp_path / "out") == []


def test_bad_sources_fail_with_one_line_naming_the_file(phantom, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(phantom, src)
    assert main([str(src), str(src)]) == 2
    assert "must differ" in capsys.readouterr().err

    (src / "sub-001" / "mr_labels.nii.gz").unlink()
    assert main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sub-001/mr_labels.nii.gz: missing" in err
    assert not (tmp_path / "out").exists()  # nothing started

    shutil.rmtree(src / "sub-001")
    labels = nib.load(str(src / "sub-000" / "ct_labels.nii.gz"))
    nib.save(nib.Nifti1Image(np.asanyarray(labels.dataobj) * 3, labels.affine), src / "sub-000" / "ct_labels.nii.gz")
    meta = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps({**meta, "subjects": ["sub-000"]}))
    assert main([str(src), str(tmp_path / "out")]) == 2
    assert "label values [6, 9] are not declared" in capsys.readouterr().err

    (src / "dataset.json").write_text(json.dumps({**meta, "subjects": ["sub-000"], "provided_pairs": ["ct_paired"]}))
    assert main([str(src), str(tmp_path / "out"), "--affine"]) == 2
    assert "--affine would move the MR" in capsys.readouterr().err
