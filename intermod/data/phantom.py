"""Synthetic paired CT/MR male-pelvis phantom with a known, fold-free CT<->MR deformation.

What it models
--------------
One subject is a male pelvis cropped to the paper's field of view (218 x 196 x 100 mm, centred on
the origin; array axes X left-right, Y posterior->anterior, Z inferior->superior, i.e. RAS voxel
order). The anatomy is analytic: every structure is an implicit shape of the physical position p
(mm) -- perturbed ellipsoids, capsules, shells and a tapering tube -- painted in anatomical order
into a tissue map: body outline with skin and subcutaneous fat, muscles (glutei, iliopsoas, thigh
group, obturator internus/externus, levator-ani bowl, rectus abdominis), external iliac vessels,
pelvic bones (acetabular shells, pubic bodies and rami, ischia, ilia, sacrum/coccyx) and femora
with cortex, marrow and joint cartilage, seminal vesicles, the rectum (wall; lumen of mottled stool
with anterior gas, the patient lying supine), the bladder (wall, urine) and the prostate
(transition/central zone, posterior peripheral zone). Sizes, shapes and positions are drawn per
subject. The organ labels (LABELS) are unions of tissue classes, so labels and images agree exactly.

Two scans of one subject differ by a deformation. The CT (fixed image) shows the anatomy at its
voxel positions x; the MR (moving image) shows the anatomy at phi(y) for its voxel positions y,
where phi(y) = A(y) + l(A(y)) with
  * A a residual affine misalignment (rotation ~0.8 degree per axis, at most 2; scale within 2 %
    per axis, so det A in [0.94, 1.06]; translation within 2 mm per axis), and
  * l a local deformation: a sum of Gaussian-windowed bumps -- radial bladder filling/emptying about
    the bladder centre plus a dome shift, a few-mm prostate displacement, rectal distension and
    shift at three levels, and two broad soft-tissue shifts.
Each modality is rendered straight from the analytic shapes at its own voxel positions, so neither
the images nor the labels are interpolated. The displacement fields (voxel units along the array
axes, pull-back convention warp(img, f)(x) = img(x + f(x))) are w(y) = phi(y) - y (MR -> CT
anatomy) and its inverse u (gt_field): x + u(x) = phi^-1(x). Hence warp(mr, u) shows the MR on the
CT's anatomy and warp(mr_labels, u) ~= ct_labels. The paired images are deformed scans, as in the
paper: mr_paired = warp(mr, u) and ct_paired = warp(ct, w) (trilinear, scipy map_coordinates).

No folding, guaranteed
----------------------
Let N(p) = min(Frobenius norm, sqrt(max row sum * max column sum of |entries|)) of the Jacobian
J_l(p), both upper bounds of its spectral norm, evaluated in closed form. The bumps are rescaled by
one common factor so that, over a lattice of spacing <= 2 mm covering a box D,
  (i) max N <= 0.45 -- so the local Jacobian norm stays <= 0.5 on the image grids (as the tests
      check; voxel and mm Jacobians coincide, the spacing being isotropic), and
  (ii) L = max N + (half a lattice-cell diagonal) * (closed-form Lipschitz constant of J_l) <= 0.9,
      a rigorous bound of the spectral norm of J_l everywhere in D, between lattice points too.
D is the field of view grown by how far A moves it plus the closed-form bound of sup |l|, so it
holds A(y) for every voxel y and the ball B(x, sup |l|) around every voxel x. D being convex,
|l(q1) - l(q2)| <= L |q1 - q2| with L < 1 there, so q -> q + l(q) is injective on D with
det(I + J_l) > 0: phi = (id + l) o A is a diffeomorphism onto its image and neither field folds.
Its inverse: for a voxel x, q <- x - l(q) maps B(x, sup |l|) into itself and contracts by L, so it
converges to the unique q with q + l(q) = x (Banach) and x + u(x) = A^-1(q). It is run on the 2 mm
lattice, upsampled, then run again on the full grid (to 2e-3 mm), l evaluated exactly each time.

Contrast: the CT is in HU with realistic low soft-tissue contrast (muscle, prostate, bladder and
rectal walls 35-55 HU, urine ~10, fat ~-100, marrow ~250, cortex 1000-1400, gas and outside air
-1000), textures and Gaussian noise. The MR is T2-weighted-like (urine and fat bright, muscle dark,
prostate intermediate with a brighter peripheral zone, cortex and gas dark, fatty marrow fairly
bright) with textures, a smooth multiplicative bias field and Rician noise. Textures are smooth
random fields made on coarse lattices and upsampled. Both are blurred by a scanner point spread
combined with a half-voxel anti-aliasing blur, so thin walls show partial volume.

Everything is drawn from np.random.default_rng(seed) alone: the same seed gives identical arrays,
and the anatomy and deformation of a seed do not depend on the grid (only textures and noise do).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from intermod.metrics import dice, ncc
from intermod.spatial_numpy import warp_array

__all__ = ["Grid", "GRIDS", "LABELS", "TISSUES", "Deformation", "Phantom", "synthesize_subject",
           "synthesize_phantom", "difficulty_report", "grid_points", "grid_affine"]


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]          # voxels, array axes (X, Y, Z)
    spacing: tuple[float, float, float]  # mm


GRIDS: dict[str, Grid] = {"paper": Grid((218, 196, 100), (1.0, 1.0, 1.0)),
                          "small": Grid((109, 98, 50), (2.0, 2.0, 2.0)),   # same field of view
                          "tiny": Grid((55, 49, 25), (4.0, 4.0, 4.0))}     # tests and smoke runs
LABELS: dict[str, int] = {"bladder": 1, "prostate": 2, "rectum": 3}

TISSUES: dict[str, int] = {
    "air": 0, "skin": 1, "fat": 2, "muscle": 3, "vessel": 4, "cortex": 5, "marrow": 6, "cartilage": 7,
    "seminal_vesicle": 8, "rectal_wall": 9, "stool": 10, "gas": 11, "prostate_tz": 12,
    "prostate_pz": 13, "bladder_wall": 14, "urine": 15,
}
_T = TISSUES
_ORGAN_OF_TISSUE = {"rectal_wall": "rectum", "stool": "rectum", "gas": "rectum", "prostate_tz": "prostate",
                    "prostate_pz": "prostate", "bladder_wall": "bladder", "urine": "bladder"}

# Per tissue: CT mean (HU), CT low/high-frequency texture (HU), MR mean (a.u.), MR low/high texture
# (relative). "high" is the fine mottle (stool, trabecular marrow, BPH nodules).
_CONTRAST = {
    "air":             (-1000.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "skin":            (35.0, 6.0, 4.0, 360.0, 0.06, 0.05),
    "fat":             (-100.0, 8.0, 6.0, 700.0, 0.05, 0.04),
    "muscle":          (48.0, 5.0, 4.0, 170.0, 0.08, 0.06),
    "vessel":          (42.0, 3.0, 2.0, 80.0, 0.15, 0.05),
    "cortex":          (1200.0, 120.0, 80.0, 25.0, 0.2, 0.2),
    "marrow":          (250.0, 50.0, 60.0, 520.0, 0.10, 0.10),
    "cartilage":       (70.0, 5.0, 4.0, 600.0, 0.06, 0.05),
    "seminal_vesicle": (32.0, 4.0, 3.0, 780.0, 0.08, 0.12),
    "rectal_wall":     (46.0, 5.0, 4.0, 240.0, 0.08, 0.06),
    "stool":           (-20.0, 25.0, 45.0, 330.0, 0.20, 0.30),
    "gas":             (-1000.0, 0.0, 0.0, 8.0, 0.0, 0.0),
    "prostate_tz":     (44.0, 4.0, 4.0, 360.0, 0.10, 0.12),
    "prostate_pz":     (40.0, 4.0, 3.0, 650.0, 0.08, 0.08),
    "bladder_wall":    (42.0, 4.0, 3.0, 200.0, 0.08, 0.05),
    "urine":           (10.0, 2.0, 1.5, 950.0, 0.02, 0.01),
}
_SOFT = ("skin", "muscle", "vessel", "cartilage", "seminal_vesicle", "rectal_wall", "prostate_tz",
         "prostate_pz", "bladder_wall", "urine")   # small CT jitter keeps them within a few tens of HU

_FOV_MM = np.array([218.0, 196.0, 100.0])
_LATTICE_MM = 2.0        # deformation lattice: Jacobian check and first inverse solve
_JACOBIAN_TARGET = 0.45  # max norm of the local Jacobian on the lattice
_LIPSCHITZ_CAP = 0.9     # cap on the certified sup of that norm where the local part is used
_CHUNK = 32768           # points per block when evaluating bumps, to stay in cache


# --------------------------------------------------------------------------------------------------
# Grids

def _axes(grid: Grid) -> list[np.ndarray]:
    """Physical voxel-centre coordinates (mm) per axis, the volume centred on the origin."""
    return [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(grid.shape, grid.spacing)]


def grid_points(grid: Grid) -> np.ndarray:
    """All voxel centres of ``grid`` as a (3, N) float32 array in mm (C order over X, Y, Z)."""
    mesh = np.meshgrid(*_axes(grid), indexing="ij")
    return np.stack([m.ravel() for m in mesh])


def grid_affine(grid: Grid) -> np.ndarray:
    """RAS affine with the volume centred on the origin (the voxel centres of :func:`grid_points`)."""
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = -(np.array(grid.shape) - 1) / 2 * np.array(grid.spacing)
    return affine


def _upsample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Separable linear interpolation of a 3-D array to ``shape``, corners aligned (like
    ndimage.zoom(order=1, grid_mode=False), several times faster)."""
    for axis, n in enumerate(shape):
        m = array.shape[axis]
        if m == n:
            continue
        pos = np.linspace(0, m - 1, n)
        lo = np.minimum(pos.astype(int), m - 2)
        frac = (pos - lo).astype(np.float32).reshape([-1 if i == axis else 1 for i in range(3)])
        array = np.take(array, lo, axis=axis) * (1 - frac) + np.take(array, lo + 1, axis=axis) * frac
    return array


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles (radians) about X, Y, Z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------------
# The deformation

@dataclass(frozen=True)
class Deformation:
    """The MR -> CT anatomy map phi(y) = A(y) + l(A(y)), positions in mm about the field centre.

    A(y) = matrix @ y + shift. l(p) = sum_k g_k(p) (amplitudes_k + radial_k * (p - centres_k)) with
    g_k(p) = exp(-|p - centres_k|^2 / (2 sigmas_k^2)); ``radial_k`` is a per-axis radial rate.
    """
    matrix: np.ndarray      # (3, 3)
    shift: np.ndarray       # (3,)
    centres: np.ndarray     # (K, 3)
    sigmas: np.ndarray      # (K,)
    amplitudes: np.ndarray  # (K, 3)
    radial: np.ndarray      # (K, 3)

    def _terms(self):
        for c, s, a, r in zip(self.centres, self.sigmas, self.amplitudes, self.radial):
            yield (c.astype(np.float32)[:, None], np.float32(-0.5 / s ** 2), np.float32(1.0 / s ** 2),
                   a.astype(np.float32)[:, None], r.astype(np.float32)[:, None])

    @staticmethod
    def _local_block(p: np.ndarray, terms: list) -> np.ndarray:
        out = np.zeros_like(p)
        for c, k, _, a, r in terms:
            d = p - c
            out += (d * r + a) * np.exp(np.einsum("ij,ij->j", d, d) * k)
        return out

    def local(self, points: np.ndarray) -> np.ndarray:
        """l(points): the local displacement (mm) at (3, N) points (mm)."""
        points = np.asarray(points, dtype=np.float32)
        out = np.empty_like(points)
        terms = list(self._terms())
        for start in range(0, points.shape[1], _CHUNK):
            out[:, start:start + _CHUNK] = self._local_block(points[:, start:start + _CHUNK], terms)
        return out

    def local_jacobian_max(self, points: np.ndarray) -> float:
        """Max over (3, N) points of a bound on the spectral norm of the Jacobian of l (closed form):
        min(Frobenius norm, sqrt(max absolute row sum * max absolute column sum))."""
        points = np.asarray(points, dtype=np.float32)
        terms = list(self._terms())
        worst = 0.0
        for start in range(0, points.shape[1], _CHUNK):
            p = points[:, start:start + _CHUNK]
            jac = np.zeros((3, 3, p.shape[1]), np.float32)
            for c, k, inv_s2, a, r in terms:
                d = p - c
                g = np.exp(np.einsum("ij,ij->j", d, d) * k)
                jac -= (d * r + a)[:, None] * d[None] * (g * inv_s2)
                jac[[0, 1, 2], [0, 1, 2]] += r * g
            frobenius = np.sqrt(np.einsum("ijn,ijn->n", jac, jac))
            absolute = np.abs(jac)
            holder = np.sqrt(absolute.sum(0).max(0) * absolute.sum(1).max(0))
            worst = max(worst, float(np.minimum(frobenius, holder).max()))
        return worst

    def jacobian_variation(self) -> float:
        """A Lipschitz constant (per mm) of the Jacobian of l in spectral norm, in closed form.

        Translation bump a g: |a| |Hess g| <= |a| / sigma^2. Radial bump g D (p - c), D diagonal:
        |d/dv (g D (I - dd^T / sigma^2))| <= |D| / sigma * sup_t sqrt(t) e^-t/2 (max(1, |1 - t|) + 2)
        <= 2 |D| / sigma (t = |p - c|^2 / sigma^2; the sup is 1.82 at t = 1).
        """
        return float(sum(np.linalg.norm(a) / s ** 2 + 2 * np.abs(r).max() / s
                         for s, a, r in zip(self.sigmas, self.amplitudes, self.radial)))

    def displacement_bound(self) -> float:
        """sup |l| <= sum_k |a_k| + |D_k| sigma_k e^-1/2 (mm)."""
        return float(sum(np.linalg.norm(a) + np.abs(r).max() * s * np.exp(-0.5)
                         for s, a, r in zip(self.sigmas, self.amplitudes, self.radial)))

    def lipschitz_certificate(self, half_extent: np.ndarray) -> tuple[float, float]:
        """(max of the Jacobian-norm bound of l on a <= 2 mm lattice over the domain D where l is
        ever evaluated for voxels within +-half_extent mm, a rigorous bound of sup_D |J_l|).

        D is that box grown by how far A moves its corners plus sup |l|: it holds A(y) for every
        voxel y and the fixed-point iterates for every voxel x. Between lattice points the norm can
        grow by at most half a cell diagonal times jacobian_variation().
        """
        half = np.asarray(half_extent, float)
        corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1)
        reach = np.abs(self.matrix @ corners + self.shift[:, None] - corners).max(axis=1)
        half = half + reach + self.displacement_bound() + 1.0
        shape = [int(np.ceil(2 * h / _LATTICE_MM)) + 1 for h in half]
        axes = [np.linspace(-h, h, n, dtype=np.float32) for h, n in zip(half, shape)]
        lattice = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")])
        cell = 2 * half / (np.array(shape) - 1)
        worst = self.local_jacobian_max(lattice)
        return worst, worst + 0.5 * float(np.linalg.norm(cell)) * self.jacobian_variation()

    def scaled(self, factor: float) -> "Deformation":
        """The same affine part with the local part multiplied by ``factor``."""
        return Deformation(self.matrix, self.shift, self.centres, self.sigmas, self.amplitudes * factor,
                           self.radial * factor)

    def affine(self, points: np.ndarray) -> np.ndarray:
        return self.matrix.astype(np.float32) @ points + self.shift.astype(np.float32)[:, None]

    def mr_to_ct(self, points: np.ndarray) -> np.ndarray:
        """phi(points): the CT-anatomy position (mm) shown at MR positions ``points`` (3, N)."""
        moved = self.affine(points)
        return moved + self.local(moved)

    def solve_local(self, target: np.ndarray, start: np.ndarray, tol: float) -> np.ndarray:
        """q with q + l(q) = target (3, N), by the contraction q <- target - l(q) from ``start``, block
        by block until no point of the block moves more than ``tol`` mm."""
        target = np.asarray(target, dtype=np.float32)
        q = np.array(start, dtype=np.float32)
        terms = list(self._terms())
        for begin in range(0, q.shape[1], _CHUNK):
            t, qb = target[:, begin:begin + _CHUNK], q[:, begin:begin + _CHUNK]
            for _ in range(200):
                new = t - self._local_block(qb, terms)
                step = np.abs(new - qb).max()
                qb[...] = new
                if step <= tol:
                    break
            else:
                raise RuntimeError("fixed-point inverse did not converge: the Lipschitz bound is violated")
        return q

    def affine_inverse(self, q: np.ndarray) -> np.ndarray:
        """A^-1(q): the MR position whose affine image is q."""
        inverse = np.linalg.inv(self.matrix).astype(np.float32)
        return inverse @ (q - self.shift.astype(np.float32)[:, None])


def _sample_deformation(rng: np.random.Generator, anatomy: "_Anatomy") -> Deformation:
    """Affine residual plus unscaled local bumps centred on the organs (mm)."""
    angles = np.clip(rng.normal(0.0, 0.8, 3), -2.0, 2.0) * np.pi / 180
    matrix = _rotation(angles) @ np.diag(1 + rng.uniform(-0.02, 0.02, 3))
    shift = rng.uniform(-2.0, 2.0, 3)
    sign = lambda: rng.choice([-1.0, 1.0])  # noqa: E731
    centres, sigmas, amps, radial = [], [], [], []

    def bump(centre, sigma, amp=(0.0, 0.0, 0.0), rate=(0.0, 0.0, 0.0)):
        centres.append(centre)
        sigmas.append(sigma)
        amps.append(amp)
        radial.append(rate)

    cb, rb = np.array(anatomy.bladder.centre), np.array(anatomy.bladder.radii)
    rate = sign() * rng.uniform(0.15, 0.28)                        # filling or emptying
    bump(cb, 0.85 * rb.mean(), rate=(rate, rate, rate))
    bump(cb + [0, 0, 0.7 * rb[2]], 0.6 * rb.mean(),                 # the dome moves most
         amp=(rng.normal(0, 1.5), rng.normal(0, 2.0), sign() * rng.uniform(2.0, 5.0)))
    cp = np.array(anatomy.prostate.centre)
    bump(cp, rng.uniform(14, 18), amp=(rng.normal(0, 1.0), sign() * rng.uniform(2.0, 4.0),
                                        sign() * rng.uniform(1.5, 3.5)))
    rectum = anatomy.rectum
    for z in (cp[2] + rng.uniform(-10, 5), cp[2] + rng.uniform(20, 35), rng.uniform(cp[2] + 50, 50)):
        rate = sign() * rng.uniform(0.15, 0.3)                    # distension in the axial plane
        push = (sign() * rng.uniform(1.5, 4), sign() * rng.uniform(1.5, 4), 0.0)
        bump(rectum.centre_at(z), rng.uniform(14, 20), amp=push, rate=(rate, rate, 0.0))
    for _ in range(2):                                            # posture: broad soft-tissue shifts
        bump(rng.uniform(-0.35, 0.35, 3) * _FOV_MM, rng.uniform(35, 50), amp=rng.normal(0, 1.2, 3))
    return Deformation(matrix, shift, np.array(centres, float), np.array(sigmas, float),
                       np.array(amps, float), np.array(radial, float))


def _half_extent(grid: Grid) -> np.ndarray:
    """Half-size (mm) of the box the certificate covers: the standard field of view, or the grid's
    own if larger, so that for the standard grids the rescaled deformation is grid-independent."""
    return np.maximum(_FOV_MM / 2, (np.array(grid.shape) - 1) * np.array(grid.spacing) / 2)


def _lattice(grid: Grid) -> tuple[tuple[int, int, int], np.ndarray]:
    """A lattice of spacing <= _LATTICE_MM spanning the grid's voxel centres (corners aligned)."""
    extent = (np.array(grid.shape) - 1) * np.array(grid.spacing)
    shape = tuple(int(np.ceil(e / _LATTICE_MM - 1e-9)) + 1 for e in extent)
    axes = [np.linspace(-e / 2, e / 2, n, dtype=np.float32) for e, n in zip(extent, shape)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return shape, np.stack([m.ravel() for m in mesh])


def _fields(deformation: Deformation, grid: Grid) -> tuple[Deformation, np.ndarray, np.ndarray, np.ndarray]:
    """Rescale the local part (no folding, see module doc); return it with phi on the grid (mm,
    (3, N)), w and u (voxels, (X, Y, Z, 3))."""
    worst, sup_bound = deformation.lipschitz_certificate(_half_extent(grid))   # both linear in l
    deformation = deformation.scaled(min(1.0, _JACOBIAN_TARGET / worst, _LIPSCHITZ_CAP / sup_bound))
    lattice_shape, lattice = _lattice(grid)
    x = grid_points(grid)
    spacing = np.array(grid.spacing, np.float32)[:, None]

    q_lattice = deformation.solve_local(lattice, lattice - deformation.local(lattice), tol=1e-4)
    offset = (q_lattice - lattice).reshape(3, *lattice_shape)
    offset = np.stack([_upsample(o, grid.shape) for o in offset])
    q = deformation.solve_local(x, x + offset.reshape(3, -1), tol=2e-3)
    u = (deformation.affine_inverse(q) - x) / spacing

    phi = deformation.mr_to_ct(x)
    w = (phi - x) / spacing
    as_field = lambda f: np.ascontiguousarray(np.moveaxis(f.reshape(3, *grid.shape), 0, -1))  # noqa: E731
    return deformation, phi, as_field(w), as_field(u)


# --------------------------------------------------------------------------------------------------
# Shapes: each has a bounding box (lo, hi in mm) and sdf(p) -> approximate signed distance in mm
# (negative inside) for a tuple p of three broadcastable coordinate arrays.

def _ray_sdf(dist, qnorm, scale, fallback):
    """Distance along the ray from the centre: dist - R(direction), with R = scale * dist / |q|."""
    ratio = np.divide(dist, qnorm, out=np.full(np.broadcast(dist, qnorm).shape, fallback, np.float32),
                      where=qnorm > 0)
    return dist - ratio * scale


@dataclass(frozen=True)
class _Ellipsoid:
    centre: tuple
    radii: tuple
    rot: tuple | None = None   # 3x3 nested tuple; columns are the local axes
    eps: tuple | None = None   # boundary perturbation: 3 linear, 6 quadratic, 3 cubic coefficients

    @property
    def bbox(self):
        rot = np.eye(3) if self.rot is None else np.array(self.rot)
        reach = np.sqrt((rot ** 2) @ np.square(self.radii)) * (1 + (np.abs(self.eps).sum() if self.eps else 0.0))
        return np.array(self.centre) - reach, np.array(self.centre) + reach

    def _parts(self, p):
        """(offset from the centre in local axes, |q| in radius units, boundary scale 1 + eps)."""
        d = [p[i] - self.centre[i] for i in range(3)]
        if self.rot is not None:
            r = self.rot
            d = [r[0][j] * d[0] + r[1][j] * d[1] + r[2][j] * d[2] for j in range(3)]
        q = [d[i] / self.radii[i] for i in range(3)]
        qnorm = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        scale = 1.0
        if self.eps is not None:
            n = [np.divide(qi, qnorm, out=np.zeros(qnorm.shape, np.float32), where=qnorm > 0) for qi in q]
            e = self.eps
            scale = (1.0 + e[0] * n[0] + e[1] * n[1] + e[2] * n[2] + e[3] * n[0] ** 2 + e[4] * n[1] ** 2
                     + e[5] * n[2] ** 2 + e[6] * n[0] * n[1] + e[7] * n[0] * n[2] + e[8] * n[1] * n[2]
                     + e[9] * n[0] ** 3 + e[10] * n[1] ** 3 + e[11] * n[2] ** 3)
        return d, qnorm, scale

    def inside(self, p):
        _, qnorm, scale = self._parts(p)
        return qnorm < scale

    def sdf(self, p):
        d, qnorm, scale = self._parts(p)
        return _ray_sdf(np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2), qnorm, scale, min(self.radii))


@dataclass(frozen=True)
class _Capsule:
    a: tuple
    b: tuple
    ra: float
    rb: float

    @property
    def bbox(self):
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def sdf(self, p):
        ab = [self.b[i] - self.a[i] for i in range(3)]
        length2 = sum(v * v for v in ab)
        d = [p[i] - self.a[i] for i in range(3)]
        t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / length2, 0.0, 1.0)
        gap = [d[i] - t * ab[i] for i in range(3)]
        return np.sqrt(gap[0] ** 2 + gap[1] ** 2 + gap[2] ** 2) - (self.ra + t * (self.rb - self.ra))


@dataclass(frozen=True)
class _CupShell:
    """Acetabulum: a spherical shell around the femoral head, its medial part only."""
    centre: tuple
    r_in: float
    r_out: float
    side: float   # +1 / -1: the hip's side along X
    lip: float    # how far past the head's centre (laterally) the cup reaches, mm

    @property
    def bbox(self):
        return np.array(self.centre) - self.r_out, np.array(self.centre) + self.r_out

    def sdf(self, p):
        c = self.centre
        dist = np.sqrt((p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2)
        lateral = self.side * (p[0] - c[0]) - self.lip
        return np.maximum(np.maximum(dist - self.r_out, self.r_in - dist), lateral)


@dataclass(frozen=True)
class _Tube:
    """The rectum: an elliptic tube along Z whose centre line bends posteriorly going up and which
    narrows into the collapsed anal canal below ``z_anal``."""
    z0: float
    cx: tuple      # centre line x = cx0 + cx1 zeta + cx2 zeta^2, zeta = (z - z0) / 50
    cy: tuple
    rx: float
    ry: float
    flare: tuple   # radii grow by (1 + flare[0] zeta + flare[1] zeta^2)
    z_anal: float

    @property
    def bbox(self):
        zeta = np.linspace(-3, 3, 61)
        xs, ys = np.polyval(self.cx[::-1], zeta), np.polyval(self.cy[::-1], zeta)
        r = max(self.rx, self.ry) * (1 + abs(self.flare[0]) * 3 + abs(self.flare[1]) * 9)
        return np.array([xs.min() - r, ys.min() - r, -1e3]), np.array([xs.max() + r, ys.max() + r, 1e3])

    def centre_at(self, z: float) -> np.ndarray:
        zeta = (z - self.z0) / 50
        return np.array([np.polyval(self.cx[::-1], zeta), np.polyval(self.cy[::-1], zeta), z])

    def fields(self, p):
        """(sdf, normalised anterior position of p in the cross-section, zeta)."""
        zeta = (p[2] - self.z0) / 50
        cx = self.cx[0] + zeta * (self.cx[1] + zeta * self.cx[2])
        cy = self.cy[0] + zeta * (self.cy[1] + zeta * self.cy[2])
        taper = (0.45 + 0.55 / (1 + np.exp((self.z_anal - p[2]) / 5))) * (
            1 + zeta * (self.flare[0] + zeta * self.flare[1]))
        rx, ry = self.rx * taper, self.ry * taper
        dx, dy = p[0] - cx, p[1] - cy
        qnorm = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
        dist = np.sqrt(dx ** 2 + dy ** 2)
        return _ray_sdf(dist, qnorm, 1.0, min(self.rx, self.ry) * 0.45), dy / ry, zeta


@dataclass(frozen=True)
class _Body:
    """Elliptic body outline, flatter posteriorly (supine on the table), widening superiorly."""
    y0: float
    ax: float
    ay_ant: float
    ay_post: float
    widen: float   # relative width change per 50 mm up

    @property
    def bbox(self):
        return np.full(3, -1e3), np.full(3, 1e3)

    def sdf(self, p):
        dx, dy = p[0], p[1] - self.y0
        ax = self.ax * (1 + self.widen * p[2] / 50)
        ay = np.where(dy > 0, np.float32(self.ay_ant), np.float32(self.ay_post))
        qnorm = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2)
        dist = np.sqrt(dx ** 2 + dy ** 2)
        return _ray_sdf(dist, qnorm, 1.0, self.ay_post)


def _as_tuple(matrix: np.ndarray) -> tuple:
    """Nested tuple of Python floats (NumPy float64 scalars would promote float32 arrays)."""
    return tuple(tuple(float(v) for v in row) for row in matrix)


def _mirror(shape, side: float):
    """The shape reflected to the hip on ``side`` (shapes are specified for side +1)."""
    flip = lambda v: (side * v[0], v[1], v[2])  # noqa: E731
    if isinstance(shape, _Capsule):
        return _Capsule(flip(shape.a), flip(shape.b), shape.ra, shape.rb)
    if isinstance(shape, _CupShell):
        return _CupShell(flip(shape.centre), shape.r_in, shape.r_out, side, shape.lip)
    rot = None
    if shape.rot is not None:   # reflect the rotation: S R S with S = diag(side, 1, 1)
        s = np.diag([side, 1.0, 1.0])
        rot = _as_tuple(s @ np.array(shape.rot) @ s)
    return _Ellipsoid(flip(shape.centre), shape.radii, rot, shape.eps)


# --------------------------------------------------------------------------------------------------
# Anatomy

@dataclass(frozen=True)
class _Anatomy:
    body: _Body
    skin: float
    muscles: tuple
    levator: _Ellipsoid
    levator_thickness: float
    vessels: tuple
    pelvis: tuple          # per side: tuple of shapes whose union is that hip bone
    sacrum: _Capsule
    femora: tuple          # per side: (head, neck)
    cartilage: tuple       # per side: joint space sphere
    cortex: float
    seminal: tuple
    rectum: _Tube
    rectal_wall: float
    gas_level: tuple       # gas where the anterior position exceeds g0 - g1 * zeta
    bubbles: tuple
    bladder: _Ellipsoid
    bladder_wall: float
    prostate: _Ellipsoid
    prostate_central: _Ellipsoid


def _eps(rng, scale, bias=None):
    """Boundary perturbation coefficients; sum |e| <= 0.45 keeps 1 + eps(n) >= 0.55 (star-shaped)."""
    e = rng.normal(0.0, scale, 12)
    if bias:
        for i, v in bias.items():
            e[i] += v
    e *= min(1.0, 0.45 / np.abs(e).sum())
    return tuple(float(v) for v in e)


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    n = lambda sd: float(rng.normal(0.0, sd))       # noqa: E731
    body = _Body(y0=u(-8, 0), ax=u(165, 190), ay_ant=u(100, 112), ay_post=u(92, 104), widen=u(0.0, 0.08))

    # Prostate first: the other organs and the bones are placed relative to it.
    cp = (n(1.5), u(14, 26), u(-30, -20))
    rp = (u(19, 25), u(14, 18), u(15, 20))
    tilt = _rotation(np.array([u(-0.25, 0.05), 0.0, 0.0]))
    prostate = _Ellipsoid(cp, rp, _as_tuple(tilt), _eps(rng, 0.03, {2: 0.08, 4: -0.04}))
    prostate_central = _Ellipsoid((cp[0], cp[1] + 0.25 * rp[1], cp[2] + 0.1 * rp[2]),
                                  (0.62 * rp[0], 0.6 * rp[1], 0.75 * rp[2]), None, _eps(rng, 0.04))
    rb = (u(32, 44), u(24, 32), u(20, 30))
    cb = (n(2.0), cp[1] + u(-4, 6), cp[2] + rp[2] + rb[2] - u(3, 7))
    bladder = _Ellipsoid(cb, rb, _as_tuple(_rotation(np.array([n(0.08), n(0.05), n(0.05)]))),
                         _eps(rng, 0.04, {5: -0.03, 11: 0.05}))

    ry0 = u(11, 16)
    z0 = cp[2]
    rectum = _Tube(z0=z0, cx=(n(2.0), n(2.0), n(3.0)),
                   cy=(cp[1] - rp[1] - u(1.5, 4) - ry0, -u(12, 22), -u(0, 8)),
                   rx=u(13, 20), ry=ry0, flare=(u(-0.05, 0.15), n(0.05)), z_anal=cp[2] - rp[2] - u(0, 6))
    gas_level = (u(0.1, 0.7), u(0.0, 0.4))
    bubbles = []
    for _ in range(int(rng.integers(1, 4))):
        z = u(cp[2] - 5, 45)
        c = rectum.centre_at(z)
        bubbles.append(_Ellipsoid((float(c[0] + n(3)), float(c[1] + n(2)), z), (u(3, 6),) * 3))

    # Bones. Femoral heads and the pubic symphysis anchor the hip bones.
    rf = u(21, 25)
    cf = (u(82, 92), u(5, 15), u(-6, 4))
    cpub = (u(8, 10), cp[1] + u(30, 38), cp[2] + u(0, 8))
    tub = (u(48, 56), u(-32, -22), u(-50, -42))
    hip = (
        _CupShell(cf, rf + 2.5, rf + u(10, 13), 1.0, u(2, 6)),
        _Ellipsoid(cpub, (u(7, 9), u(10, 13), u(17, 22))),
        _Capsule((cf[0] - 22, cf[1] + 18, cf[2] + 6), (cpub[0] + 4, cpub[1] - 3, cpub[2] + 10), u(7, 9), u(8, 10)),
        _Capsule((cpub[0] + 5, cpub[1] - 4, cpub[2] - 14), tub, u(6, 8), u(6, 8)),
        _Capsule((cf[0] - 12, cf[1] - 22, cf[2] - 8), tub, u(12, 14), u(10, 12)),
        _Ellipsoid(tub, (u(11, 14), u(12, 16), u(9, 12))),
        _Capsule((cf[0] - 8, cf[1] - 10, cf[2] + 26), (u(78, 88), u(-48, -36), 75.0), u(13, 16), u(13, 16)),
    )
    head = _Ellipsoid(cf, (rf,) * 3)
    neck = _Capsule(cf, (cf[0] + 40, cf[1] - 8, cf[2] - 30), u(13, 15), u(14, 17))
    sides = (1.0, -1.0)
    pelvis = tuple(tuple(_mirror(s, side) for s in hip) for side in sides)
    femora = tuple((_mirror(head, side), _mirror(neck, side)) for side in sides)
    cartilage = tuple(_mirror(_Ellipsoid(cf, (rf + 2.0,) * 3), side) for side in sides)
    sacrum = _Capsule((n(2), u(-82, -74), 70.0), (n(2), u(-66, -58), u(0, 10)), u(14, 18), u(5, 7))

    # Muscles (ellipsoids given for the +X side, then mirrored), pelvic floor, vessels.
    def muscle(centre, radii, yaw=0.0):
        rot = _as_tuple(_rotation(np.array([0.0, 0.0, yaw]))) if yaw else None
        return _Ellipsoid(tuple(c + n(2) for c in centre), tuple(r * u(0.9, 1.1) for r in radii), rot, _eps(rng, 0.03))

    half = (
        muscle((68, -62, 5), (40, 22, 75), -0.4),          # gluteus maximus
        muscle((98, -25, 45), (18, 32, 35)),               # gluteus medius / minimus
        muscle((66, 40, 20), (17, 15, 80)),                # iliopsoas
        muscle((100, 52, -25), (16, 16, 50)),              # anterior thigh group
        muscle((cf[0] - rf - 17, 5, -15), (6, 32, 26)),    # obturator internus, on the pelvic side wall
        muscle((42, 28, -46), (14, 10, 8)),                # obturator externus
        muscle((18, 90, 30), (17, 7, 45)),                 # rectus abdominis
        muscle((40, -55, 35), (10, 20, 12), 0.5),          # piriformis
    )
    muscles = tuple(_mirror(m, side) for m in half for side in sides)
    levator = _Ellipsoid((0.0, cp[1] - 10, cp[2] + 12), (u(38, 44), u(44, 50), u(36, 42)))
    vessels = tuple(_mirror(v, side) for v in (
        _Capsule((u(46, 52), u(26, 34), 60.0), (u(58, 64), u(46, 52), -15.0), 4.0, 4.5),   # artery
        _Capsule((u(40, 46), u(18, 26), 60.0), (u(54, 60), u(40, 46), -15.0), 6.0, 6.5),   # vein
    ) for side in sides)
    seminal = tuple(_mirror(_Capsule((u(5, 8), cp[1] - rp[1] + 2, cp[2] + rp[2] - 3),
                                     (u(22, 30), cp[1] - rp[1] - u(2, 6), cp[2] + rp[2] + u(6, 12)), 5.0, 6.0), side)
                    for side in sides)
    return _Anatomy(body=body, skin=u(1.5, 2.5), muscles=muscles, levator=levator, levator_thickness=u(4, 6),
                    vessels=vessels, pelvis=pelvis, sacrum=sacrum, femora=femora, cartilage=cartilage,
                    cortex=u(3.0, 4.5), seminal=seminal, rectum=rectum, rectal_wall=u(2.5, 4.0),
                    gas_level=gas_level, bubbles=tuple(bubbles), bladder=bladder, bladder_wall=u(2.5, 5.0),
                    prostate=prostate, prostate_central=prostate_central)


class _Canvas:
    """A tissue map painted from shapes at given physical positions, box by box."""

    def __init__(self, grid: Grid, points: tuple, margin: np.ndarray):
        self.axes = _axes(grid)
        self.points = points      # three arrays broadcastable to grid.shape (mm)
        self.margin = margin      # per-axis bound on |position - voxel centre| (mm)
        self.tissue = np.zeros(grid.shape, np.uint8)

    def box(self, lo, hi):
        """Voxel slices that hold every position inside [lo, hi], or None."""
        sl = []
        for ax, a, b, m in zip(self.axes, lo, hi, self.margin):
            i, j = np.searchsorted(ax, a - m - 1e-3), np.searchsorted(ax, b + m + 1e-3)
            if i >= j:
                return None
            sl.append(slice(int(i), int(j)))
        return tuple(sl)

    def view(self, sl):
        # broadcast (singleton) axes of a coordinate array are not sliced
        return tuple(p[tuple(s if p.shape[i] > 1 else slice(None) for i, s in enumerate(sl))] for p in self.points)

    def inside(self, shape):
        """(slices, mask of the shape on that box), or None; ellipsoids skip the distance."""
        sl = self.box(*shape.bbox)
        if sl is None:
            return None
        view = self.view(sl)
        return sl, (shape.inside(view) if isinstance(shape, _Ellipsoid) else shape.sdf(view) < 0)

    def union_sdf(self, shapes):
        """(slices, min of the shapes' sdfs on that box) for the union of ``shapes``, or None."""
        lo = np.min([s.bbox[0] for s in shapes], axis=0)
        hi = np.max([s.bbox[1] for s in shapes], axis=0)
        sl = self.box(lo, hi)
        if sl is None:
            return None
        d = np.full([s.stop - s.start for s in sl], np.inf, np.float32)
        for shape in shapes:
            sub = self.box(*shape.bbox)
            if sub is None:
                continue
            rel = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(sub, sl))
            np.minimum(d[rel], shape.sdf(self.view(sub)), out=d[rel])
        return sl, d

    def paint(self, sl, mask, tissue: str):
        """Set ``tissue`` where ``mask`` holds inside the body (never over air or skin)."""
        region = self.tissue[sl]
        region[mask & (region >= _T["fat"])] = _T[tissue]


def _render(anatomy: _Anatomy, canvas: _Canvas) -> np.ndarray:
    """Paint the anatomy in order; later structures win where shapes overlap."""
    a = canvas
    sl = a.box(*anatomy.body.bbox)
    d = anatomy.body.sdf(a.view(sl))
    a.tissue[sl][np.broadcast_to(d < 0, a.tissue[sl].shape)] = _T["fat"]
    a.tissue[sl][np.broadcast_to((d < 0) & (d > -anatomy.skin), a.tissue[sl].shape)] = _T["skin"]

    def solid(shape, tissue):
        hit = a.inside(shape)
        if hit is not None:
            a.paint(*hit, tissue)

    def bone(shapes):
        hit = a.union_sdf(shapes)
        if hit is not None:
            sl, d = hit
            a.paint(sl, d < 0, "cortex")
            a.paint(sl, d < -anatomy.cortex, "marrow")

    for m in anatomy.muscles:
        solid(m, "muscle")
    lev = anatomy.levator
    hit = a.union_sdf([lev])
    if hit is not None:
        sl, d = hit
        p = a.view(sl)   # the lower, posterior part of the shell: a sling open anteriorly
        a.paint(sl, (d < 0) & (d > -anatomy.levator_thickness) & (p[2] < lev.centre[2])
                & (p[1] < anatomy.prostate.centre[1]), "muscle")
    for v in anatomy.vessels:
        solid(v, "vessel")
    for hip in anatomy.pelvis:
        bone(hip)
    bone([anatomy.sacrum])
    for joint, femur in zip(anatomy.cartilage, anatomy.femora):
        solid(joint, "cartilage")
        bone(femur)
    for vesicle in anatomy.seminal:
        solid(vesicle, "seminal_vesicle")

    rectum = anatomy.rectum
    sl = a.box(*rectum.bbox)
    if sl is not None:
        d, anterior, zeta = rectum.fields(a.view(sl))
        lumen = d < -anatomy.rectal_wall
        a.paint(sl, d < 0, "rectal_wall")
        a.paint(sl, lumen, "stool")
        g0, g1 = anatomy.gas_level
        a.paint(sl, lumen & (anterior > g0 - g1 * zeta), "gas")
        for bubble in anatomy.bubbles:   # gas pockets inside the stool only
            hit = a.inside(bubble)
            if hit is not None:
                bsl, mask = hit
                a.paint(bsl, mask & (a.tissue[bsl] == _T["stool"]), "gas")

    hit = a.union_sdf([anatomy.bladder])
    if hit is not None:
        sl, d = hit
        a.paint(sl, d < 0, "bladder_wall")
        a.paint(sl, d < -anatomy.bladder_wall, "urine")
    prostate = anatomy.prostate
    hit = a.inside(prostate)
    if hit is not None:
        sl, inside = hit
        a.paint(sl, inside, "prostate_pz")
        central = anatomy.prostate_central.inside(a.view(sl))
        anterior = a.view(sl)[1] - prostate.centre[1] > 0.35 * prostate.radii[1]
        a.paint(sl, inside & (central | anterior), "prostate_tz")
    return a.tissue


def _organ_labels(tissue: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for name, organ in _ORGAN_OF_TISSUE.items():
        lut[_T[name]] = LABELS[organ]
    return lut[tissue]


# --------------------------------------------------------------------------------------------------
# Intensities

def _sample_contrast(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject tissue look-up tables (index = tissue id) and noise/bias parameters."""
    table = np.array([_CONTRAST[name] for name in TISSUES], np.float32)
    ct_mean, mr_mean = table[:, 0].copy(), table[:, 3].copy()
    for name, i in TISSUES.items():
        if name in _SOFT:
            ct_mean[i] += rng.normal(0.0, 2.5)
    ct_mean[_T["fat"]] += rng.normal(0.0, 8.0)
    ct_mean[_T["marrow"]] += rng.normal(0.0, 30.0)
    ct_mean[_T["cortex"]] = rng.uniform(1000, 1400)
    ct_mean[_T["stool"]] += rng.normal(0.0, 15.0)
    mr_mean *= np.clip(1 + rng.normal(0.0, 0.05, len(mr_mean)), 0.88, 1.12).astype(np.float32)
    mr_mean *= np.float32(rng.uniform(0.8, 1.25))   # scanner gain: MR units are arbitrary
    return {
        "ct_mean": ct_mean, "ct_low": table[:, 1], "ct_high": table[:, 2],
        "mr_mean": mr_mean, "mr_low": table[:, 4], "mr_high": table[:, 5],
        "ct_noise": np.float32(rng.uniform(10, 18)),
        "mr_noise": np.float32(rng.uniform(0.012, 0.025) * mr_mean[_T["urine"]]),
        "bias": rng.uniform([-0.15, -0.15, -0.15, 0.0, 0.05, -0.2], [0.15, 0.15, 0.15, 0.2, 0.3, 0.0]),
    }


def _smooth_field(rng: np.random.Generator, grid: Grid, cell_mm: float) -> np.ndarray:
    """Unit-variance smooth random field of correlation length ~cell_mm: white noise on a lattice of
    that spacing, Gaussian-smoothed, upsampled trilinearly onto the grid (cheap)."""
    extent = (np.array(grid.shape) - 1) * np.array(grid.spacing)
    shape = tuple(max(2, int(np.ceil(e / cell_mm)) + 1) for e in extent)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0, mode="wrap")
    coarse /= coarse.std()
    return _upsample(coarse, grid.shape)


def _fine_field(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Unit-variance fine mottle: white noise on the grid, Gaussian-smoothed by sigma_mm."""
    field = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32),
                                    sigma_mm / np.array(grid.spacing))
    field /= field.std()
    return field


def _bias_field(grid: Grid, coef: np.ndarray) -> np.ndarray:
    """exp(linear + quadratic) in normalised coordinates: a smooth coil-like shading, separable."""
    factors = []
    for axis, (ax, half) in enumerate(zip(_axes(grid), _FOV_MM / 2)):
        t = ax / half
        shape = [1, 1, 1]
        shape[axis] = -1
        factors.append(np.exp(coef[axis] * t + coef[3 + axis] * t * t).astype(np.float32).reshape(shape))
    return factors[0] * factors[1] * factors[2]


def _psf_voxels(grid: Grid, scanner_mm: tuple) -> np.ndarray:
    """Gaussian blur (voxels): the scanner's point spread combined with a half-voxel anti-aliasing
    blur of resampling onto the grid (point-sampled edges would otherwise alias)."""
    spacing = np.array(grid.spacing)
    return np.sqrt(np.square(scanner_mm) + np.square(0.5 * spacing)) / spacing


def _ct_image(rng, grid, tissue, c) -> np.ndarray:
    low, high = _smooth_field(rng, grid, 8.0), _fine_field(rng, grid, 1.2)
    image = c["ct_mean"][tissue] + c["ct_low"][tissue] * low + c["ct_high"][tissue] * high
    image = ndimage.gaussian_filter(image, _psf_voxels(grid, (0.6, 0.6, 0.9)))
    image += c["ct_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(image, -1024, 3071).astype(np.float32)


def _mr_image(rng, grid, tissue, c) -> np.ndarray:
    low, high = _smooth_field(rng, grid, 8.0), _fine_field(rng, grid, 1.2)
    signal = c["mr_mean"][tissue] * np.maximum(1 + c["mr_low"][tissue] * low + c["mr_high"][tissue] * high, 0)
    signal = ndimage.gaussian_filter(signal, _psf_voxels(grid, (0.7, 0.7, 1.1)))
    signal *= _bias_field(grid, c["bias"])
    real = signal + c["mr_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = c["mr_noise"] * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)   # Rician magnitude


# --------------------------------------------------------------------------------------------------
# Public entry points

@dataclass(frozen=True)
class Phantom:
    """A synthesised subject with its internals (for checks and figures)."""
    arrays: dict[str, np.ndarray]   # what synthesize_subject returns
    ct_tissue: np.ndarray           # uint8 TISSUES on the CT
    mr_tissue: np.ndarray           # uint8 TISSUES on the MR
    w: np.ndarray                   # (X, Y, Z, 3) voxels: MR voxel y shows CT anatomy at y + w(y)
    deformation: Deformation        # the analytic map behind w and gt_field (local part rescaled)
    grid: Grid


def synthesize_phantom(seed: int, grid: Grid) -> Phantom:
    """Synthesise one subject on ``grid``, keeping the tissue maps and the deformation."""
    rng = np.random.default_rng(seed)
    anatomy = _sample_anatomy(rng)
    deformation = _sample_deformation(rng, anatomy)
    contrast = _sample_contrast(rng)
    deformation, phi, w, u = _fields(deformation, grid)

    ct_tissue = _render(anatomy, _Canvas(grid, tuple(np.ix_(*_axes(grid))), np.zeros(3)))
    margin = np.abs(phi - grid_points(grid)).max(axis=1)
    mr_tissue = _render(anatomy, _Canvas(grid, tuple(phi.reshape(3, *grid.shape)), margin))
    del phi

    ct = _ct_image(rng, grid, ct_tissue, contrast)
    mr = _mr_image(rng, grid, mr_tissue, contrast)
    arrays = {
        "ct": ct, "mr": mr,
        "ct_paired": warp_array(ct, w, order=1),
        "mr_paired": warp_array(mr, u, order=1),
        "ct_labels": _organ_labels(ct_tissue), "mr_labels": _organ_labels(mr_tissue),
        "gt_field": u,
    }
    return Phantom(arrays, ct_tissue, mr_tissue, w, deformation, grid)


def synthesize_subject(seed: int, grid: Grid) -> dict[str, np.ndarray]:
    """One paired CT/MR subject on ``grid``: ct, mr, ct_paired, mr_paired (float32), ct_labels,
    mr_labels (uint8, LABELS) and gt_field ((X, Y, Z, 3) float32 voxels, warp(mr, gt_field) ==
    mr_paired). Deterministic in ``seed``."""
    return synthesize_phantom(seed, grid).arrays


def difficulty_report(subject: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per organ: Dice of ct_labels vs mr_labels before registration and after warping mr_labels by
    gt_field (nearest). "images": NCC of the two intra-modality pairs the paper's loss compares,
    at the ground-truth field (the MR one is 1 by construction, mr_paired being warp(mr, gt_field))."""
    u = subject["gt_field"]
    ct_labels, mr_labels = subject["ct_labels"], subject["mr_labels"]
    mr_labels_warped = warp_array(mr_labels, u, order=0)
    report = {organ: {"dice_before": dice(ct_labels == v, mr_labels == v),
                      "dice_gt": dice(ct_labels == v, mr_labels_warped == v)}
              for organ, v in LABELS.items()}
    report["images"] = {
        "ncc_ct_vs_ct_paired_warped": ncc(subject["ct"], warp_array(subject["ct_paired"], u)),
        "ncc_mr_paired_vs_mr_warped": ncc(subject["mr_paired"], warp_array(subject["mr"], u)),
    }
    return report
