"""How a model's probability is written for a reader: never as certainty.

A softmax output is strictly between 0 and 1, and a second-opinion tool must not print "100%" for a
0.996 that rounding lifted, nor "0%" for a class it merely finds unlikely: a reader takes those as
certain. Every place a reader sees a probability (the probability panel, the worklist column, the
report) writes it through :func:`percent`; machine outputs (JSON, CSV) keep the numbers themselves.
"""

from __future__ import annotations

import math


def percent(p: float, decimals: int = 1) -> str:
    """``p`` in [0, 1] as a percentage with ``decimals`` places; where rounding would show 100% or 0%
    (and for a saturated 1.0 or 0.0, which float rounding produces, not the model's certainty) the
    bound it lies beyond instead: ">99.9%", "<0.1%" (">99%", "<1%" with no decimals)."""
    if not math.isfinite(p):
        return "n/a"
    step = 10.0 ** -decimals
    shown = round(p * 100.0, decimals)
    if shown >= 100.0:
        return f">{100.0 - step:.{decimals}f}%"
    if shown <= 0.0:
        return f"<{step:.{decimals}f}%"
    return f"{p * 100.0:.{decimals}f}%"
