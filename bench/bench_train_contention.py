"""The viewer's work while a training it started runs on the CPU: at torch's default thread count (one
per core, what the viewer does) against one thread, the core the training dialog leaves it; same run.

    python bench/bench_train_contention.py [--seconds 15] [--rounds 3] [--per-class 150]

Why: torch's CPU kernels run on OpenMP threads that spin-wait between operations, so a viewer at two
threads beside a training at one could slow both. The question is whether the viewer's jobs should drop
to the cores the training left them while it runs.

What is measured, and why it is fair:
- A real training runs in its own process, started as the training dialog starts it: ``python -m trainer
  fit`` with ``--threads`` one less than the machine's cores, on the CPU, mobilenet_lung on
  ``--per-class`` films a class copied from ``../shared/data/kermany/train`` (a temporary folder), with its
  progress stream (``--progress-jsonl``).
- The viewer's side is what the window runs for a film, with the bundled default model, on a worker thread
  (as the window runs it; torch's thread count is per thread), the bundled sample films in turn for
  ``--seconds`` a phase: a film's exact reading (``Predictor.predict_film``) and one batch of LIME's
  perturbed films (``fast_predict_batch``, 16).
- The two thread counts alternate ``--rounds`` times while the training steps, so a change in the
  training's phase shows in both; the trainer's films per second in each phase are counted from its own
  step events. The same work is timed first with nothing else running, for reference.

Prints medians and the ratios. It does not write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrviewer.film import load_film  # noqa: E402
from cxrviewer.inference import Predictor  # noqa: E402
from cxrviewer.model_store import default_model_entry  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BATCH = 16  # the training's batch: its step events count batches
LIME_BATCH = 16  # one batch of LIME's perturbed films (LimeSettings.batch_size)


def training_folder(dest: Path, per_class: int) -> Path:
    """``per_class`` films of each Kermany class, copied (the trainer reads them; nothing of ours changes)."""
    src = DATA / "kermany" / "train"
    classes = [d for d in sorted(src.iterdir()) if d.is_dir()]
    if not classes:
        raise SystemExit(f"no class folders under {src}")
    for d in classes:
        (dest / d.name).mkdir(parents=True)
        for f in sorted(p for p in d.iterdir() if p.is_file())[:per_class]:
            shutil.copy2(f, dest / d.name / f.name)
    return dest


class Trainer:
    """The training process, and its films per second as its step events report them."""

    def __init__(self, data: Path, out: Path, threads: int):
        cmd = [sys.executable, "-m", "trainer", "fit", str(data), "--arch", "mobilenet_lung", "--recipe", "seed003",
               "--batch-size", str(BATCH), "--epochs", "50", "--device", "cpu", "--threads", str(threads), "--out", str(out),
               "--pretrained", "none", "--progress-jsonl", "--quiet"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        self.steps = []  # (monotonic time here, epoch, step) of each step event
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "step":
                self.steps.append((time.monotonic(), int(ev["epoch"]), int(ev["step"])))

    def rate_between(self, t0: float, t1: float) -> float:
        """Films per second trained between two moments: steps counted within one epoch (its step events
        carry the epoch's running average, which would blur the phases together)."""
        seen = [(t, e, s) for t, e, s in self.steps if t0 <= t <= t1]
        spans = [(b[0] - a[0], b[2] - a[2]) for a, b in zip(seen, seen[1:]) if a[1] == b[1] and b[2] > a[2]]
        secs = sum(dt for dt, _ in spans)
        return sum(n for _, n in spans) * BATCH / secs if secs > 0 else float("nan")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def readings(task, films, threads: int, seconds: float) -> list:
    """Seconds per call of ``task(film)`` on a worker thread at ``threads`` torch threads, the films in turn
    for ``seconds``."""
    out = []

    def work():
        torch.set_num_threads(threads)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for film in films:
                t = time.perf_counter()
                task(film)
                out.append(time.perf_counter() - t)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15, help="length of each phase of readings")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two thread counts while the training runs")
    p.add_argument("--per-class", type=int, default=150, help="training films per class")
    args = p.parse_args(argv)

    cores = os.cpu_count() or 2
    trainer_threads = max(1, cores - 1)  # as the training dialog gives it
    default, left = torch.get_num_threads(), max(1, cores - trainer_threads)
    samples = ROOT / "resources" / "samples"
    films = [load_film(f) for f in sorted(samples.iterdir()) if f.suffix.lower() in (".png", ".dcm")]
    pred = Predictor.from_checkpoint(default_model_entry().path, "cpu")
    fast = pred.prepare_fast()
    batches = {id(f): np.repeat(np.asarray(pred.preprocess(f)[0])[None], LIME_BATCH, axis=0) for f in films}
    tasks = {"reading": pred.predict_film,  # one film's exact reading, as the window shows it
             "LIME batch": lambda f: pred.fast_predict_batch(batches[id(f)], batch_size=LIME_BATCH)}
    for task in tasks.values():
        readings(task, films, default, 2)  # warm up (oneDNN primitives)
    print(f"torch {torch.__version__}; {cores} cores; trainer --threads {trainer_threads}; viewer: default "
          f"{default} thread(s) against {left}; fast path: {fast}", flush=True)
    modes = (("default", default), ("left", left))
    idle = {(t, m): statistics.median(readings(fn, films, n, args.seconds / 2))
            for t, fn in tasks.items() for m, n in modes}

    rows = {(t, m): [] for t in tasks for m, _ in modes}
    with tempfile.TemporaryDirectory() as tmp:
        data = training_folder(Path(tmp) / "data", args.per_class)
        trainer = Trainer(data, Path(tmp) / "run", trainer_threads)
        try:
            deadline = time.monotonic() + 600
            while len(trainer.steps) < 2:
                if trainer.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the training did not start stepping")
                time.sleep(0.5)
            for _ in range(args.rounds):
                for t, fn in tasks.items():
                    for m, n in modes:
                        t0 = time.monotonic()
                        secs = readings(fn, films, n, args.seconds)
                        t1 = time.monotonic()
                        time.sleep(3)  # the trainer reports every few seconds: let the phase's last step land
                        rows[t, m].append((statistics.median(secs), trainer.rate_between(t0, t1 + 3)))
                        print(f"  {t}, {m}: {rows[t, m][-1][0] * 1000:.1f} ms, training "
                              f"{rows[t, m][-1][1]:.1f} films/s", flush=True)
        finally:
            trainer.stop()

    med = {k: (statistics.median(r for r, _ in v), statistics.median(f for _, f in v)) for k, v in rows.items()}
    print("\n| viewer job | threads | idle (ms) | during training (ms) | training films/s |")
    print("|---|---|---:|---:|---:|")
    for t in tasks:
        for m, n in modes:
            print(f"| {t} | {n} ({'torch default' if m == 'default' else 'the cores left'}) | {idle[t, m] * 1000:.1f} | "
                  f"{med[t, m][0] * 1000:.1f} | {med[t, m][1]:.1f} |")
    for t in tasks:
        print(f"{t} during training, default / left: {med[t, 'default'][0] / med[t, 'left'][0]:.2f}x; "
              f"training films/s meanwhile, left / default: {med[t, 'left'][1] / med[t, 'default'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
