"""intermod-register end to end: outputs on the CT grid, a field other tools apply identically, the
orientation search, clean failures, and the real CT/MR pair where ../shared/realdata is present.

The networks are tiny (widths 4, 8, 8) and untrained, with a perturbed head so the field is not zero:
these tests check geometry and plumbing, not registration accuracy.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

from intermod.cli.register import main
from intermod.data.datamodule import Normalisation
from intermod.geometry import index_to_physical, lps_to_voxel, read_displacement_field, to_array
from intermod.inference import predict_field, resolve_precision
from intermod.metrics import dice
from intermod.networks.unet import RegistrationUNet
from intermod.refinement import refine_field
from intermod.registration import OUTPUT_NAMES, load_model, pipeline, register_files
from intermod.spatial import warp_labels

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
# Labels split the body into three large regions: ANTs' genericLabel and nearest-neighbour resampling
# then differ by well under 1% (on organs 5 voxels across they differ by ~5%, whatever the field).
LABELS = {"right": 1, "left_anterior": 2, "left_posterior": 3}
METADATA = {"format": 1, "labels": LABELS, "intermod_version": "0.1.0", "method": "dual",
            "net": {"_target_": "intermod.networks.unet.RegistrationUNet", "widths": [4, 8, 8]},
            "inference": "whole", "spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "patch_size": 68,
            "ct_window": [-1000.0, 1000.0], "mr_percentiles": [0.5, 99.5]}
RAS = np.diag([-1.0, -1.0, 1.0])
# MR array axes run superior, right, posterior: a permuted grid unlike the CT's.
MR_DIRECTION = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
MR_GRID = dict(size=(84, 80, 92), spacing=(1.1, 1.2, 1.0), direction=MR_DIRECTION, centre=(5, -3, 4))

# An asymmetric pelvis-like phantom in LPS mm: (centre, radii, CT HU, MR value).
BODY_RADII = (44, 34, 30)
SHAPES = [((0, 0, 0), BODY_RADII, 40.0, 300.0),  # body
          ((22, 12, -6), (8, 7, 18), 900.0, 60.0),  # bone, off centre
          ((-14, -10, 8), (12, 11, 10), 10.0, 900.0),  # bladder
          ((10, -14, -10), (8, 7, 7), 50.0, 500.0),  # prostate
          ((-6, 16, -8), (7, 7, 9), -300.0, 120.0)]  # rectum (gas)


def make_grid(size, spacing, direction=np.eye(3), centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    grid.SetOrigin((np.asarray(centre) - index_to_physical(grid) @ ((np.asarray(size) - 1) / 2)).tolist())
    return grid


def render(grid: sitk.Image, rotation=np.eye(3), shift=(0.0, 0.0, 0.0), padding=False):
    """CT, MR and labels of the phantom moved by p -> rotation p + shift, sampled on ``grid``."""
    size = grid.GetSize()
    points = index_to_physical(grid) @ np.indices(size).reshape(3, -1) + np.asarray(grid.GetOrigin())[:, None]
    q = np.asarray(rotation).T @ (points - np.asarray(shift, dtype=float)[:, None])
    ct, mr = np.full(q.shape[1], -1000.0), np.zeros(q.shape[1])
    for centre, radii, hu, value in SHAPES:
        inside = (((q - np.asarray(centre)[:, None]) / np.asarray(radii)[:, None]) ** 2).sum(0) <= 1
        ct[inside], mr[inside] = hu, value
    body = ((q / np.asarray(BODY_RADII)[:, None]) ** 2).sum(0) <= 1
    labels = np.where(body, np.where(q[0] < 0, 1, np.where(q[1] < 0, 2, 3)), 0).astype(np.int32)
    if padding:  # scanner padding outside a circle in the axial plane, as real CTs have
        ct[points[0] ** 2 + points[1] ** 2 > 50 ** 2] = -2048
    images = []
    for values, dtype in ((ct, np.float32), (mr, np.float32), (labels, np.int32)):
        image = sitk.GetImageFromArray(values.reshape(size).transpose(2, 1, 0).astype(dtype))
        image.CopyInformation(grid)
        images.append(image)
    return images


def tiny_net(seed: int = 0) -> RegistrationUNet:
    """An untrained tiny U-Net giving displacements of a voxel or so that vary in space.

    At initialisation the features fade layer by layer (the field would be the head's bias alone):
    a gain of 3 on every convolution keeps them alive.
    """
    torch.manual_seed(seed)
    net = RegistrationUNet((4, 8, 8))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.weight.mul_(3.0)
        net.head.weight.normal_(0.0, 0.2)
        net.head.bias.copy_(torch.tensor([0.6, -0.4, 0.5]))
    return net.eval()


def save_checkpoint(path: Path, net: RegistrationUNet | None = None, metadata: dict | None = METADATA) -> Path:
    """A checkpoint as RegistrationModule writes it; ``metadata=None`` leaves out the "intermod" entry."""
    net = tiny_net() if net is None else net
    payload = {"state_dict": {"net." + k: v for k, v in net.state_dict().items()}}
    if metadata is not None:
        payload["intermod"] = metadata
    torch.save(payload, path)
    return path


def run(*args) -> tuple[int, str, str]:
    """intermod-register in this process; the environment (main sets ITK's thread count) is restored."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.dict(os.environ):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """CT as NRRD (LPS, 2 mm, with -2048 padding), MR as MHA (permuted axes, anisotropic ~1 mm voxels,
    a small rigid motion), both label maps, and a checkpoint."""
    root = tmp_path_factory.mktemp("register")
    ct, _, ct_labels = render(make_grid((52, 44, 36), (2.0, 2.0, 2.0)), padding=True)
    angle = np.deg2rad(6)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    _, mr, mr_labels = render(make_grid(**MR_GRID), rotation, (4, -3, 5))
    paths = {"ct": root / "ct.nrrd", "ct_labels": root / "ct_labels.nii.gz", "mr": root / "mr.mha",
             "mr_labels": root / "mr_labels.mha"}
    for key, image in (("ct", ct), ("ct_labels", ct_labels), ("mr", mr), ("mr_labels", mr_labels)):
        sitk.WriteImage(image, str(paths[key]))
    paths["checkpoint"] = save_checkpoint(root / "model.ckpt")
    return paths


@pytest.fixture(scope="module")
def registered(data) -> dict:
    out = data["ct"].parent / "out"
    code, stdout, stderr = run("--ct", data["ct"], "--mr", data["mr"], "--checkpoint", data["checkpoint"],
                               "--out", out, "--mr-labels", data["mr_labels"], "--ct-labels", data["ct_labels"])
    assert code == 0, stderr
    return {"out": out, "stdout": stdout, "report": json.loads((out / "report.json").read_text())}


def _same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_outputs_lie_on_the_ct_grid_with_a_full_report(data, registered):
    out, report = registered["out"], registered["report"]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())
    ct = sitk.ReadImage(str(data["ct"]))
    for name in ("mr_warped", "mr_labels_warped", "field"):
        _same_grid(sitk.ReadImage(str(out / OUTPUT_NAMES[name])), ct)
    assert set(np.unique(to_array(sitk.ReadImage(str(out / OUTPUT_NAMES["mr_labels_warped"]))))) <= {0, 1, 2, 3}
    assert isinstance(sitk.ReadTransform(str(out / OUTPUT_NAMES["affine"])), sitk.AffineTransform)
    assert set(report["timings_s"]) >= {"load", "affine", "network", "compose", "write", "total"}
    assert report["folding"]["percent_nonpositive_jacobian"] >= 0
    assert report["max_displacement_mm"] > 1.0  # the perturbed head moves voxels
    # --precision auto: bf16 where this CPU has it natively, and the report says which ran.
    expected = resolve_precision("auto", torch.device("cpu"))
    assert report["network"] == {"device": "cpu", "precision": expected, "inference": "whole"}
    assert f"(network on cpu, {expected})" in registered["stdout"]
    mi = report["mutual_information"]
    assert mi["after_affine"] > mi["before"]
    assert set(report["labels"]) == set(LABELS)
    for row in report["labels"].values():
        assert row["dice_affine"] > row["dice_before"]
        assert {"dice_after", "asd_before", "asd_after", "hd95_after"} <= set(row)
    assert "mutual information" in registered["stdout"]


def test_written_field_is_applied_identically_by_ants_and_simpleitk(data, registered):
    """The field file, read back by ANTs (genericLabel; nearest: exactly) and by SimpleITK (nearest),
    reproduces intermod's warped labels; ANTs' linear warp of the MR reproduces intermod's warped MR."""
    import ants

    out = registered["out"]
    field_path = str(out / OUTPUT_NAMES["field"])
    ours = to_array(sitk.ReadImage(str(out / OUTPUT_NAMES["mr_labels_warped"])))
    fixed = ants.image_read(str(data["ct"]))
    moving_labels = ants.image_read(str(data["mr_labels"]))
    by_ants = ants.apply_transforms(fixed, moving_labels, [field_path], interpolator="genericLabel").numpy()
    by_ants_nearest = ants.apply_transforms(fixed, moving_labels, [field_path], interpolator="nearestNeighbor").numpy()
    ct, mr_labels = sitk.ReadImage(str(data["ct"])), sitk.ReadImage(str(data["mr_labels"]))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(field_path), sitk.sitkVectorFloat64))
    by_sitk = to_array(sitk.Resample(mr_labels, ct, transform, sitk.sitkNearestNeighbor, 0))
    for label in LABELS.values():
        assert (ours == label).sum() > 100
        assert dice(by_ants == label, ours == label) >= 0.99
        assert dice(by_ants_nearest == label, ours == label) >= 0.999
        assert dice(by_sitk == label, ours == label) >= 0.99
    warped_by_ants = ants.apply_transforms(fixed, ants.image_read(str(data["mr"])), [field_path]).numpy()
    ours_mr = to_array(sitk.ReadImage(str(out / OUTPUT_NAMES["mr_warped"])))
    assert np.abs(warped_by_ants - ours_mr).mean() < 1.0  # MR values span 0 - 900


@pytest.mark.parametrize("integration_steps", [0, 7])
def test_field_is_the_network_prediction_where_grids_coincide(tmp_path, integration_steps):
    """CT on the model grid (RAS, 2 mm), MR on the same grid, --no-affine: the written field, in
    voxels, is the network's own prediction on the training normalisation (with integration_steps, the
    integral of its velocity), and the warped labels are intermod.spatial.warp_labels's."""
    grid = make_grid((40, 36, 32), (2.0, 2.0, 2.0), RAS)
    ct, _, _ = render(grid)
    _, mr, mr_labels = render(grid, shift=(3.0, -2.0, 2.0))
    for name, image in (("ct", ct), ("mr", mr), ("mr_labels", mr_labels)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    net = tiny_net(seed=1)
    metadata = {**METADATA, "format": 2, "integration_steps": integration_steps} if integration_steps else METADATA
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", net, metadata)
    code, _, stderr = run("--ct", tmp_path / "ct.nii.gz", "--mr", tmp_path / "mr.nii.gz", "--checkpoint", checkpoint,
                          "--out", tmp_path / "out", "--mr-labels", tmp_path / "mr_labels.nii.gz", "--no-affine",
                          "--precision", "fp32")
    assert code == 0, stderr

    subject = Normalisation(METADATA["ct_window"], METADATA["mr_percentiles"])(tio.Subject(
        ct=tio.ScalarImage(tensor=torch.from_numpy(to_array(ct))[None]),
        mr=tio.ScalarImage(tensor=torch.from_numpy(to_array(mr))[None])))
    expected = predict_field(net, subject["ct"].data[None].float(), subject["mr"].data[None].float(),
                             integration_steps=integration_steps)
    if integration_steps:
        velocity = predict_field(net, subject["ct"].data[None].float(), subject["mr"].data[None].float())
        assert (expected - velocity).abs().max() > 0.1  # the integral, not the velocity, is written
        report = json.loads((tmp_path / "out" / OUTPUT_NAMES["report"]).read_text())
        assert report["network"]["integration_steps"] == 7
    field, affine = read_displacement_field(tmp_path / "out" / OUTPUT_NAMES["field"])
    np.testing.assert_allclose(affine, nib.load(tmp_path / "ct.nii.gz").affine, atol=1e-5)
    u = lps_to_voxel(field, index_to_physical(ct))
    assert np.abs(expected[0].numpy()).max() > 1.0 and expected[0].std(dim=(1, 2, 3)).min() > 0.1
    np.testing.assert_allclose(u, expected[0].numpy(), atol=1e-4)
    ours = to_array(sitk.ReadImage(str(tmp_path / "out" / OUTPUT_NAMES["mr_labels_warped"])))
    theirs = warp_labels(torch.from_numpy(to_array(mr_labels))[None, None], expected)[0, 0].numpy()
    # Where x + u(x) leaves the volume, ITK reads 0 and warp_labels the border: compare inside only.
    target = np.indices(ours.shape) + expected[0].numpy()
    inside = np.all((target >= 0) & (target <= np.reshape(ours.shape, (3, 1, 1, 1)) - 1), axis=0)
    assert inside.mean() > 0.8 and np.mean(ours[inside] == theirs[inside]) > 0.999


def test_orientation_search_recovers_a_180_degree_rotation(data, tmp_path):
    """MR of the phantom turned by 180 degrees about the S axis (head-first vs feet-first, prone vs
    supine): the pre-alignment must start from that rotation and end near it."""
    _, mr, mr_labels = render(make_grid(**MR_GRID), np.diag([-1.0, -1.0, 1.0]), (4, -3, 5))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    sitk.WriteImage(mr_labels, str(tmp_path / "mr_labels.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("from an earlier run")
    report = register_files(data["ct"], tmp_path / "mr.nii.gz", data["checkpoint"], out,
                            mr_labels=tmp_path / "mr_labels.nii.gz", ct_labels=data["ct_labels"])
    # An existing folder receives the outputs beside what it held.
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_NAMES.values(), "keep.txt"])
    assert report["affine"]["orientation"] == "rot180_z"
    matrix = np.reshape(report["affine"]["matrix"], (3, 3))
    np.testing.assert_allclose(matrix, np.diag([-1.0, -1.0, 1.0]), atol=0.15)
    for row in report["labels"].values():
        assert row["dice_before"] < 0.2 and row["dice_affine"] > 0.8


def test_checkpoint_rebuilds_the_network_with_every_recorded_argument(tmp_path):
    net = RegistrationUNet((4, 8, 8), norm="none")
    path = save_checkpoint(tmp_path / "model.ckpt", net, {**METADATA, "net": {**METADATA["net"], "norm": "none"}})
    model = load_model(path, precision="fp32")
    torch.testing.assert_close(model.net.net.state_dict(), net.state_dict())  # norm="none": nothing to fold
    assert model.precision == "fp32" and load_model(path, precision="bf16").precision == "bf16"
    assert model.spacing == (2.0, 2.0, 2.0) and model.orientation == "RAS" and model.labels == LABELS


def test_ct_padding_is_air_before_any_stage_sees_it(data, monkeypatch):
    """-2048 outside the scan circle must reach neither the pre-alignment nor the network as tissue."""
    import intermod.registration.pipeline as registration  # where prealign is looked up

    seen = {}

    def fake_prealign(ct, mr):
        seen["ct_min"] = float(to_array(ct).min())
        return sitk.AffineTransform(3), {"orientation": "identity", "search_mi": {}}

    monkeypatch.setattr(registration, "prealign", fake_prealign)
    ct = registration.read_image(data["ct"])
    assert to_array(ct).min() == -2048
    model = load_model(data["checkpoint"])
    registration.register_images(ct, registration.read_image(data["mr"]), model)
    assert seen["ct_min"] == registration.AIR_HU


BAD_INPUTS = ["missing_ct", "mr_2d", "mr_4d", "ct_nan", "mr_truncated", "no_overlap", "other_version",
              "newer_version", "missing_entry", "baseline", "not_intermod", "not_a_checkpoint", "cuda"]


def _bad_arguments(case: str, data: dict, tmp: Path) -> tuple[list, str]:
    """Arguments for one broken run and the text its error line must name."""
    paths = {"ct": data["ct"], "mr": data["mr"], "checkpoint": data["checkpoint"]}
    extra = []
    if case == "missing_ct":
        paths["ct"] = tmp / "absent.nii.gz"
    elif case == "mr_2d":
        paths["mr"] = tmp / "mr_2d.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(paths["mr"]))
    elif case == "mr_4d":
        paths["mr"] = tmp / "mr_4d.nii.gz"
        volume = sitk.GetImageFromArray(np.random.rand(8, 8, 8).astype(np.float32))
        sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(paths["mr"]))
    elif case == "ct_nan":
        paths["ct"] = tmp / "ct_nan.nii.gz"
        ct = sitk.ReadImage(str(data["ct"]), sitk.sitkFloat32)
        ct[10, 10, 10] = float("nan")
        sitk.WriteImage(ct, str(paths["ct"]))
    elif case == "mr_truncated":  # a copy cut short: ITK alone would read it without a word
        paths["mr"] = tmp / "mr_truncated.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(data["mr"])), str(tmp / "mr_whole.nii.gz"))
        whole = (tmp / "mr_whole.nii.gz").read_bytes()
        paths["mr"].write_bytes(whole[:len(whole) // 2])
    elif case == "no_overlap":
        paths["mr"] = tmp / "mr_far.mha"
        mr = sitk.ReadImage(str(data["mr"]))
        mr.SetOrigin((np.asarray(mr.GetOrigin()) + 1000.0).tolist())
        sitk.WriteImage(mr, str(paths["mr"]))
        extra = ["--no-affine"]
    elif case == "other_version":
        paths["checkpoint"] = save_checkpoint(tmp / "old.ckpt", metadata={**METADATA, "format": 0,
                                                                                "intermod_version": "0.0.1"})
    elif case == "newer_version":
        paths["checkpoint"] = save_checkpoint(tmp / "new.ckpt", metadata={**METADATA, "format": 3})
    elif case == "missing_entry":
        paths["checkpoint"] = save_checkpoint(tmp / "partial.ckpt",
                                              metadata={k: v for k, v in METADATA.items() if k != "spacing"})
    elif case == "baseline":
        paths["checkpoint"] = save_checkpoint(tmp / "syn.ckpt", metadata={**METADATA, "method": "syn", "net": None})
    elif case == "not_intermod":
        paths["checkpoint"] = save_checkpoint(tmp / "plain.ckpt", metadata=None)
    elif case == "not_a_checkpoint":
        paths["checkpoint"] = tmp / "notes.ckpt"
        paths["checkpoint"].write_text("not a checkpoint")
    elif case == "cuda":
        extra = ["--device", "cuda"]
    named = {"missing_ct": "ct", "ct_nan": "ct", "mr_2d": "mr", "mr_4d": "mr", "mr_truncated": "mr", "no_overlap": "mr"}
    named = named.get(case, "checkpoint")
    arguments = ["--ct", paths["ct"], "--mr", paths["mr"], "--checkpoint", paths["checkpoint"], *extra]
    return arguments, "--device cuda" if case == "cuda" else str(paths[named])


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_exit_2_and_leaves_out_untouched(data, tmp_path, case):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("from an earlier run")
    arguments, named = _bad_arguments(case, data, tmp_path)
    code, stdout, stderr = run(*arguments, "--out", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_truncated_image_gives_one_line_exit_2_and_writes_nothing(data, tmp_path):
    """A .nii.gz cut short (an interrupted copy): ITK reads it without a word, filling in what is missing;
    the command must refuse it, naming the file, before anything is written."""
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(data["ct"])), str(whole))
    truncated = tmp_path / "ct.nii.gz"
    truncated.write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 4])
    assert sitk.ReadImage(str(truncated)).GetSize() == sitk.ReadImage(str(whole)).GetSize()
    out = tmp_path / "out"
    code, stdout, stderr = run("--ct", truncated, "--mr", data["mr"], "--checkpoint", data["checkpoint"], "--out", out)
    assert code == 2 and stdout == ""
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"intermod-register: error: {truncated}: file is truncated or corrupt (")
    assert line.endswith("; copy or export it again")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "whole.nii.gz"]


def test_the_command_imports_neither_lightning_nor_torchio(data, tmp_path):
    """A fresh intermod-register process, run to the end, never loads the training stack (seconds of
    start-up, and packages a user who only registers need not have)."""
    script = ("import sys\nfrom intermod.cli.register import main\ncode = main(sys.argv[1:])\n"
              "print(code, sorted({m.split('.')[0] for m in sys.modules}\n"
              "                   & {'pytorch_lightning', 'lightning', 'lightning_fabric', 'torchio'}))")
    command = [sys.executable, "-c", script, "--ct", str(data["ct"]), "--mr", str(data["mr"]),
               "--checkpoint", str(data["checkpoint"]), "--out", str(tmp_path / "out"), "--no-affine"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / OUTPUT_NAMES["field"]).exists()


def test_failure_while_writing_leaves_out_untouched(data, tmp_path, monkeypatch):
    import intermod.registration.outputs as registration  # where write_displacement_field is looked up

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(registration, "write_displacement_field", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("from an earlier run")
    with pytest.raises(OSError, match="disk full"):
        register_files(data["ct"], data["mr"], data["checkpoint"], out, affine=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _histogram_mi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log(p[nonzero] / outer[nonzero])).sum())


@pytest.mark.realdata
@pytest.mark.parametrize("field_resolution", ["full", "half"])  # the paper's head, and experiment=cpu's
def test_real_ct_and_mr_register_end_to_end(tmp_path, field_resolution):
    """The real porcine-phantom CT and T2 MR (different grids, 180 degrees apart, CT padding -2048).

    An untrained tiny network (near-zero output) stands in for a trained one, which would take long
    to train here: the test checks that the whole pipeline runs on real scans, that the outputs lie
    on the CT's grid with the CT's affine, that the affine stage recovers the 180-degree turn, and that
    mutual information with the CT rises (through the affine stage) over the MR merely resampled.
    """
    if not REALDATA.is_dir():
        pytest.skip(f"real CT/MR pair not found at {REALDATA} (../shared/realdata is absent)")
    ct_path, mr_path = REALDATA / "mridir_ct_2mm.nii.gz", REALDATA / "mridir_mr_t2_2mm.nii.gz"
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", RegistrationUNet((4, 8, 8), field_resolution=field_resolution),
                                 {**METADATA, "net": {**METADATA["net"], "field_resolution": field_resolution}})
    out = tmp_path / "out"
    code, _, stderr = run("--ct", ct_path, "--mr", mr_path, "--checkpoint", checkpoint, "--out", out)
    assert code == 0, stderr

    ct_nifti = nib.load(ct_path)
    for name in ("mr_warped", "field"):
        written = nib.load(out / OUTPUT_NAMES[name])
        assert written.shape[:3] == ct_nifti.shape
        np.testing.assert_allclose(written.affine, ct_nifti.affine, atol=1e-4)

    report = json.loads((out / "report.json").read_text())
    assert report["affine"]["orientation"] != "identity"
    matrix = np.reshape(report["affine"]["matrix"], (3, 3))
    # A 180-degree turn about one axis: two diagonal entries near -1, one near +1, little else.
    assert sorted(np.sign(np.diag(matrix))) == [-1, -1, 1]
    assert np.abs(np.diag(matrix)).min() > 0.8 and np.abs(matrix - np.diag(np.diag(matrix))).max() < 0.3

    ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    ct_values = np.maximum(to_array(ct), -1024.0)  # padding is air
    resampled = to_array(sitk.Resample(sitk.ReadImage(str(mr_path), sitk.sitkFloat32), ct))
    registered = to_array(sitk.ReadImage(str(out / OUTPUT_NAMES["mr_warped"])))
    assert _histogram_mi(ct_values, registered) > _histogram_mi(ct_values, resampled) + 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_registration_matches_cpu(data, tmp_path):
    """--device cuda end to end: the field within a tenth of a mm of the CPU's, the same labels."""
    folders = {device: tmp_path / device for device in ("cpu", "cuda")}
    for device, folder in folders.items():  # --no-affine: the network alone differs between the runs
        code, _, stderr = run("--ct", data["ct"], "--mr", data["mr"], "--checkpoint", data["checkpoint"],
                              "--out", folder, "--mr-labels", data["mr_labels"], "--device", device, "--no-affine")
        assert code == 0, stderr
    assert json.loads((folders["cuda"] / "report.json").read_text())["network"]["device"].startswith("cuda")
    gpu, _ = read_displacement_field(folders["cuda"] / OUTPUT_NAMES["field"])
    cpu, _ = read_displacement_field(folders["cpu"] / OUTPUT_NAMES["field"])
    assert np.abs(gpu - cpu).max() < 0.1
    labels = [to_array(sitk.ReadImage(str(folder / OUTPUT_NAMES["mr_labels_warped"]))) for folder in folders.values()]
    assert np.mean(labels[0] == labels[1]) > 0.999


def test_the_command_is_repeatable_bit_for_bit(data, tmp_path):
    """Two runs of intermod-register (fresh processes: ANTs single-threaded and seeded) write identical files."""
    outputs = []
    for name in ("first", "second"):
        command = [sys.executable, "-m", "intermod.cli.register", "--ct", str(data["ct"]), "--mr", str(data["mr"]),
                   "--checkpoint", str(data["checkpoint"]), "--out", str(tmp_path / name)]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(tmp_path / name)
    for key in ("affine", "field", "mr_warped"):
        first, second = ((folder / OUTPUT_NAMES[key]).read_bytes() for folder in outputs)
        assert first == second, key


def test_refinement_is_recorded_and_does_not_lower_dice(data, registered, tmp_path):
    """--refine 30 optimises the (untrained) network's field on the pair itself: the report says how,
    times it, and the labels agree at least as well as without it (the default, 0 steps, reports 0)."""
    assert registered["report"]["refinement"]["steps"] == 0
    code, _, stderr = run("--ct", data["ct"], "--mr", data["mr"], "--checkpoint", data["checkpoint"],
                          "--out", tmp_path / "out", "--mr-labels", data["mr_labels"], "--ct-labels", data["ct_labels"],
                          "--refine", 30)
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["refinement"]["steps"] == 30 and report["refinement"]["similarity"] == "mind"
    assert report["timings_s"]["refine"] > 0
    mean_dice = [np.mean([row["dice_after"] for row in r["labels"].values()]) for r in (registered["report"], report)]
    assert mean_dice[1] >= mean_dice[0] - 0.005, mean_dice


def test_a_diffeomorphic_network_s_refined_field_stays_fold_free_and_does_not_lower_dice(data, tmp_path,
                                                                                           monkeypatch):
    """--refine on a checkpoint with integration_steps: refinement is told to compose a velocity update
    (intermod.refinement, whose tests show why: added, it folds), and the written field stays fold-free."""
    told = []

    def spy(*args):
        told.append(args[-1])
        return refine_field(*args)
    monkeypatch.setattr(pipeline, "refine_field", spy)
    checkpoint = save_checkpoint(tmp_path / "diffeo.ckpt", tiny_net(seed=1),
                                 {**METADATA, "format": 2, "integration_steps": 7})
    reports = []
    for steps in (0, 30):
        out = tmp_path / f"out{steps}"
        code, _, stderr = run("--ct", data["ct"], "--mr", data["mr"], "--checkpoint", checkpoint, "--out", out,
                              "--mr-labels", data["mr_labels"], "--ct-labels", data["ct_labels"], "--refine", steps)
        assert code == 0, stderr
        reports.append(json.loads((out / "report.json").read_text()))
    assert [r["network"]["integration_steps"] for r in reports] == [7, 7] and told == [7, 7]
    assert reports[1]["refinement"]["steps"] == 30
    assert all(r["folding"]["percent_nonpositive_jacobian"] < 0.1 for r in reports), [r["folding"] for r in reports]
    assert reports[1]["folding"]["std_log_jacobian"] != reports[0]["folding"]["std_log_jacobian"]  # it did move
    mean_dice = [np.mean([row["dice_after"] for row in r["labels"].values()]) for r in reports]
    assert mean_dice[1] >= mean_dice[0] - 0.005, mean_dice


def test_a_negative_refinement_is_refused_with_exit_2(data, tmp_path):
    code, _, stderr = run("--ct", data["ct"], "--mr", data["mr"], "--checkpoint", data["checkpoint"],
                          "--out", tmp_path / "out", "--refine", -1)
    assert code == 2 and "--refine" in stderr and not (tmp_path / "out").exists()
