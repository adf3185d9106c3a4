"""What the explainers need from a predictor, read the same way whatever form it comes in.

The explainers accept a :class:`cxrviewer.inference.Predictor`, a bare :class:`CXRModel` (tests, the
trainer), or for LIME a plain batch function. This module is the one place that knows how to get the
preprocessing spec, class names, model and batch function out of each, so the explainers stay small.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from cxrviewer.preprocess import PreprocessSpec


def spec_of(predictor) -> PreprocessSpec:
    """The Predictor's spec; a bare model is taken to use the default preprocessing."""
    spec = getattr(predictor, "spec", None)
    return spec if isinstance(spec, PreprocessSpec) else PreprocessSpec()


def card_of(predictor) -> dict:
    """The Predictor's model card ({} for a bare model or a function)."""
    card = getattr(predictor, "card", None)
    return card if isinstance(card, dict) else {}


def temperature_of(predictor) -> float:
    """The card's calibration temperature (1 for a bare model): the probabilities a reader is shown."""
    return float(card_of(predictor).get("temperature", 1.0))


def model_of(predictor):
    model = getattr(predictor, "model", None)
    return model if model is not None else predictor


def lime_defaults_of(predictor) -> dict:
    """The superpixels the model asks LIME to use: ``segmentation`` from the architecture
    (``CXRModel.lime_segmentation``), then ``segmentation`` and ``n_segments`` from the checkpoint's card
    (``lime``, checked by :func:`cxrviewer.checkpoint.validate_card`); {} when it asks nothing."""
    out = {}
    method = getattr(model_of(predictor), "lime_segmentation", None)
    if isinstance(method, str):
        out["segmentation"] = method
    out.update({k: v for k, v in (card_of(predictor).get("lime") or {}).items() if k in ("segmentation", "n_segments")})
    return out


def class_names_of(predictor, num_classes: Optional[int] = None) -> list:
    names = getattr(predictor, "classes", None)
    if names:
        return [str(n) for n in names]
    n = num_classes or int(getattr(model_of(predictor), "num_classes", 0) or 0)
    return [f"class {i}" for i in range(n)]


def model_name_of(predictor) -> str:
    card = card_of(predictor)
    name = card.get("name") or getattr(predictor, "name", "") or getattr(model_of(predictor), "arch_name", "")
    return str(name or type(model_of(predictor)).__name__)


def model_version_of(predictor) -> str:
    return str(card_of(predictor).get("version", "") or "")


def device_of(predictor):
    import torch

    dev = getattr(predictor, "device", None)
    if dev is not None:
        return torch.device(str(dev))
    model = model_of(predictor)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _to_numpy(probs) -> np.ndarray:
    if hasattr(probs, "detach"):
        probs = probs.detach().float().cpu().numpy()
    return np.asarray(probs, dtype=np.float32)


def batch_fn_of(predictor, fast: bool = True, batch_size: Optional[int] = None) -> Callable:
    """A function (N, 3, S, S) float32 normalised numpy -> (N, C) probabilities numpy.

    The Predictor's fast path (channels-last, bf16 where the CPU supports it, big batches) is preferred:
    LIME only ranks superpixels, so the small bf16 error is far below the sampling noise of the regression.
    """
    if callable(predictor) and not hasattr(predictor, "parameters") and not hasattr(predictor, "predict_film"):
        return lambda x: _to_numpy(predictor(x))
    name = "fast_predict_batch" if fast else "predict_batch"
    method = getattr(predictor, name, None) or getattr(predictor, "predict_batch", None)
    if method is not None:
        import inspect

        try:
            takes_size = "batch_size" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            takes_size = False
        if takes_size and batch_size:  # the Predictor's own chunking would cut our batch into 16s
            return lambda x: _to_numpy(method(x, batch_size=int(batch_size)))
        return lambda x: _to_numpy(method(x))
    return _model_batch_fn(model_of(predictor), device_of(predictor))


def verify_fast_of(predictor, x: np.ndarray, fast: bool = True, with_probs: bool = False):
    """Have a Predictor check its fast path's reduced precision on this film (``Predictor.verify_fast``)
    -> (the largest probability difference or None, the exact path's probabilities of ``x`` where the
    check computed them: always in bf16, in fp32 only ``with_probs``, else None). Anything but a Predictor,
    or ``fast`` False, gives (None, None). Ask for them only when they are used: in fp32 they cost an exact
    forward of their own."""
    verify = getattr(predictor, "verify_fast", None) if fast else None
    if not callable(verify):
        return None, None
    return verify(x, with_probs=with_probs)


def _model_batch_fn(model, device) -> Callable:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            return _to_numpy(torch.softmax(model(t).float(), dim=1))

    return run


def lock_of(predictor):
    """The Predictor's lock (its network records the last attention on itself), or a no-op context."""
    import contextlib

    lock = getattr(predictor, "lock", None)
    return lock if lock is not None else contextlib.nullcontext()
