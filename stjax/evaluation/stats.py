"""Rates with 95% Wilson score intervals.

Benchmarks here are small (100-1319 items) and rates sit near 0 or 1 (refusal rates of
aligned models, harmful scores after PACT), where the normal interval collapses to a
width of zero or leaves [0, 1]; the Wilson interval does neither.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval; (0, 1) when there are no trials."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return min(p, max(0.0, center - half)), max(p, min(1.0, center + half))  # p inside despite rounding


def rate(hits: int, n: int) -> dict:
    """The aggregate stored in report.json: counts, the rate and its 95% interval."""
    low, high = wilson_interval(hits, n)
    return {"hits": hits, "n": n, "rate": hits / n if n else None, "ci95": [low, high]}
