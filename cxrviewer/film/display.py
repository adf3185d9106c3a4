"""Modality values -> 8-bit display: VOI windows (DICOM PS3.3 C.11.2.1.2), VOI LUTs, presets, inversion.

This is the single place the grey levels a reader sees are decided, and the model's preprocessing
starts from the same default rendering, so what the model saw is what the reader sees by default.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cxrviewer.film.types import Film, VoiLut, Window

PRESETS = ("default", "full", "lung", "bone")


def apply_window(pixels: np.ndarray, window: Window) -> np.ndarray:
    """Map modality values to uint8 through a VOI window (LINEAR, LINEAR_EXACT or SIGMOID)."""
    c = float(window.center)
    w = max(float(window.width), 1.0)
    x = np.asarray(pixels, dtype=np.float32)
    fn = (window.function or "LINEAR").upper()
    # The same float32 operations in the same order as the formulas, but in place on one buffer:
    # a full-resolution film is 10-40 MB per temporary and render() is on the open-a-film hot path.
    if fn == "SIGMOID":
        y = np.subtract(x, c, dtype=np.float32)
        y *= -4.0
        y /= w
        np.clip(y, -80, 80, out=y)
        np.exp(y, out=y)
        y += 1.0
        np.divide(255.0, y, out=y)
    elif fn == "LINEAR_EXACT":
        y = np.subtract(x, c, dtype=np.float32)
        y /= w
        y += 0.5
        y *= 255.0
    else:  # LINEAR, and anything unknown (the standard's default)
        if w <= 1.0:
            return np.where(x > c - 0.5, 255, 0).astype(np.uint8)
        y = np.subtract(x, c - 0.5, dtype=np.float32)
        y /= w - 1.0
        y += 0.5
        y *= 255.0
    np.rint(y, out=y)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


def apply_voi_lut(pixels: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Map modality values through a VOI LUT; values outside the LUT take its first or last entry."""
    data = np.asarray(lut.data, dtype=np.float32)
    top = float((1 << int(lut.bits)) - 1) if lut.bits else float(max(data.max(), 1.0))
    # Scale the (at most 65536-entry) table once, then one gather per pixel; indices in float32 are
    # exact for every integer a DICOM LUT can address, so no float64 copy of the film is needed.
    lut8 = np.clip(np.rint(data * np.float32(255.0 / max(top, 1.0))), 0, 255).astype(np.uint8)
    idx = np.subtract(np.asarray(pixels, dtype=np.float32), np.float32(lut.first_mapped), dtype=np.float32)
    np.rint(idx, out=idx)
    np.clip(idx, 0, len(data) - 1, out=idx)
    return lut8[idx.astype(np.int32)]


def full_range_window(pixels: np.ndarray) -> Window:
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    return Window(center=(lo + hi + 1.0) / 2.0, width=max(hi - lo + 1.0, 2.0), label="Full range")


def _brightness_percentiles(film: Film, lo_pct: float, hi_pct: float) -> tuple:
    sample = film.pixels[:: max(1, film.pixels.shape[0] // 512), :: max(1, film.pixels.shape[1] // 512)]
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if film.monochrome1:  # brighter on screen means lower values
        lo, hi = np.percentile(sample, [100 - hi_pct, 100 - lo_pct])
    return float(lo), float(hi)


def preset_window(film: Film, preset: str) -> Optional[Window]:
    """A named window. ``default`` is the file's own (None means: use the file's VOI LUT).

    Radiographs have no Hounsfield scale, so ``lung`` and ``bone`` are set from the film's own histogram:
    lung spreads the darker (air-filled) half of the grey levels, bone the brighter half.
    """
    if preset == "default":
        return default_window(film)
    if preset == "full":
        return full_range_window(film.pixels)
    if preset == "lung":
        lo, hi = _brightness_percentiles(film, 1.0, 65.0)
    elif preset == "bone":
        lo, hi = _brightness_percentiles(film, 45.0, 99.7)
    else:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return Window(center=(lo + hi) / 2.0, width=max(hi - lo, 2.0), label=preset.capitalize())


def default_window(film: Film) -> Optional[Window]:
    """The file's first window; None when the file's VOI LUT should be used; else the full range."""
    if film.windows:
        return film.windows[0]
    if film.voi_lut is not None:
        return None
    if film.kind == "raster" and film.bits_stored <= 8:
        return Window(center=128.0, width=256.0, label="Full range")  # exactly the identity on 8-bit images
    return full_range_window(film.pixels)


def render(film: Film, window: Optional[Window] = None, invert: Optional[bool] = None, use_default: bool = True) -> np.ndarray:
    """The uint8 grey image a reader sees: window (or the file's VOI LUT), then MONOCHROME1 inversion.

    ``window=None`` with ``use_default`` means the file's default display. ``invert`` toggles on top of
    the photometric interpretation (None: just the file's own).
    """
    if window is None and use_default:
        window = default_window(film)
    if window is None and film.voi_lut is not None:
        out = apply_voi_lut(film.pixels, film.voi_lut)
    else:
        out = apply_window(film.pixels, window or full_range_window(film.pixels))
    flip = film.monochrome1
    if invert:
        flip = not flip
    if flip:
        np.subtract(255, out, out=out)
    return out
