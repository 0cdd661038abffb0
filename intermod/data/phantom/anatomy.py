"""The analytic pelvis: its structures sampled per subject, painted into tissue maps at given positions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intermod.data.phantom.grid import Grid, _axes, _rotation
from intermod.data.phantom.shapes import _Body, _Capsule, _CupShell, _Ellipsoid, _Tube, _as_tuple, _mirror

LABELS: dict[str, int] = {"bladder": 1, "prostate": 2, "rectum": 3}
TISSUES: dict[str, int] = {
    "air": 0, "skin": 1, "fat": 2, "muscle": 3, "vessel": 4, "cortex": 5, "marrow": 6, "cartilage": 7,
    "seminal_vesicle": 8, "rectal_wall": 9, "stool": 10, "gas": 11, "prostate_tz": 12,
    "prostate_pz": 13, "bladder_wall": 14, "urine": 15,
}
_T = TISSUES
_ORGAN_OF_TISSUE = {"rectal_wall": "rectum", "stool": "rectum", "gas": "rectum", "prostate_tz": "prostate",
                    "prostate_pz": "prostate", "bladder_wall": "bladder", "urine": "bladder"}


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
