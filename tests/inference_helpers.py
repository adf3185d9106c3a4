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
from cxrviewer.testing import chest_like, spread_outputs  # noqa: F401  (chest_like: re-exported for tests)

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
    """Make a randomly initialised network behave like a trained one for numerical tests, on ``n``
    chest-like films (see :func:`cxrviewer.testing.spread_outputs`)."""
    from cxrviewer.preprocess import PreprocessSpec, preprocess_gray

    spec = spec or PreprocessSpec()
    x = np.stack([preprocess_gray(chest_like(seed=1000 + seed + i), spec)[0] for i in range(n)])
    return spread_outputs(model, torch.from_numpy(x), logit_scale, seed)


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


def write_png(path, seed: int = 0, shape=(320, 288)) -> Path:
    Image.fromarray(chest_like(*shape, seed=seed)).save(path)
    return Path(path)
