"""The papers' baselines, so their comparison tables can be reproduced: plain networks behind the same
:class:`CXRModel` contract (pooled features, one linear head, a Grad-CAM layer, no attention map).

timm provides ConvNeXt-T, ResNet-18/50, DenseNet-121, DPN-68/92 and VGG-11; torchvision provides
MobileNetV2 (one implementation with MobileNet-Lung, so the offline ImageNet file loads into both) and
SqueezeNet 1.0 (timm has none; 1.0 is the 1.25 M-parameter version seed 003 quotes).

Every baseline: ``forward_features`` = the network's own pooled pre-logits features (timm's
``forward_head(pre_logits=True)``), ``forward_head`` = a fresh linear layer to the task's classes.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.models.mobilenet_lung import MobileNetV2Classifier
from cxrviewer.models.pretrained import attach_report, init_torchvision, timm_backbone
from cxrviewer.models.registry import register_model


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


class TimmClassifier(CXRModel):
    """A timm network without its classifier (``num_classes=0``) plus a linear head.

    ``gradcam_path`` names the module (dotted, inside ``backbone``) whose output is the last spatial
    feature map before pooling."""

    def __init__(self, timm_name: str, num_classes: int, pretrained=None, gradcam_path: str = "",
                 drop_rate: float = 0.0, **timm_kwargs) -> None:
        super().__init__()
        backbone, report = timm_backbone(timm_name, pretrained, num_classes=0, **timm_kwargs)
        self.backbone = backbone
        self.timm_name = timm_name
        self.num_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._gradcam_path = gradcam_path
        attach_report(self, report)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def gradcam_layer(self) -> nn.Module:
        return _get(self.backbone, self._gradcam_path)


class SqueezeNetClassifier(CXRModel):
    """torchvision SqueezeNet 1.0 trunk; pooled = global average of the 512-channel fire-9 output.

    torchvision's head is dropout, 1×1 conv to classes, ReLU, average pool. Here the pool comes first
    (so the pooled features exist for the OOD guard) and the 1×1 conv is a linear layer — identical up
    to the final ReLU on the logits, which is dropped: clipping logits at 0 only hides evidence against
    a class and slows training."""

    def __init__(self, num_classes: int, pretrained=None, dropout: float = 0.5) -> None:
        super().__init__()
        from torchvision.models import squeezenet1_0

        trunk = squeezenet1_0(weights=None)
        trunk.classifier = nn.Identity()
        self.backbone = trunk
        self.num_features = 512
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(512, num_classes)

        def weights():
            from torchvision.models import SqueezeNet1_0_Weights

            return SqueezeNet1_0_Weights.IMAGENET1K_V1

        attach_report(self, init_torchvision(self.backbone, pretrained, what="SqueezeNet 1.0", weights=weights,
                                             ignore_prefixes=("classifier.",)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.backbone.features(x)), 1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def gradcam_layer(self) -> nn.Module:
        return self.backbone.features[-1]


# --- registrations ----------------------------------------------------------------------------------
@register_model("resnet18", "ResNet-18 (timm), plain baseline (seeds 002, 003, 004)", paper="003")
def resnet18(num_classes: int = 3, pretrained=None) -> TimmClassifier:
    return TimmClassifier("resnet18", num_classes, pretrained, gradcam_path="layer4")


@register_model("resnet50", "ResNet-50 (timm), plain baseline of DA-COVID Net (seed 001)", paper="001")
def resnet50(num_classes: int = 3, pretrained=None) -> TimmClassifier:
    return TimmClassifier("resnet50", num_classes, pretrained, gradcam_path="layer4")


@register_model("convnext_tiny", "ConvNeXt-T (timm), plain baseline of CS-ConvNeXt (seed 000)", paper="000")
def convnext_tiny(num_classes: int = 3, pretrained=None) -> TimmClassifier:
    model = TimmClassifier("convnext_tiny", num_classes, pretrained, gradcam_path="stages.3")
    model.exact_channels_last = False  # NHWC gains nothing on a ConvNeXt (see CXRModel)
    return model


@register_model("densenet121", "DenseNet-121 (timm), plain baseline (seeds 002, 003, 004)", paper="003")
def densenet121(num_classes: int = 3, pretrained=None) -> TimmClassifier:
    return TimmClassifier("densenet121", num_classes, pretrained, gradcam_path="features.norm5")


@register_model("mobilenetv2", "MobileNetV2 (torchvision), plain baseline of MobileNet-Lung (seed 003)",
                paper="003")
def mobilenetv2(num_classes: int = 3, pretrained=None) -> MobileNetV2Classifier:
    return MobileNetV2Classifier(num_classes, pretrained=pretrained, stem_se=False)


@register_model("dpn68", "DPN-68 (timm), plain baseline of DPN-SE (seed 002)", paper="002")
def dpn68(num_classes: int = 4, pretrained=None) -> TimmClassifier:
    return TimmClassifier("dpn68", num_classes, pretrained, gradcam_path="features.conv5_bn_ac")


@register_model("dpn92", "DPN-92 (timm), plain baseline of DPN-SE (seed 002)", paper="002")
def dpn92(num_classes: int = 4, pretrained=None) -> TimmClassifier:
    return TimmClassifier("dpn92", num_classes, pretrained, gradcam_path="features.conv5_bn_ac")


@register_model("squeezenet", "SqueezeNet 1.0 (torchvision), plain baseline (seed 003)", paper="003")
def squeezenet(num_classes: int = 3, pretrained=None) -> SqueezeNetClassifier:
    return SqueezeNetClassifier(num_classes, pretrained=pretrained)


@register_model("vgg11", "VGG-11 (timm), plain baseline (seed 003)", paper="003")
def vgg11(num_classes: int = 3, pretrained=None) -> TimmClassifier:
    return TimmClassifier("vgg11", num_classes, pretrained, gradcam_path="features")
