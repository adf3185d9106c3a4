"""Shared fixtures for the checkpoint / inference / model store / predict CLI tests.

``tiny_test_cnn`` is a few-layer CXRModel with a real spatial attention map, registered here only, so the
many refusal and plumbing tests run in milliseconds; the round-trip and tolerance tests use the real
``mobilenet_lung``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cxrviewer.checkpoint import METADATA_KEY, card_defaults, save_checkpoint
from cxrviewer.models import CXRModel, create_model, list_models
from cxrviewer.models import registry as _registry

TINY = "tiny_test_cnn"
CLASSES3 = ["Normal", "Pneumonia-Bacterial", "Pneumonia-Viral"]


class TinyAttentionCNN(CXRModel):
    attention_description = "test-only sigmoid spatial gate at 1/4 resolution"

    def __init__(self, num_classes: int, pretrained=None, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.gate = nn.Conv2d(2 * width, 1, 1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward_features(self, x):
        f = self.stem(x)
        a = torch.sigmoid(self.gate(f))
        self._record_attention(a[:, 0])
        return (f * a).mean(dim=(2, 3))

    def forward_head(self, pooled):
        return self.head(pooled)

    def gradcam_layer(self):
        return self.stem[-1]


def ensure_tiny_registered() -> None:
    list_models()  # load the zoo first so it cannot collide later
    if TINY not in _registry._REGISTRY:
        _registry.register_model(TINY, "test-only tiny attention CNN")(
            lambda num_classes, pretrained=None, width=8: TinyAttentionCNN(num_classes, pretrained, width)
        )


def make_model(arch: str = TINY, classes=CLASSES3, seed: int = 0, sharpen: float = 0.0, **arch_args):
    """A model with deterministic weights. ``sharpen`` scales the classifier so probabilities are far
    from uniform (random-init heads give ~1/C everywhere, which would hide any fast/exact difference)."""
    ensure_tiny_registered()
    torch.manual_seed(seed)
    m = create_model(arch, len(classes), pretrained=None, **arch_args).eval()
    if sharpen:
        lin = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
        with torch.no_grad():
            lin.weight.normal_(0, sharpen / max(1.0, lin.in_features ** 0.5))
            lin.bias.zero_()
    # BN running statistics that are not the identity, as in a trained network (exercises BN folding)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m


SHARED_MOBILENET = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_imagenet_dequantized.safetensors"


def calibrate(model, spec=None, n: int = 8, logit_scale: float = 3.0, seed: int = 0):
    """Make a randomly initialised network behave like a trained one for numerical tests.

    A deep random network's pooled features barely depend on its input (activations collapse), so its
    probabilities are the same for every film and any fast/exact difference would be invisible. Here
    the batch-norm statistics are re-estimated on film-like inputs (so activations are normalised, as
    after training) and the classifier is set so logits spread with standard deviation ``logit_scale``
    across those inputs, giving confident, input-dependent predictions."""
    from cxrviewer.preprocess import PreprocessSpec, preprocess_gray

    spec = spec or PreprocessSpec()
    x = np.stack([preprocess_gray(chest_like(seed=1000 + seed + i), spec)[0] for i in range(n)])
    x = torch.from_numpy(x)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
    with torch.no_grad():
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        seen = []  # the last linear layer's input (multi-layer heads: not the pooled features)
        hook = lin.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        model(x)
        hook.remove()
        f = seen[-1]
        mu = f.mean(0)
        g = torch.Generator().manual_seed(seed)
        # random directions in feature space, scaled as a whole (not per feature: dividing by each
        # feature's spread would give near-constant features huge weights, which no trained head has)
        w = torch.randn(lin.out_features, lin.in_features, generator=g)
        spread = ((f - mu) @ w.T).std(0) + 1e-6
        lin.weight.copy_(w * (logit_scale / spread)[:, None])
        lin.bias.copy_(-(lin.weight @ mu))
    return model


def realistic_mobilenet_lung(classes=("Normal", "Lung Opacity", "Viral Pneumonia"), seed: int = 0):
    """mobilenet_lung with ImageNet features when the offline weights are on this machine, else random
    ones; calibrated either way (see :func:`calibrate`)."""
    torch.manual_seed(seed)
    pre = str(SHARED_MOBILENET) if SHARED_MOBILENET.exists() else None
    m = create_model("mobilenet_lung", len(classes), pretrained=pre)
    return calibrate(m, seed=seed)


def make_checkpoint(path, arch: str = TINY, classes=CLASSES3, seed: int = 0, sharpen: float = 0.0,
                    arch_args=None, **card_kw) -> Path:
    m = make_model(arch, classes, seed, sharpen, **(arch_args or {}))
    card_kw.setdefault("name", Path(path).stem)
    return save_checkpoint(path, m, card_defaults(m, classes, **card_kw))


def write_raw(path, tensors: dict, card=None, extra_meta=None) -> Path:
    """A safetensors file written directly (bypassing save_checkpoint's checks), to forge bad files."""
    from safetensors.torch import save_file

    meta = dict(extra_meta or {})
    if card is not None:
        meta[METADATA_KEY] = card if isinstance(card, str) else json.dumps(card)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta or None)
    return Path(path)


def chest_like(h: int = 320, w: int = 288, seed: int = 0) -> np.ndarray:
    """A synthetic uint8 film with chest-radiograph structure (dark lungs, bright mediastinum and
    ribs, noise), so tests see realistic input statistics rather than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * 0.5, w * 0.5
    img = 200 - 120 * (np.exp(-(((xx - cx * 0.6) / (w * 0.16)) ** 2 + ((yy - cy) / (h * 0.3)) ** 2))
                       + np.exp(-(((xx - cx * 1.4) / (w * 0.16)) ** 2 + ((yy - cy) / (h * 0.3)) ** 2)))
    img += 25 * np.sin(yy / (h / 14.0) + rng.uniform(0, 6.28)) * (np.abs(xx - cx) > w * 0.1)
    img += rng.normal(0, 8, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png(path, seed: int = 0, shape=(320, 288)) -> Path:
    Image.fromarray(chest_like(*shape, seed=seed)).save(path)
    return Path(path)
