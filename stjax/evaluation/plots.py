"""PNG plots comparing eval runs (matplotlib's Agg canvas: no display, no pyplot state).

Two views of the safety/utility trade-off: each run's harmful score against its task
accuracy, and the safety-token mass over the first response positions of harmful
prompts, where a reference (not fine-tuned) model is drawn dashed.
"""

from __future__ import annotations

from pathlib import Path

from stjax.evaluation.tables import METRIC_NAMES
from stjax.plotting import new_figure


def _axis_label(reports: list[dict], key: str) -> str:
    metrics = dict.fromkeys(f"{METRIC_NAMES[r['headline'][key]['metric']]} ({r['headline'][key]['benchmark']})"
                            for r in reports)
    return " / ".join(metrics)


def plot_harmful_vs_accuracy(reports: list[dict], path: str | Path) -> bool:
    """One labelled point per run with 95% intervals; False (nothing written) when no run
    has both a safety and a utility benchmark."""
    runs = [r for r in reports if {"harmful_score", "task_accuracy"} <= set(r["headline"])]
    if not runs:
        return False
    figure, ax = new_figure()
    for report in runs:
        acc, harm = report["headline"]["task_accuracy"], report["headline"]["harmful_score"]
        x, y = 100 * acc["rate"], 100 * harm["rate"]
        ax.errorbar(x, y, xerr=[[x - 100 * acc["ci95"][0]], [100 * acc["ci95"][1] - x]],
                    yerr=[[y - 100 * harm["ci95"][0]], [100 * harm["ci95"][1] - y]], fmt="o", capsize=3)
        right = x > 70  # labels of points near the right edge go to their left, inside the axes
        ax.annotate(report["run"]["label"], (x, y), textcoords="offset points", xytext=(-6 if right else 6, 6),
                    ha="right" if right else "left", fontsize=9)
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_xlabel(f"{_axis_label(runs, 'task_accuracy')}, %")
    ax.set_ylabel(f"{_axis_label(runs, 'harmful_score')}, %")
    ax.set_title("harmful score vs task accuracy (lower right is better)")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return True


def plot_safety_mass(reports: list[dict], path: str | Path) -> bool:
    """Mean safety-token mass per response position, one line per run that measured it."""
    runs = [r for r in reports if r.get("safety_mass")]
    if not runs:
        return False
    figure, ax = new_figure()
    for report in runs:
        mass = report["safety_mass"]
        points = [(i + 1, m) for i, m in enumerate(mass["mean"]) if m is not None]
        if not points:  # every response was empty
            continue
        reference = report["run"]["method"] is None
        ax.plot(*zip(*points), linestyle="--" if reference else "-", marker=".",
                label=f"{report['run']['label']}{' (reference)' if reference else ''}")
    ax.set_xlabel("response position")
    ax.set_ylabel("probability mass on safety tokens")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"safety-token mass on harmful prompts ({runs[0]['safety_mass']['benchmark']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return True
