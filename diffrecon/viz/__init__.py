"""Figures: complex fields as colour (``drawing``) and the one-page ``report.png`` of a
reconstruction (``report``). Only ``matplotlib.figure.Figure`` is used, no pyplot state."""

from diffrecon.viz.drawing import (
    MAX_SHOWN,
    complex_to_rgb,
    for_display,
    orthogonal_slices,
    save_image_grid,
)
from diffrecon.viz.report import save_report

__all__ = ["MAX_SHOWN", "complex_to_rgb", "for_display", "orthogonal_slices", "save_image_grid",
           "save_report"]
