"""Hardening (issue 8): the trainer survives a full disk.

The disk fills up in the middle of a run: an atomic write fails with ENOSPC (simulated in
``cxrviewer.atomic.atomic_path``, which every checkpoint, state and report write goes through, after half
the bytes reached the disk). The run stops with a clear error, no half-written file is left, the last good
checkpoint still loads, and once space is freed ``--resume`` completes the run. The kill faults are in
``test_survival_sigkill.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import inference_helpers as ih  # noqa: E402
from _trainer_synth import make_dataset  # noqa: E402
from _interrupted_runs import check_run_folder as _check_run_folder, events as _events, reported_epochs as _reported_epochs, temporaries as _temporaries  # noqa: E501

EPOCHS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("diskfull") / "data", per_class=8, size=32, dicom=False,
                        corrupt=False)


# ---------------------------------------------------------------------------------- disk full
def _recipe():
    from trainer.recipes import apply_overrides, get_recipe

    return apply_overrides(get_recipe("smoke"), {"input_size": 32, "batch_size": 8, "epochs": EPOCHS})


class FullDisk:
    """Wraps ``cxrviewer.atomic.atomic_path`` (and the modules that imported it by name): the write that
    ``fail_if(name, names written so far)`` picks gets half its bytes to disk and then ENOSPC, as a
    filling disk does. ``writes`` lists every atomic write, in order."""

    def __init__(self, monkeypatch, fail_if=None):
        from cxrviewer import atomic, checkpoint, model_store

        self.writes, self.failed = [], None
        real = atomic.atomic_path

        @contextlib.contextmanager
        def atomic_path(path):
            with real(path) as tmp:
                yield tmp
                name = Path(path).name
                self.writes.append(name)
                if self.failed is None and fail_if is not None and fail_if(name, self.writes):
                    data = tmp.read_bytes()
                    tmp.write_bytes(data[: len(data) // 2])
                    self.failed = (len(self.writes), name)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

        for mod in (atomic, checkpoint, model_store):
            monkeypatch.setattr(mod, "atomic_path", atomic_path)


def kth(target: str, k: int):
    return lambda name, writes: name == target and writes.count(target) == k


def final_best(name, writes):
    """The calibrated best checkpoint, written once every epoch's state is on disk."""
    return name == "best.safetensors" and writes.count("resume.safetensors") == EPOCHS


FAULTS = {
    "last.safetensors of epoch 2": kth("last.safetensors", 2),
    "resume.safetensors of epoch 2": kth("resume.safetensors", 2),
    "best.safetensors with the calibrated card": final_best,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_full_disk_stops_with_a_clear_error_and_the_last_good_checkpoint_loads(dataset, tmp_path, monkeypatch,
                                                                               one_thread, fault):
    from cxrviewer.checkpoint import load_checkpoint
    from trainer.loop import FitOptions, fit
    from trainer.progress import Progress

    ih.ensure_tiny_registered()
    out, jsonl = tmp_path / "run", tmp_path / "run.jsonl"

    def opts(resume=False):
        return FitOptions(data=dataset, out=out, recipe=_recipe(), arch=ih.TINY, seed=0, pretrained="none",
                          resume=resume)

    progress = Progress.from_target(str(jsonl), quiet=True)
    with monkeypatch.context() as m:
        disk = FullDisk(m, FAULTS[fault])
        with pytest.raises(OSError) as info:
            fit(opts(), progress)
    progress.close()
    assert info.value.errno == errno.ENOSPC and "No space left on device" in str(info.value)
    assert disk.failed and disk.failed[1] == fault.split()[0], disk.failed
    assert _temporaries(out) == []  # the half-written temporary is gone; nothing else was touched
    found = _check_run_folder(out, _reported_epochs([jsonl]))  # the last good checkpoints load
    assert found["state_epoch"] >= 1
    # space freed: the run is resumed and completes
    res = fit(opts(resume=True))
    assert [h["epoch"] for h in res.history] == list(range(1, EPOCHS + 1))
    _model, card = load_checkpoint(res.checkpoint)
    assert card["temperature"] > 0 and (out / "report.md").is_file()
    print(f"\nENOSPC at atomic write {disk.failed[0]} of the run ({fault}); state kept at epoch "
          f"{found['state_epoch']}")


def test_full_disk_through_the_cli_is_one_clear_line(dataset, tmp_path, monkeypatch, capsys, one_thread):
    """What the training dialog shows: the JSON ``error`` event and the exit status, not a traceback."""
    from trainer.cli import main

    ih.ensure_tiny_registered()
    out, jsonl = tmp_path / "cli-run", tmp_path / "cli.jsonl"
    args = ["fit", str(dataset), "--arch", ih.TINY, "--recipe", "smoke", "--pretrained", "none", "--set",
            "input_size=32", "--epochs", str(EPOCHS), "--batch-size", "8", "--out", str(out), "--progress-jsonl",
            str(jsonl), "--quiet"]
    with monkeypatch.context() as m:
        FullDisk(m, kth("last.safetensors", 2))  # epoch 2's checkpoint: epoch 1 is kept
        rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    last = _events(jsonl)[-1]
    assert last["event"] == "error" and "No space left on device" in last["message"]
    assert main(args + ["--resume"]) == 0  # space freed
    assert _events(jsonl)[-1]["event"] == "done"
