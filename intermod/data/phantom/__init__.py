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
from intermod.data.phantom.anatomy import LABELS, TISSUES
from intermod.data.phantom.deformation import Deformation
from intermod.data.phantom.grid import GRIDS, Grid, grid_affine, grid_points
from intermod.data.phantom.subject import Phantom, difficulty_report, synthesize_phantom, synthesize_subject

__all__ = ["Grid", "GRIDS", "LABELS", "TISSUES", "Deformation", "Phantom", "synthesize_subject",
           "synthesize_phantom", "difficulty_report", "grid_points", "grid_affine"]
