"""MobileNet-Lung (seed 003): MobileNetV2 (width 1.0) with one SE block after the 32-channel stem.

Built on torchvision's ``mobilenet_v2`` rather than timm's ``mobilenetv2_100`` because the one ImageNet
backbone available offline is a torchvision state_dict: the trunk keeps torchvision's names exactly
(``features.*``), so that file loads with no missing key. The SE block lives beside the trunk
(``stem_se``), not inside it, for the same reason.

Choices where the paper is silent:
- SE reduction 16 (SENet's default, the reference the paper cites): 32 -> 2 -> 32. ``se_reduction``
  changes it.
- Head: torchvision's own classifier shape (dropout 0.2, then one linear layer), with the task's classes.
- Attention map: SE is a channel gate with no spatial map of its own. What the viewer shows is the
  energy of the SE-reweighted stem activation: Σ_c |SE(x)_c| at 112×112 (stride 2), i.e. where the
  channels that SE amplified respond. It is a low-level map (edges, ribs, contrast), not a lesion
  detector; Grad-CAM on the last feature block (``features[18]``, 7×7) is the class-specific view.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.blocks import SEBlock
from cxrviewer.models.pretrained import attach_report, init_torchvision_mobilenetv2
from cxrviewer.models.registry import register_model


class MobileNetV2Classifier(CXRModel):
    """torchvision MobileNetV2 trunk, optional SE after the stem, dropout + linear head.

    With ``stem_se=False`` it is the plain MobileNetV2 baseline, so both share one implementation."""

    # the stem, its SE and the first block, at 112x112 before any expansion (see CXRModel)
    reduced_precision_fp32 = ("backbone.features.0", "stem_se", "backbone.features.1")

    def __init__(self, num_classes: int, pretrained=None, stem_se: bool = True, se_reduction: int = 16,
                 dropout: float = 0.2) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        trunk = mobilenet_v2(weights=None)
        trunk.classifier = nn.Identity()  # replaced by our head; keeps the trunk's keys torchvision's
        self.backbone = trunk
        self.stem_se: Optional[SEBlock] = SEBlock(32, reduction=se_reduction) if stem_se else None
        self.num_features = trunk.last_channel  # 1280
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        # torchvision's own init for the new linear layer
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        attach_report(self, init_torchvision_mobilenetv2(self.backbone, pretrained))
        if stem_se:
            self.attention_low_level = True  # the viewer opens on Grad-CAM (see CXRModel.first_heatmap)
            self.attention_description = (
                "Energy of the SE-reweighted stem activation (sum over the 32 channels of |feature × SE "
                "gate|, 112×112): where the low-level channels the SE block amplified respond. SE itself "
                "is channel attention with no spatial map."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.features
        x = feats[0](x)
        if self.stem_se is not None:
            x = self.stem_se(x)
            stem = x
            self._record_attention(lambda: stem.detach().float().abs().sum(dim=1))
        x = feats[1:](x)
        return torch.flatten(self.pool(x), 1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def gradcam_layer(self) -> nn.Module:
        return self.backbone.features[-1]


@register_model(
    "mobilenet_lung",
    "MobileNet-Lung: MobileNetV2 with a squeeze-and-excitation block after the stem (seed 003)",
    attention=True,
    paper="003",
)
def mobilenet_lung(num_classes: int = 3, pretrained=None, se_reduction: int = 16) -> MobileNetV2Classifier:
    return MobileNetV2Classifier(num_classes, pretrained=pretrained, stem_se=True, se_reduction=se_reduction)
