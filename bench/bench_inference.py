"""Inference speed of every architecture: exact path and fast path against plain eager fp32, same run.

    python bench/bench_inference.py                      # every registered architecture
    python bench/bench_inference.py --models mobilenet_lung,resnet18 --batch 16
    python bench/bench_inference.py --quick              # mobilenet_lung only, small batch, few repeats
    python bench/bench_inference.py --models resources/models/mobilenet_lung-kermany3.safetensors  # trained, real films
    python bench/bench_inference.py --unchecked          # also: what bf16 would give where its check refuses it
    python bench/bench_inference.py --untraced           # also: the CPU fast path traced against run eagerly

For each network it measures, on the chosen device:
- single-film latency (batch 1) and batch throughput (``--batch`` films in one call) of
  (a) plain eager: ``model(x)`` under ``torch.no_grad()``, fp32, NCHW: what timm/torchvision give you;
  (b) the exact path ``Predictor.predict_batch`` (the probabilities the viewer displays: fp32, the same
      network, channels-last where the model asks for it, ``CXRModel.exact_channels_last``);
  (c) the fast path ``Predictor.fast_predict_batch`` (explanations);
- the ratios against (a): exact time / eager time (target ≤ 1.0) and fast throughput / eager
  throughput (target ≥ 2.0);
- the largest absolute probability difference between fast and exact on the batch (the stated
  tolerance is ``cxrviewer.inference.FAST_TOLERANCE``).

Networks start from random weights (offline machine), which make a deep network's output nearly constant
and would hide any fast/exact difference; the batch norm statistics and the classifier are therefore
re-estimated on film-like inputs first (see ``_realistic``), so the probabilities vary like a trained
model's. Their heads must amplify tiny feature differences to do so, which makes them far more sensitive
to bf16 rounding than a trained network: the fast path's check then refuses bf16 and they run in fp32
(``--unchecked`` shows what bf16 would have given). A trained checkpoint given to ``--models`` is scored on
real films from ../shared/data instead. Times are the fastest of repeated round-robin runs after a warm-up (see timed_round_robin); it prints a markdown table and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrviewer.checkpoint import card_defaults  # noqa: E402
from cxrviewer.device import describe_device, select_device  # noqa: E402
from cxrviewer.inference import FAST_TOLERANCE, Predictor  # noqa: E402
from cxrviewer.models import create_model, list_models  # noqa: E402
from cxrviewer.preprocess import PreprocessSpec, preprocess_gray  # noqa: E402
from cxrviewer.testing import chest_like, spread_outputs  # noqa: E402

CLASSES = ["Normal", "Pneumonia", "COVID-19"]


def inputs(n: int, seed: int = 0) -> torch.Tensor:
    spec = PreprocessSpec()
    return torch.from_numpy(np.stack([preprocess_gray(chest_like(seed=seed + i), spec)[0] for i in range(n)]))


def _realistic(model: nn.Module, n: int = 8) -> nn.Module:
    return spread_outputs(model, inputs(n, seed=1000))


def timed_round_robin(fns: dict, repeats: int) -> dict:
    """Fastest time of each function, run in turn (a, b, c, a, b, c, ...) after one warm-up each.

    Round-robin so a burst of load from other processes hits every contender alike; the minimum, not
    the median, because on a shared machine noise is one-sided (other processes only ever add time)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def film_inputs(pred: Predictor, n: int, offset: int = 0) -> torch.Tensor:
    """Real films from ../shared/data (the explanation benchmark's selection), preprocessed by the
    checkpoint's own spec."""
    from bench_explain import pick_films

    from cxrviewer.film import load_film

    return torch.from_numpy(np.stack([pred.preprocess(load_film(p))[0] for p in pick_films(offset + n)[offset:]]))


def bench_one(name: str, device: torch.device, batch: int, repeats: int, bf16=None, unchecked=False,
              untraced=False) -> dict:
    torch.manual_seed(0)
    if name.endswith(".safetensors"):  # a trained checkpoint, scored on real films
        pred = Predictor.from_checkpoint(name, device)
        model, name = pred.model, pred.model_name  # the card's name: run folders all hold best.safetensors
        x1, xb = film_inputs(pred, 1), film_inputs(pred, batch, offset=1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _realistic(create_model(name, len(CLASSES), pretrained=None))
        pred = Predictor(model, card_defaults(model, CLASSES, name=name), device)
        x1, xb = inputs(1), inputs(batch, seed=10)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    from bench_explain import plain_copy

    plain = plain_copy(model)  # NCHW, as plain eager PyTorch runs it; the Predictor's may be channels-last

    def eager(x):
        with torch.no_grad():
            out = plain(x.to(device))
        sync()
        return out

    t0 = time.perf_counter()
    pred.fast_predict_batch(xb, batch_size=batch, bf16=bf16)  # builds the fast copy and checks bf16
    setup = time.perf_counter() - t0
    r = {"name": name, "params": params, "fast_setup_s": setup}
    for label, x in (("single", x1), ("batch", xb)):
        n = x.shape[0]
        best = timed_round_robin({
            "eager": lambda: eager(x),
            "exact": lambda: pred.predict_batch(x, batch_size=n),
            "fast": lambda: pred.fast_predict_batch(x, batch_size=n, bf16=bf16),
        }, repeats if label == "batch" else repeats * 3)
        for k, v in best.items():
            r[f"{label}_{k}_s"] = v
    exact = pred.predict_batch(xb)
    fast = pred.fast_predict_batch(xb, batch_size=batch, bf16=bf16)
    r["fast_how"] = pred.prepare_fast(bf16)  # what was in use at the end (reduced precision may be dropped)
    r["max_prob_diff"] = float(np.abs(exact - fast).max())
    r["prob_spread"] = float(np.ptp(exact[:, 0]))
    if unchecked and "autocast" not in r["fast_how"]:
        # What reduced precision would give if its check did not refuse it: a second predictor whose check
        # is marked as passed. Information only; the viewer never runs this way.
        forced = Predictor(model, pred.card, device)
        forced._reduced_ok = True
        t = timed_round_robin({"eager": lambda: eager(xb),
                               "bf16": lambda: forced.fast_predict_batch(xb, batch_size=batch, bf16=True)},
                              repeats)
        r["bf16_ratio"] = t["eager"] / t["bf16"]
        r["bf16_diff"] = float(np.abs(exact - forced.fast_predict_batch(xb, batch_size=batch, bf16=True)).max())
    if untraced and device.type == "cpu":
        # The same fast path (same precision, as its check decided) with the copy run eagerly, not traced.
        import cxrviewer.inference as inference

        eager_fast = Predictor(model, pred.card, device)
        eager_fast._reduced_ok = pred._reduced_ok
        inference.TRACE_FAST_CPU = False
        try:
            r["untraced_how"] = eager_fast.prepare_fast(bf16)  # built now, kept untraced
        finally:
            inference.TRACE_FAST_CPU = True
        t = timed_round_robin({"traced": lambda: pred.fast_predict_batch(xb, batch_size=batch, bf16=bf16),
                               "eager": lambda: eager_fast.fast_predict_batch(xb, batch_size=batch, bf16=bf16)},
                              repeats)
        r["trace_ratio"] = t["eager"] / t["traced"]
        r["trace_diff"] = float(np.abs(fast - eager_fast.fast_predict_batch(xb, batch_size=batch, bf16=bf16)).max())
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated architecture names or trained .safetensors checkpoints "
                                     "(scored on real films) (default: every architecture; --quick: mobilenet_lung)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    ap.add_argument("--batch", type=int, default=None, help="films per batch (default 32; --quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5; --quick 2)")
    ap.add_argument("--quick", action="store_true", help="small and short: a smoke run, not a measurement")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="the fast path's bf16: auto (the Predictor decides from the hardware), on (forced, still "
                         "checked against the tolerance), off")
    ap.add_argument("--unchecked", action="store_true",
                    help="where the fast path refused bf16, also time bf16 without its check (information)")
    ap.add_argument("--untraced", action="store_true",
                    help="also time the CPU fast path with its copy run eagerly instead of traced and frozen")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",")] if args.models else (
        ["mobilenet_lung"] if args.quick else [m.name for m in list_models()])
    batch = args.batch or (8 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 5)
    notices: list = []
    device = select_device(args.device, notices)
    for n in notices:
        print(f"note: {n}", file=sys.stderr)
    print(f"device: {describe_device(device)}; torch {torch.__version__}; batch {batch}; repeats {repeats}; "
          f"fast-path tolerance {FAST_TOLERANCE}\n")
    rows = []
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            rows.append(bench_one(name, device, batch, repeats, {"auto": None, "on": True, "off": False}[args.bf16],
                                  args.unchecked, args.untraced))
        except Exception as e:  # one broken architecture must not lose the others' numbers
            print(f"{name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
    if not rows:
        return 1
    print("| model | params (M) | single eager ms | single exact ms | exact/eager | single fast ms | "
          f"batch-{batch} eager img/s | exact img/s | exact/eager time | fast img/s | fast/eager throughput | "
          "max |Δp| fast vs exact | fast path |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        be, bx, bf = (batch / r[f"batch_{k}_s"] for k in ("eager", "exact", "fast"))
        print(f"| {r['name']} | {r['params'] / 1e6:.1f} | {r['single_eager_s'] * 1e3:.1f} | "
              f"{r['single_exact_s'] * 1e3:.1f} | {r['single_exact_s'] / r['single_eager_s']:.2f} | "
              f"{r['single_fast_s'] * 1e3:.1f} | {be:.1f} | {bx:.1f} | {r['batch_exact_s'] / r['batch_eager_s']:.2f} | "
              f"{bf:.1f} | {bf / be:.2f} | {r['max_prob_diff']:.2e} | {r['fast_how']} |")
    refused = [r for r in rows if "bf16_ratio" in r]
    if refused:
        print("\nbf16 refused by the tolerance check; what it would have given unchecked:\n")
        print("| model | bf16 unchecked / eager throughput | its max |Δp| vs exact |")
        print("|---|---:|---:|")
        for r in refused:
            print(f"| {r['name']} | {r['bf16_ratio']:.2f} | {r['bf16_diff']:.2e} |")
    compared = [r for r in rows if "trace_ratio" in r]
    if compared:
        print(f"\nfast path traced and frozen against the same copy run eagerly (batch {batch}):\n")
        print("| model | traced / eager fast-path throughput | max |Δp| between them | eager copy |")
        print("|---|---:|---:|---|")
        for r in compared:
            print(f"| {r['name']} | {r['trace_ratio']:.2f} | {r['trace_diff']:.2e} | {r['untraced_how']} |")
    worst = max(r["max_prob_diff"] for r in rows)
    print(f"\nlargest fast-vs-exact probability difference: {worst:.2e} (tolerance {FAST_TOLERANCE}); "
          f"probability spread across films (min over models): {min(r['prob_spread'] for r in rows):.2f}")
    return 0 if worst <= FAST_TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
