"""The model's own spatial attention, from the very forward pass that produced the displayed prediction.

Nothing is recomputed: the map is the one the attention block used when it scored this film, so what the
reader sees is what the network weighted, not a post-hoc estimate. It is class-agnostic (the attention
is computed before the classifier); ``class_index`` only labels the result. Models without spatial
attention raise :class:`NoAttention`, whose message points the reader to Grad-CAM.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from cxrviewer.explain import _predictor as P
from cxrviewer.explain.types import Explanation, NoAttention, film_key


def _field(prediction, name: str):
    """A field of a Prediction, or of the dict :func:`_predict` makes for a bare model (None if absent)."""
    return prediction.get(name) if isinstance(prediction, dict) else getattr(prediction, name, None)


def _to_map(amap) -> Optional[np.ndarray]:
    if amap is None:
        return None
    if hasattr(amap, "detach"):
        amap = amap.detach().float().cpu().numpy()
    a = np.asarray(amap, dtype=np.float32)
    while a.ndim > 2:
        a = a[0]
    if a.ndim != 2:
        return None
    a = np.maximum(a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def explain_attention(predictor, film, class_index: Optional[int] = None, prediction=None) -> Explanation:
    """The attention map behind ``prediction`` (computed now with ``predict_film`` when not given).

    Pass the Prediction the GUI already shows so the map comes from that same forward pass. Works with a
    Predictor (``predict_film``) and, for tests and scripts, with a bare CXRModel.
    """
    t0 = time.perf_counter()
    model = P.model_of(predictor)
    name = P.model_name_of(predictor)
    if not getattr(model, "has_attention", True) and prediction is None:
        raise NoAttention(name)
    ran_now = prediction is None
    if ran_now:
        prediction = _predict(predictor, film)
    amap = _field(prediction, "attention")
    if amap is None and ran_now and hasattr(model, "attention_map"):
        # Only straight after our own forward: later passes (LIME batches) overwrite the model's record.
        amap = model.attention_map()
    amap = _to_map(amap)
    if amap is None:
        raise NoAttention(name)
    probs = _field(prediction, "probs")
    probs = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs, dtype=np.float64).ravel()
    if class_index is None:
        class_index = int(np.argmax(probs))
    names = _field(prediction, "classes") or P.class_names_of(predictor, len(probs))
    return Explanation(
        method="attention",
        class_index=int(class_index),
        class_name=str(names[class_index]) if class_index < len(names) else f"class {class_index}",
        model_map=amap,
        geometry=_field(prediction, "geometry"),
        elapsed=time.perf_counter() - t0,
        settings={"description": getattr(model, "attention_description", "")},
        probability=float(probs[class_index]),
        model_name=name,
        film_key=film_key(film),
    )


def _predict(predictor, film):
    """A Prediction-like dict when there is no Predictor (bare model): same preprocessing, one forward."""
    if hasattr(predictor, "predict_film"):
        return predictor.predict_film(film)
    import torch

    from cxrviewer.preprocess import preprocess_film, preprocess_gray

    spec = P.spec_of(predictor)
    x, geo = preprocess_film(film, spec) if hasattr(film, "pixels") else preprocess_gray(np.asarray(film), spec)
    model = P.model_of(predictor)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None].to(P.device_of(model)))
        amap = model.attention_map()
    return {"probs": torch.softmax(logits.float(), 1)[0].cpu().numpy(), "geometry": geo,
            "attention": None if amap is None else amap[0].cpu().numpy()}
