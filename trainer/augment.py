"""Training augmentations on the preprocessed uint8 square, drawn from an explicit generator.

Augmentation runs after the shared preprocessing (``cxrviewer.preprocess``), on the grey uint8 square the
model will see, so training and inference can never drift apart: with no augmentation the training tensor
is exactly what the viewer feeds the model.

Every random draw comes from a ``torch.Generator`` seeded from (run seed, epoch, sample index) by the
caller, never from the global RNG. That makes an epoch's augmented films a pure function of the epoch
number: a resumed run sees exactly the films an uninterrupted one would, whatever thread or worker did
the work and in whatever order.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from trainer.recipes import AUGMENTATIONS, Recipe

_BILINEAR = InterpolationMode.BILINEAR


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def random_erasing(img: torch.Tensor, gen: torch.Generator, p: float, sl: float, sh: float, r1: float) -> torch.Tensor:
    """Random erasing as seed 000 describes it (Zhong et al.).

    With probability ``p`` a box of area ``S_e ~ U(sl, sh) * S`` and aspect ``r_e ~ U(r1, 1/r1)`` is placed at
    a uniform position; if it does not fit, the area, aspect and position are redrawn until it does (the
    paper's rule; capped so a pathological setting cannot loop forever). The box is filled with uniform
    random grey values rather than 0: the paper rejects Cutout's black fill as unlike a chest film.
    """
    if _u(gen) >= p:
        return img
    _, H, W = img.shape
    S = H * W
    lo, hi = math.log(r1), math.log(1.0 / r1)
    for _ in range(100):
        se = _u(gen, sl, sh) * S
        re = math.exp(_u(gen, lo, hi))
        he = int(round(math.sqrt(se * re)))
        we = int(round(math.sqrt(se / re)))
        x = int(_u(gen) * W)
        y = int(_u(gen) * H)
        if he >= 1 and we >= 1 and x + we <= W and y + he <= H:
            out = img.clone()
            noise = torch.randint(0, 256, (img.shape[0], he, we), generator=gen, dtype=torch.int64)
            out[:, y : y + he, x : x + we] = noise.to(img.dtype)
            return out
    return img


class Augmenter:
    """The recipe's augmentation list as one callable ``(uint8 (1, S, S), generator) -> uint8 (1, S, S)``.

    The order is fixed (geometry first, erasing last) regardless of the order in the recipe, so the same
    recipe always means the same pipeline.
    """

    ORDER = ("crop", "hflip", "vflip", "rotate", "affine", "erase")

    def __init__(self, recipe: Recipe):
        unknown = [a for a in recipe.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s): {', '.join(unknown)}")
        self.names = tuple(a for a in self.ORDER if a in recipe.augment)
        self.r = recipe

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r = self.r
        _, H, W = img.shape
        for name in self.names:
            if name == "crop":
                lo, hi = r.crop_scale
                scale = _u(gen, lo, hi)
                ch, cw = max(1, int(round(H * math.sqrt(scale)))), max(1, int(round(W * math.sqrt(scale))))
                top = int(_u(gen) * (H - ch + 1))
                left = int(_u(gen) * (W - cw + 1))
                img = F.resized_crop(img, top, left, ch, cw, [H, W], interpolation=_BILINEAR, antialias=True)
            elif name == "hflip":
                if _u(gen) < r.hflip_p:
                    img = F.horizontal_flip(img)
            elif name == "vflip":
                if _u(gen) < r.vflip_p:
                    img = F.vertical_flip(img)
            elif name == "rotate":
                angle = _u(gen, -r.rotate_deg, r.rotate_deg)
                img = F.rotate(img, angle, interpolation=_BILINEAR)
            elif name == "affine":
                angle = _u(gen, -r.affine_deg, r.affine_deg)
                tx = int(round(_u(gen, -r.affine_translate, r.affine_translate) * W))
                ty = int(round(_u(gen, -r.affine_translate, r.affine_translate) * H))
                scale = _u(gen, r.affine_scale[0], r.affine_scale[1])
                img = F.affine(img, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0], interpolation=_BILINEAR)
            elif name == "erase":
                img = random_erasing(img, gen, r.erase_p, r.erase_sl, r.erase_sh, r.erase_r1)
        return img


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one film in one epoch: independent streams without sharing state between films."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g
