"""Training curves as a PNG, for people who would rather look than read metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from stjax.plotting import new_figure
from stjax.training.metrics_log import read_metrics


def plot_training_curves(runs: dict[str, str | Path], path: str | Path, keys: tuple[str, ...] = ("ce", "kl")) -> bool:
    """Per-step `keys` of each run (label -> run dir), one panel per key that any run logged.
    False (nothing written) when no run has metrics."""
    metrics = {label: read_metrics(run) for label, run in runs.items() if (Path(run) / "metrics.jsonl").is_file()}
    panels = [k for k in keys if any(k in m for rows in metrics.values() for m in rows)]
    if not panels:
        return False
    figure, _ = new_figure()
    figure.clear()
    for index, key in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        for color, (label, rows) in enumerate(metrics.items()):  # one colour per run in every panel
            points = [(m["step"], m[key]) for m in rows if key in m]
            if points:
                ax.plot(*zip(*points), label=label, color=f"C{color}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return True
