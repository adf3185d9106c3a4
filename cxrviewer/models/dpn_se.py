"""DPN-SE (seed 002): DPN-92 with a squeeze-and-excitation block in every dual-path block.

Where the SE sits: timm's ``DualPathBlock`` computes a bottleneck (``c1x1_a`` → grouped ``c3x3_b`` →
``c1x1_c``) whose output is split into a residual part (first ``num_1x1_c`` channels, added to the
residual path) and a dense part (the rest, concatenated onto the dense path). The SE block (global
pool, FC ÷16, ReLU, FC, sigmoid, rescale) gates that bottleneck output *before* the split, i.e. before
the residual and dense paths merge — as SE-ResNet gates the residual branch before the addition. For
``b=True`` variants (``dpn*b``, two separate 1×1 output convs) the gate applies to their concatenation.

The SE blocks are attached to timm's own block instances (their class is switched to
:class:`SEDualPathBlock`, which only overrides ``forward``), so every backbone key keeps timm's name and
a timm ``dpn92`` weights file loads with only the SE tensors new. DPN-92's 30 dual-path blocks
(3+4+20+3) each get one SE.

Attention map: the SE-weighted activation of the last dual-path block (``conv5_3``, 7×7): the sum over
channels of |SE(bottleneck output)|, i.e. where the channels SE kept open respond strongly at the end
of the network. Grad-CAM targets ``features.conv5_bn_ac`` (the final BN+activation, 7×7×2688).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.blocks import SEBlock
from cxrviewer.models.pretrained import attach_report, timm_backbone
from cxrviewer.models.registry import register_model


def _dual_path_block_cls():
    from timm.models.dpn import DualPathBlock

    return DualPathBlock


class SEDualPathBlock(_dual_path_block_cls()):
    """timm ``DualPathBlock`` with ``self.se`` gating the bottleneck output before the path merge.

    Mirrors timm's forward line for line, with the gate inserted; ``record_energy`` makes the block keep
    Σ_c |gated output| (B, H, W) of its last forward for display."""

    se: SEBlock
    record_energy: bool = False
    last_energy: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c1x1_w_s1 is not None:
            x_s = self.c1x1_w_s1(x)
        elif self.c1x1_w_s2 is not None:
            x_s = self.c1x1_w_s2(x)
        else:
            x_s = x
        x_s1 = x_s[:, : self.num_1x1_c]
        x_s2 = x_s[:, self.num_1x1_c:]

        x = self.c1x1_a(x)
        x = self.c3x3_b(x)
        x = self.c1x1_c(x)
        if self.c1x1_c1 is not None and self.c1x1_c2 is not None:
            gated = self.se(torch.cat([self.c1x1_c1(x), self.c1x1_c2(x)], dim=1))
        else:
            gated = self.se(x)
        if self.record_energy:
            self.last_energy = gated.detach().float().abs().sum(dim=1)
        out1 = gated[:, : self.num_1x1_c]
        out2 = gated[:, self.num_1x1_c:]
        return torch.cat([x_s1 + out1, x_s2, out2], dim=1)


def add_se_to_dual_path_blocks(dpn: nn.Module, reduction: int = 16) -> list:
    """Give every ``DualPathBlock`` of a timm DPN an SE gate (in place); returns the blocks in order."""
    base = _dual_path_block_cls()
    blocks = []
    for module in dpn.modules():
        if isinstance(module, base):
            width = module.num_1x1_c + module.inc
            module.se = SEBlock(width, reduction=reduction)
            module.__class__ = SEDualPathBlock
            blocks.append(module)
    if not blocks:
        raise RuntimeError("no DualPathBlock found: the timm DPN layout changed")
    blocks[-1].record_energy = True
    return blocks


class DPNSE(CXRModel):
    attention_description = (
        "SE-weighted activation of the last dual-path block (7×7): sum over channels of the bottleneck "
        "output after the squeeze-and-excitation gate, i.e. where the channels SE kept open fire."
    )

    def __init__(self, num_classes: int = 4, pretrained=None, variant: str = "dpn92",
                 se_reduction: int = 16, drop_rate: float = 0.0) -> None:
        super().__init__()
        self._se_blocks: list = []

        def prepare(m: nn.Module) -> None:
            self._se_blocks = add_se_to_dual_path_blocks(m, se_reduction)

        backbone, report = timm_backbone(variant, pretrained, prepare=prepare, new_patterns=(".se.",),
                                         num_classes=0)
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        attach_report(self, report)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        self._record_attention(self._se_blocks[-1].last_energy)
        return pooled

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def gradcam_layer(self) -> nn.Module:
        return self.backbone.features.conv5_bn_ac

    def se_blocks(self) -> list:
        return list(self._se_blocks)


@register_model(
    "dpn_se",
    "DPN-SE: DPN-92 with squeeze-and-excitation in every dual-path block (seed 002)",
    attention=True,
    paper="002",
)
def dpn_se(num_classes: int = 4, pretrained=None, se_reduction: int = 16) -> DPNSE:
    return DPNSE(num_classes, pretrained=pretrained, se_reduction=se_reduction)
