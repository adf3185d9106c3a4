"""Progress of a training run as machine-readable JSON lines, and a human progress bar.

The viewer runs the trainer in a separate process and reads this stream from its stdout (or a file), so
the format is the contract between the two: one JSON object per line, each with ``"event"`` and ``"t"``
(seconds since the run started). Events:

- ``start``: run_dir, arch, recipe, epochs, classes, counts, device, world_size
- ``phase``: phase (``loading``, ``training``, ``calibrating``, ``testing``, ``reporting``), done, total
- ``step``: epoch (1-based), epochs, step, steps, loss, acc (running means this epoch), eta_s, films_per_s
- ``epoch``: epoch, epochs, train_loss, train_acc, val_loss, val_acc, val_macro_f1, lr, best, eta_s
- ``warning``: message
- ``done``: run_dir, checkpoint, report, metrics (test and validation summaries), stopped_early
- ``cancelled``: run_dir, epoch (last completed; ``--resume`` continues from there)
- ``error``: message

Step events are throttled (at most ~4 a second) so a fast CPU run does not flood the reader's pipe. When
the JSON stream takes stdout, human-readable lines go to stderr so the two never interleave on a line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Optional


class Progress:
    """Writes events; ``jsonl`` is a stream or None, ``human`` a text stream for people or None."""

    def __init__(self, jsonl: Optional[IO] = None, human: Optional[IO] = None, min_step_interval: float = 0.25):
        self.jsonl = jsonl
        self.human = human
        self.t0 = time.monotonic()
        self.min_step_interval = float(min_step_interval)
        self._last_step = -math.inf
        self._bar_open = False
        self._own = None

    @classmethod
    def from_target(cls, target: Optional[str], quiet: bool = False) -> "Progress":
        """``target``: None (no JSON), ``"-"`` (JSON on stdout, text on stderr) or a file path."""
        human = None if quiet else sys.stderr
        if target is None:
            return cls(None, None if quiet else sys.stdout)
        if target == "-":
            return cls(sys.stdout, human)
        fh = open(target, "a", encoding="utf-8", buffering=1)
        p = cls(fh, None if quiet else sys.stdout)
        p._own = fh
        return p

    def close(self) -> None:
        self._end_bar()
        if self._own is not None:
            self._own.close()
            self._own = None

    # --- events -----------------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> None:
        if self.jsonl is None:
            return
        rec = {"event": event, "t": round(time.monotonic() - self.t0, 3)}
        rec.update({k: _jsonable(v) for k, v in fields.items()})
        try:
            self.jsonl.write(json.dumps(rec, allow_nan=False) + "\n")
            self.jsonl.flush()
        except (BrokenPipeError, ValueError):  # the reader went away: keep training, stop reporting
            self.jsonl = None

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, acc: float, eta_s: float,
             films_per_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_step < self.min_step_interval and step != steps:
            return
        self._last_step = now
        self.emit("step", epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss, acc=acc,
                  eta_s=eta_s, films_per_s=films_per_s)
        if self.human is not None and getattr(self.human, "isatty", lambda: False)():
            width = 24
            done = int(width * step / max(steps, 1))
            self.human.write(
                f"\r epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] {step}/{steps} "
                f"loss {loss:.4f} acc {acc:.3f} {films_per_s:.1f} films/s ETA {format_eta(eta_s)}   "
            )
            self.human.flush()
            self._bar_open = True

    def epoch(self, **fields) -> None:
        self.emit("epoch", **fields)
        self.say(
            f"epoch {fields['epoch']}/{fields['epochs']}: train loss {fields['train_loss']:.4f} acc {fields['train_acc']:.3f}"
            f" | val loss {_f(fields.get('val_loss'))} acc {_f(fields.get('val_acc'), 3)} macro F1 {_f(fields.get('val_macro_f1'), 3)}"
            f" | lr {fields['lr']:.3g}{'  *best*' if fields.get('best') else ''} | ETA {format_eta(fields.get('eta_s'))}"
        )

    def warn(self, message: str) -> None:
        """A ``warning`` event (the training dialog lists them) and the same line on the console."""
        self.emit("warning", message=message)
        self.say(f"warning: {message}")

    def say(self, text: str) -> None:
        if self.human is None:
            return
        self._end_bar()
        self.human.write(text + "\n")
        self.human.flush()

    def _end_bar(self) -> None:
        if self._bar_open and self.human is not None:
            self.human.write("\n")
            self._bar_open = False


class NullProgress(Progress):
    def __init__(self):
        super().__init__(None, None)


def _f(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _jsonable(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _jsonable(v.item())
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)


def format_eta(seconds) -> str:
    if seconds is None or not math.isfinite(float(seconds)):
        return "--:--"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def parse_line(line: str) -> Optional[dict]:
    """The reader's side: one line -> event dict, or None for a line that is not an event (stray output)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and "event" in rec else None
