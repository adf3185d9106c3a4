"""Raw cost of every architecture in the zoo: parameters, single-film latency, batch throughput.

Eager fp32 on the CPU, ``model.eval()`` under ``torch.inference_mode()``, random weights (only MobileNetV2
has offline ImageNet weights here, and timing does not depend on the values). This is the "plain eager"
baseline; the inference engine's exact and fast paths are measured against it (``bench/`` of the
inference module imports :func:`build_model`, :func:`time_forward` and :func:`param_count` from here).

    python bench/bench_models.py                 # all architectures, 224, batch 16
    python bench/bench_models.py --quick         # a smoke run: 1 timed repeat, batch 4
    python bench/bench_models.py --models mobilenet_lung,resnet18 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrviewer.models import create_model, list_models  # noqa: E402

# Variants benchmarked beyond the registry's defaults (fusion_tl's selector is an argument).
VARIANTS = {"fusion_tl": [{"attention": "se"}, {"attention": "eca"}, {"attention": "mhsa"}]}


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(name: str, num_classes: int = 3, **kwargs) -> torch.nn.Module:
    """The registry's model in eval mode, random weights (no network, no warnings)."""
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, pretrained=None, **kwargs).eval()


def configurations(names: Optional[Iterable[str]] = None) -> list:
    """(label, name, kwargs) for every architecture (and variant) selected; unknown names raise."""
    known = [m.name for m in list_models()]
    wanted = list(names) if names else known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown architecture(s): {', '.join(unknown)}; known: {', '.join(known)}")
    out = []
    for n in wanted:
        for kw in VARIANTS.get(n, [{}]):
            label = n + "".join(f"[{v}]" for v in kw.values())
            out.append((label, n, kw))
    return out


def build_all(names: Optional[Iterable[str]] = None, num_classes: int = 3) -> dict:
    """label -> model for every selected architecture. Holds all of them in memory at once (≈1.5 GB
    for the whole zoo); the CLI builds one at a time instead."""
    return {label: build_model(n, num_classes, **kw) for label, n, kw in configurations(names)}


def time_forward(model: Callable, x: torch.Tensor, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds per forward of ``model(x)`` after ``warmup`` untimed calls (oneDNN picks its
    kernels on the first call of each shape; that one-off cost is not the steady state)."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(model: torch.nn.Module, size: int = 224, batch: int = 16, repeats: int = 5,
              warmup: int = 1) -> dict:
    x1 = torch.randn(1, 3, size, size)
    xb = torch.randn(batch, 3, size, size)
    lat = time_forward(model, x1, repeats, warmup)
    tb = time_forward(model, xb, max(1, repeats // 2), warmup)
    return {
        "params": param_count(model),
        "latency_ms": lat * 1000.0,
        "batch": batch,
        "batch_s": tb,
        "throughput_img_s": batch / tb,
    }


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated architecture names (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, no warm-up, batch 4")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default 16, quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (4 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = 0 if args.quick else 1
    names = [n.strip() for n in args.models.split(",") if n.strip()] or None

    env = environment()
    print(f"# raw eager fp32, CPU, torch {env['torch']}, {env['threads']} threads, input {args.size}, "
          f"batch {batch}, {repeats} repeat(s){' (QUICK: not for the record)' if args.quick else ''}")
    print("# random initialisation (timing does not depend on weight values)")
    header = f"{'model':<22}{'params (M)':>11}{'1-film ms':>11}{f'b{batch} img/s':>12}"
    print(header)
    print("-" * len(header))
    rows = []
    for label, name, kw in configurations(names):
        model = build_model(name, **kw)
        r = bench_one(model, args.size, batch, repeats, warmup)
        r["model"] = label
        rows.append(r)
        print(f"{label:<22}{r['params'] / 1e6:>11.2f}{r['latency_ms']:>11.1f}{r['throughput_img_s']:>12.2f}",
              flush=True)
        del model
    if args.json:
        args.json.write_text(json.dumps({"env": env, "quick": args.quick, "size": args.size, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
