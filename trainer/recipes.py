"""Training recipes: each founding paper's recipe as a named preset, plus a fast ``smoke`` recipe.

A recipe is plain data (a frozen dataclass) so it can be written into the run folder and the checkpoint
card verbatim and a run can be reproduced from its ``recipe.json``. Where a paper is silent the value is
chosen from ``shared/docs/models.md`` or common practice and the ``notes`` field says so, so a reviewer
can tell the paper's numbers from ours.

Every field can be overridden from the command line (``--set key=value`` or the explicit flags) or the
training dialog; :func:`apply_overrides` parses the text into the field's type and refuses unknown keys
rather than silently ignoring a typo.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

AUGMENTATIONS = ("hflip", "vflip", "rotate", "affine", "crop", "erase")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "cosine", "none")
BALANCE = ("none", "weighted_loss", "sampler")
METRICS = ("macro_f1", "accuracy", "macro_auc", "loss")
NORMALISE = ("imagenet", "dataset")


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    description: str = ""
    paper: str = ""
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 30
    schedule: str = "step"
    step_size: int = 10
    gamma: float = 0.1
    loss: str = "ce"  # "ce" or "nll" (log-softmax + NLL: the same function, named as seed 004 names it)
    label_smoothing: float = 0.0
    # early stopping: stop when ``early_stop_metric`` has not improved for ``early_stop_patience`` epochs (0 = off)
    early_stop_patience: int = 0
    early_stop_metric: str = "macro_f1"
    select_metric: str = "macro_f1"  # which validation metric picks the best checkpoint
    # data
    input_size: int = 224
    resize: str = "squash"
    normalise: str = "imagenet"  # or "dataset": the training split's own mean/std (seed 003)
    split: tuple = (0.7, 0.2, 0.1)
    balance: str = "none"
    pretrained: bool = True
    # recompute BatchNorm statistics on the (un-augmented) training films before each validation ("precise
    # BN"): short runs from scratch otherwise validate with running statistics that lag the weights
    precise_bn: bool = False
    # augmentation (applied on the preprocessed uint8 square, training split only)
    augment: tuple = ()
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rotate_deg: float = 10.0
    affine_deg: float = 10.0
    affine_translate: float = 0.05
    affine_scale: tuple = (0.9, 1.1)
    crop_scale: tuple = (0.8, 1.0)
    # random erasing (Zhong et al. 2020 defaults; seed 000 names p, s_l, s_h, r1, r2 without values)
    erase_p: float = 0.5
    erase_sl: float = 0.02
    erase_sh: float = 0.4
    erase_r1: float = 0.3
    notes: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown recipe field(s): {', '.join(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return validate(cls(**kw))


def validate(r: Recipe) -> Recipe:
    """Refuse values the loop cannot honour, with a message naming the field."""
    problems = []
    for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("balance", BALANCE),
                          ("select_metric", METRICS), ("early_stop_metric", METRICS), ("normalise", NORMALISE)):
        if getattr(r, name) not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}")
    if r.loss not in ("ce", "nll"):
        problems.append("loss must be ce or nll")
    bad_aug = [a for a in r.augment if a not in AUGMENTATIONS]
    if bad_aug:
        problems.append(f"unknown augmentation(s) {', '.join(bad_aug)}; known: {', '.join(AUGMENTATIONS)}")
    if r.lr <= 0:
        problems.append("lr must be positive")
    if r.batch_size < 1:
        problems.append("batch_size must be at least 1")
    if r.epochs < 1:
        problems.append("epochs must be at least 1")
    if r.input_size < 16:
        problems.append("input_size must be at least 16")
    if len(r.split) != 3 or any(s < 0 for s in r.split) or r.split[0] <= 0 or r.split[1] <= 0:
        problems.append("split must be three non-negative fractions train,val,test with train and val > 0")
    if not (0 < r.erase_sl <= r.erase_sh < 1) or r.erase_r1 <= 0:
        problems.append("random erasing needs 0 < erase_sl <= erase_sh < 1 and erase_r1 > 0")
    if problems:
        raise ValueError(f"recipe {r.name!r}: " + "; ".join(problems))
    return r


_COMMON_NOTE = "Fields the paper does not give follow shared/docs/models.md or common practice."

RECIPES: dict = {
    "seed000": Recipe(
        name="seed000",
        description="CS-ConvNeXt (seed 000): Adam 1e-3, batch 16, lr x0.1 every 20 epochs, 100 epochs, random erasing + flips",
        paper="000",
        optimizer="adam", lr=1e-3, batch_size=16, epochs=100, schedule="step", step_size=20, gamma=0.1,
        augment=("erase", "hflip"), split=(0.7, 0.2, 0.1), select_metric="macro_f1",
        notes="Random erasing p=0.5, s_l=0.02, s_h=0.4, r1=0.3 (Zhong et al.; the paper names the parameters "
        "without values). Only horizontal flips: a vertical flip puts the diaphragm on top. " + _COMMON_NOTE,
    ),
    "seed001": Recipe(
        name="seed001",
        description="DA-COVID Net (seed 001): Adam 1e-4, batch 48, cross-entropy, 30 epochs, horizontal flip + random crop",
        paper="001",
        optimizer="adam", lr=1e-4, batch_size=48, epochs=30, schedule="none",
        augment=("hflip", "crop"),
        notes="Random crop is a random resized crop of the preprocessed square (scale 0.8-1) back to the input "
        "size, so training and inference share one preprocessing. " + _COMMON_NOTE,
    ),
    "seed002": Recipe(
        name="seed002",
        description="DPN-SE (seed 002): random crop + affine flip/rotate/scale, 100 epochs",
        paper="002",
        optimizer="adam", lr=1e-4, batch_size=32, epochs=100, schedule="step", step_size=30, gamma=0.1,
        augment=("crop", "hflip", "affine"),
        notes="The paper gives no optimizer, learning rate or batch size: Adam 1e-4, batch 32, lr x0.1 every 30 "
        "epochs are ours. " + _COMMON_NOTE,
    ),
    "seed003": Recipe(
        name="seed003",
        description="MobileNet-Lung (seed 003): SGD 0.01 momentum 0.9, lr x0.1 every 10 epochs, early stop on val accuracy after 10, flips + rotation 10",
        paper="003",
        optimizer="sgd", lr=0.01, momentum=0.9, batch_size=32, epochs=100, schedule="step", step_size=10, gamma=0.1,
        early_stop_patience=10, early_stop_metric="accuracy",
        augment=("hflip", "vflip", "rotate"), rotate_deg=10.0, normalise="dataset", split=(0.8, 0.1, 0.1),
        notes="Batch size 32 and the 100-epoch ceiling are ours (the paper stops early, ~33 epochs). "
        + _COMMON_NOTE,
    ),
    "seed004": Recipe(
        name="seed004",
        description="Attention fusion (seed 004): Adam 1e-4, lr x0.1 every 10 epochs, 30 epochs, log-softmax + NLL, rotation + horizontal flip",
        paper="004",
        optimizer="adam", lr=1e-4, batch_size=32, epochs=30, schedule="step", step_size=10, gamma=0.1, loss="nll",
        augment=("rotate", "hflip"), rotate_deg=10.0,
        notes="Batch size 32 and a 10 degree rotation are ours. " + _COMMON_NOTE,
    ),
    "smoke": Recipe(
        name="smoke",
        description="A minute-long check that data, model and loop work: Adam 1e-3, 64 px, 3 epochs, flips",
        optimizer="adam", lr=1e-3, batch_size=16, epochs=3, schedule="none", input_size=64,
        augment=("hflip",), pretrained=False, precise_bn=True,
        notes="Not a paper recipe: for trying a data folder or the installation, not for a model to read films with.",
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def _parse_value(name: str, text: str, current):
    text = text.strip()
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {text!r}") from None
    if isinstance(current, tuple):
        if text.startswith("["):
            items = json.loads(text)
        else:
            items = [t for t in text.replace(":", ",").split(",") if t.strip()] if text else []
        if name == "augment":
            return tuple(str(t).strip() for t in items)
        try:
            return tuple(float(t) for t in items)
        except ValueError:
            raise ValueError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    return text


def apply_overrides(recipe: Recipe, overrides) -> Recipe:
    """``["lr=1e-4", "augment=hflip,erase"]`` or a dict -> a new, validated recipe."""
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides or ():
            if "=" not in item:
                raise ValueError(f"--set expects key=value, got {item!r}")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v))
    known = {f.name for f in fields(Recipe)}
    changes = {}
    for k, v in pairs:
        if k not in known:
            raise ValueError(f"unknown recipe field {k!r}; known: {', '.join(sorted(known))}")
        cur = getattr(recipe, k)
        changes[k] = _parse_value(k, v, cur) if isinstance(v, str) and not isinstance(cur, str) else v
        if isinstance(cur, tuple) and isinstance(changes[k], list):
            changes[k] = tuple(changes[k])
    if not changes:
        return validate(recipe)
    return validate(dataclasses.replace(recipe, **changes))


def describe(recipe: Recipe) -> str:
    """A few readable lines for ``cxr-train recipes NAME`` and the report."""
    r = recipe
    sched = {"step": f"lr x{r.gamma:g} every {r.step_size} epochs", "cosine": "cosine decay", "none": "constant lr"}[r.schedule]
    opt = f"{r.optimizer.upper()} lr {r.lr:g}" + (f" momentum {r.momentum:g}" if r.optimizer == "sgd" else "")
    es = (
        f"early stop after {r.early_stop_patience} epochs without {r.early_stop_metric} improving"
        if r.early_stop_patience
        else "no early stopping"
    )
    aug = ", ".join(r.augment) or "none"
    lines = [
        f"{r.name}: {r.description}",
        f"  {opt}, weight decay {r.weight_decay:g}, batch {r.batch_size}, {r.epochs} epochs, {sched}, {es}",
        f"  input {r.input_size} ({r.resize}), normalise {r.normalise}, split {':'.join(f'{s:g}' for s in r.split)}, "
        f"balance {r.balance}, loss {r.loss}, best by {r.select_metric}"
        + (", BatchNorm statistics recomputed before each validation" if r.precise_bn else ""),
        f"  augmentation: {aug}",
    ]
    if r.notes:
        lines.append(f"  notes: {r.notes}")
    return "\n".join(lines)
