"""CS-ConvNeXt (seed 000): ConvNeXt-T with a channel+spatial self-attention ("CS") block before each
downsampling, and a three-layer fully connected head.

Structure (timm ``convnext_tiny``, whose stages 1-3 begin with their downsampling layer):
stem (4×4/4) → stage 0 → CS(96 @ 56×56) → stage 1 → CS(192 @ 28×28) → stage 2 → CS(384 @ 14×14) →
stage 3 (768 @ 7×7) → global average pool → LayerNorm (timm's head norm) → FC 768→512 → ReLU →
FC 512→256 → ReLU → FC 256→classes (logits; softmax replaces the paper's sigmoid, classes are exclusive).

Each CS block (:class:`~cxrviewer.models.blocks.CSBlock`): a SAGAN spatial branch (f, g at C/8, h at C/2,
1×1 conv back to C) and a parameter-free channel self-attention branch in parallel, summed, added to
the input through a learnable γ that starts at 0 — so at initialisation the network *is* ConvNeXt-T
plus the new head, and ImageNet weights are undisturbed.

Choices where the paper is vague (models.md allows them):
- Keys/values are 2×2 max-pooled (SAGAN's economy) where the map is larger than 32×32, i.e. in the first
  block only (56×56: affinity 3136×784 instead of 3136×3136 per image). At 28×28 and 14×14 the full
  affinity is cheap and kept. ``kv_pool="all"`` pools every block, ``"none"`` none.
- Head widths 512 and 256 (the paper says "3 FC layers" with ReLU, no widths).

Attention map: the attention each of the 14×14 positions *received* in the last CS block's spatial
branch (mean over query positions of the softmax weight on that key, ×196: 1 = an average share).
High values are the places the network gathered context from when re-weighting the stage-3 features.
``attention_maps()`` also gives the two earlier blocks' maps: 28×28 for the first block (the key grid of
its 2×2-pooled 56×56 map) and 28×28 for the second. Grad-CAM targets the last stage (``backbone.stages[3]``,
7×7), the last feature map before pooling.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.blocks import CSBlock
from cxrviewer.models.pretrained import attach_report, timm_backbone
from cxrviewer.models.registry import register_model

_WIDTHS = (96, 192, 384)


class CSConvNeXt(CXRModel):
    exact_channels_last = False  # a ConvNeXt: NHWC gains nothing (see CXRModel)
    # LIME on quickshift (lime's default): on SLIC's ~20 superpixels its evidence sits in one to three and
    # the rest of a top five is noise no run pins down (Jaccard@5 0.61 on SLIC, 0.83 on quickshift over
    # the same four films; docs/benchmarks.md)
    lime_segmentation = "quickshift"
    attention_description = (
        "Self-attention received per position in the last CS block (14×14, before the last downsampling): "
        "how much the spatial branch gathered context from each place; 1 = an average share."
    )

    def __init__(self, num_classes: int = 3, pretrained=None, hidden: Sequence[int] = (512, 256),
                 kv_pool: str = "auto", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if kv_pool not in ("auto", "all", "none"):
            raise ValueError(f"kv_pool must be 'auto', 'all' or 'none', not {kv_pool!r}")
        backbone, report = timm_backbone("convnext_tiny", pretrained, num_classes=0,
                                         drop_path_rate=drop_path_rate)
        self.backbone = backbone
        sizes = (56, 28, 14)  # at 224 input; "auto" decides by the design resolution, not per call
        self.cs_blocks = nn.ModuleList(
            CSBlock(c, kv_pool=2 if (kv_pool == "all" or (kv_pool == "auto" and s > 32)) else 1)
            for c, s in zip(_WIDTHS, sizes)
        )
        dims = [backbone.num_features, *hidden]
        layers: list = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.head = nn.Sequential(*layers)
        self.num_features = backbone.num_features
        attach_report(self, report)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        x = bb.stem(x)
        for i, stage in enumerate(bb.stages):
            x = stage(x)
            if i < len(self.cs_blocks):
                x = self.cs_blocks[i](x)
        x = bb.norm_pre(x)
        self._record_attention(self.cs_blocks[-1].last_received)
        return bb.forward_head(x, pre_logits=True)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)

    def gradcam_layer(self) -> nn.Module:
        return self.backbone.stages[3]

    def attention_maps(self) -> list:
        """Received-attention maps of all three CS blocks from the last forward (coarsest last)."""
        return [b.last_received for b in self.cs_blocks]

    def attention_scales(self) -> list:
        """The learnable γ of each CS block (0 at initialisation)."""
        return [b.gamma for b in self.cs_blocks]


@register_model(
    "cs_convnext",
    "CS-ConvNeXt: ConvNeXt-T + parallel channel/spatial self-attention before each downsampling (seed 000)",
    attention=True,
    paper="000",
)
def cs_convnext(num_classes: int = 3, pretrained=None, kv_pool: str = "auto",
                drop_path_rate: float = 0.0) -> CSConvNeXt:
    return CSConvNeXt(num_classes, pretrained=pretrained, kv_pool=kv_pool, drop_path_rate=drop_path_rate)
