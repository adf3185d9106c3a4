"""The contract every model in the zoo keeps, so the viewer, explainers, trainer and OOD guard can treat
the five attention networks and the plain baselines alike.

- ``forward(x)`` returns logits; ``forward_with_features(x)`` also returns the pooled feature vector the
  classifier head saw (the OOD guard reuses it: no second pass).
- ``attention_map()`` returns the spatial attention the last forward computed, (B, h, w), non-negative,
  or None for models without spatial attention. ``attention_description`` says what it means.
- ``first_heatmap`` is the map the viewer opens on before the reader has chosen one: the model's own
  attention when it is computed deep enough to say something about the class, Grad-CAM when the model has
  no spatial attention or only a low-level one (``attention_low_level``: MobileNet-Lung's stem SE map
  follows edges, bone and soft-tissue density, and drew a reader's eye to the film's edges).
- ``records_attention`` False skips computing that map, in the model and in its self-attention blocks
  (the fast copy used for LIME scores hundreds of perturbed films and never shows their attention;
  MobileNet-Lung's 112×112 map costs ~7% of a pass, the CS blocks' received attention a reduction over
  every affinity matrix).
- ``exact_channels_last``: whether the Predictor runs this network channels-last (NHWC) on the exact
  path too. Same fp32 arithmetic (probabilities within ~1e-7), but oneDNN's NHWC convolutions made the
  exact path 0.5–0.9 of plain eager on the CPU for every architecture except the ConvNeXt ones, whose
  blocks permute to NHWC for their LayerNorms anyway and gained nothing (1.0–1.07, so they stay NCHW).
  A CPU matter only: on an H200 in fp32 (no TF32) the four NHWC networks' exact path ran 1.08–1.20 of
  plain eager NCHW and the NCHW ConvNeXt 1.02, so on CUDA every network's exact path stays NCHW.
- ``lime_segmentation``: the superpixel method LIME uses on this network unless the reader chooses one
  (None: the explainer's default, SLIC). A network whose evidence sits in a small region needs it cut
  finer where it lies, or the rest of its top five is noise (CS-ConvNeXt, docs/benchmarks.md).
- ``reduced_precision_fp32``: submodules (dotted names, as ``get_submodule`` reads them) that the
  reduced-precision fast copy runs in fp32 all the same: the layers nearest the input, where bf16's
  8-bit mantissa rounds the film's own grey levels as coarsely as they are quantised. Keeping
  MobileNet-Lung's stem, stem SE and first block in fp32 costs 2-3% of a bf16 pass; with them in bf16
  the bundled adult model's probabilities moved by up to 0.05 on films it is unsure of (so those films
  were explained in fp32), in fp32 by under 0.01 on twenty films (docs/benchmarks.md, seventeenth
  session).
- ``gradcam_layer()`` names the module Grad-CAM should hook (``gradcam_layers()``: one per branch).
- ``arch_name`` / ``arch_args`` are set by :func:`cxrviewer.models.create_model` so a checkpoint can
  rebuild exactly the same network.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class CXRModel(nn.Module):
    attention_description: str = ""
    attention_low_level: bool = False
    exact_channels_last: bool = True
    lime_segmentation: Optional[str] = None
    reduced_precision_fp32: tuple = ()

    @property
    def records_attention(self) -> bool:
        return self.__dict__.get("_records_attention", True)

    @records_attention.setter
    def records_attention(self, on: bool) -> None:
        self.__dict__["_records_attention"] = bool(on)
        for m in self.modules():
            if hasattr(m, "records") and m is not self:  # blocks that keep their own map (PositionSelfAttention)
                m.records = bool(on)

    def __init__(self) -> None:
        super().__init__()
        self.arch_name: str = ""
        self.arch_args: dict = {}
        self.num_classes: int = 0
        self._last_attention: Optional[torch.Tensor] = None

    # --- to implement -------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> pooled features (B, D), the input of the classifier head."""
        raise NotImplementedError

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) -> logits (B, num_classes)."""
        raise NotImplementedError

    def gradcam_layer(self) -> nn.Module:
        raise NotImplementedError

    def gradcam_layers(self) -> list:
        """Every layer worth a Grad-CAM, first = :meth:`gradcam_layer`. Multi-branch models (Fusion-TL's
        three extractors) list one per branch so an explainer can combine them."""
        return [self.gradcam_layer()]

    # --- shared ----------------------------------------------------------------------------------
    def forward_with_features(self, x: torch.Tensor) -> tuple:
        pooled = self.forward_features(x)
        return self.forward_head(pooled), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def attention_map(self) -> Optional[torch.Tensor]:
        return self._last_attention

    def _record_attention(self, amap) -> None:
        """Keep the map of this forward; ``amap`` may be a function computing it, so a copy with
        ``records_attention`` False does not pay for a map nobody will read."""
        if not self.records_attention:
            self._last_attention = None
            return
        if callable(amap):
            amap = amap()
        self._last_attention = None if amap is None else amap.detach()

    @property
    def has_attention(self) -> bool:
        return bool(self.attention_description)

    @property
    def first_heatmap(self) -> str:
        return "attention" if self.has_attention and not self.attention_low_level else "gradcam"
