"""Implicit shapes of the anatomy, each with a bounding box and an approximate signed distance in mm.

``bbox`` is (lo, hi) in mm; ``sdf(p)`` is negative inside, for a tuple p of three broadcastable coordinate arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
