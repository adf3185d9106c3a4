"""A synthetic model whose decision depends only on one known box of its input, for the explainer tests.

Logit of class 1 = scale · (texture energy in the box − its value on the film), class 0 its negative;
texture energy is the mean squared Laplacian. LIME hides a superpixel by flattening it to its mean grey,
which removes its texture, so only superpixels inside the box can move the output. The masking layer zeroes everything outside the box, so Grad-CAM's
activations are spatially confined too. Nothing outside the box can influence anything.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrviewer.models.base import CXRModel
from cxrviewer.preprocess import PreprocessSpec, fit_to_square, preprocess_gray


class BoxFeatures(nn.Module):
    """Local texture energy (a Laplacian, squared) inside the box, zero everywhere else."""

    def __init__(self, box: tuple, size: int = 224):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
        with torch.no_grad():
            self.conv.weight.copy_((lap / 3.0)[None, None].repeat(1, 3, 1, 1))
        y0, y1, x0, x1 = box
        mask = torch.zeros(1, 1, size, size)
        mask[..., y0:y1, x0:x1] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.conv(x) ** 2 * self.mask


class BoxModel(CXRModel):
    """Decides from one box only. ``box`` = (y0, y1, x0, x1) in model-input pixels."""

    def __init__(self, box: tuple, size: int = 224):
        super().__init__()
        self.box = box
        self.features = BoxFeatures(box, size)
        self.pool = nn.AvgPool2d(8)  # the map Grad-CAM sees is 28×28, like a real CNN's coarse grid
        self.head = nn.Linear(1, 2)
        area_fraction = (box[1] - box[0]) * (box[3] - box[2]) / size**2
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]) / area_fraction)
            self.head.bias.zero_()
        self.num_classes = 2
        self.arch_name = "box_model"

    def calibrate(self, x: torch.Tensor, scale: float = 3.0) -> "BoxModel":
        """Centre the logits on this input so probabilities sit mid-range (LIME needs them to move)."""
        with torch.no_grad():
            v = self.head(self.forward_features(x))[0, 1]
            self.head.bias.copy_(torch.tensor([v, -v]))
            self.head.weight.mul_(scale / max(abs(float(v)), 1e-6))
            self.head.bias.mul_(scale / max(abs(float(v)), 1e-6))
        return self

    def forward_features(self, x):
        f = self.pool(self.features(x))
        return f.mean(dim=(2, 3))

    def forward_head(self, pooled):
        return self.head(pooled)

    def gradcam_layer(self):
        return self.features


def textured_film(shape: tuple, seed: int = 0) -> np.ndarray:
    """A uint8 grey film with blobs of texture everywhere, so every region has something to segment."""
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    img = 110 + 40 * np.sin(yy / 23.0) * np.cos(xx / 31.0)
    img += rng.normal(0, 30, size=shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def film_region_to_model_box(gray: np.ndarray, region: tuple, spec: PreprocessSpec) -> tuple:
    """Film region (r0, r1, c0, c1) -> the model-input box it occupies after the shared preprocessing."""
    _, geo = fit_to_square(gray, spec.input_size, spec.resize)
    r0, r1, c0, c1 = region
    y0, x0 = geo.film_to_model(r0, c0)
    y1, x1 = geo.film_to_model(r1, c1)
    return int(np.ceil(y0)), int(np.floor(y1)), int(np.ceil(x0)), int(np.floor(x1))


def box_model_for(gray: np.ndarray, region: tuple, spec: PreprocessSpec) -> BoxModel:
    model = BoxModel(film_region_to_model_box(gray, region, spec), spec.input_size).eval()
    x, _ = preprocess_gray(gray, spec)
    return model.calibrate(torch.from_numpy(x)[None])


class FakePredictor:
    """The slice of the Predictor interface the explainers use, over a bare model."""

    def __init__(self, model, spec: PreprocessSpec, classes=("Normal", "Pneumonia"), delay: float = 0.0):
        self.model, self.spec, self.classes, self.delay = model, spec, list(classes), delay
        self.card = {"name": "box-model-test", "version": "0.1", "classes": list(classes),
                     "preprocess": spec.to_dict()}
        self.batches = []

    def fast_predict_batch(self, x):
        import time

        self.batches.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        with torch.inference_mode():
            return torch.softmax(self.model(torch.as_tensor(x)), dim=1).numpy()

    predict_batch = fast_predict_batch
