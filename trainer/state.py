"""The resumable training state, stored without pickle, written atomically.

``torch.save`` of an optimizer is a pickle, and a run folder is exactly the kind of thing a user copies
between machines and hands to someone else; opening a pickle can run code. So the state is one
safetensors file: every tensor (model weights, optimizer moments, AMP scaler) as a named tensor, and
everything else (epoch, scheduler, optimizer hyper-parameters, best metric, early-stopping counters,
history) as JSON in the safetensors header. One file means the tensors and the counters can never
disagree; the write goes to a temporary file, is fsynced and renamed over the old one, so killing the
process mid-write leaves the previous state intact. A readable JSON mirror is written beside it for
people; the loader never reads the mirror.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cxrviewer.atomic import atomic_write_bytes, atomic_write_text

STATE_FILE = "resume.safetensors"
STATE_MIRROR = "resume.json"
STATE_FORMAT = 1
_META_KEY = "cxrviewer_train_state"


def _split_optimizer(opt_state: dict) -> tuple:
    tensors, meta = {}, {"state": {}, "param_groups": opt_state["param_groups"]}
    for pid, st in opt_state["state"].items():
        m = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().to("cpu").contiguous().clone()
                m[k] = {"tensor": f"optim.{pid}.{k}"}
            else:
                m[k] = {"value": v}
        meta["state"][str(pid)] = m
    return tensors, meta


def _join_optimizer(meta: dict, tensors: dict) -> dict:
    state = {}
    for pid, m in meta["state"].items():
        st = {}
        for k, spec in m.items():
            st[k] = tensors[spec["tensor"]] if "tensor" in spec else spec["value"]
        state[int(pid)] = st
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(run_dir: Path, model_state: dict, optimizer, scheduler, scaler, info: dict) -> Path:
    """Write the state after a completed epoch. ``info`` is JSON (epoch, best, history, ...)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    opt_t, opt_meta = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_t)
    meta = {
        "format": STATE_FORMAT,
        "info": info,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}
        if scaler is not None and scaler.is_enabled() else None,
    }
    text = json.dumps(meta, allow_nan=True, default=_default)
    blob = save(tensors, metadata={_META_KEY: text, "format": "pt"})
    path = Path(run_dir) / STATE_FILE
    atomic_write_bytes(path, blob)
    atomic_write_text(Path(run_dir) / STATE_MIRROR, json.dumps({k: v for k, v in meta.items()}, indent=1,
                                                               allow_nan=True, default=_default))
    return path


def _default(o):
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} in the training state")


class StateError(Exception):
    pass


def load_state(run_dir: Path) -> tuple:
    """-> (meta dict, model state dict, optimizer state dict). Raises StateError with a readable reason."""
    from safetensors import safe_open

    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise StateError(f"nothing to resume in {run_dir}: {STATE_FILE} not found (the run never finished an epoch)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise StateError(f"{path.name} is damaged and cannot be resumed from ({e})") from None
    if _META_KEY not in header:
        raise StateError(f"{path.name} is not a CXR Viewer training state")
    meta = json.loads(header[_META_KEY])
    if int(meta.get("format", 0)) > STATE_FORMAT:
        raise StateError(f"{path.name} was written by a newer trainer (format {meta.get('format')})")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state = _join_optimizer(meta["optimizer"], tensors)
    return meta, model_state, opt_state
