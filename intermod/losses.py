"""Training losses of Cao et al. 2018 (Sec. 2.1): intra-modality dissimilarity (Eqs. 2-3), the
smoothness regulariser (Eq. 4), and a Parzen-window mutual information for the inter-modality
baseline; the MIND-SSC descriptor, which makes CT and MR comparable without paired data (test-time
refinement). Every loss returns one value per sample, shape (B,); :class:`RegistrationLoss` averages
over the batch.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intermod.spatial import crop_center, warp

__all__ = ["ncc", "local_ncc", "laplacian", "smoothness", "parzen_mutual_information", "mind_ssc",
           "RegistrationLoss"]


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim < 2:
        raise ValueError(f"{name}: expected (B, C, ...) images, got shape {tuple(a.shape)}")


def _check_field(phi: Tensor, name: str) -> None:
    if phi.ndim != 5 or min(phi.shape[2:]) < 3:
        raise ValueError(f"{name}: expected a (B, C, X, Y, Z) field with every spatial size >= 3, got {tuple(phi.shape)}")


def ncc(fixed: Tensor, moving: Tensor, eps: float = 1e-8) -> Tensor:
    """Global normalised cross-correlation per sample (Eq. 3), shape (B,).

    The inner product of the mean-centred, L2-normalised images over the whole patch (all channels
    and voxels); in [-1, 1], and 0 when either image is constant.
    """
    _check_pair(fixed, moving, "ncc")
    f = fixed.flatten(1)
    m = moving.flatten(1)
    f = f - f.mean(1, keepdim=True)
    m = m - m.mean(1, keepdim=True)
    return (f * m).sum(1) / (f.norm(dim=1) * m.norm(dim=1) + eps)


def local_ncc(fixed: Tensor, moving: Tensor, window: int = 9, eps: float = 1e-5) -> Tensor:
    """Windowed squared NCC per sample, shape (B,), in [0, 1] (VoxelMorph's form).

    For each ``window``^3 cube, cc = cov^2 / (var_f * var_m + eps) with window sums as in
    VoxelMorph; averaged over all windows and channels. Only windows that fit inside the image are
    used (no zero padding, which would bias the border). Squaring makes it blind to the sign of the
    correlation, as in VoxelMorph.
    """
    _check_pair(fixed, moving, "local_ncc")
    if fixed.ndim != 5:
        raise ValueError(f"local_ncc: expected (B, C, X, Y, Z) images, got shape {tuple(fixed.shape)}")
    if window < 1 or window > min(fixed.shape[2:]):
        raise ValueError(f"local_ncc: window {window} must be in [1, {min(fixed.shape[2:])}] for shape {tuple(fixed.shape)}")
    n = window**3

    def mean(x: Tensor) -> Tensor:
        # The window^3 box mean as three 1D passes: the same value for 3 * window instead of window^3 reads.
        for kernel in ((window, 1, 1), (1, window, 1), (1, 1, window)):
            x = F.avg_pool3d(x, kernel, stride=1)
        return x

    mu_f, mu_m = mean(fixed), mean(moving)
    # Window sums of centred products (VoxelMorph's cross, I_var, J_var); clamp guards round-off.
    cross = n * (mean(fixed * moving) - mu_f * mu_m)
    var_f = n * (mean(fixed * fixed) - mu_f * mu_f).clamp_min(0)
    var_m = n * (mean(moving * moving) - mu_m * mu_m).clamp_min(0)
    cc = cross * cross / (var_f * var_m + eps)
    return cc.flatten(1).mean(1)


def laplacian(phi: Tensor) -> Tensor:
    """Discrete 7-point Laplacian of each component on the interior: (B, C, X-2, Y-2, Z-2)."""
    _check_field(phi, "laplacian")
    centre = phi[..., 1:-1, 1:-1, 1:-1]
    return (
        phi[..., 2:, 1:-1, 1:-1] + phi[..., :-2, 1:-1, 1:-1]
        + phi[..., 1:-1, 2:, 1:-1] + phi[..., 1:-1, :-2, 1:-1]
        + phi[..., 1:-1, 1:-1, 2:] + phi[..., 1:-1, 1:-1, :-2]
        - 6 * centre
    )


def smoothness(phi: Tensor, lambda_laplacian: float = 0.5, lambda_l2: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Regulariser L_R(phi) = lambda_1 ||lap phi||^2 + lambda_2 ||phi||^2 (Eq. 4), per sample.

    Returns ``(total, laplacian_term, l2_term)``, each (B,) and already weighted, total = sum of the
    two. The squared norms are *means* over voxels and components, not sums: the paper's
    lambda_1 = 0.5, lambda_2 = 0.01 then balance against 1 - NCC, which is O(1) whatever the
    patch size.
    """
    _check_field(phi, "smoothness")
    lap_term = lambda_laplacian * laplacian(phi).pow(2).flatten(1).mean(1)
    l2_term = lambda_l2 * phi.pow(2).flatten(1).mean(1)
    return lap_term + l2_term, lap_term, l2_term


def parzen_mutual_information(a: Tensor, b: Tensor, bins: int = 32, sigma: float | None = None,
                              eps: float = 1e-10) -> Tensor:
    """Differentiable Parzen-window mutual information (nats) per sample, shape (B,).

    Intensities are clamped to [0, 1]; bin centres are ``linspace(0, 1, bins)``; each voxel spreads
    unit mass over the bins with a Gaussian kernel of width ``sigma`` (default half the bin
    spacing, as MONAI's GlobalMutualInformationLoss). MI <= log(bins).
    """
    _check_pair(a, b, "parzen_mutual_information")
    if bins < 2:
        raise ValueError(f"parzen_mutual_information: bins must be >= 2, got {bins}")
    sigma = 0.5 / (bins - 1) if sigma is None else sigma
    if sigma <= 0:
        raise ValueError(f"parzen_mutual_information: sigma must be > 0, got {sigma}")
    centres = torch.linspace(0, 1, bins, device=a.device, dtype=a.dtype)

    def soft_bins(x: Tensor) -> Tensor:  # (B, N, bins), rows sum to 1
        x = x.flatten(1).clamp(0, 1).unsqueeze(-1)
        w = torch.exp(-((x - centres) ** 2) / (2 * sigma**2))
        return w / w.sum(-1, keepdim=True)

    wa, wb = soft_bins(a), soft_bins(b)
    p_ab = wa.transpose(1, 2) @ wb / wa.shape[1]  # (B, bins, bins)
    p_a = p_ab.sum(2, keepdim=True)
    p_b = p_ab.sum(1, keepdim=True)
    return (p_ab * (torch.log(p_ab + eps) - torch.log(p_a * p_b + eps))).sum((1, 2))


def mind_ssc(image: Tensor, radius: int = 1, dilation: int = 2) -> Tensor:
    """MIND-SSC (Heinrich et al., MICCAI 2013): a 12-channel descriptor of local self-similarity per voxel.

    Channel k compares the patches (``2 * radius + 1``)^3 around two of the six neighbours at distance
    ``dilation`` that are not opposite (12 such pairs): exp(-D_k / V), D_k their mean squared difference
    and V the mean of D over the channels (clamped to [1e-3, 1e3] times its image mean, so flat regions
    do not divide by ~0), after subtracting the smallest D. Unchanged by I -> a I + b for any a != 0,
    so an inverted contrast gives the same descriptor: what lets a CT and an MR be compared with a
    squared difference. Input (B, 1, X, Y, Z), output (B, 12, X, Y, Z) in (0, 1]; borders replicate.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"mind_ssc: expected a (B, 1, X, Y, Z) image, got shape {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"mind_ssc: need radius >= 0 and dilation >= 1, got {radius} and {dilation}")
    size = image.shape[2:]
    padded = F.pad(image, (dilation,) * 6, mode="replicate")

    def shifted(offset: tuple[int, int, int]) -> Tensor:
        starts = [dilation + o for o in offset]
        return padded[..., starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]

    six = [tuple(dilation * sign * (axis == d) for d in range(3)) for axis in range(3) for sign in (1, -1)]
    pairs = [(a, b) for a, b in itertools.combinations(six, 2) if any(x + y for x, y in zip(a, b))]
    squared = torch.cat([(shifted(a) - shifted(b)).pow(2) for a, b in pairs], 1)
    if radius:
        squared = F.avg_pool3d(F.pad(squared, (radius,) * 6, mode="replicate"), 2 * radius + 1, stride=1)
    distance = squared - squared.min(1, keepdim=True).values
    variance = distance.mean(1, keepdim=True)
    scale = variance.mean((2, 3, 4), keepdim=True)
    variance = torch.maximum(torch.minimum(variance, 1e3 * scale), 1e-3 * scale)
    # A floor, not an added eps, keeps the descriptor scale-free; it only acts on a constant image (D = 0).
    return torch.exp(-distance / variance.clamp_min(torch.finfo(variance.dtype).tiny))


class RegistrationLoss(nn.Module):
    """Training loss L = data term + L_R(phi) (Eqs. 1-4).

    ``method``:
      - "dual": 1/2 L_D(I_CT, T(phi, I_CT^p)) + 1/2 L_D(I_MR^p, T(phi, I_MR))  (Eq. 2, proposed)
      - "ct" / "mr": one of those terms with weight 1 (Sec. 3.1, single-modality ablations)
      - "mi": 1 - MI(I_CT, T(phi, I_MR)) / log(bins), the inter-modality comparator; no paired data
    ``similarity``: L_D = 1 - ncc (global, Eq. 3) or 1 - local_ncc ("lncc", window ``ncc_window``).

    ``forward(phi, ct, mr, ct_paired=None, mr_paired=None, velocity=None)`` takes the full input patches
    (e.g. 68^3) and a field covering their central region (e.g. 28^3); fixed images are centre
    cropped to the field's size. Returns the batch mean and a dict of detached batch-mean
    components: the dissimilarities "sim_ct", "sim_mr", "sim_mi" (unweighted L_D values, present
    only for the method's terms), "laplacian" and "l2" (weighted Eq. 4 terms) and "total".

    ``velocity`` (the diffeomorphic option, ``model.integration_steps`` > 0): the stationary velocity
    field that ``phi`` was integrated from (:func:`intermod.spatial.integrate_velocity`), of ``phi``'s
    shape. The data terms warp by ``phi``; Eq. 4 regularises the velocity, as VoxelMorph does: it is what
    the network predicts and the flow's smoothness follows from its smoothness, the regulariser's
    gradient then skips the compositions, and for small fields velocity and displacement agree to first
    order, so the paper's lambdas keep their scale.
    """

    METHODS = ("dual", "ct", "mr", "mi")
    SIMILARITIES = ("ncc", "lncc")

    def __init__(
        self,
        method: str = "dual",
        similarity: str = "ncc",
        lambda_laplacian: float = 0.5,
        lambda_l2: float = 0.01,
        ncc_window: int = 9,
        mi_bins: int = 32,
    ) -> None:
        super().__init__()
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        if similarity not in self.SIMILARITIES:
            raise ValueError(f"similarity must be one of {self.SIMILARITIES}, got {similarity!r}")
        self.method = method
        self.similarity = similarity
        self.lambda_laplacian = lambda_laplacian
        self.lambda_l2 = lambda_l2
        self.ncc_window = ncc_window
        self.mi_bins = mi_bins

    def dissimilarity(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Intra-modality L_D = 1 - NCC (Eq. 3), per sample."""
        if self.similarity == "ncc":
            return 1 - ncc(fixed, moving)
        return 1 - local_ncc(fixed, moving, window=self.ncc_window)

    def forward(
        self,
        phi: Tensor,
        ct: Tensor,
        mr: Tensor,
        ct_paired: Tensor | None = None,
        mr_paired: Tensor | None = None,
        velocity: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        needed = {"dual": ("ct_paired", "mr_paired"), "ct": ("ct_paired",), "mr": ("mr_paired",), "mi": ()}
        given = {"ct_paired": ct_paired, "mr_paired": mr_paired}
        missing = [name for name in needed[self.method] if given[name] is None]
        if missing:
            raise ValueError(f"method {self.method!r} needs paired data; missing: {', '.join(missing)}")
        for name, image in {"mr": mr, **given}.items():
            if image is not None and image.shape != ct.shape:
                raise ValueError(f"{name} shape {tuple(image.shape)} differs from ct shape {tuple(ct.shape)}")
        if velocity is not None and velocity.shape != phi.shape:
            raise ValueError(f"velocity shape {tuple(velocity.shape)} differs from phi shape {tuple(phi.shape)}")
        size = phi.shape[2:]
        terms: dict[str, Tensor] = {}
        if self.method in ("dual", "ct"):
            terms["sim_ct"] = self.dissimilarity(crop_center(ct, size), warp(ct_paired, phi))
        if self.method in ("dual", "mr"):
            terms["sim_mr"] = self.dissimilarity(crop_center(mr_paired, size), warp(mr, phi))
        if self.method == "mi":
            mi = parzen_mutual_information(crop_center(ct, size), warp(mr, phi), bins=self.mi_bins)
            terms["sim_mi"] = 1 - mi / math.log(self.mi_bins)
        weight = 0.5 if self.method == "dual" else 1.0
        reg, lap, l2 = smoothness(phi if velocity is None else velocity, self.lambda_laplacian, self.lambda_l2)
        total = (weight * sum(terms.values()) + reg).mean()
        components = {**terms, "laplacian": lap, "l2": l2}
        components = {k: v.detach().mean() for k, v in components.items()}
        components["total"] = total.detach()
        return total, components
