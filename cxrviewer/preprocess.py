"""The one preprocessing function the viewer, the explainers and the trainer all use.

Film -> default display rendering (uint8, what the reader sees) -> geometric fit to the model's square
input (``squash``: resize without keeping aspect, as the Kermany films were published; ``letterbox``: keep
aspect and pad; ``center_crop``: keep aspect, scale the short side and crop) -> grey repeated to 3
channels -> normalised. :class:`Geometry` records the fit so model-space maps (attention, Grad-CAM,
LIME) can be put back on the full-resolution film exactly.

Bump ``PREPROCESS_VERSION`` whenever the output for a given film changes; checkpoints record it and the
loader refuses a model trained with a different version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

PREPROCESS_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "letterbox", "center_crop")


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int = 224
    resize: str = "squash"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    version: int = PREPROCESS_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            input_size=int(d.get("input_size", 224)),
            resize=str(d.get("resize", "squash")),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            version=int(d.get("version", PREPROCESS_VERSION)),
        )


@dataclass(frozen=True)
class Geometry:
    """How a film of ``film_shape`` (H, W) was placed in the ``size``×``size`` model input.

    Film pixel (row r, col c) lands at model coordinates ``(r * scale_y + off_y, c * scale_x + off_x)``
    (continuous coordinates, pixel edges at integers).
    """

    film_shape: tuple
    size: int
    scale_y: float
    scale_x: float
    off_y: float = 0.0
    off_x: float = 0.0

    def film_to_model(self, row: float, col: float) -> tuple:
        return row * self.scale_y + self.off_y, col * self.scale_x + self.off_x

    def model_to_film(self, y: float, x: float) -> tuple:
        return (y - self.off_y) / self.scale_y, (x - self.off_x) / self.scale_x

    def to_film(self, heatmap: np.ndarray, out_shape: tuple | None = None) -> np.ndarray:
        """Resample a model-space map (h, w covering the whole model input) onto the film grid.

        Every film pixel centre is mapped through the exact inverse of the fit and the map is sampled
        bilinearly there (separable, so it is cheap at full resolution). ``out_shape`` may ask for a
        smaller grid with the same field of view (for a quick preview).
        """
        hm = np.asarray(heatmap, dtype=np.float32)
        h, w = hm.shape
        H, W = self.film_shape
        oh, ow = out_shape or (H, W)
        rows = (np.arange(oh, dtype=np.float64) + 0.5) * (H / oh)
        cols = (np.arange(ow, dtype=np.float64) + 0.5) * (W / ow)
        my = (rows * self.scale_y + self.off_y) * (h / self.size) - 0.5
        mx = (cols * self.scale_x + self.off_x) * (w / self.size) - 0.5
        y0, wy = _linear_taps(my, h)
        x0, wx = _linear_taps(mx, w)
        tmp = hm[y0, :] * (1 - wy)[:, None] + hm[np.minimum(y0 + 1, h - 1), :] * wy[:, None]
        return (tmp[:, x0] * (1 - wx)[None, :] + tmp[:, np.minimum(x0 + 1, w - 1)] * wx[None, :]).astype(np.float32)


def preview_shape(shape: tuple, longest: int) -> tuple:
    """(h, w) of a grid with the field of view of ``shape`` (H, W, ...) and at most ``longest`` pixels a
    side (``shape`` itself when it is no larger): the ``out_shape`` of a preview, or a downscale."""
    h, w = shape[:2]
    s = min(1.0, longest / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _linear_taps(coord: np.ndarray, n: int):
    c = np.clip(coord, 0, n - 1)
    i0 = np.floor(c).astype(np.intp)
    i0 = np.minimum(i0, n - 1)
    return i0, (c - i0).astype(np.float32)


def fit_to_square(gray: np.ndarray, size: int, mode: str = "squash") -> tuple:
    """Resize a uint8 grey image into ``size``×``size`` (bilinear, antialiased); returns (image, Geometry)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}")
    H, W = gray.shape
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    if mode == "squash":
        out = img.resize((size, size), Image.BILINEAR) if (H, W) != (size, size) else img
        geo = Geometry((H, W), size, size / H, size / W)
        return np.asarray(out, dtype=np.uint8), geo
    if mode == "letterbox":
        s = size / max(H, W)
        nh, nw = max(1, round(H * s)), max(1, round(W * s))
        small = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
        canvas = np.zeros((size, size), dtype=np.uint8)
        oy, ox = (size - nh) // 2, (size - nw) // 2
        canvas[oy : oy + nh, ox : ox + nw] = small
        return canvas, Geometry((H, W), size, nh / H, nw / W, float(oy), float(ox))
    # center_crop: short side to size, crop the centre
    s = size / min(H, W)
    nh, nw = max(size, round(H * s)), max(size, round(W * s))
    big = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
    oy, ox = (nh - size) // 2, (nw - size) // 2
    return big[oy : oy + size, ox : ox + size].copy(), Geometry((H, W), size, nh / H, nw / W, float(-oy), float(-ox))


def normalise(gray_square: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (S, S) -> float32 (3, S, S): grey repeated to three channels, then (x/255 - mean)/std.
    A batch (B, S, S) gives (B, 3, S, S), the same arithmetic (LIME normalises hundreds at once)."""
    x = gray_square.astype(np.float32) * (1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return (x[..., None, :, :] - mean) / std


def preprocess_gray(gray: np.ndarray, spec: PreprocessSpec) -> tuple:
    """A rendered uint8 grey film -> (float32 array (3, S, S), Geometry). The shared pipeline's core."""
    square, geo = fit_to_square(gray, spec.input_size, spec.resize)
    return normalise(square, spec), geo


def preprocess_film(film, spec: PreprocessSpec) -> tuple:
    """A :class:`~cxrviewer.film.Film` -> (float32 array (3, S, S), Geometry), from its default display."""
    from cxrviewer.film.display import render

    return preprocess_gray(render(film), spec)
