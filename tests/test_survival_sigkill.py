"""Hardening (issue 8): the trainer survives SIGKILL.

``cxr-train fit`` is a separate process the viewer starts (``python -m trainer fit``, as the training
dialog does); the reader, the OS's out-of-memory killer or a power cut may end it at any moment. SIGKILL
cannot be caught, so what survives is only what the atomic writes left: after every kill
``best.safetensors`` and ``last.safetensors`` must load, the resume state must load and must not be behind
any epoch the run already reported, and ``--resume`` must finish the run. The full-disk faults are in
``test_survival_diskfull.py`` (each file stays short).

Each run is what ``python -m trainer fit ...`` runs (``trainer/__main__.py`` only calls
``trainer.cli.main``), in a fresh process forked from a server that has imported torch and the trainer
once: on a busy two-core machine every ``python -m`` start costs ~10 s of imports, which would push this
file past a minute without testing anything more.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from _trainer_synth import make_dataset  # noqa: E402
from _interrupted_runs import check_run_folder as _check_run_folder, events as _events, reported_epochs as _reported_epochs, temporaries as _temporaries  # noqa: E501

EPOCHS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sigkill") / "data", per_class=8, size=32, dicom=False,
                        corrupt=False)


def _argv(dataset, run: Path, jsonl: Path, resume: bool) -> list:
    argv = ["fit", str(dataset), "--arch", "mobilenet_lung", "--recipe", "smoke", "--pretrained", "none", "--set",
            "input_size=32", "--epochs", str(EPOCHS), "--batch-size", "8", "--out", str(run), "--progress-jsonl",
            str(jsonl), "--quiet", "--threads", "1"]
    return argv + (["--resume"] if resume else [])


def _cli_child(argv: list, log: str) -> None:
    """In the forked process: stdout to nowhere, stderr to ``log``, exit with the CLI's status."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        from trainer.cli import main

        code = main(argv)
    except BaseException:  # noqa: BLE001  (into the log the test shows when the run fails)
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _check_child(run: str, reported: int, out: str) -> None:
    """In a forked process (torch is imported there already): :func:`_check_run_folder`, result to ``out``."""
    import traceback

    try:
        result = {"ok": True, **_check_run_folder(Path(run), reported)}
    except BaseException:  # noqa: BLE001  (reported to the test, which fails with it)
        result = {"ok": False, "error": traceback.format_exc()}
    Path(out).write_text(json.dumps(result))
    os._exit(0)


class _Forked:
    """The Popen calls the test uses, for a multiprocessing.Process."""

    def __init__(self, proc):
        self.proc = proc
        self.pid = proc.pid

    def kill(self):
        self.proc.kill()

    def poll(self):
        return self.proc.exitcode

    def wait(self, timeout=None):
        self.proc.join(timeout)
        return self.proc.exitcode


@pytest.fixture(scope="module")
def warm():
    """A forkserver that imports torch, the models and the trainer once; ``warm(argv, log)`` starts
    ``trainer.cli.main(argv)`` in a new process forked from it."""
    import multiprocessing as mp
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "trainer.cli", "trainer.loop", "trainer.report", "trainer.plots",
                                "cxrviewer.models", "cxrviewer.checkpoint", "cxrviewer.ood", "sklearn.metrics"])
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old

    def start(argv, log):
        p = ctx.Process(target=_cli_child, args=(argv, str(log)), daemon=True)
        p.start()
        return _Forked(p)

    def check(run: Path, reported: int) -> dict:
        out = run.parent / f"check-{time.monotonic_ns()}.json"
        p = ctx.Process(target=_check_child, args=(str(run), reported, str(out)))
        p.start()
        p.join(120)
        result = json.loads(out.read_text())
        assert result.pop("ok"), result["error"]
        return result

    start.check = check
    yield start  # the server ends with this test session (it exits when its parent does)


def _wait_for(proc, predicate, timeout=150.0, interval=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(interval)
    proc.kill()
    raise AssertionError("the trainer took too long")


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# ------------------------------------------------------------------------------------ SIGKILL
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX")
def test_sigkill_at_random_points_then_resume_completes(dataset, tmp_path, warm):
    rng = np.random.default_rng(20240801)
    run = tmp_path / "run"
    jsonls, kills, mid_write = [], [], 0

    # kill 1: a random moment in the epoch after the first one was reported
    j = tmp_path / "p1.jsonl"
    jsonls.append(j)
    proc = warm(_argv(dataset, run, j, resume=False), j.with_suffix(".stderr"))
    _wait_for(proc, lambda: any(e["event"] == "epoch" for e in _events(j)))
    time.sleep(float(rng.uniform(0.0, 0.6)))
    assert proc.poll() is None, "finished before the kill"
    _kill(proc)
    kills.append(warm.check(run, _reported_epochs(jsonls)))

    # kill 2: while a checkpoint or the resume state is being written (its temporary file is on disk)
    j = tmp_path / "p2.jsonl"
    jsonls.append(j)
    proc = warm(_argv(dataset, run, j, resume=True), j.with_suffix(".stderr"))
    target = int(rng.integers(1, 4))  # the 1st, 2nd or 3rd .safetensors write of the resumed run
    seen: set = set()

    def writing() -> bool:
        with contextlib.suppress(OSError):
            seen.update(n for n in os.listdir(run) if n.endswith(".tmp") and ".safetensors." in n)
        return len(seen) >= target

    assert _wait_for(proc, writing, interval=0.0005), "no checkpoint write seen"
    _kill(proc)
    left = _temporaries(run)
    mid_write += bool(set(left) & seen)
    kills.append(warm.check(run, _reported_epochs(jsonls)))

    # the last resume runs to the end
    j = tmp_path / "p3.jsonl"
    jsonls.append(j)
    proc = warm(_argv(dataset, run, j, resume=True), j.with_suffix(".stderr"))
    assert proc.wait(timeout=300) == 0, j.with_suffix(".stderr").read_text()[-3000:]
    events = _events(j)
    assert events[-1]["event"] == "done"
    resumed_from = next(e for e in events if e["event"] == "start")["start_epoch"]
    assert resumed_from == kills[-1]["state_epoch"] + 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, EPOCHS + 1))
    final = warm.check(run, EPOCHS)
    assert final["state_epoch"] == EPOCHS and final["last"] == EPOCHS
    assert final["best_calibrated"]  # the finished run's best model carries its temperature and test metrics
    # a killed write leaves a hidden temporary file; the resumed run must not keep them forever
    assert _temporaries(run) == [], _temporaries(run)
    print(f"\nSIGKILL: 2 kills, state after kill at epochs {[k['state_epoch'] for k in kills]}, "
          f"{mid_write} kill(s) landed during a .safetensors write ({sorted(seen)})")
