"""The result record every explainer returns, and the two exceptions the GUI has to tell apart.

An :class:`Explanation` keeps its map in *model space* (the 224×224 input the network saw) together with
the :class:`~cxrviewer.preprocess.Geometry` of that input, so that the one inverse mapping
(``Geometry.to_film``) puts it back on the full-resolution film. Keeping model space as the source of truth
means the same result can be redrawn at any display size, opacity or colour map without re-running the model.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

METHODS = ("lime", "gradcam", "attention")
#: A LIME superpixel is outlined only if its weight is at least this fraction of the largest in the map.
MATERIAL_FRACTION = 0.1


def top_indices(weights, k: int, positive: bool = True) -> list:
    """Indices of the ``k`` superpixels pushing hardest towards (``positive``) or against the class (only
    those with a weight of that sign)."""
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-w if positive else w, kind="stable")
    return [int(i) for i in order[:k] if (w[i] > 0 if positive else w[i] < 0)]


def outlined_indices(weights, k: int, positive: bool = True, floor: float = MATERIAL_FRACTION) -> list:
    """Of the ``k`` superpixels pushing hardest towards (``positive``) or against the class, those whose
    weight is at least ``floor`` (:data:`MATERIAL_FRACTION` unless the overlay hides more, see
    :func:`outline_floor`) of the largest weight of either sign.

    Why not simply the top ``k``: a network whose explanation sits in two superpixels leaves the other
    places of a top five to weights a hundredth as large, in an order no LIME run can pin down
    (cs_convnext, docs/benchmarks.md), and a class that nothing supports much, only opposes, has a "top
    five" of noise; outlining those would point the reader at regions the model did not use. The bench
    scores agreement on these sets (``bench_explain.jaccard_material``)."""
    w = np.abs(np.asarray(weights, dtype=np.float64))
    if w.size == 0:
        return []
    least = max(float(floor), 0.0) * float(w.max())
    return [i for i in top_indices(weights, k, positive) if w[i] >= least]


def outline_floor(threshold: float) -> float:
    """The outline floor for an overlay drawn with colour ``threshold`` (a fraction of the map's peak):
    never below :data:`MATERIAL_FRACTION`, and never below the threshold either, so a superpixel the
    overlay leaves uncoloured is not outlined as if it mattered."""
    return max(MATERIAL_FRACTION, float(threshold))


class Cancelled(Exception):
    """The caller's ``cancel()`` returned True; the explanation was abandoned part-way."""


class NoAttention(ValueError):
    """The model computes no spatial attention, so there is no map of its own to show."""

    def __init__(self, model_name: str = ""):
        who = f"{model_name}: " if model_name else ""
        super().__init__(f"{who}this model has no spatial attention; use Grad-CAM")


@dataclass
class Explanation:
    method: str  # "lime" | "gradcam" | "attention"
    class_index: int
    class_name: str
    model_map: np.ndarray  # (h, w) float32 over the whole model input; LIME: signed per-pixel weights
    geometry: object  # cxrviewer.preprocess.Geometry (None only for a bare tensor input)
    elapsed: float = 0.0  # seconds spent computing it
    settings: dict = field(default_factory=dict)
    segments: Optional[np.ndarray] = None  # LIME: (S, S) int superpixel labels 0..n-1
    segment_weights: Optional[np.ndarray] = None  # LIME: (n,) signed weight of each superpixel
    score: Optional[float] = None  # LIME: R² of the local linear model (how well it fits)
    probability: Optional[float] = None  # the model's probability for the class, when known
    model_name: str = ""
    film_key: str = ""  # which film it was computed on, so a late result for another film is ignored
    coarse: bool = False  # an early LIME estimate that a refined one will replace
    _film_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def signed(self) -> bool:
        """LIME maps carry a sign (for/against the class); attention and Grad-CAM are non-negative."""
        return self.method == "lime"

    def film_map(self, out_shape: Optional[tuple] = None) -> np.ndarray:
        """The map on the film grid (full resolution by default), computed once per shape.

        Resampling a 2000×2500 film costs tens of milliseconds; the GUI redraws on every slider move, so
        the result is kept. The lock makes it safe to call from a worker and the GUI thread at once.
        """
        if self.geometry is None:
            raise ValueError("this explanation has no film geometry (it was computed on a bare tensor)")
        shape = tuple(out_shape) if out_shape else tuple(self.geometry.film_shape)
        return self._kept(shape, lambda: self.geometry.to_film(self.model_map, out_shape=out_shape))

    def _kept(self, key, compute) -> np.ndarray:
        """``compute()``, made read-only and kept under ``key`` for the next redraw."""
        with self._lock:
            cached = self._film_cache.get(key)
            if cached is None:
                cached = compute()
                cached.setflags(write=False)
                self._film_cache[key] = cached
            return cached

    def drop_film_grids(self) -> None:
        """Forget the film-grid maps and outlines kept so far (they are recomputed on the next draw):
        the explanation stays small (model-space data only) while its film is not on screen."""
        with self._lock:
            self._film_cache.clear()

    def top_segments(self, k: int, positive: bool = True) -> list:
        """Indices of the ``k`` superpixels pushing hardest towards (``positive``) or against the class."""
        return [] if self.segment_weights is None else top_indices(self.segment_weights, k, positive)

    def outlined_segments(self, k: int, positive: bool = True, floor: float = MATERIAL_FRACTION) -> list:
        """The superpixels an overlay outlines, see :func:`outlined_indices`."""
        return [] if self.segment_weights is None else outlined_indices(self.segment_weights, k, positive, floor)

    def segment_mask(self, indices) -> np.ndarray:
        """Model-space float mask (1 inside the given superpixels), ready for ``Geometry.to_film``."""
        if self.segments is None:
            raise ValueError("only LIME explanations have superpixels")
        return np.isin(self.segments, list(indices)).astype(np.float32)

    def film_mask(self, indices, out_shape: Optional[tuple] = None) -> np.ndarray:
        """Boolean mask of the given superpixels on the film grid (through the one inverse mapping)."""
        return self.geometry.to_film(self.segment_mask(indices), out_shape=out_shape) >= 0.5

    def film_outline(self, indices, out_shape: Optional[tuple] = None) -> np.ndarray:
        """Boolean mask of the given superpixels' boundaries on the film grid, each superpixel mapped on
        its own so neighbours keep their shared edge, about 1/400 of the grid's size thick so the lines
        stay visible when a 2000-pixel film is shown shrunk. Kept per (superpixels, shape): the viewer
        redraws on every move of the opacity slider, and tracing again would make the slider lag."""
        from scipy.ndimage import binary_dilation
        from skimage.segmentation import find_boundaries

        indices = tuple(int(i) for i in indices)
        shape = tuple(out_shape) if out_shape else tuple(self.geometry.film_shape)

        def outline():
            labels = np.zeros(shape, dtype=np.int32)
            for rank, seg in enumerate(indices, start=1):
                labels[self.film_mask([seg], out_shape=shape)] = rank
            edges = find_boundaries(labels, mode="inner") & (labels > 0)
            thick = max(1, int(round(max(shape) / 400)))
            if thick > 1:
                edges = binary_dilation(edges, iterations=thick - 1) & (labels > 0)
            return edges

        return self._kept(("outline", indices, shape), outline)


def film_key(film) -> str:
    """A short stable identity for a film: its path, shape and a hash of a pixel subsample.

    The pixels take part so that two in-memory films with the same (or no) path do not share a cache
    entry, and a file rewritten in place gets a new key. The hash is of a sparse subsample so that keying
    a 4-megapixel film stays in the millisecond range; it is not a patient identifier.
    """
    pixels = np.asarray(getattr(film, "pixels", film))
    h = hashlib.blake2b(digest_size=10)
    h.update(str(getattr(film, "path", "")).encode("utf-8", "replace"))
    h.update(repr(pixels.shape).encode())
    h.update(repr(getattr(film, "monochrome1", False)).encode())
    step_r = max(1, pixels.shape[0] // 256)
    step_c = max(1, pixels.shape[1] // 256) if pixels.ndim > 1 else 1
    h.update(np.ascontiguousarray(pixels[::step_r, ::step_c]).tobytes())
    return h.hexdigest()
