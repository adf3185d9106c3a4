"""Fuzz the checkpoint loader: hostile model files must only ever load or raise CheckpointError, and never run code.

Seeds: two small real checkpoints written by ``save_checkpoint`` (the test-only ``tiny_test_cnn``, three and
two classes, from ``tests/inference_helpers.py``), and pickles whose ``__reduce__`` creates a marker file when
unpickled: bare pickles (protocols 0, 2, 5), ``torch.save`` zip and legacy archives holding the payload next
to a real state dict, a clean state dict, and a checkpoint with a pickle appended. Each case is one of:

* header structure: tensor entries with another dtype, shape or data offsets (negative, overlapping,
  past the end, not numbers), entries dropped, added or replaced by junk, ``__metadata__`` missing or not
  an object, the card not a string;
* the card (model card JSON): classes that lie (1, 2, 4, 1000 names for a 3-output head), duplicates,
  non-strings, every field out of range or of the wrong type, unknown or real-but-different architectures,
  hostile ``arch_args`` (negative, zero, huge, wrong type), values nested thousands deep, integers of
  5,000 digits, NaN and Infinity;
* tensors rewritten consistently (the file stays valid safetensors): head resized, dtype changed,
  NaN / inf weights, tensors dropped, renamed, reshaped, empty, negative BatchNorm variances;
* raw header text: deep nesting, huge numbers, duplicate keys, trailing bytes, invalid UTF-8, BOM;
* the 8-byte header length lying (0, ±1, past the end, 2**63, a pickle's first byte);
* byte level (bit flips, interesting bytes, truncation, chunks deleted / duplicated), mostly in the header;
* the pickles above, under every name (``.pt``, ``.pth``, ``.bin``, ``.safetensors``, no suffix...).

Every case goes through ``read_card`` and ``load_checkpoint`` (and ``import_torch_weights``, the one place
``torch.load`` is used, for the pickles). A case fails when any of them raises anything but CheckpointError,
when the marker file appears (the payload ran), when a loaded model cannot run a forward pass, or on the
harness' memory / time / file-modified checks (see ``bench/fuzz_loader.py``).

    python bench/fuzz_checkpoint.py                 # 2,000 cases
    python bench/fuzz_checkpoint.py --quick         # 500 cases
    python bench/fuzz_checkpoint.py --seed 1 --case 42
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import pickle
import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_loader import (  # noqa: E402
    Case,
    Field,
    MutationContext,
    add_common_args,
    byte_mutate,
    describe_exception,
    machine_line,
    memory_error_in,
    run_cli,
)

MARKER_NAME = "PICKLE_PAYLOAD_EXECUTED"


class MarkerPayload:
    """Unpickling this creates the file ``marker`` (``open(marker, "a")``): proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (io.open, (self.marker, "a"))


# ==================================================================================================
# Seeds
# ==================================================================================================


def st_split(data: bytes) -> tuple:
    """(header dict, header text, data block) of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    text = data[8:8 + n].decode("utf-8")
    return json.loads(text), text, data[8 + n:]


def st_canonical(data: bytes) -> bytes:
    """The same safetensors file with its header keys in a fixed order (safetensors writes them from hash
    maps, whose order changes from run to run; the cases must not)."""
    h, _text, blob = st_split(data)
    h = {k: (dict(sorted(v.items())) if k == "__metadata__" and isinstance(v, dict) else v) for k, v in sorted(h.items())}
    return st_join(json.dumps(h), blob)


def st_join(header_text, blob: bytes, n: Optional[int] = None) -> bytes:
    raw = header_text.encode("utf-8", "surrogatepass") if isinstance(header_text, str) else header_text
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", (len(raw) if n is None else n) % (1 << 64)) + raw + blob


def pickle_seeds(marker: Path) -> dict:
    """name -> bytes: files whose unpickling would create ``marker``, and a clean state dict for contrast."""
    import torch

    from inference_helpers import make_model

    state = make_model().state_dict()
    payload = MarkerPayload(marker)
    out = {
        "pickle_p0": pickle.dumps(payload, protocol=0),
        "pickle_p2": pickle.dumps(payload, protocol=2),
        "pickle_p5": pickle.dumps({"state_dict": {"x": payload}}, protocol=5),
    }
    # (the legacy format names tensor storages by memory address: no tensors there, so the bytes are stable)
    for name, obj, legacy in (("torch_zip_payload", {"state_dict": state, "evil": payload}, False),
                              ("torch_legacy_payload", {"model": payload, "epoch": 3}, True),
                              ("torch_zip_state_dict", state, False)):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
        out[name] = buf.getvalue()
    return out


def checkpoint_seeds(workdir: Path) -> dict:
    """name -> bytes of real checkpoints (the test-only tiny architecture)."""
    from inference_helpers import CLASSES3, ensure_tiny_registered, make_checkpoint

    ensure_tiny_registered()
    a = make_checkpoint(workdir / "tiny3.safetensors", classes=CLASSES3, seed=0)
    b = make_checkpoint(workdir / "tiny2.safetensors", classes=["Normal", "Abnormal"], seed=1, arch_args={"width": 4},
                        temperature=1.3, training={"epochs": 3, "val_auc": 0.91}, card={"description": "fuzz seed"},
                        ood={"kind": "energy", "threshold": -4.2})
    return {"tiny3.safetensors": st_canonical(a.read_bytes()), "tiny2.safetensors": st_canonical(b.read_bytes())}


# ==================================================================================================
# Mutations
# ==================================================================================================

DTYPES = ("F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2",
          "F4", "XYZ", "", "f32", 7, None, ["F32"])
HUGE = ("1" + "0" * 5000)  # more digits than Python converts by default (int_max_str_digits = 4300)


def _tensor_keys(h: dict) -> list:
    return [k for k in h if k != "__metadata__"]


def h_dtype(h, rng, blob):
    k = rng.choice(_tensor_keys(h))
    v = rng.choice(DTYPES)
    h[k]["dtype"] = v
    return f"{k}.dtype={v!r}"


def h_shape(h, rng, blob):
    k = rng.choice(_tensor_keys(h))
    s = list(h[k]["shape"])
    v = rng.choice((s[::-1], s + [1], s[:-1], [0], [], [-1] + s[1:], [2 ** 62, 2 ** 62], [1e308], ["3"], [None],
                    [[3]], [float(x) for x in s], [x * 2 for x in s], [2 ** 64 + x for x in s], {"0": 1}, "3"))
    h[k]["shape"] = v
    return f"{k}.shape={str(v)[:40]}"


def h_offsets(h, rng, blob):
    k = rng.choice(_tensor_keys(h))
    lo, hi = h[k]["data_offsets"]
    other = h[rng.choice(_tensor_keys(h))]["data_offsets"]
    v = rng.choice(([0, 0], [lo, hi + 4], [hi, lo], [-8, hi - lo - 8], [lo + 2 ** 64, hi + 2 ** 64], list(other),
                    [lo], [lo, hi, hi], ["a", "b"], [lo + 0.5, hi + 0.5], [len(blob), len(blob) + hi - lo],
                    [2 ** 63 - 1, 2 ** 63 - 1 + hi - lo], None))
    h[k]["data_offsets"] = v
    return f"{k}.data_offsets={v}"


def h_entries(h, rng, blob):
    op = rng.choice(("drop", "add", "junk", "missing"))
    k = rng.choice(_tensor_keys(h))
    if op == "drop":
        del h[k]
        return f"drop entry {k}"
    if op == "add":
        name = rng.choice(("extra.weight", "head.weight.x", "module.head.weight", "", "__metadata__x"))
        h[name] = {"dtype": "F32", "shape": [2], "data_offsets": rng.choice(([0, 8], [len(blob), len(blob) + 8]))}
        return f"add entry {name!r}"
    if op == "junk":
        v = rng.choice((None, [], "x", 3, True, {"dtype": "F32"}))
        h[k] = v
        return f"{k}={v!r}"
    field = rng.choice(("dtype", "shape", "data_offsets"))
    del h[k][field]
    return f"{k} without {field}"


def h_meta(h, rng, blob):
    op = rng.choice(("delete", "list", "string", "null", "no card", "card not string", "card number", "extra"))
    meta = h.get("__metadata__", {})
    if op == "delete":
        h.pop("__metadata__", None)
    elif op == "list":
        h["__metadata__"] = [meta]
    elif op == "string":
        h["__metadata__"] = json.dumps(meta)
    elif op == "null":
        h["__metadata__"] = None
    elif op == "no card":
        meta.pop("cxrviewer", None)
    elif op == "card not string":
        meta["cxrviewer"] = json.loads(meta.get("cxrviewer", "{}"))
    elif op == "card number":
        meta["cxrviewer"] = rng.choice((3, None, ["a"], True))
    else:
        meta[rng.choice(("format", "x" * 300, ""))] = rng.choice(("tf", 1, None))
    return f"__metadata__ {op}"


HEADER_OPS = ((h_dtype, 2.0), (h_shape, 2.0), (h_offsets, 2.0), (h_entries, 1.5), (h_meta, 1.5))

_CARD_VALUES = (None, "", " ", 0, -1, 1, 2, 1.5, True, False, [], {}, "x" * 10000, float("nan"), float("inf"),
                10 ** 30, [1, 2, 3], {"a": 1})


def c_classes(c, rng):
    op = rng.choice(("n", "n", "dup", "types", "empty", "long", "unicode", "huge"))
    if op == "n":
        k = rng.choice((0, 1, 2, 4, 5, 1000))
        c["classes"] = [f"C{i}" for i in range(k)]
        return f"classes: {k} names"
    if op == "dup":
        c["classes"] = [c["classes"][0]] * len(c["classes"])
        return "classes repeated"
    if op == "types":
        c["classes"] = rng.choice(([1, 2, 3], ["a", None, "c"], "abc", {"a": 1}, None, ["a", ["b"], "c"]))
        return f"classes={str(c['classes'])[:30]}"
    if op == "empty":
        c["classes"] = ["", " ", "x"][: len(c["classes"])]
        return "classes blank"
    if op == "long":
        c["classes"] = [n * 10000 for n in c["classes"]]
        return "classes 10,000 times longer"
    if op == "unicode":
        c["classes"] = ["\u202e\u0000\ud800"[: i + 1] + n for i, n in enumerate(c["classes"])]
        return "classes with NUL / RTL override / lone surrogate"
    c["classes"] = [f"class {i}" for i in range(200000)]
    return "classes: 200,000 names"


def c_field(c, rng):
    key = rng.choice(("format_version", "name", "display_name", "version", "temperature", "training", "card", "ood",
                      "default", "arch_args", "preprocess"))
    if rng.random() < 0.15:
        c.pop(key, None)
        return f"card without {key}"
    v = rng.choice(_CARD_VALUES)
    c[key] = v
    return f"card.{key}={str(v)[:30]!r}"


def c_preprocess(c, rng):
    pre = c.get("preprocess")
    if not isinstance(pre, dict):
        pre = c["preprocess"] = {}
    key = rng.choice(("version", "input_size", "resize", "mean", "std", "extra"))
    v = rng.choice({
        "version": (0, 2, "1", None, 1.0, True, 10 ** 20),
        "input_size": (0, 15, 16, 4096, 4097, 10 ** 9, -224, "224", True, 224.0, None),
        "resize": ("bogus", None, "", 3, ["letterbox"]),
        "mean": ([float("nan")] * 3, [1, 2], ["a", "b", "c"], [1e308] * 3, None, [0.5] * 300),
        "std": ([0, 1, 1], [-1, 1, 1], [1e-320] * 3, [float("inf")] * 3, [True, 1, 1]),
        "extra": ("x", None),
    }[key])
    pre[key] = v
    return f"preprocess.{key}={str(v)[:30]}"


def c_arch(c, rng):
    op = rng.choice(("name", "args", "args", "args", "both"))
    desc = []
    if op in ("name", "both"):
        c["arch"] = rng.choice(("nope", "", "TINY_TEST_CNN", "tiny_test_cnn ", "__class__", "mobilenet_lung",
                                "resnet18", "squeezenet", "da_covidnet", "mobilenet_lung", "fusion_tl", "cs_convnext"))
        desc.append(f"arch={c['arch']!r}")
    if op in ("args", "both"):
        arch = c.get("arch")
        key = {"mobilenet_lung": "se_reduction", "da_covidnet": "mid_channels"}.get(arch, "width")
        v = rng.choice((-1, 0, 1, 3, 3.5, "8", None, 10 ** 6, 2 ** 62, 10 ** 30, True, [8], {}, "evil"))
        key = rng.choice((key, key, key, "attention", "kv_pool", "se_reduction", "mid_channels"))
        args = {key: v} if rng.random() < 0.7 else rng.choice(
            ({"unknown": 1}, {"num_classes": 5}, {"pretrained": "/etc/passwd"}, [], "x"))
        c["arch_args"] = args
        desc.append(f"arch_args={str(args)[:40]}")
    return ", ".join(desc)


def c_replace(c, rng):
    return rng.choice(([], "card", 1, None, [c], {"cxrviewer": c}))


CARD_OPS = ((c_classes, 2.0), (c_field, 2.0), (c_preprocess, 1.5), (c_arch, 2.0))


def card_text_op(text: str, rng) -> tuple:
    """Mutations only expressible as JSON text (deep nesting, huge integers, NaN) or as bad bytes."""
    op = rng.choice(("deep", "deep", "bigint", "nan", "dupkey", "trailing", "truncate"))
    if op == "deep":
        d = rng.choice((50, 300, 500, 900, 2000, 100000))
        kind = rng.choice(("[]", "{}"))
        nest = ("[" * d + "]" * d) if kind == "[]" else ('{"a":' * d + "1" + "}" * d)
        key = rng.choice(("training", "card", "ood", "arch_args"))
        return text[:-1] + f', "{key}": {nest}}}', f"card.{key} nested {d} deep"
    if op == "bigint":
        key = rng.choice(("temperature", "format_version", "zzz"))
        return text[:-1] + f', "{key}": {HUGE}}}', f"card.{key} = a 5001-digit integer"
    if op == "nan":
        key = rng.choice(("temperature", "format_version"))
        v = rng.choice(("NaN", "Infinity", "-Infinity", "1e999"))
        return text[:-1] + f', "{key}": {v}}}', f"card.{key} = {v}"
    if op == "dupkey":
        return text[:-1] + ', "classes": ["a", "b", "c", "d"]}', "duplicate 'classes' key"
    if op == "trailing":
        return text + rng.choice(("x", "}", " {}", "\x00")), "trailing bytes after the card"
    k = rng.randrange(len(text))
    return text[:k], f"card text cut at {k}"


def header_text_op(h: dict, text: str, rng) -> tuple:
    op = rng.choice(("deep", "deep", "bigint", "inf", "nan", "dupkey", "trailing", "bom", "badutf8", "surrogate",
                     "space", "empty", "array"))
    if op == "deep":
        d = rng.choice((500, 900, 2000, 100000))
        return text[:-1] + ', "zz": ' + "[" * d + "]" * d + "}", f"header entry nested {d} deep"
    if op in ("bigint", "inf", "nan"):
        k = rng.choice(_tensor_keys(h))
        field = rng.choice(("shape", "data_offsets"))
        lit = {"bigint": HUGE, "inf": rng.choice(("Infinity", "-Infinity", "1e999")), "nan": "NaN"}[op]
        h2 = copy.deepcopy(h)
        h2[k][field] = ["@@"] + list(h2[k][field])[1:]
        return json.dumps(h2).replace('"@@"', lit), f"{k}.{field}[0] = {lit[:12]}"
    if op == "dupkey":
        k = rng.choice(_tensor_keys(h))
        dup = json.dumps({k: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})[1:-1]
        return text[:-1] + ", " + dup + "}", f"duplicate key {k}"
    if op == "trailing":
        return text + rng.choice(("x", "}", "{}", "\x00\x00")), "trailing bytes after the header"
    if op == "bom":
        return "\ufeff" + text, "UTF-8 BOM before the header"
    if op == "badutf8":
        b = text.encode()
        k = rng.randrange(len(b))
        return b[:k] + b"\xff\xfe" + b[k + 2:], f"invalid UTF-8 at {k}"
    if op == "surrogate":
        k = rng.choice(_tensor_keys(h))
        return text.replace(json.dumps(k), '"\\ud800' + k + '"', 1), f"lone surrogate in key {k}"
    if op == "space":
        return " " + text, "space before the header"
    if op == "empty":
        return "{}", "empty header"
    return "[" + text + "]", "header is an array"


def tensor_op(tensors: dict, meta: dict, rng) -> str:
    import torch

    keys = sorted(tensors)
    if not keys:
        return "no tensors (already)"
    gen = torch.Generator().manual_seed(rng.randrange(1 << 31))  # cases must not depend on torch's global RNG
    op = rng.choice(("head", "head", "drop", "extra", "rename", "dtype", "dtype", "nan", "reshape", "empty",
                     "scalar", "negvar", "none", "zeros"))
    k = rng.choice(keys)
    if op == "head":
        n = rng.choice((1, 2, 4, 1000))
        w = tensors.get("head.weight")
        tensors["head.weight"] = torch.randn(n, w.shape[1] if w is not None and w.ndim == 2 else 16, generator=gen)
        tensors["head.bias"] = torch.randn(n, generator=gen)
        return f"head resized to {n} outputs"
    if op == "drop":
        del tensors[k]
        return f"tensor {k} dropped"
    if op == "extra":
        tensors[rng.choice(("extra.weight", "module.head.weight", "head.weight_orig"))] = torch.randn(3, generator=gen)
        return "extra tensor"
    if op == "rename":
        tensors["module." + k] = tensors.pop(k)
        return f"{k} renamed module.{k}"
    if op == "dtype":
        dt = rng.choice((torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int32, torch.int64, torch.uint8,
                         torch.bool, torch.float8_e4m3fn, torch.complex64))
        try:
            tensors[k] = tensors[k].to(dt)
        except (RuntimeError, TypeError):
            tensors[k] = torch.zeros(tensors[k].shape, dtype=dt)
        return f"{k} as {dt}"
    if op == "nan":
        ks = [x for x in keys if tensors[x].is_floating_point() and tensors[x].numel()] or keys
        k = rng.choice(ks)
        if not tensors[k].is_floating_point() or not tensors[k].numel():
            return f"{k}: no value to spoil"
        t = tensors[k].clone().reshape(-1)
        t[rng.randrange(t.numel())] = rng.choice((float("nan"), float("inf"), -float("inf"), 3e38))
        tensors[k] = t.reshape(tensors[k].shape)
        return f"{k} with a non-finite / huge value"
    if op == "reshape":
        tensors[k] = tensors[k].reshape(-1).clone() if rng.random() < 0.5 else tensors[k].t().contiguous() \
            if tensors[k].ndim == 2 else tensors[k].reshape(1, -1).clone()
        return f"{k} reshaped to {tuple(tensors[k].shape)}"
    if op == "empty":
        tensors[k] = torch.zeros((0,) + tuple(tensors[k].shape[1:]), dtype=tensors[k].dtype)
        return f"{k} empty"
    if op == "scalar":
        tensors[k] = torch.tensor(1.0)
        return f"{k} a scalar"
    if op == "negvar":
        ks = [x for x in keys if x.endswith("running_var") and tensors[x].is_floating_point()]
        if not ks:
            return "no running_var to spoil"
        tensors[ks[0]] = -tensors[ks[0]].abs() - 1
        return f"{ks[0]} negative"
    if op == "zeros":
        tensors[k] = torch.zeros_like(tensors[k])
        return f"{k} all zeros"
    tensors.clear()
    return "no tensors at all"


# ==================================================================================================
# The target
# ==================================================================================================


class CheckpointTarget:
    name = "checkpoint"
    outcomes = ("loaded", "loaded, NaN output", "card only", "refused", "crash", "memory", "hang", "modified",
                "pickle-executed")
    error_outcomes = ("refused", "card only")

    def __init__(self, seeds_dir: Path, marker_dir: Optional[Path] = None):
        """``marker_dir``: where the payload would create its file; a fixed folder by default, because the
        path is inside the pickles and ``--case`` must rebuild exactly the same bytes in another run."""
        seeds_dir = Path(seeds_dir)
        seeds_dir.mkdir(parents=True, exist_ok=True)
        marker_dir = Path(marker_dir) if marker_dir is not None else Path(tempfile.gettempdir()) / "cxrviewer-fuzz"
        marker_dir.mkdir(parents=True, exist_ok=True)
        self.marker = marker_dir / MARKER_NAME
        if self.marker.exists():  # left by an earlier run that found a failure: start clean
            self.marker.unlink()
        self.checkpoints = checkpoint_seeds(seeds_dir)
        self.pickles = pickle_seeds(self.marker)
        self.seeds = list(self.checkpoints) + list(self.pickles)
        self.parsed = {k: st_split(v) for k, v in self.checkpoints.items()}

    # -- cases ---------------------------------------------------------------------------------------

    def make_case(self, index: int, rng: random.Random) -> Case:
        family = rng.choices(("pickle", "header", "card", "card-text", "tensors", "header-text", "length", "bytes"),
                             (0.12, 0.18, 0.2, 0.07, 0.13, 0.07, 0.05, 0.18))[0]
        if family == "pickle":
            name = rng.choice(sorted(self.pickles))
            data, desc = self.pickles[name], "as is"
            if name == "torch_zip_state_dict" and rng.random() < 0.5:
                name, data = "tiny3.safetensors+pickle", self.checkpoints["tiny3.safetensors"] + self.pickles["pickle_p2"]
                desc = "checkpoint with a pickle appended"
            elif rng.random() < 0.3:
                data, desc = byte_mutate(data, rng, MutationContext(head=4096))
            suffix = rng.choice((".pt", ".pth", ".ckpt", ".bin", ".pkl", ".safetensors", ".safetensors", "", ".PT", ".st"))
            return Case(name, f"pickle: {desc}", data, suffix)
        name = rng.choice(sorted(self.checkpoints))
        seed = self.checkpoints[name]
        h, text, blob = self.parsed[name]
        h = copy.deepcopy(h)
        if family == "header":
            descs = []
            for _ in range(rng.choice((1, 1, 2))):
                fn = rng.choices([f for f, _ in HEADER_OPS], [w for _, w in HEADER_OPS])[0]
                try:
                    descs.append(fn(h, rng, blob))
                except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                    descs.append(f"{fn.__name__} not applicable")
            data = st_join(json.dumps(h, allow_nan=True), blob)
            desc = "header: " + "; ".join(descs)
        elif family in ("card", "card-text"):
            card = json.loads(h["__metadata__"]["cxrviewer"])
            if family == "card":
                if rng.random() < 0.06:
                    card, d = c_replace(card, rng), "card replaced"
                    descs = [d]
                else:
                    descs = [fn(card, rng) for fn in rng.choices([f for f, _ in CARD_OPS], [w for _, w in CARD_OPS],
                                                                  k=rng.choice((1, 1, 2)))]
                ctext = json.dumps(card, allow_nan=True)
            else:
                ctext, d = card_text_op(json.dumps(card), rng)
                descs = [d]
            h["__metadata__"]["cxrviewer"] = ctext
            data = st_join(json.dumps(h, allow_nan=True), blob)
            desc = "card: " + "; ".join(descs)
        elif family == "tensors":
            from safetensors.torch import load as st_load
            from safetensors.torch import save as st_save

            tensors = st_load(seed)
            meta = dict(h["__metadata__"])
            descs = [tensor_op(tensors, meta, rng) for _ in range(rng.choice((1, 1, 2)))]
            data = st_canonical(st_save(tensors, metadata=meta))
            desc = "tensors: " + "; ".join(descs)
        elif family == "header-text":
            ht, d = header_text_op(h, text, rng)
            data = st_join(ht, blob)
            desc = "header text: " + d
        elif family == "length":
            (n,) = struct.unpack("<Q", seed[:8])
            v = rng.choice((0, 1, 7, n - 1, n + 1, n + 8, len(seed) - 8, len(seed), 2 ** 63, 2 ** 64 - 1, 0x80,
                            64 * 1024 * 1024 + 1, 0x4B50))
            data = struct.pack("<Q", v) + seed[8:]
            desc = f"header length {n} -> {v}"
        else:
            (n,) = struct.unpack("<Q", seed[:8])
            ctx = MutationContext(fields=[Field(0, 8, "little", "header length")], head=n + 8)
            data, desc = byte_mutate(seed, rng, ctx)
            desc = "bytes: " + desc
        suffix = ".safetensors"
        if rng.random() < 0.05:
            suffix = rng.choice((".pt", ".bin", ".SAFETENSORS", "", ".st", ".ckpt", ".safetensors.tmp"))
            desc += f" [named {suffix or 'without suffix'}]"
        return Case(name, desc, data, suffix)

    # -- running -------------------------------------------------------------------------------------

    def child_setup(self, workdir: Path) -> None:
        import torch

        torch.set_num_threads(1)

    def _call(self, fn, *args):
        """(ok, value_or_reason, failure_outcome_or_None)."""
        from cxrviewer.checkpoint import CheckpointError

        try:
            return True, fn(*args), None
        except CheckpointError as exc:
            if memory_error_in(exc) is not None:
                return False, f"MemoryError (address-space cap) reported as: {exc.reason[:160]}", "memory"
            if exc.path is None or exc.path.name != Path(args[0]).name:
                return False, f"CheckpointError does not name the file: {exc}", "crash"
            return False, exc.reason, None
        except MemoryError as exc:
            return False, describe_exception(exc), "memory"
        except BaseException as exc:  # noqa: BLE001 - everything else is the bug being looked for
            return False, describe_exception(exc), "crash"

    def execute(self, path: Path, case: Case, workdir: Path) -> tuple:
        import torch

        from cxrviewer.checkpoint import import_torch_weights, load_checkpoint, read_card
        from inference_helpers import CLASSES3, TINY

        ok_card, card_res, bad = self._call(read_card, path)
        if bad:
            return bad, True, f"read_card: {card_res}"
        ok_load, load_res, bad = self._call(load_checkpoint, path)
        if bad:
            return bad, True, f"load_checkpoint: {load_res}"
        if case.seed in self.pickles or case.seed.endswith("+pickle") or case.data[:2] == b"PK":
            out = workdir / "imported.safetensors"
            ok_imp, imp_res, bad = self._call(import_torch_weights, path, TINY, CLASSES3, out)
            try:
                out.unlink()
            except OSError:
                pass
            if bad:
                return bad, True, f"import_torch_weights: {imp_res}"
        if ok_load and not ok_card:
            return "inconsistent", True, f"load_checkpoint loads what read_card refuses ({card_res})"
        if not ok_load:
            return ("card only" if ok_card else "refused"), False, str(load_res)
        model, card = load_res
        if card.get("arch") == TINY:
            try:
                with torch.no_grad():
                    y = model(torch.zeros(1, 3, 32, 32))
                logits = y[0] if isinstance(y, (tuple, list)) else y
                logits = getattr(logits, "logits", logits)
                if tuple(logits.shape) != (1, len(card["classes"])):
                    return "bad-model", True, f"output {tuple(logits.shape)} for {len(card['classes'])} classes"
                if not bool(torch.isfinite(logits).all()):
                    return "loaded, NaN output", False, "loaded, but its output is not finite"
            except BaseException as exc:  # noqa: BLE001
                return "bad-model", True, "forward pass: " + describe_exception(exc)
        return "loaded", False, f"{card.get('arch')} {len(card['classes'])} classes"

    def check_after(self, case: Case, workdir: Path):
        if self.marker.exists():
            try:
                self.marker.unlink()
            except OSError:
                pass
            return ("pickle-executed", "the pickled payload ran (its marker file was created)")
        return None

    def debug(self, workdir: Path, case: Case) -> None:
        from cxrviewer.checkpoint import load_checkpoint, read_card

        p = workdir / f"debug{case.suffix}"
        p.write_bytes(case.data)
        for fn in (read_card, load_checkpoint):
            try:
                fn(p)
                print(f"  {fn.__name__}: ok")
            except BaseException:  # noqa: BLE001
                print(f"  {fn.__name__}:")
                traceback.print_exc()


def main(argv=None) -> int:
    # workers are forked from this process: keep native thread pools single-threaded (set before numpy and
    # torch load; not at import, so tests/test_fuzz.py does not change the environment of the test session)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, 2000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxr-fuzz-ckpt-") as tmp:
        target = CheckpointTarget(Path(tmp))
        print(f"{machine_line()}; seeds built in {time.perf_counter() - t0:.1f} s")
        rc = run_cli(args, target, "bench/fuzz_checkpoint.py")
        if target.marker.exists():
            print("FAILURE: the pickle payload's marker file exists at the end of the run")
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
