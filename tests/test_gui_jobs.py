"""The job system on its own: supersession, stale results, errors, progress, shutdown."""

import threading
import time

import pytest

pytest.importorskip("pytestqt")

from cxrviewer.gui.jobs import JobRunner  # noqa: E402


def test_newer_job_supersedes_and_stale_results_are_dropped(qtbot):
    runner = JobRunner(max_threads=2)
    got, release = [], threading.Event()

    def slow(ctx, tag):
        release.wait(2)
        return tag

    runner.submit("ch", slow, "old", on_done=got.append)
    runner.submit("ch", lambda ctx: "new", on_done=got.append)
    qtbot.waitUntil(lambda: got == ["new"], timeout=3000)
    release.set()
    qtbot.waitUntil(runner.is_idle, timeout=3000)
    assert got == ["new"]


def test_cancel_is_cooperative_and_errors_become_messages(qtbot):
    runner = JobRunner()
    seen = {"progress": [], "errors": []}

    def loop(ctx):
        for i in range(200):
            ctx.check()
            ctx.report(i)
            time.sleep(0.005)
        return "finished"

    done = []
    runner.submit("a", loop, on_done=done.append, on_progress=seen["progress"].append)
    qtbot.waitUntil(lambda: len(seen["progress"]) > 2, timeout=3000)
    runner.cancel("a")
    qtbot.waitUntil(runner.is_idle, timeout=3000)
    assert done == [] and len(seen["progress"]) < 200

    def boom(ctx):
        raise ValueError("Cannot open x.dcm: truncated file\nsecond line")

    runner.submit("b", boom, on_error=lambda msg, exc: seen["errors"].append(msg))
    qtbot.waitUntil(lambda: bool(seen["errors"]), timeout=3000)
    assert seen["errors"] == ["Cannot open x.dcm: truncated file"]


def test_busy_signal_and_shutdown(qtbot):
    runner = JobRunner()
    counts = []
    runner.busyChanged.connect(lambda n, label: counts.append((n, label)))
    ev = threading.Event()
    late = []
    runner.submit("x", lambda ctx: ev.wait(1) or "late", label="Working", on_done=late.append)
    assert counts[-1] == (1, "Working")
    runner.shutdown(timeout_ms=0)
    ev.set()
    runner.pool.waitForDone(2000)
    qtbot.wait(50)
    assert late == []
