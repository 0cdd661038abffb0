"""elastix B-spline registration with Mattes mutual information, through ``itk-elastix``: what many
clinics run for CT/MR.

Two stages, each one of elastix's own default parameter maps (``ParameterObject.GetDefaultParameterMap``,
itk-elastix 0.25.4) with intermod's overrides on top:

* ``affine``: AffineTransform, AdvancedMattesMutualInformation (32 histogram bins), adaptive
  stochastic gradient descent, 4 resolutions of a smoothing pyramid (schedule 8, 4, 2, 1, no
  downsampling), 256 iterations each, 2048 random samples per iteration, scales
  estimated automatically.
* ``bspline``: BSplineTransform on top of the affine one, AdvancedMattesMutualInformation plus a
  bending-energy penalty, 256 iterations of 2048 samples, control points every 10 mm
  (``FinalGridSpacingInPhysicalUnits``, elastix's default: 5 voxels at 2 mm, fine enough for the
  bladder, rectum and the ~4 cm prostate). Four entries differ from elastix's default map
  (``DEFAULT_BSPLINE``), because that map ruins the phantom pairs: with its 4-level smoothing
  pyramid (schedule 8 to 1) Mattes MI is maximised by moving the MR's bright bladder (urine and
  fat are both bright on T2, but distinct on CT) by 10-12 voxels, bladder Dice 0.83 -> 0.01 at 4 mm
  and 0.83 -> 0.21 at 2 mm, whatever the samples (8192), iterations (64) or bending weight (up to
  200) (CT->CT and MR->MR with the same maps come within 0.01-0.04 Dice of the ground truth, so the
  plumbing is not at fault). What works: a single resolution (``NumberOfResolutions: 1``,
  ``GridSpacingSchedule: [1]``; the affine stage has already taken out the large misalignment), a
  step of at most 0.5 mm per iteration (``MaximumStepLength``; elastix's default is one voxel
  spacing) and a bending-energy weight of 10 (``Metric1Weight``; default 1): on the 4 mm phantom
  Dice 0.834/0.869/0.835 -> 0.912/0.837/0.882 (bladder/prostate/rectum), on the 2 mm one
  (109x98x50) 0.832/0.862/0.827 -> 0.942/0.915/0.930 in ~30 s on one thread (plus ~2-25 s to
  import ITK once per process).

``affine`` and ``bspline`` (mappings of elastix parameter names to values: str, number, bool or a
list of them) override single entries of those maps, e.g. ``bspline={"MaximumNumberOfIterations":
500}``. elastix ignores parameter names it does not know, so a misspelt one would do nothing; its log lists
the names a stage did not use, and any of the caller's among them is an error naming it.
``RandomSeed`` (from ``seed``) and ``WriteResultImage`` (false: the MR is resampled by intermod)
are set here and may not be overridden.

CT fixed, MR moving, both as float32 in their own units (MI needs no intensity normalisation).
The images reach ITK with array axis i as ITK axis i (the array is transposed: ITK's numpy view is
(z, y, x)), spacing as given, origin 0, identity direction; ``transformix`` then gives the
deformation field on the CT grid, in mm, ITK axis order: it maps each fixed point p to the moving
point p + d(p), so d / spacing, transposed back to array order, is intermod's pull-back field in
voxels. Verified with known shifts per axis (``tests/baselines/test_elastix.py``).

Determinism: the random sampler is seeded by ``RandomSeed`` = ``seed``; ``threads`` (1 by default,
None: ITK's default of all cores) is elastix's thread count (transformix, which only evaluates the
transform, has no such setting). With one thread two runs are bit-identical (tested), as the ANTs
baselines.

Files: elastix and transformix write their transform parameter files (and transformix, given no
output folder, ``deformationField.nii`` into the working directory); every call gets a private
temporary folder as their output directory, removed on exit, also on error. Their log goes to a file
there (never to the console), read back only to explain a failure (elastix's exception says
no more than "see the log").
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import numpy as np

from intermod.baselines.result import ClassicalResult, check_inputs, check_seed, private_workdir, warp_with_field

STAGES = ("affine", "bspline")
DEFAULT_AFFINE: dict = {}  # elastix's default "affine" map as it is
DEFAULT_BSPLINE: dict = {  # over elastix's default "bspline" map; the module docstring says why
    "FinalGridSpacingInPhysicalUnits": 10.0,  # = elastix's default, made explicit
    "NumberOfResolutions": 1,
    "GridSpacingSchedule": [1],
    "MaximumStepLength": 0.5,  # mm per iteration
    "Metric1Weight": 10.0,  # the bending-energy penalty (Metric0, Mattes MI, keeps weight 1)
}
_RESERVED = {"RandomSeed", "WriteResultImage"}
_LOG = "elastix.log"  # in the private folder; read back only to explain a failure


def register(ct: np.ndarray, mr: np.ndarray, mr_labels: np.ndarray, spacing, seed: int = 0, *,
             affine: Mapping | None = None, bspline: Mapping | None = None,
             threads: int | None = 1) -> ClassicalResult:
    """Register the MR (moving) to the CT (fixed) with elastix: affine, then B-spline, Mattes MI.

    ``ct``, ``mr`` and ``mr_labels`` are (X, Y, Z) arrays on one grid of ``spacing`` mm. ``affine`` and
    ``bspline`` override entries of elastix's default maps (after ``DEFAULT_AFFINE`` and
    ``DEFAULT_BSPLINE``). ``threads``: elastix's thread count (None: all cores, not repeatable).
    """
    spacing = check_inputs(ct, mr, mr_labels, spacing)
    seed = check_seed(seed)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    given = {"affine": _overrides(affine, "affine"), "bspline": _overrides(bspline, "bspline")}
    overrides = {"affine": {**DEFAULT_AFFINE, **given["affine"]}, "bspline": {**DEFAULT_BSPLINE, **given["bspline"]}}
    for name in ("ct", "mr"):
        image = {"ct": ct, "mr": mr}[name]
        if image.max() == image.min():
            raise ValueError(f"{name} is constant: mutual information is undefined")

    import itk  # heavy (all of ITK): imported only when this baseline runs

    parameters = itk.ParameterObject.New()
    for stage in STAGES:
        parameter_map = parameters.GetDefaultParameterMap(stage)
        for key, value in {**overrides[stage], "RandomSeed": seed, "WriteResultImage": False}.items():
            parameter_map[key] = _as_strings(value)
        parameters.AddParameterMap(parameter_map)
    fixed, moving = _to_itk(ct, spacing, itk), _to_itk(mr, spacing, itk)
    thread_option = {} if threads is None else {"number_of_threads": threads}

    with private_workdir("intermod-elastix-") as workdir:
        start = time.perf_counter()
        try:
            _, transform = itk.elastix_registration_method(
                fixed, moving, parameter_object=parameters, output_directory=str(workdir),
                log_to_console=False, log_to_file=True, log_file_name=_LOG, **thread_option)
            _check_all_used(workdir / _LOG, given)  # before transformix, which rewrites the log
            deformation = itk.transformix_deformation_field(
                moving, transform, output_directory=str(workdir), log_to_console=False, log_to_file=True,
                log_file_name=_LOG)
        except RuntimeError as error:  # elastix's own message only says "see the log"
            raise RuntimeError(f"elastix registration failed:\n{_log_errors(workdir / _LOG) or error}") from None
        field = _displacement_voxels(np.asarray(deformation), spacing)
        seconds = time.perf_counter() - start
    if field.shape[1:] != ct.shape:
        raise RuntimeError(f"transformix returned a field of shape {field.shape}, expected (3, *{ct.shape})")
    warped, warped_labels = warp_with_field(mr, mr_labels, field)
    return ClassicalResult(warped=warped, warped_labels=warped_labels, field=field, seconds=seconds)


def _log_errors(log, lines: int = 15) -> str:
    """The error lines of an elastix log (or its last lines), '' if there is no log."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in text if "error" in line.lower()]
    return "\n".join((errors or text)[-lines:])


def _check_all_used(log, given: dict[str, dict]) -> None:
    """Raise ValueError naming each parameter the caller set for a stage that elastix reports unused in its
    log (``Unused parameter: NAME`` lines; each stage's part of the log ends with its "Time spent on saving")."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return
    parts = re.split(r"Time spent on saving the results", text)
    problems = []
    for stage, part in zip(STAGES, parts):
        unused = sorted(set(re.findall(r"^\s*Unused parameter: (\S+)", part, flags=re.MULTILINE)) & set(given[stage]))
        if unused:
            problems.append(f"{stage} {unused}")
    if problems:
        raise ValueError(f"elastix did not use the parameter(s) {'; '.join(problems)}: it ignores names it does not "
                         "know or that the stage's components do not read, so these would do nothing. Correct or "
                         "remove them (method.register.affine / .bspline in conf/method/elastix.yaml).")


def _overrides(options: Mapping | None, stage: str) -> dict:
    """``options`` as a plain dict, checked: string keys, none reserved, values elastix can read."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{stage} must be a mapping of elastix parameter names to values, got {options!r}")
    options = dict(options)
    reserved = sorted(set(options) & _RESERVED)
    if reserved:
        raise ValueError(f"{stage} parameters {reserved} are set by intermod.baselines.elastix, not overridable "
                         "(RandomSeed comes from seed)")
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{stage} parameter names must be non-empty strings, got {key!r}")
        _as_strings(value, f"{stage} parameter {key}")
    return options


def _as_strings(value, what: str = "value") -> tuple[str, ...]:
    """An elastix parameter value: a str, number or bool, or a non-empty sequence of them, as strings."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not values:
        raise ValueError(f"{what} is an empty list")
    strings = []
    for item in values:
        if isinstance(item, bool):
            strings.append("true" if item else "false")
        elif isinstance(item, (int, np.integer)):
            strings.append(str(int(item)))
        elif isinstance(item, (float, np.floating)):
            strings.append(repr(float(item)))
        elif isinstance(item, str):
            strings.append(item)
        else:
            raise ValueError(f"{what} must be a str, number or bool or a list of them, got {value!r}")
    return tuple(strings)


def _to_itk(array: np.ndarray, spacing, itk):
    """A float32 ITK image with ITK axis i = array axis i, origin 0, identity direction."""
    image = itk.image_from_array(np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([0.0, 0.0, 0.0])
    return image


def _displacement_voxels(deformation_mm: np.ndarray, spacing) -> np.ndarray:
    """transformix's (z, y, x, 3) mm field, components in ITK (x, y, z) order -> (3, X, Y, Z) voxels."""
    voxels = deformation_mm.transpose(2, 1, 0, 3) / np.asarray(spacing)
    return np.ascontiguousarray(np.moveaxis(voxels, -1, 0), dtype=np.float32)
