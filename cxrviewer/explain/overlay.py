"""Drawing an explanation on the film the reader sees, at the film's full resolution.

The map is put on the film grid by ``Explanation.film_map`` (the one inverse of the preprocessing), so a
hot spot sits on the pixels that produced it whether the model squashed, letterboxed or cropped the
film. Heatmaps go through a matplotlib colour map with an opacity and a threshold below which nothing is
drawn (weak evidence would otherwise tint the whole film). LIME is drawn as in the DPN-SE paper: red
where a superpixel pushes towards the class, blue where it pushes against, stronger = more opaque, with
the strongest supporting superpixels outlined.

Everything here is numpy/matplotlib (no Qt) and returns uint8 RGB arrays, so the GUI can wrap the result
in a QImage and the CLI/report can save it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from cxrviewer.explain.types import outline_floor

COLORMAPS = ("jet", "inferno", "viridis", "magma", "plasma", "turbo", "hot")
POSITIVE_RGB = (230, 25, 25)
NEGATIVE_RGB = (30, 80, 235)


@dataclass(frozen=True)
class OverlaySettings:
    colormap: str = "jet"
    opacity: float = 0.45  # 0..1, at the strongest point of the map
    threshold: float = 0.2  # 0..1 of the map's peak; below it the film shows through untouched
    visible: bool = True
    outline_top: int = 5  # LIME: outline up to this many of the strongest supporting superpixels (0: none)
    outline_rgb: tuple = (255, 235, 0)
    outline_negative: bool = False  # LIME: also outline the strongest opposing superpixels (in cyan)

    def with_(self, **changes) -> "OverlaySettings":
        return replace(self, **changes)


def _cmap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; try one of {', '.join(COLORMAPS)}") from None


def heatmap_rgba(heat: np.ndarray, colormap: str = "jet", opacity: float = 0.45, threshold: float = 0.0) -> np.ndarray:
    """A [0, 1] map -> (H, W, 4) uint8 RGBA: colour from ``colormap``, alpha ``opacity`` above ``threshold``."""
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    lut = (_cmap(colormap)(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    idx = (h * 255.0 + 0.5).astype(np.uint8)
    rgba = np.empty(h.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = lut[idx]
    alpha = np.where(h >= max(threshold, 1e-6), float(np.clip(opacity, 0.0, 1.0)) * 255.0, 0.0)
    rgba[..., 3] = (alpha + 0.5).astype(np.uint8)
    return rgba


def lime_rgba(signed: np.ndarray, opacity: float = 0.45, threshold: float = 0.0) -> np.ndarray:
    """Signed LIME weights -> RGBA: red for, blue against; alpha grows with |weight| / max |weight|."""
    w = np.nan_to_num(np.asarray(signed, dtype=np.float32))
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    mag = np.abs(w) / peak if peak > 0 else np.zeros_like(w)
    rgba = np.zeros(w.shape + (4,), dtype=np.uint8)
    rgba[w > 0, :3] = POSITIVE_RGB
    rgba[w < 0, :3] = NEGATIVE_RGB
    alpha = float(np.clip(opacity, 0.0, 1.0)) * (0.25 + 0.75 * mag) * 255.0
    alpha[(mag < max(threshold, 1e-6))] = 0.0
    rgba[..., 3] = (alpha + 0.5).astype(np.uint8)
    return rgba


def as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2).astype(np.uint8)
    return img[..., :3].astype(np.uint8)


def composite(base: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Alpha-blend RGBA onto a grey or RGB uint8 image of the same height and width."""
    rgb = as_rgb(base)
    if rgb.shape[:2] != rgba.shape[:2]:
        raise ValueError(f"overlay {rgba.shape[:2]} does not match the film {rgb.shape[:2]}")
    a = rgba[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    out = rgb.astype(np.float32) * (1.0 - a) + rgba[..., :3].astype(np.float32) * a
    return (out + 0.5).astype(np.uint8)


def explanation_rgba(expl, settings: OverlaySettings = OverlaySettings(), out_shape: Optional[tuple] = None) -> np.ndarray:
    """The explanation alone, as RGBA on the film grid (``out_shape`` for a smaller preview grid), LIME's
    strongest superpixels outlined. The viewer draws this on screen and the exports composite it, so
    the reader sees what the PNG and the report will hold."""
    m = expl.film_map(out_shape)
    if not expl.signed:
        return heatmap_rgba(m, settings.colormap, settings.opacity, settings.threshold)
    rgba = lime_rgba(m, settings.opacity, settings.threshold)
    if expl.segments is not None and settings.outline_top > 0:
        floor = outline_floor(settings.threshold)
        sides = [(True, settings.outline_rgb)] + ([(False, (0, 230, 230))] if settings.outline_negative else [])
        for positive, colour in sides:
            chosen = expl.outlined_segments(settings.outline_top, positive, floor)
            rgba[expl.film_outline(chosen, m.shape)] = (*colour, 255)
    return rgba


def render_overlay(expl, film_image: np.ndarray, settings: OverlaySettings = OverlaySettings()) -> np.ndarray:
    """The rendered film (uint8 grey or RGB, full resolution or a preview of the same field of view)
    with the explanation on top, as uint8 RGB of the same size."""
    base = as_rgb(film_image)
    if not settings.visible:
        return base.copy()
    return composite(base, explanation_rgba(expl, settings, base.shape[:2]))


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8, gap_value: int = 0) -> np.ndarray:
    """film | film + heatmap, one RGB image (both halves the same size)."""
    a, b = as_rgb(left), as_rgb(right)
    if a.shape != b.shape:
        raise ValueError("side-by-side halves must have the same size")
    spacer = np.full((a.shape[0], max(0, gap), 3), gap_value, dtype=np.uint8)
    return np.concatenate([a, spacer, b], axis=1)


def colorbar_rgb(colormap: str, length: int = 256, thickness: int = 12) -> np.ndarray:
    """A horizontal colour bar for the legend next to the overlay."""
    lut = (_cmap(colormap)(np.linspace(0.0, 1.0, length))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(lut[None, :, :], thickness, axis=0)
