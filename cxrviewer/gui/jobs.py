"""Background work for the window: film loading, model loading, inference, explanations.

Why this shape:
- Work runs on a private ``QThreadPool``; results come back to the GUI thread through a queued signal of a
  small ``QObject`` created on the GUI thread, so slots never run on a worker.
- Each job belongs to a *channel* ("film", "predict", "explain", ...). Submitting to a channel bumps that
  channel's generation and cancels the job already running there: a newer request supersedes an older
  one. When a result arrives its generation is compared with the channel's current one and a stale result
  is dropped before any slot sees it. This is what guarantees that a film opened while another is being
  analysed never shows the other film's results, even when the old job cannot be interrupted (a torch
  forward pass).
- Job functions receive a :class:`JobContext` for cooperative cancellation and progress reports; an
  exception becomes an ``error`` callback with a one-line message, never a crash of the window.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from cxrviewer.gui.gui_thread_gc import install as install_gui_thread_gc

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job by :meth:`JobContext.check` once a newer request has superseded it."""


class JobContext:
    """Handed to the job function: ``check()`` between steps, ``report(obj)`` for partial results."""

    def __init__(self, job: "Job"):
        self._job = job

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def report(self, payload: Any) -> None:
        if not self.cancelled:
            self._job.bridge.progress.emit(self._job.generation, payload)


class _Bridge(QObject):
    """Lives on the GUI thread; worker emits are queued to its slots, which call the handlers there."""

    done = Signal(int, object)
    failed = Signal(int, object, str)
    progress = Signal(int, object)

    def __init__(self) -> None:
        super().__init__()
        self.handlers = (None, None, None)
        self.done.connect(self._on_done)
        self.failed.connect(self._on_failed)
        self.progress.connect(self._on_progress)

    @Slot(int, object)
    def _on_done(self, g, result):
        self.handlers[0](g, result)

    @Slot(int, object, str)
    def _on_failed(self, g, exc, tb):
        self.handlers[1](g, exc, tb)

    @Slot(int, object)
    def _on_progress(self, g, payload):
        self.handlers[2](g, payload)


@dataclass
class Job:
    channel: str
    generation: int
    label: str
    bridge: _Bridge
    cancel_event: threading.Event

    def cancel(self) -> None:
        self.cancel_event.set()


class _Runnable(QRunnable):
    def __init__(self, job: Job, fn: Callable, args: tuple, kwargs: dict):
        super().__init__()
        self.setAutoDelete(True)
        self._job, self._fn, self._args, self._kwargs = job, fn, args, kwargs

    def run(self) -> None:  # worker thread
        try:
            self._run()
        except RuntimeError:  # the window (and its bridge) went away while this job ran
            pass

    def _run(self) -> None:
        job = self._job
        if job.cancel_event.is_set():
            job.bridge.failed.emit(job.generation, Cancelled(), "")
            return
        try:
            result = self._fn(JobContext(job), *self._args, **self._kwargs)
        except Cancelled as exc:
            job.bridge.failed.emit(job.generation, exc, "")
        except BaseException as exc:  # noqa: BLE001  (every failure must reach the GUI as a message)
            job.bridge.failed.emit(job.generation, exc, traceback.format_exc())
        else:
            job.bridge.done.emit(job.generation, result)


def error_message(exc: BaseException) -> str:
    """One line for the user. FilmError and friends already name the file and the reason."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not text:
        text = type(exc).__name__
    if isinstance(exc, MemoryError):
        text = "not enough memory for this operation"
    return text


class JobRunner(QObject):
    """Runs jobs off the GUI thread, one current generation per channel."""

    busyChanged = Signal(int, str)  # number of running jobs, label of the newest
    jobFailed = Signal(str, str)  # channel, message (for the status bar when no handler was given)

    def __init__(self, parent: Optional[QObject] = None, max_threads: int = 2):
        super().__init__(parent)
        install_gui_thread_gc()  # workers must never run the cycle collector on Qt garbage (see gui_thread_gc)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, max_threads))
        self._generation: dict = {}
        self._current: dict = {}
        self._live: dict = {}  # id(bridge) -> (job, bridge) kept alive until the job reports back
        self._labels: list = []

    # -- public -------------------------------------------------------------------------------------
    def generation(self, channel: str) -> int:
        return self._generation.get(channel, 0)

    def is_current(self, job: Job) -> bool:
        return self._generation.get(job.channel, 0) == job.generation

    def cancel(self, channel: str) -> None:
        """Cancel a channel's job and make any result still on its way stale."""
        self._generation[channel] = self._generation.get(channel, 0) + 1
        job = self._current.pop(channel, None)
        if job is not None:
            job.cancel()

    def submit(
        self,
        channel: str,
        fn: Callable,
        *args,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[str, BaseException], None]] = None,
        on_progress: Optional[Callable[[Any], None]] = None,
        label: str = "",
        **kwargs,
    ) -> Job:
        """Run ``fn(ctx, *args, **kwargs)`` on a worker; supersede the channel's previous job."""
        self.cancel(channel)
        gen = self._generation[channel]
        bridge = _Bridge()
        job = Job(channel, gen, label or channel, bridge, threading.Event())
        self._current[channel] = job
        key = id(bridge)
        self._live[key] = (job, bridge)

        def finish() -> None:
            self._live.pop(key, None)
            if self._current.get(channel) is job:
                self._current.pop(channel, None)
            self._emit_busy()

        def done(g: int, result: Any) -> None:
            finish()
            if g == self._generation.get(channel) and on_done is not None:
                on_done(result)

        def failed(g: int, exc: BaseException, tb: str) -> None:
            finish()
            if isinstance(exc, Cancelled) or g != self._generation.get(channel):
                return
            msg = error_message(exc)
            if tb:
                # the traceback goes to the debug log only (it may name files, never patient data)
                log.debug("job %s failed: %s\n%s", channel, msg, tb)
            if on_error is not None:
                on_error(msg, exc)
            else:
                self.jobFailed.emit(channel, msg)

        def progress(g: int, payload: Any) -> None:
            if g == self._generation.get(channel) and on_progress is not None:
                on_progress(payload)

        bridge.handlers = (done, failed, progress)
        self.pool.start(_Runnable(job, fn, args, kwargs))
        self._emit_busy()
        return job

    def active_count(self) -> int:
        return len(self._live)

    def active_labels(self) -> list:
        return [job.label for job, _ in self._live.values()]

    def is_idle(self) -> bool:
        return not self._live

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """Cancel everything and wait a little; results still on their way after this are ignored, so a
        closing window is never called back by a job that outlived it."""
        for channel in list(self._current):
            self.cancel(channel)
        ignore = (lambda *a: None,) * 3
        for _job, bridge in self._live.values():
            bridge.handlers = ignore
        self._live.clear()
        self.pool.waitForDone(timeout_ms)

    # -- internals ----------------------------------------------------------------------------------
    def _emit_busy(self) -> None:
        labels = self.active_labels()
        self.busyChanged.emit(len(labels), labels[-1] if labels else "")
