"""Grad-CAM (Selvaraju et al. 2017) on the layer each model declares, for every model in the zoo.

The map is ReLU(Σ_k α_k A_k) with α_k the spatially averaged gradient of the class logit with respect to
channel k of the declared layer's output A, normalised to [0, 1]. ``gradcam_layer()`` may return one
module or several (``fusion_tl`` runs three backbones side by side): each gives its own map, they are
brought to the finest grid and averaged, so every branch that fed the decision is shown.

Cost: the part of the network before the declared layer runs without autograd (the hook switches
recording on only from that layer onwards) and the backward pass stops at the layer, computing no
parameter gradients; a Grad-CAM is therefore little more than one forward pass, not the three a full
``loss.backward()`` costs.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from cxrviewer.explain import _predictor as P
from cxrviewer.explain.types import Explanation


def _layers_of(model, layer) -> list:
    chosen = layer if layer is not None else model.gradcam_layer()
    if isinstance(chosen, (list, tuple)):
        return list(chosen)
    return [chosen]


def _as_nchw(t):
    """Activations as (B, C, h, w). Token outputs (B, N, C) with a square N (or N-1: a class token) are
    folded back into a grid; anything else cannot be shown as a map."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        b, n, c = t.shape
        for drop in (0, 1):
            side = int(round((n - drop) ** 0.5))
            if side * side == n - drop:
                return t[:, drop:, :].transpose(1, 2).reshape(b, c, side, side)
    raise ValueError(f"Grad-CAM needs a spatial layer; the declared layer gives shape {tuple(t.shape)}")


def gradcam_maps(model, x, class_index: Optional[int] = None, layer=None) -> tuple:
    """(cam (h, w) float32 in [0, 1], class index, probabilities (C,)) for one input image.

    ``x``: (3, S, S) or (1, 3, S, S), torch or numpy, already normalised (the shared preprocessing).
    The probabilities are calibrated with a Predictor's temperature, as the reader is shown them (a bare
    softmax printed 96.4% on a report whose bars read 90.8%).
    """
    import torch
    import torch.nn.functional as F

    from cxrviewer.inference import softmax64

    temperature = P.temperature_of(model)
    model = P.model_of(model)
    device = P.device_of(model)
    if not torch.is_tensor(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if x.dim() == 3:
        x = x[None]
    x = x.to(device=device, dtype=torch.float32)
    layers = _layers_of(model, layer)
    acts: list = []
    prev_grad = torch.is_grad_enabled()

    def hook(_module, _inp, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        torch.set_grad_enabled(True)  # record from here on only
        if out.requires_grad:  # downstream of another hooked layer: keep the graph through it intact
            acts.append(out)
            return None
        leaf = out.detach().requires_grad_(True)
        acts.append(leaf)
        return leaf

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False):
            torch.set_grad_enabled(False)
            logits = model(x)
            if not acts:
                raise RuntimeError("the Grad-CAM layer was not used by the forward pass")
            if class_index is None:
                class_index = int(torch.argmax(logits[0]).item())
            score = logits[0, int(class_index)]
            if not score.requires_grad:
                raise RuntimeError("the class score does not depend on the Grad-CAM layer")
            grads = torch.autograd.grad(score, acts, allow_unused=True)
    finally:
        torch.set_grad_enabled(prev_grad)
        for h in handles:
            h.remove()
        if was_training:
            model.train()

    cams = []
    for a, g in zip(acts, grads):
        if g is None:
            continue
        a4, g4 = _as_nchw(a.detach().float()), _as_nchw(g.float())
        alpha = g4.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * a4).sum(dim=1))[0]
        peak = cam.max()
        cams.append(cam / peak if peak > 0 else cam)
    if not cams:
        raise RuntimeError("no Grad-CAM layer received a gradient from the class score")
    h = max(c.shape[0] for c in cams)
    w = max(c.shape[1] for c in cams)
    resized = [c if c.shape == (h, w) else F.interpolate(c[None, None], size=(h, w), mode="bilinear",
                                                          align_corners=False)[0, 0] for c in cams]
    cam = torch.stack(resized).mean(0)
    peak = cam.max()
    cam = cam / peak if peak > 0 else cam
    probs = softmax64(logits.detach().float()[0].cpu().numpy(), temperature)
    return cam.cpu().numpy().astype(np.float32), int(class_index), probs


def explain_gradcam(model, x, class_index: Optional[int] = None, layer=None, *, geometry=None,
                    class_names: Optional[list] = None, film_key: str = "") -> Explanation:
    """Grad-CAM of ``class_index`` (None: the top class) for a preprocessed input ``x``.

    ``model`` is a CXRModel or a Predictor; ``geometry`` (from the preprocessing) lets the result be put
    on the film with ``film_map()``.
    """
    t0 = time.perf_counter()
    with P.lock_of(model):  # the Predictor's network is shared with the prediction worker
        cam, idx, probs = gradcam_maps(model, x, class_index, layer)
    names = class_names or P.class_names_of(model, len(probs))
    return Explanation(
        method="gradcam",
        class_index=idx,
        class_name=names[idx] if idx < len(names) else f"class {idx}",
        model_map=cam,
        geometry=geometry,
        elapsed=time.perf_counter() - t0,
        settings={"layer": "custom" if layer is not None else "declared"},
        probability=float(probs[idx]),
        model_name=P.model_name_of(model),
        film_key=film_key,
    )


def gradcam_film(predictor, film, class_index: Optional[int] = None, layer=None) -> Explanation:
    """Grad-CAM for a Film (or rendered grey image), through the shared preprocessing."""
    from cxrviewer.explain.types import film_key as key_of
    from cxrviewer.preprocess import preprocess_film, preprocess_gray

    spec = P.spec_of(predictor)
    if hasattr(film, "pixels"):
        x, geo = preprocess_film(film, spec)
    else:
        x, geo = preprocess_gray(np.asarray(film, dtype=np.uint8), spec)
    t0 = time.perf_counter()
    result = explain_gradcam(predictor, x, class_index, layer, geometry=geo, film_key=key_of(film))
    result.elapsed = time.perf_counter() - t0
    return result
