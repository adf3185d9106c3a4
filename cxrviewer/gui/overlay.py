"""Heatmap -> coloured RGBA overlay, Qt-free.

The explanation helper may supply its own overlay code; this is the viewer's fallback so attention maps
can be shown as soon as a prediction carries one. Colour maps are small piecewise-linear tables rather
than matplotlib so nothing heavy is imported on the GUI path.
"""

from __future__ import annotations

import numpy as np

_STOPS = {
    "jet": [(0.0, (0, 0, 128)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.625, (255, 255, 0)),
            (0.875, (255, 0, 0)), (1.0, (128, 0, 0))],
    "inferno": [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
                (1.0, (252, 255, 164))],
    "viridis": [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
                (1.0, (253, 231, 37))],
    "hot": [(0.0, (10, 0, 0)), (0.375, (255, 0, 0)), (0.75, (255, 255, 0)), (1.0, (255, 255, 255))],
    # LIME's signed maps: blue against, red for (seed 002)
    "diverging": [(0.0, (40, 90, 255)), (0.5, (255, 255, 255)), (1.0, (255, 40, 40))],
}


def colormap_lut(name: str) -> np.ndarray:
    stops = _STOPS.get(name, _STOPS["jet"])
    xs = np.array([s[0] for s in stops])
    cols = np.array([s[1] for s in stops], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, cols[:, k]) for k in range(3)], axis=1).astype(np.uint8)


def normalise_map(heat: np.ndarray) -> np.ndarray:
    """Scale a non-negative map to 0..1 by its own range (maps from different models are not comparable)."""
    h = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    lo, hi = float(h.min()), float(h.max())
    if hi - lo < 1e-12:
        return np.zeros_like(h)
    return (h - lo) / (hi - lo)


def colorize(heat01: np.ndarray, colormap: str = "jet", opacity: float = 0.45, threshold: float = 0.0,
             signed: bool = False) -> np.ndarray:
    """(H, W) map in 0..1 (or -1..1 when ``signed``) -> (H, W, 4) uint8 RGBA, premultiplication left to Qt.

    Alpha grows with the map's value so cold regions leave the film readable; values under ``threshold``
    are fully transparent.
    """
    h = np.asarray(heat01, dtype=np.float32)
    if signed:
        lut = colormap_lut("diverging")
        idx = np.clip(np.rint((h + 1.0) * 127.5), 0, 255).astype(np.uint8)
        strength = np.abs(h)
    else:
        lut = colormap_lut(colormap)
        idx = np.clip(np.rint(h * 255.0), 0, 255).astype(np.uint8)
        strength = h
    rgba = np.empty(h.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = lut[idx]
    alpha = np.clip(0.25 + 0.75 * strength, 0.0, 1.0) * float(opacity) * 255.0
    alpha[strength < threshold] = 0.0
    rgba[..., 3] = np.clip(np.rint(alpha), 0, 255).astype(np.uint8)
    return rgba
