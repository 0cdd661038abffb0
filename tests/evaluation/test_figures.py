"""Tests for intermod.evaluation.figures: the figures draw with organ labels and without (label-free data)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from intermod.evaluation.figures import registration_figure, subject_figure  # noqa: E402


@pytest.mark.parametrize("labels", [{"bladder": 1, "rectum": 2}, {}])
def test_figures_name_the_organs_there_are_and_draw_without_any(labels):
    rng = np.random.default_rng(0)
    ct, mr = rng.random((20, 18, 12)), rng.random((20, 18, 12))
    label_map = np.zeros((20, 18, 12), np.uint8)
    label_map[5:10, 5:10, 4:8], label_map[11:16, 6:12, 4:8] = 1, 2
    figure = subject_figure(ct, mr, label_map, label_map, labels, title="s")
    legends = figure.legends
    assert [t.get_text() for legend in legends for t in legend.get_texts()] == list(labels)
    field = np.zeros((3, 20, 18, 12))
    figure = registration_figure(ct, mr, mr, label_map, label_map, label_map, field, labels, title="s")
    assert len(figure.axes) > 1
