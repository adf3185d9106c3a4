"""Choosing where the models run: CUDA when present, Apple MPS, else the CPU.

The choice can be forced (setting / ``--device`` argument, then the ``CXRVIEWER_DEVICE`` environment
variable) because a shared or flaky GPU is common on reading-room machines; a forced device that is not
there falls back to the CPU with a notice instead of failing, so the viewer always opens.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Optional

import torch

log = logging.getLogger(__name__)

ENV_VAR = "CXRVIEWER_DEVICE"
CHOICES = ("auto", "cpu", "cuda", "mps")


def _parse(pref) -> torch.device | str:
    """'auto' or a torch.device; raises ValueError for anything else."""
    if isinstance(pref, torch.device):
        return pref
    s = str(pref).strip().lower()
    if s in ("", "auto"):
        return "auto"
    if s == "gpu":
        s = "cuda"
    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {pref!r}; use one of {', '.join(CHOICES)} (or cuda:N)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {pref!r}; use one of {', '.join(CHOICES)} (or cuda:N)")
    return dev


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:  # very old macOS / builds without MPS
        return False


def exact_fp32(dev: torch.device) -> None:
    """Make fp32 mean fp32 on ``dev``: cuDNN's convolutions default to TF32 on Ampere and later GPUs,
    which keeps only 10 mantissa bits, so the "exact" probabilities a reader is shown would depend on the
    GPU by more than fp32 rounding (with it off, an H200's agreed with the CPU's within 1e-4). Set for the
    whole process, not per forward: the flags are global, and switching them around one thread's forward
    would switch them under another's. Nothing here needs TF32 for speed: the fast path on a GPU runs in
    bf16 and the trainer in fp16 autocast."""
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _auto() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _available(dev: torch.device) -> Optional[str]:
    """None when ``dev`` can be used, else why not."""
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "no usable CUDA GPU (or driver) was found"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"there is no GPU number {dev.index} (found {torch.cuda.device_count()})"
        return None
    if dev.type == "mps":
        return None if mps_available() else "Apple MPS is not available on this machine"
    return f"device type {dev.type!r} is not supported"


def select_device(preference=None, notices: Optional[list] = None) -> torch.device:
    """The device to run models on.

    ``preference`` (a string such as ``"auto"``, ``"cpu"``, ``"cuda:1"``, ``"mps"``, or a torch.device)
    wins over the ``CXRVIEWER_DEVICE`` environment variable; neither means ``auto``. A device that is
    asked for but absent gives the CPU, and the reason is appended to ``notices`` (when given) and logged,
    so the caller can show it. An unknown name in ``preference`` raises ValueError (a usage error); an
    unknown name in the environment is reported and ignored.
    """
    def notice(msg: str) -> None:
        log.warning(msg)
        if notices is not None:
            notices.append(msg)

    if preference is not None:
        pref = _parse(preference)
    else:
        env = os.environ.get(ENV_VAR, "").strip()
        try:
            pref = _parse(env) if env else "auto"
        except ValueError as e:
            notice(f"{ENV_VAR}: {e}; choosing automatically")
            pref = "auto"
    if pref == "auto":
        return _auto()
    why = _available(pref)
    if why:
        notice(f"Device {pref} requested but {why}; running on the CPU")
        return torch.device("cpu")
    if pref.type == "cuda" and pref.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return pref


def describe_device(dev) -> str:
    """One short line for the status bar: which device, and what kind."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        try:
            name = torch.cuda.get_device_name(dev)
        except Exception:
            name = "GPU"
        return f"GPU: {name} ({dev})"
    if dev.type == "mps":
        return "GPU: Apple MPS"
    cap = ""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    extras = [x for x in (cap, "bf16" if cpu_supports_bf16() else "", f"{torch.get_num_threads()} threads") if x]
    return f"CPU ({', '.join(extras)})"


def _cpu_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    if fn is None:
        return False
    try:
        return bool(fn())
    except Exception:
        return False


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86; the BF16 extension on Arm
    Linux). Without it bf16 autocast is emulated and slower than fp32, so the fast path must not use it."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")
    if machine in ("aarch64", "arm64") and platform.system() == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                return any(line.lower().startswith("features") and " bf16" in line.lower() for line in fh)
        except OSError:
            return False
    return False  # macOS CPUs: the MPS device is preferred; other platforms: do not assume
