"""Pictures a person wants to see: images with label contours, checkerboards, Jacobian maps."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files and dashboards, never to a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from intermod.metrics import jacobian_determinant  # noqa: E402

ORGAN_COLOURS = ("#ff7f0e", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    # Transposed so that the first remaining axis runs left-right on screen.
    return np.take(volume, index, axis=axis).T


def _centre(labels: np.ndarray) -> list[int]:
    """The centre of mass of the labels (mid-volume if there are none), so slices cut through the organs."""
    coords = np.argwhere(labels > 0)
    return (coords.mean(0) if len(coords) else np.array(labels.shape) / 2).astype(int).tolist()


def _contours(ax, labels2d: np.ndarray, labels: dict[str, int], style: str = "-") -> None:
    for colour, value in zip(ORGAN_COLOURS, labels.values()):
        mask = labels2d == value
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.0, linestyles=style, origin="lower")


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """Alternate squares of two 2D images (each scaled to [0, 1]) to judge alignment at edges."""
    def scale(x):
        low, high = np.percentile(x, [1, 99])
        return np.clip((x - low) / max(high - low, 1e-6), 0, 1)
    rows, cols = np.indices(a.shape)
    size = max(1, min(a.shape) // squares)
    return np.where(((rows // size) + (cols // size)) % 2 == 0, scale(a), scale(b))


def subject_figure(ct: np.ndarray, mr: np.ndarray, ct_labels: np.ndarray, mr_labels: np.ndarray,
                   labels: dict[str, int], title: str = "") -> plt.Figure:
    """CT and MR in three planes through the organs, each with its own label contours."""
    centre = _centre(ct_labels)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    for col, (plane, axis) in enumerate(PLANES.items()):
        for row, (name, image, lab, window) in enumerate((("CT", ct, ct_labels, (-250, 350)),
                                                          ("MR", mr, mr_labels, tuple(np.percentile(mr, [1, 99.5]))))):
            ax = axes[row, col]
            ax.imshow(_slice(image, axis, centre[axis]), cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
            _contours(ax, _slice(lab, axis, centre[axis]), labels)
            ax.set_title(f"{name} {plane}")
            ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=n) for c, n in zip(ORGAN_COLOURS, labels)]
    if handles:  # a label-free dataset has no organs to name
        fig.legend(handles=handles, loc="lower center", ncol=len(handles))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig


def registration_figure(ct: np.ndarray, mr: np.ndarray, mr_warped: np.ndarray, ct_labels: np.ndarray,
                        mr_labels: np.ndarray, warped_labels: np.ndarray, field: np.ndarray,
                        labels: dict[str, int], title: str = "") -> plt.Figure:
    """Axial slice through the organs: CT with MR contours before and after (dashed: CT's own),
    a CT/MR checkerboard after, and the Jacobian determinant of the field."""
    axis = PLANES["axial"]
    index = _centre(ct_labels)[axis]
    ct2d = _slice(ct, axis, index)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, moving_labels, name in ((axes[0], mr_labels, "before"), (axes[1], warped_labels, "after")):
        ax.imshow(ct2d, cmap="gray", origin="lower")
        _contours(ax, _slice(ct_labels, axis, index), labels, style="--")
        _contours(ax, _slice(moving_labels, axis, index), labels)
        ax.set_title(f"CT + MR contours {name}")
    axes[2].imshow(checkerboard(ct2d, _slice(mr_warped, axis, index)), cmap="gray", origin="lower")
    axes[2].set_title("checkerboard CT / registered MR")
    jac = _slice(jacobian_determinant(field), axis, index)
    shown = axes[3].imshow(jac, cmap="RdBu_r", vmin=0.5, vmax=1.5, origin="lower")
    fig.colorbar(shown, ax=axes[3], fraction=0.046)
    axes[3].set_title(f"Jacobian det (min {jac.min():.2f})")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save as PNG through a temporary name, then close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def log_registration_figure(batch: dict, out: dict, labels: dict[str, int], out_dir: str, stage: str,
                            loggers=(), epoch: int | None = None, step: int | None = None) -> Path:
    """Save the registration figure of one whole-volume batch (size 1) and send it to W&B loggers."""
    def numpy(t):
        return t[0].squeeze(0).float().cpu().numpy()
    subject = batch["subject_id"][0]
    when = f", epoch {epoch}" if epoch is not None else ""
    fig = registration_figure(numpy(batch["ct"]), numpy(batch["mr"]), numpy(out["mr_warped"]),
                              numpy(batch["ct_labels"]), numpy(batch["mr_labels"]), numpy(out["mr_labels_warped"]),
                              out["field"][0].float().cpu().numpy(), labels, title=f"{stage} {subject}{when}")
    name = f"{stage}_{subject}" + (f"_epoch{epoch:03d}" if epoch is not None else "")
    path = save_figure(fig, Path(out_dir) / f"{name}.png")
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=f"{stage}/registration", images=[str(path)], caption=[subject], step=step)
    return path
