"""Datasets: their layout on disk, the synthetic phantom, splits, and the patch loaders that feed training."""
