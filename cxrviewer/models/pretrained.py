"""Pretrained backbone weights: local files, the offline ImageNet MobileNetV2, and the hub when online.

Every architecture accepts the same ``pretrained`` argument, resolved here so the rules are the same
everywhere:

- ``None`` / ``False``: random initialisation.
- a path (``str`` or ``Path``) to a ``.safetensors`` file (or ``.pth``/``.pt``, read with
  ``torch.load(weights_only=True)``, never a full unpickle): a timm or torchvision state_dict of the
  backbone, or a whole CXR Viewer model's state_dict (its ``backbone.`` keys are used). Keys are
  matched after stripping wrapper prefixes; the classifier of the source is ignored (it is replaced);
  a tensor whose shape does not match is refused with :class:`PretrainedError`; a file that matches no
  key at all is refused too. Missing and unexpected keys are reported (``warnings.warn`` and the
  returned :class:`LoadReport`), not fatal: partial transfer is a legitimate choice.
- a ``dict`` of tensors: as a file, already read (tests, the trainer).
- ``"imagenet-offline"``: the dequantized ImageNet MobileNetV2 shipped in ``../shared/weights/`` (or
  ``$CXRVIEWER_IMAGENET_MOBILENETV2``). Only MobileNetV2 backbones can use it; others warn and start
  from random weights.
- ``True``: the hub (timm's Hugging Face weights, torchvision's download server) when the machine is
  online. Offline (no route to the host within ~1.5 s, or ``HF_HUB_OFFLINE=1``/``CXRVIEWER_OFFLINE=1``),
  a cached copy is used if there is one, else the model starts from random weights with a clear
  warning. It never raises and never hangs.

Why not fold this into each model: five attention networks and nine baselines must all treat a wrong
file the same way (refuse clearly) and a missing network the same way (warn, continue).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

log = logging.getLogger(__name__)

OFFLINE_MOBILENETV2_ENV = "CXRVIEWER_IMAGENET_MOBILENETV2"
OFFLINE_MOBILENETV2_NAME = "mobilenet_v2_imagenet_dequantized.safetensors"
IMAGENET_OFFLINE = "imagenet-offline"

# Prefixes a saved state_dict may carry around the backbone's own names (DataParallel, Lightning, our
# own wrappers). Stripped one at a time, longest first, until names match.
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.")

Pretrained = Union[None, bool, str, os.PathLike, Mapping[str, torch.Tensor]]


class PretrainedError(ValueError):
    """A weights file that cannot initialise this backbone (wrong format, wrong network, wrong shapes)."""


class PretrainedWarning(UserWarning):
    """Pretrained weights were requested but could not (fully) be used."""


@dataclass
class LoadReport:
    """What happened when weights were loaded; kept on the model as ``pretrained_report``."""

    source: str
    loaded: int = 0
    missing: list = field(default_factory=list)  # backbone keys the file lacked (kept random)
    unexpected: list = field(default_factory=list)  # file keys with no place in the backbone
    ignored: list = field(default_factory=list)  # file keys deliberately dropped (the old classifier)
    new: list = field(default_factory=list)  # keys of modules we added (attention), random by design
    random_init: bool = False  # True when nothing was loaded (fallback)
    note: str = ""

    def summary(self) -> str:
        if self.random_init:
            return f"random initialisation ({self.note or self.source})"
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.new:
            parts.append(f"{len(self.new)} new (attention/head, random by design)")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored (source classifier)")
        if self.missing:
            parts.append(f"{len(self.missing)} MISSING: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} UNEXPECTED: {_short(self.unexpected)}")
        return "; ".join(parts)


def _short(keys: Sequence[str], n: int = 6) -> str:
    head = ", ".join(keys[:n])
    return head + (f", … (+{len(keys) - n})" if len(keys) > n else "")


# --- reading files ----------------------------------------------------------------------------------
def read_state_dict(path: Union[str, os.PathLike]) -> dict:
    """Tensors from a weights file, without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedError(f"pretrained weights file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise PretrainedError(f"{p}: not a readable safetensors file ({e})") from e
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise PretrainedError(f"{p}: not a plain tensor state_dict (refused: {e})") from e
        for k in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise PretrainedError(f"{p}: does not hold a state_dict of tensors")
        return dict(obj)
    raise PretrainedError(f"{p}: unsupported weights format {suffix!r} (use .safetensors)")


def offline_mobilenetv2_path() -> Optional[Path]:
    """The offline ImageNet MobileNetV2 file: ``$CXRVIEWER_IMAGENET_MOBILENETV2``, else
    ``<repo>/../shared/weights/``; None when neither exists."""
    env = os.environ.get(OFFLINE_MOBILENETV2_ENV)
    if env:
        p = Path(env)
        return p if p.is_file() else None
    repo = Path(__file__).resolve().parents[2]
    for cand in (repo.parent / "shared" / "weights" / OFFLINE_MOBILENETV2_NAME,
                 repo / "shared" / "weights" / OFFLINE_MOBILENETV2_NAME):
        if cand.is_file():
            return cand
    return None


# --- key matching -----------------------------------------------------------------------------------
def _strip_to_match(src: Mapping[str, torch.Tensor], target_keys: set) -> dict:
    """Strip wrapper prefixes when doing so makes more names match the target."""
    best = dict(src)
    best_hits = len(target_keys & best.keys())
    changed = True
    while changed:
        changed = False
        for pre in _WRAPPER_PREFIXES:
            if not any(k.startswith(pre) for k in best):
                continue
            cand = {(k[len(pre):] if k.startswith(pre) else k): v for k, v in best.items()}
            hits = len(target_keys & cand.keys())
            if hits > best_hits:
                best, best_hits, changed = cand, hits, True
    return best


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "state_dict",
    ignore_prefixes: Iterable[str] = (),
    new_patterns: Iterable[str] = (),
    key_map: Optional[Callable[[dict, nn.Module], dict]] = None,
    warn: bool = True,
) -> LoadReport:
    """Copy matching tensors into ``module``; refuse shape mismatches; report the rest.

    ``ignore_prefixes``: source keys to drop silently (the source network's classifier).
    ``new_patterns``: substrings marking target keys of modules we added (attention blocks), which a
    plain backbone file cannot contain; they are reported as ``new``, not ``missing``.
    ``key_map``: converts a foreign naming (e.g. timm -> torchvision) before matching.
    """
    target = module.state_dict()
    tkeys = set(target)
    src = dict(state)
    if key_map is not None:
        src = key_map(src, module)
    src = _strip_to_match(src, tkeys)
    ignore_prefixes = tuple(ignore_prefixes)
    new_patterns = tuple(new_patterns)

    report = LoadReport(source=source)
    to_load = {}
    mismatched = []
    for k, v in src.items():
        if k not in tkeys:
            if ignore_prefixes and k.startswith(ignore_prefixes):
                report.ignored.append(k)
            else:
                report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(target[k].shape):
            mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}")
            continue
        to_load[k] = v
    if mismatched:
        raise PretrainedError(
            f"{source}: {len(mismatched)} tensor(s) do not match this network's shapes "
            f"(a different architecture or width?): " + "; ".join(mismatched[:5])
            + (f"; … (+{len(mismatched) - 5})" if len(mismatched) > 5 else "")
        )
    if not to_load:
        raise PretrainedError(
            f"{source}: no tensor name matches this network (file keys like {_short(sorted(src), 3)}; "
            f"network keys like {_short(sorted(tkeys), 3)})"
        )
    for k in sorted(tkeys - to_load.keys()):
        if new_patterns and any(p in k for p in new_patterns):
            report.new.append(k)
        elif not k.endswith("num_batches_tracked"):
            report.missing.append(k)
    # num_batches_tracked is bookkeeping only; absent ones simply stay at zero.
    module.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.missing.sort()
    report.unexpected.sort()
    msg = f"pretrained weights: {report.summary()}"
    if (report.missing or report.unexpected) and warn:
        warnings.warn(msg, PretrainedWarning, stacklevel=3)
    log.info(msg)
    return report


# --- network ----------------------------------------------------------------------------------------
_ONLINE_CACHE: dict = {}


def is_online(host: str = "huggingface.co", port: int = 443, timeout: float = 1.5) -> bool:
    """A fast reachability probe, so an offline machine never waits on a hub timeout.

    Name resolution is not covered by socket timeouts, so the probe runs in a daemon thread and is
    abandoned after ``timeout``. Environment switches force offline. The answer is cached per host."""
    if os.environ.get("CXRVIEWER_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_HUB_OFFLINE", ""
    ) not in ("", "0"):
        return False
    if host in _ONLINE_CACHE:
        return _ONLINE_CACHE[host]
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            result[0] = False

    t = threading.Thread(target=probe, daemon=True, name=f"cxrviewer-online-probe-{host}")
    t.start()
    t.join(timeout + 0.2)
    _ONLINE_CACHE[host] = bool(result[0]) and not t.is_alive()
    return _ONLINE_CACHE[host]


def _fallback(what: str, why: str) -> LoadReport:
    msg = (f"pretrained weights for {what} unavailable ({why}); starting from RANDOM initialisation. "
           f"Pass a local .safetensors file as pretrained=... to use ImageNet weights offline.")
    warnings.warn(msg, PretrainedWarning, stacklevel=3)
    log.info(msg)
    return LoadReport(source="hub", random_init=True, note=why)


def _hf_cache_only_create(name: str, **kwargs) -> nn.Module:
    """timm's pretrained create restricted to the local Hugging Face cache (no network)."""
    import timm

    try:
        import huggingface_hub.constants as hfc
    except ImportError:  # pragma: no cover - timm depends on it
        raise RuntimeError("huggingface_hub missing")
    old = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    finally:
        hfc.HF_HUB_OFFLINE = old


# --- builders ---------------------------------------------------------------------------------------
def _describe(pretrained) -> str:
    if isinstance(pretrained, Mapping):
        return "state_dict"
    return str(pretrained)


def _is_path(pretrained) -> bool:
    return isinstance(pretrained, (str, os.PathLike)) and not (
        isinstance(pretrained, str) and pretrained == IMAGENET_OFFLINE
    )


def _load_source(module: nn.Module, pretrained, **kw) -> LoadReport:
    if isinstance(pretrained, Mapping):
        return load_into(module, pretrained, source="state_dict", **kw)
    path = Path(pretrained)
    return load_into(module, read_state_dict(path), source=str(path), **kw)


def timm_backbone(
    name: str,
    pretrained: Pretrained = None,
    *,
    prepare: Optional[Callable[[nn.Module], None]] = None,
    ignore_prefixes: Iterable[str] = ("fc.", "classifier.", "head.fc.", "last_linear."),
    new_patterns: Iterable[str] = (),
    **timm_kwargs,
) -> tuple:
    """Create a timm network (``num_classes=0`` etc. in ``timm_kwargs``) and initialise it.

    ``prepare`` adds our modules (e.g. SE blocks) before a file is loaded, so a file holding them too
    can fill them, and after hub weights are loaded. Returns ``(module, LoadReport or None)``."""
    import timm

    report: Optional[LoadReport] = None
    if pretrained is True:
        model = None
        why = ""
        try:
            model = _hf_cache_only_create(name, **timm_kwargs)
            report = LoadReport(source=f"timm hub cache: {name}", note="cached")
        except Exception as e:  # not cached (the usual case offline)
            why = f"not in the local cache ({type(e).__name__})"
        if model is None and is_online():
            try:
                model = timm.create_model(name, pretrained=True, **timm_kwargs)
                report = LoadReport(source=f"timm hub: {name}")
            except Exception as e:
                why = f"hub download failed: {e}"
        elif model is None:
            why = "offline: the hub is unreachable"
        if model is None:
            model = timm.create_model(name, pretrained=False, **timm_kwargs)
            report = _fallback(f"timm '{name}'", why)
        if prepare is not None:
            prepare(model)
        return model, report

    model = timm.create_model(name, pretrained=False, **timm_kwargs)
    if prepare is not None:
        prepare(model)
    if not pretrained:
        return model, None
    if isinstance(pretrained, str) and pretrained == IMAGENET_OFFLINE:
        return model, _fallback(f"timm '{name}'", "the offline ImageNet file is a MobileNetV2 only")
    if not (_is_path(pretrained) or isinstance(pretrained, Mapping)):
        raise PretrainedError(f"pretrained must be None, False, True, a file path or a state_dict, "
                              f"not {pretrained!r}")
    report = _load_source(model, pretrained, ignore_prefixes=ignore_prefixes, new_patterns=new_patterns)
    return model, report


# --- torchvision MobileNetV2 ------------------------------------------------------------------------
def timm_to_torchvision_mobilenetv2(src: dict, module: nn.Module) -> dict:
    """Rename a timm ``mobilenetv2_100`` state_dict to torchvision ``mobilenet_v2`` names.

    The two implementations register the same tensors in the same order with the same shapes, so the
    map is positional against timm's own key order (built on the meta device: no memory, no init).
    Files already in torchvision naming pass through untouched."""
    if not any(k.startswith("conv_stem.") for k in src):
        return src
    import timm

    with torch.device("meta"):
        ref = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    timm_keys = [k for k in ref.state_dict() if not k.startswith("classifier.")]
    from torchvision.models import mobilenet_v2

    with torch.device("meta"):
        tv = mobilenet_v2(weights=None)
    tv_keys = [k for k in tv.state_dict() if not k.startswith("classifier.")]
    if len(timm_keys) != len(tv_keys):  # pragma: no cover - guards a future timm change
        raise PretrainedError("cannot map timm mobilenetv2_100 names onto torchvision mobilenet_v2")
    mapping = dict(zip(timm_keys, tv_keys))
    out = {}
    for k, v in src.items():
        if k in mapping:
            out[mapping[k]] = v
        elif k.startswith("classifier."):
            out[k] = v  # dropped as the source classifier
        else:
            out[k] = v  # reported unexpected
    return out


def init_torchvision(
    module: nn.Module,
    pretrained: Pretrained,
    *,
    what: str,
    weights: Optional[Callable[[], object]] = None,
    offline_file: bool = False,
    ignore_prefixes: Iterable[str] = ("classifier.", "fc."),
    new_patterns: Iterable[str] = (),
    key_map: Optional[Callable[[dict, nn.Module], dict]] = None,
) -> Optional[LoadReport]:
    """Initialise a torchvision-named trunk from any accepted source.

    ``weights``: returns the torchvision ``Weights`` enum member used for ``pretrained=True`` online.
    ``offline_file``: this trunk is a MobileNetV2, so ``"imagenet-offline"`` (and ``True`` while offline)
    can use the shared dequantized ImageNet file."""
    if not pretrained:
        return None
    kw = dict(ignore_prefixes=tuple(ignore_prefixes), new_patterns=new_patterns, key_map=key_map)
    if isinstance(pretrained, str) and pretrained == IMAGENET_OFFLINE:
        if not offline_file:
            return _fallback(what, "the offline ImageNet file is a MobileNetV2 only")
        path = offline_mobilenetv2_path()
        if path is None:
            return _fallback(what, f"offline ImageNet file not found (set ${OFFLINE_MOBILENETV2_ENV} "
                                   f"or place {OFFLINE_MOBILENETV2_NAME} in ../shared/weights/)")
        return load_into(module, read_state_dict(path), source=str(path), **kw)
    if pretrained is True:
        why = "no hub weights for this network"
        if weights is not None and is_online("download.pytorch.org"):
            try:
                sd = weights().get_state_dict(progress=False, weights_only=True)
                return load_into(module, sd, source=f"torchvision {what}", **kw)
            except PretrainedError:
                raise
            except Exception as e:
                why = f"download failed: {e}"
        elif weights is not None:
            why = "offline: download.pytorch.org is unreachable"
        path = offline_mobilenetv2_path() if offline_file else None
        if path is not None:
            msg = f"pretrained=True: {why}; using the offline ImageNet MobileNetV2 at {path}"
            warnings.warn(msg, PretrainedWarning, stacklevel=3)
            log.info(msg)
            return load_into(module, read_state_dict(path), source=str(path), **kw)
        return _fallback(what, why)
    if _is_path(pretrained) or isinstance(pretrained, Mapping):
        return _load_source(module, pretrained, **kw)
    raise PretrainedError(f"pretrained must be None, False, True, '{IMAGENET_OFFLINE}', a file path or a "
                          f"state_dict, not {pretrained!r}")


def init_torchvision_mobilenetv2(module: nn.Module, pretrained: Pretrained,
                                 new_patterns: Iterable[str] = ()) -> Optional[LoadReport]:
    """A torchvision MobileNetV2 trunk (``features.*``): torchvision or timm files, the offline file."""

    def weights():
        from torchvision.models import MobileNet_V2_Weights

        return MobileNet_V2_Weights.IMAGENET1K_V1

    return init_torchvision(module, pretrained, what="MobileNetV2", weights=weights, offline_file=True,
                            ignore_prefixes=("classifier.",), new_patterns=new_patterns,
                            key_map=timm_to_torchvision_mobilenetv2)


def attach_report(model: nn.Module, report: Optional[LoadReport]) -> None:
    """Keep the load report on the model (not in its state_dict) for the trainer's provenance."""
    model.pretrained_report = report
