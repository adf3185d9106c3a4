"""DA-COVID Net (seed 001): dilated ResNet-50 + DANet position and channel attention in parallel.

Structure: timm ``resnet50`` with ``output_stride=16`` (the last stage has stride 1 and dilation 2, so
the map is 14×14×2048 at 224) → 3×3 conv 2048→512 + BN + ReLU (DANet's reduction) → PAM and CAM on the
same 512-channel map, in parallel → their outputs summed element-wise → global average pool (512) →
one linear layer to the classes.

- PAM: Q, K 1×1 convs at C/8 = 64, V at 512; s_ji = softmax_i(Q_j·K_i) over the 196 positions;
  E = α·(V s) + A, α from 0.
- CAM: x_ji = softmax over channels of A_i·A_j; E = β·(x A) + A, β from 0 (the paper's formula, not
  DANet code's ``max − affinity``).
With α = β = 0 the fusion is 2A: the network starts as a dilated ResNet-50 with a conv head.

Attention map: PAM's received attention at 14×14 — for each position, the mean softmax weight that all
positions put on it (×196, 1 = average share): where the position branch collects context from.
Grad-CAM targets the fused attention output (``attention``, 14×14×512), the last map before pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.blocks import ChannelAttentionModule, PositionAttentionModule
from cxrviewer.models.pretrained import attach_report, timm_backbone
from cxrviewer.models.registry import register_model


class DualAttention(nn.Module):
    """PAM(x) + CAM(x): one module so Grad-CAM and hooks can target the fused map."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.pam = PositionAttentionModule(channels, reduction)
        self.cam = ChannelAttentionModule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam(x) + self.cam(x)


class DACovidNet(CXRModel):
    attention_description = (
        "Position-attention received per position (14×14): how much the PAM's other positions draw on "
        "each place; 1 = an average share."
    )
    # ResNet's 7x7 stem convolution: in bf16 it moved a trained checkpoint's probabilities by up to 0.014 on
    # twenty films, in fp32 by under 0.006, at no measurable cost (see CXRModel.reduced_precision_fp32)
    reduced_precision_fp32 = ("backbone.conv1",)

    def __init__(self, num_classes: int = 3, pretrained=None, mid_channels: int = 512,
                 dropout: float = 0.0) -> None:
        super().__init__()
        backbone, report = timm_backbone("resnet50", pretrained, num_classes=0, global_pool="",
                                         output_stride=16)
        self.backbone = backbone
        self.reduce = nn.Sequential(
            nn.Conv2d(backbone.num_features, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.attention = DualAttention(mid_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(mid_channels, num_classes)
        self.num_features = mid_channels
        attach_report(self, report)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone.forward_features(x)
        x = self.attention(self.reduce(x))
        self._record_attention(self.attention.pam.last_received)
        return torch.flatten(self.pool(x), 1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def gradcam_layer(self) -> nn.Module:
        return self.attention

    def attention_scales(self) -> list:
        """α (PAM) and β (CAM), both 0 at initialisation."""
        return [self.attention.pam.alpha, self.attention.cam.beta]


@register_model(
    "da_covidnet",
    "DA-COVID Net: dilated ResNet-50 + parallel position and channel attention, summed (seed 001)",
    attention=True,
    paper="001",
)
def da_covidnet(num_classes: int = 3, pretrained=None, mid_channels: int = 512) -> DACovidNet:
    return DACovidNet(num_classes, pretrained=pretrained, mid_channels=mid_channels)
