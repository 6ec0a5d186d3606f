"""Off-screen matplotlib figures (the Agg canvas: no display, no pyplot global state)."""

from __future__ import annotations

SIZE, DPI = (7.0, 5.0), 120


def new_figure(size: tuple[float, float] = SIZE):
    """A (figure, axes) pair drawn off-screen."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()
