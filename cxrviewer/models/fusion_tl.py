"""Attention-based transfer-learning fusion (seed 004): ResNet-152 + DenseNet-121 + ResNet-18 features,
projected, concatenated, passed through a feature-selecting attention, then one linear classifier.

Structure: the three timm networks without classifiers give pooled features of 2048, 1024 and 512;
each is projected to 1024 by its own linear layer; the three are concatenated (3072) in that order; the
selector (``attention=``) re-weights them; one linear layer gives the class logits.

Selectors:
- ``"se"``: squeeze-and-excitation on the 3072-vector (FC 3072→192, ReLU, FC →3072, sigmoid, scale);
  the vector is its own squeeze (there is nothing spatial left to pool).
- ``"eca"``: efficient channel attention: a 1-D conv across the 3072 features, kernel
  k = |log2(3072)/2 + 1/2| = 6 → made odd → 7, sigmoid, scale.
- ``"mhsa"``: multi-head self-attention (8 heads, ``nn.MultiheadAttention``) over the three 1024-d
  tokens; the three outputs are flattened back to 3072. The paper classifies "the final output of
  self-attention", so there is no residual connection.

The model outputs logits. The paper trains with log-softmax + NLL loss, which is exactly cross-entropy
on logits, so the trainer's cross-entropy reproduces it and softmax gives the probabilities.

Attention map: none. All three selectors act on pooled feature vectors, after every spatial dimension
is gone, so there is no spatial attention to show; ``attention_map()`` returns None and the viewer
should use Grad-CAM. ``gradcam_layer()`` is ResNet-152's ``layer4`` (the largest of the three
contributions); ``gradcam_layers()`` lists the last spatial stage of all three extractors so an
explainer can combine them. ``selector_weights()`` returns the per-feature gates (SE/ECA: (B, 3072))
or the token-to-token attention (MHSA: (B, 3, 3)) of the last forward, for a model card or a bar chart.

``pretrained``: ``True`` (each extractor from the hub, or random with a warning offline), a file or a
state_dict holding all three (keys ``extractors.resnet152.*`` etc. or ``resnet152.*`` etc.), or a dict
``{"resnet152": ..., "densenet121": ..., "resnet18": ...}`` of per-extractor sources.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.blocks import ECABlock, SEBlock
from cxrviewer.models.pretrained import (
    LoadReport,
    PretrainedError,
    PretrainedWarning,
    attach_report,
    read_state_dict,
    timm_backbone,
)
from cxrviewer.models.registry import register_model

EXTRACTORS = (("resnet152", "layer4"), ("densenet121", "features.norm5"), ("resnet18", "layer4"))
SELECTORS = ("se", "eca", "mhsa")


class TokenSelfAttention(nn.Module):
    """Multi-head self-attention over the extractor tokens of a concatenated feature vector."""

    def __init__(self, n_tokens: int, dim: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_tokens, self.dim = n_tokens, dim
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.last_weights: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(x.shape[0], self.n_tokens, self.dim)
        out, w = self.mha(t, t, t, need_weights=True, average_attn_weights=True)
        self.last_weights = w.detach()
        return out.reshape(x.shape[0], self.n_tokens * self.dim)


def build_selector(kind: str, embed_dim: int = 1024, n_tokens: int = 3, se_reduction: int = 16,
                   heads: int = 8) -> nn.Module:
    """The feature selector on the concatenated (n_tokens × embed_dim) vector; see the module docstring."""
    width = embed_dim * n_tokens
    if kind == "se":
        return SEBlock(width, reduction=se_reduction)
    if kind == "eca":
        return ECABlock(width)
    if kind == "mhsa":
        return TokenSelfAttention(n_tokens, embed_dim, heads=heads)
    raise ValueError(f"fusion_tl attention must be one of {SELECTORS}, not {kind!r}")


def _split_sources(pretrained) -> dict:
    """Per-extractor sources from whatever the caller passed (see module docstring)."""
    names = [n for n, _ in EXTRACTORS]
    if pretrained is None or pretrained is False or pretrained is True:
        return {n: pretrained for n in names}
    if isinstance(pretrained, str) and pretrained == "imagenet-offline":
        return {n: pretrained for n in names}
    if isinstance(pretrained, Mapping) and set(pretrained) <= set(names):
        return {n: pretrained.get(n) for n in names}
    state = dict(pretrained) if isinstance(pretrained, Mapping) else read_state_dict(pretrained)
    out = {}
    for n in names:
        sub = {}
        for pre in (f"extractors.{n}.", f"{n}."):
            sub.update({k[len(pre):]: v for k, v in state.items() if k.startswith(pre)})
        out[n] = sub or None
    if not any(out.values()):
        raise PretrainedError(
            "fusion_tl: the weights hold no extractors.resnet152./densenet121./resnet18. keys; pass a dict "
            "{'resnet152': file, 'densenet121': file, 'resnet18': file} for separate backbone files"
        )
    for n, sub in out.items():
        if sub is None:
            warnings.warn(f"fusion_tl: no weights for {n} in the file; it starts from random initialisation",
                          PretrainedWarning, stacklevel=3)
    return out


class FusionTL(CXRModel):
    attention_description = ""  # no spatial attention: see the module docstring

    def __init__(self, num_classes: int = 2, pretrained=None, attention: str = "se", embed_dim: int = 1024,
                 se_reduction: int = 16, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if attention not in SELECTORS:
            raise ValueError(f"fusion_tl attention must be one of {SELECTORS}, not {attention!r}")
        self.selector_kind = attention
        sources = _split_sources(pretrained)
        self.extractors = nn.ModuleDict()
        self.proj = nn.ModuleDict()
        reports: dict = {}
        for name, _ in EXTRACTORS:
            net, rep = timm_backbone(name, sources[name], num_classes=0)
            self.extractors[name] = net
            self.proj[name] = nn.Linear(net.num_features, embed_dim)
            reports[name] = rep
        width = embed_dim * len(EXTRACTORS)
        self.selector = build_selector(attention, embed_dim, len(EXTRACTORS), se_reduction=se_reduction,
                                       heads=heads)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.num_features = width
        self.pretrained_reports = reports
        attach_report(self, _merge_reports(reports))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, _ in EXTRACTORS:
            net = self.extractors[name]
            parts.append(self.proj[name](net.forward_head(net.forward_features(x), pre_logits=True)))
        return self.selector(torch.cat(parts, dim=1))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def attention_map(self) -> Optional[torch.Tensor]:
        return None

    def gradcam_layer(self) -> nn.Module:
        return self.gradcam_layers()[0]

    def gradcam_layers(self) -> list:
        out = []
        for name, path in EXTRACTORS:
            m = self.extractors[name]
            for part in path.split("."):
                m = getattr(m, part)
            out.append(m)
        return out

    def selector_weights(self) -> Optional[torch.Tensor]:
        if isinstance(self.selector, TokenSelfAttention):
            return self.selector.last_weights
        return self.selector.last_scale


def _merge_reports(reports: dict) -> Optional[LoadReport]:
    real = {k: r for k, r in reports.items() if r is not None}
    if not real:
        return None
    merged = LoadReport(source="; ".join(f"{k}: {r.source}" for k, r in real.items()))
    merged.random_init = all(r.random_init for r in real.values())
    for k, r in real.items():
        merged.loaded += r.loaded
        merged.missing += [f"{k}.{m}" for m in r.missing]
        merged.unexpected += [f"{k}.{m}" for m in r.unexpected]
        merged.ignored += [f"{k}.{m}" for m in r.ignored]
        merged.note = "; ".join(f"{k}: {r.note}" for k, r in real.items() if r.note)
    return merged


@register_model(
    "fusion_tl",
    "Fusion-TL: ResNet-152 + DenseNet-121 + ResNet-18 features with an SE/ECA/MHSA selector (seed 004)",
    attention=True,
    paper="004",
)
def fusion_tl(num_classes: int = 2, pretrained=None, attention: str = "se") -> FusionTL:
    return FusionTL(num_classes, pretrained=pretrained, attention=attention)
