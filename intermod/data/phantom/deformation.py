"""The MR -> CT deformation: sampled per subject, certified fold-free in closed form, inverted exactly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from intermod.data.phantom.grid import _FOV_MM, Grid, _rotation, _upsample, grid_points

if TYPE_CHECKING:
    from intermod.data.phantom.anatomy import _Anatomy

_LATTICE_MM = 2.0        # deformation lattice: Jacobian check and first inverse solve
_JACOBIAN_TARGET = 0.45  # max norm of the local Jacobian on the lattice
_LIPSCHITZ_CAP = 0.9     # cap on the certified sup of that norm where the local part is used
_CHUNK = 32768           # points per block when evaluating bumps, to stay in cache


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
