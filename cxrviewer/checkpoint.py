"""The one checkpoint format: a ``.safetensors`` file whose header carries the model card as JSON.

Why this shape: safetensors cannot run code when read (a pickled ``.pt`` can), it memory-maps, and its
header is a small JSON block at the front of the file, so the model selector can list every model's name
and classes by reading a few kilobytes (:func:`read_card`) without touching the weights. The card
(``__metadata__["cxrviewer"]``, schema in docs/architecture.md) holds everything needed to rebuild the
network and reproduce its inputs exactly; :func:`load_checkpoint` checks all of it and refuses, with a
message a reader can act on, anything that would otherwise fail later or, worse, silently predict nonsense
(wrong preprocessing, classes that do not match the head, weights for another network, a cut-off file).
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
from pathlib import Path
from typing import Optional

from cxrviewer.atomic import atomic_path
from cxrviewer.preprocess import PREPROCESS_VERSION, RESIZE_MODES, PreprocessSpec


FORMAT_VERSION = 1
METADATA_KEY = "cxrviewer"
SUFFIX = ".safetensors"
#: Suffixes of pickled PyTorch files: never unpickled from a user's file, only converted on request.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
# A header larger than this is not a header we wrote (ours are a few kB); it also bounds what a hostile
# file can make us allocate before anything is validated.
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}


class CheckpointError(Exception):
    """A model file cannot be used. ``str()`` names the file (name only) and the reason, for the user."""

    def __init__(self, path, reason: str):
        self.path = Path(path) if path is not None else None
        self.reason = reason
        name = self.path.name if self.path is not None else "<model>"
        super().__init__(f"Cannot use model {name}: {reason}")


# --------------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------------


def card_defaults(
    model,
    classes,
    spec: Optional[PreprocessSpec] = None,
    *,
    name: Optional[str] = None,
    display_name: Optional[str] = None,
    version: str = "1.0",
    temperature: float = 1.0,
    training: Optional[dict] = None,
    card: Optional[dict] = None,
    ood: Optional[dict] = None,
    lime: Optional[dict] = None,
    default: bool = False,
) -> dict:
    """Build a complete card for ``model`` so the trainer, the importer and the tests all write the same
    structure (one construction, one schema)."""
    spec = spec or PreprocessSpec()
    classes = [str(c) for c in classes]
    arch = getattr(model, "arch_name", "") or ""
    name = name or f"{arch}-{len(classes)}class"
    out = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "display_name": display_name or name,
        "version": str(version),
        "arch": arch,
        "arch_args": _json_clean(dict(getattr(model, "arch_args", {}) or {})),
        "classes": classes,
        "preprocess": spec.to_dict(),
        "temperature": float(temperature),
        "training": _json_clean(training or {}),
        "card": _json_clean(card or {}),
        "ood": _json_clean(ood),
    }
    if lime:
        out["lime"] = _json_clean(lime)
    if default:
        out["default"] = True
    return out


def card_spec(card: dict) -> PreprocessSpec:
    """The preprocessing a checkpoint's model expects (what :func:`cxrviewer.preprocess.preprocess_film` takes)."""
    return PreprocessSpec.from_dict(card["preprocess"])


def validate_card(card, path=None) -> dict:
    """Check every field the program relies on; returns a normalised deep copy or raises CheckpointError.

    ``arch`` is checked against the registry here, so a card that passes can always be rebuilt."""
    def bad(reason):
        return CheckpointError(path, f"model card: {reason}")

    if not isinstance(card, dict):
        raise bad("not a JSON object")
    try:
        c = copy.deepcopy(card)
    except RecursionError:  # JSON nested a few hundred deep parses, but is deeper than deepcopy recurses
        raise bad("nested too deeply") from None
    fv = c.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int) or fv < 1:
        raise bad(f"format_version must be a positive integer, got {fv!r}")
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written in checkpoint format {fv}, newer than this CXR Viewer reads (up to {FORMAT_VERSION}); "
            "update CXR Viewer to use it",
        )
    for key in ("name", "arch"):
        if not isinstance(c.get(key), str) or not c[key].strip():
            raise bad(f"{key!r} must be a non-empty string")
    c.setdefault("display_name", c["name"])
    if not isinstance(c["display_name"], str) or not c["display_name"].strip():
        raise bad("'display_name' must be a non-empty string")
    c["version"] = str(c.get("version", ""))
    c.setdefault("arch_args", {})
    if not isinstance(c["arch_args"], dict):
        raise bad("'arch_args' must be an object")
    classes = c.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        raise bad("'classes' must be a list of at least two class names")
    if not all(isinstance(x, str) and x.strip() for x in classes):
        raise bad("every class name must be a non-empty string")
    if len(set(classes)) != len(classes):
        dup = sorted({x for x in classes if classes.count(x) > 1})
        raise bad(f"class names must be unique (repeated: {', '.join(dup)})")
    pre = c.get("preprocess")
    if not isinstance(pre, dict):
        raise bad("'preprocess' must be an object")
    pv = pre.get("version")
    if isinstance(pv, bool) or not isinstance(pv, int):
        raise bad("'preprocess.version' must be an integer")
    if pv != PREPROCESS_VERSION:
        raise CheckpointError(
            path,
            f"trained with preprocessing version {pv}, but this CXR Viewer implements version "
            f"{PREPROCESS_VERSION}; its predictions would not be valid here",
        )
    size = pre.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise bad(f"'preprocess.input_size' must be an integer between 16 and 4096, got {size!r}")
    if pre.get("resize") not in RESIZE_MODES:
        raise bad(f"'preprocess.resize' must be one of {', '.join(RESIZE_MODES)}, got {pre.get('resize')!r}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_finite_number(e) for e in v)):
            raise bad(f"'preprocess.{key}' must be a list of three numbers")
    if any(float(s) <= 0 for s in pre["std"]):
        raise bad("'preprocess.std' values must be positive")
    t = c.get("temperature", 1.0)
    if t is None:
        t = 1.0
    if not _is_finite_number(t) or float(t) <= 0:
        raise bad(f"'temperature' must be a positive number, got {t!r}")
    c["temperature"] = float(t)
    for key in ("training", "card"):
        c.setdefault(key, {})
        if c[key] is None:
            c[key] = {}
        if not isinstance(c[key], dict):
            raise bad(f"{key!r} must be an object")
    c.setdefault("ood", None)
    if c["ood"] is not None and not isinstance(c["ood"], dict):
        raise bad("'ood' must be an object or null")
    _check_lime(c.get("lime"), bad)
    if "default" in c and not isinstance(c["default"], bool):
        raise bad("'default' must be true or false")

    from cxrviewer.models import model_info

    try:
        model_info(c["arch"])
    except KeyError as e:
        detail = str(e.args[0] if e.args else "")
        known = detail[detail.index("known:"):] if "known:" in detail else ""
        raise CheckpointError(path, f"unknown architecture {c['arch']!r} (this CXR Viewer may be too old"
                                    f"{'; ' + known if known else ''})") from None
    return c


def _check_lime(lime, bad) -> None:
    """The card's optional ``lime``: the superpixels LIME uses on this checkpoint unless the reader chooses
    (``segmentation``, SLIC's ``n_segments``; see :func:`cxrviewer.explain.lime_explainer.for_model`). Other
    keys are left for newer versions."""
    if lime is None:
        return
    if not isinstance(lime, dict):
        raise bad("'lime' must be an object")
    from cxrviewer.explain.lime_explainer import SEGMENTATIONS

    if "segmentation" in lime and lime["segmentation"] not in SEGMENTATIONS:
        raise bad(f"'lime.segmentation' must be one of {', '.join(SEGMENTATIONS)}, got {lime['segmentation']!r}")
    n = lime.get("n_segments")
    if "n_segments" in lime and (isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 10000):
        raise bad(f"'lime.n_segments' must be an integer between 2 and 10000, got {n!r}")


def _is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _json_clean(obj):
    """Make a value strict-JSON: tuples -> lists, numpy scalars -> Python, NaN/inf -> null (a metric that
    could not be computed, e.g. AUC of an absent class, must not make the checkpoint unreadable elsewhere)."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return _json_clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"model card value of type {type(obj).__name__} cannot be stored as JSON")


# --------------------------------------------------------------------------------------------------
# Reading the header
# --------------------------------------------------------------------------------------------------


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            path,
            "PyTorch pickle files are not loaded, because opening one can run arbitrary code; convert it "
            "once with cxrviewer.checkpoint.import_torch_weights(...) into a .safetensors checkpoint",
        )


def _read_header(path: Path) -> dict:
    """Parse the safetensors header ourselves, so each way a file can be wrong gets its own message
    (the library reports them all alike), and check the tensors' byte ranges against the file size."""
    _refuse_pickle(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(path, "not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            raw = fh.read(min(n, _MAX_HEADER_BYTES)) if 0 < n else b""
    except OSError as e:
        raise CheckpointError(path, f"cannot read the file ({e.strerror or e})") from None
    if not raw[:1] == b"{":  # a safetensors header is a JSON object right after its 8-byte length
        if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
            raise CheckpointError(path, "this is a pickled PyTorch file, not a safetensors checkpoint; "
                                        "pickles are never loaded (they can run code)")
        raise CheckpointError(path, "not a safetensors file (no valid header)")
    if n > _MAX_HEADER_BYTES:
        raise CheckpointError(path, "not a safetensors file (no valid header)")
    if n > size - 8:
        raise CheckpointError(path, "the file is truncated (its header is cut off); copy it again")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, integers over 4300 digits, nesting too deep
        raise CheckpointError(path, "not a safetensors file, or its header is damaged") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "not a safetensors file (no valid header)")
    data_len = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            nbytes = _DTYPE_BYTES[info["dtype"]] * math.prod(shape)
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(Infinity)
            raise CheckpointError(path, f"damaged safetensors header (entry {key!r})") from None
        if hi - lo != nbytes or lo < 0:
            raise CheckpointError(path, f"damaged safetensors header (entry {key!r} has the wrong length)")
        end = max(end, hi)
    if end > data_len:
        raise CheckpointError(path, f"the file is truncated ({data_len} of {end} weight bytes present); copy it again")
    return header


def _card_from_header(path: Path, header: dict) -> dict:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise CheckpointError(
            path,
            "not a CXR Viewer checkpoint: it is a safetensors file but carries no model card (architecture, "
            "classes, preprocessing); weights alone cannot be used safely",
        )
    try:
        card = json.loads(meta[METADATA_KEY])
    except (TypeError, ValueError, RecursionError):  # also integers over 4300 digits, nesting too deep
        raise CheckpointError(path, "the model card is not valid JSON") from None
    return validate_card(card, path)


def read_card(path) -> dict:
    """The validated model card of a checkpoint, reading only its header (cheap: for listing models)."""
    path = Path(path)
    return _card_from_header(path, _read_header(path))


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _state_tensors(model) -> dict:
    # Cloned and contiguous: safetensors refuses views and tensors sharing storage (tied weights).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(path, model, card: dict) -> Path:
    """Write ``model``'s weights and ``card`` as one checkpoint, atomically: a reader (or a crash) never
    sees a half-written file, because the data goes to a temporary file in the same folder, is fsynced,
    and only then replaces the target name."""
    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise CheckpointError(path, f"checkpoints are saved as {SUFFIX} files")
    card = validate_card(_json_clean(card), path)
    if getattr(model, "arch_name", None) and model.arch_name != card["arch"]:
        raise CheckpointError(path, f"the card says {card['arch']!r} but the model is {model.arch_name!r}")
    head = int(getattr(model, "num_classes", 0) or 0)
    if head and head != len(card["classes"]):
        raise CheckpointError(path, f"the card lists {len(card['classes'])} classes but the model's head "
                                    f"has {head} outputs")
    model_args = _json_clean(dict(getattr(model, "arch_args", {}) or {}))
    if model_args and model_args != card["arch_args"]:
        raise CheckpointError(path, f"the card's arch_args {card['arch_args']} differ from the model's {model_args}")

    from safetensors.torch import save_file

    tensors = _state_tensors(model)
    metadata = {METADATA_KEY: json.dumps(card, allow_nan=False, sort_keys=False), "format": "pt"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _build(card: dict, path=None):
    from cxrviewer.models import create_model

    try:
        return create_model(card["arch"], len(card["classes"]), pretrained=None, **card["arch_args"])
    except Exception as e:  # noqa: BLE001 - hostile arch_args raise anything: TypeError, ValueError,
        # RuntimeError (negative or overflowing sizes), ZeroDivisionError (a reduction of 0)...
        raise CheckpointError(path, f"architecture {card['arch']!r} rejects the card's arch_args: {e}") from None


def check_tensors_match(model, shapes: dict, num_classes: int, path=None) -> None:
    """Refuse weights that are not this architecture's: missing or unexpected names, wrong shapes. A
    classifier whose output count differs from the card's class list gets its own message, since that
    is a card that lies about its classes rather than weights for another network."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    head = [k for k in wrong
            if len(expected[k]) >= 1 and expected[k][0] == num_classes and len(shapes[k]) == len(expected[k])
            and tuple(shapes[k][1:]) == expected[k][1:]]
    if head and len(head) == len(wrong) and not missing and not unexpected:
        outs = sorted({int(shapes[k][0]) for k in head})
        raise CheckpointError(
            path,
            f"the card lists {num_classes} classes but the weights' classifier has "
            f"{'/'.join(map(str, outs))} outputs ({head[0]}); the card does not describe these weights",
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} with the wrong shape (e.g. {k}: {tuple(shapes[k])} in the file, "
                        f"{expected[k]} expected)")
    if problems:
        raise CheckpointError(
            path, f"the weights do not match architecture {getattr(model, 'arch_name', '?')!r}: " + "; ".join(problems)
        )


def load_checkpoint(path, device="cpu") -> tuple:
    """Rebuild the network from the card, load and check the weights; returns ``(model, card)`` with the
    model in eval mode on ``device``. Everything is verified before any weight is used."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    header = _read_header(path)
    card = _card_from_header(path, header)
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    model = _build_skeleton(card, path)
    check_tensors_match(model, shapes, len(card["classes"]), path)
    expected = model.state_dict()
    state = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                ref = expected[k]
                if t.dtype != ref.dtype:
                    if t.is_floating_point() != ref.is_floating_point():
                        raise CheckpointError(path, f"tensor {k} has type {t.dtype}, {ref.dtype} expected")
                    t = t.to(ref.dtype)
                # NaN and inf survive a sum (inf - inf is NaN); one pass, no mask allocated
                if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.sum(dtype=torch.float64))):
                    raise CheckpointError(path, f"the weights contain NaN or infinite values ({k}); the "
                                                "training run that wrote it diverged")
                if k.endswith("running_var") and t.numel() and bool((t < 0).any()):  # NaN for every film
                    raise CheckpointError(path, f"the weights contain negative variances ({k}); the file is damaged")
                state[k] = t
    except (SafetensorError, OSError) as e:
        raise CheckpointError(path, f"cannot read the weights ({e})") from None
    if _has_meta(model):
        model.load_state_dict(state, strict=True, assign=True)
        if _has_meta(model):  # state the file does not hold (non-persistent buffers): build it for real
            model = _build(card, path)
            model.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device), card


def _build_skeleton(card: dict, path=None):
    """The network without initialising its weights (on the meta device), since every weight is about to
    be replaced by the file's: building ResNet-152-sized networks the normal way spends seconds in random
    initialisation. Falls back to a normal build for anything that cannot be built on the meta device."""
    import torch

    try:
        with torch.device("meta"):
            return _build(card, path)
    except CheckpointError:
        raise
    except Exception:
        return _build(card, path)


def _has_meta(model) -> bool:
    """Whether any tensor of the model (parameters, buffers, or plain tensor attributes) is still on the
    meta device, i.e. has no data."""
    import torch

    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_meta:
            return True
    for mod in model.modules():
        for v in vars(mod).values():
            if isinstance(v, torch.Tensor) and v.is_meta:
                return True
    return False


# --------------------------------------------------------------------------------------------------
# Importing a PyTorch state dict (the one explicit, safe use of torch.load)
# --------------------------------------------------------------------------------------------------


def import_torch_weights(pth_path, arch: str, classes, out_path, *, arch_args: Optional[dict] = None,
                         spec: Optional[PreprocessSpec] = None, **card_fields) -> Path:
    """Convert a PyTorch ``state_dict`` file (``.pt``/``.pth``) to our checkpoint format.

    This is the only place a ``.pt`` file is opened, and it uses ``torch.load(weights_only=True)``, which
    reconstructs tensors and plain containers only and refuses any pickled code. A dict wrapping the state
    dict under ``state_dict``/``model``/``model_state_dict`` and a ``module.`` prefix (DataParallel) are
    accepted; the weights must then match ``arch`` exactly.
    """
    import pickle

    import torch

    from cxrviewer.models import create_model

    pth_path = Path(pth_path)
    try:
        obj = torch.load(str(pth_path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise CheckpointError(pth_path, f"not a plain PyTorch weights file that can be read safely ({e})") from None
    except OSError as e:
        raise CheckpointError(pth_path, f"cannot read the file ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - e.g. SafetensorError: torch.load hands *.safetensors to safetensors
        raise CheckpointError(pth_path, f"not a plain PyTorch weights file that can be read safely ({e})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(pth_path, "does not contain a state dict (a mapping of names to tensors)")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    classes = [str(c) for c in classes]
    try:
        model = create_model(arch, len(classes), pretrained=None, **(arch_args or {}))
    except KeyError as e:
        raise CheckpointError(pth_path, str(e.args[0] if e.args else e)) from None
    check_tensors_match(model, {k: tuple(v.shape) for k, v in state.items()}, len(classes), pth_path)
    model.load_state_dict(state, strict=True)
    card_fields.setdefault("name", Path(out_path).stem)
    card_fields.setdefault("training", {"imported_from": pth_path.name})
    return save_checkpoint(out_path, model, card_defaults(model, classes, spec, **card_fields))
