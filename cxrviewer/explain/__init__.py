"""Explanations: where did the model look. LIME superpixels, the model's own attention, Grad-CAM.

Qt-free and thread-safe to call from a worker: the GUI runs :func:`explain` in a worker thread with
``progress``/``cancel`` callbacks, keeps results in an :class:`ExplanationCache`, and draws them with
:func:`render_overlay` on the rendered film at full resolution.
"""

from __future__ import annotations

from typing import Callable, Optional

from cxrviewer.explain.cache import ExplanationCache, cache_key
from cxrviewer.explain.types import METHODS, Cancelled, Explanation, NoAttention, film_key


def __getattr__(name):  # heavy modules (torch, lime, matplotlib) load on first use
    lazy = {
        "LimeSettings": "cxrviewer.explain.lime_explainer",
        "explain_lime": "cxrviewer.explain.lime_explainer",
        "explain_gradcam": "cxrviewer.explain.gradcam",
        "gradcam_film": "cxrviewer.explain.gradcam",
        "explain_attention": "cxrviewer.explain.attention",
        "OverlaySettings": "cxrviewer.explain.overlay",
        "render_overlay": "cxrviewer.explain.overlay",
        "side_by_side": "cxrviewer.explain.overlay",
        "COLORMAPS": "cxrviewer.explain.overlay",
        "save_overlay_png": "cxrviewer.explain.report",
        "save_report": "cxrviewer.explain.report",
        "export_path": "cxrviewer.explain.report",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)


def explain(
    predictor,
    film,
    method: str,
    class_index: Optional[int] = None,
    settings=None,
    progress: Optional[Callable[[float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
    on_coarse: Optional[Callable[[Explanation], None]] = None,
    prediction=None,
    cache: Optional[ExplanationCache] = None,
) -> Explanation:
    """One entry point for the GUI worker and the CLI.

    ``method``: "lime" | "gradcam" | "attention". ``class_index`` None: the top class (of ``prediction``
    when given, so the map matches the bar the reader sees). ``settings``: LimeSettings for LIME.
    With ``cache``, a hit returns the stored object at once. Raises Cancelled, NoAttention.
    """
    from cxrviewer.explain import _predictor as P

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if class_index is None and prediction is not None:
        import numpy as np

        class_index = int(np.argmax(np.asarray(prediction.probs).ravel()))
    if method == "lime":
        from cxrviewer.explain.lime_explainer import LimeSettings

        settings = settings or LimeSettings()
    key = None
    if cache is not None and class_index is not None:
        key = cache_key(film_key(film), P.model_name_of(predictor), method, class_index, settings)
        hit = cache.get(key)
        if hit is not None:
            if progress is not None:
                progress(1.0)
            return hit
    if method == "lime":
        from cxrviewer.explain.lime_explainer import explain_lime

        result = explain_lime(predictor, film, class_index, settings, progress, cancel, on_coarse)
    elif method == "gradcam":
        from cxrviewer.explain.gradcam import gradcam_film

        result = gradcam_film(predictor, film, class_index)
    else:
        from cxrviewer.explain.attention import explain_attention

        result = explain_attention(predictor, film, class_index, prediction)
    if cancel is not None and cancel():
        raise Cancelled(f"{method} explanation cancelled")
    if progress is not None:
        progress(1.0)
    if cache is not None:
        cache.put(key or cache_key(result.film_key, P.model_name_of(predictor), method, result.class_index, settings),
                  result)
    return result


__all__ = [
    "METHODS", "Cancelled", "Explanation", "ExplanationCache", "NoAttention", "cache_key", "explain", "film_key",
    "LimeSettings", "explain_lime", "explain_gradcam", "gradcam_film", "explain_attention", "OverlaySettings",
    "render_overlay", "side_by_side", "COLORMAPS", "save_overlay_png", "save_report", "export_path",
]
