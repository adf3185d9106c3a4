"""One registry for every architecture, in the spirit of ``timm.create_model``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

_REGISTRY: dict = {}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str  # one line
    factory: Callable
    attention: bool  # an attention model of the founding papers (vs a baseline)
    paper: str = ""  # seed file id, e.g. "003"


def register_model(name: str, description: str, attention: bool = False, paper: str = ""):
    def deco(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, description, factory, attention, paper)
        return factory

    return deco


def _ensure_loaded() -> None:
    import cxrviewer.models.zoo  # noqa: F401  (imports every architecture module, which registers itself)


def list_models() -> list:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda m: (not m.attention, m.name))


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None


def create_model(name: str, num_classes: int, pretrained=None, **kwargs):
    """Build a registered model. ``pretrained``: None/False (random), a local weights file, or True (hub
    when online, else random with a warning). Extra keyword arguments go to the architecture."""
    info = model_info(name)
    model = info.factory(num_classes=num_classes, pretrained=pretrained, **kwargs)
    model.arch_name = name
    model.num_classes = int(num_classes)
    sig = inspect.signature(info.factory)
    model.arch_args = {k: v for k, v in kwargs.items() if k in sig.parameters or _accepts_var_kw(sig)}
    return model


def _accepts_var_kw(sig: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
