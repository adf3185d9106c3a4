"""What every interrupted-training test checks of a run folder (kills, full disks): shared by
test_survival_sigkill.py and test_survival_diskfull.py."""

from __future__ import annotations

import json
from pathlib import Path


def events(jsonl: Path) -> list:
    if not jsonl.exists():
        return []
    out = []
    for line in jsonl.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return out


def reported_epochs(jsonls) -> int:
    return max([e["epoch"] for j in jsonls for e in events(j) if e["event"] == "epoch"] or [0])


def temporaries(run: Path) -> list:
    return sorted(p.name for p in run.glob(".*.tmp"))


def check_run_folder(run: Path, reported: int) -> dict:
    """What must hold after any interruption; returns what was found."""
    from cxrviewer.checkpoint import load_checkpoint
    from trainer.state import load_state

    meta, model_state, _opt = load_state(run)
    state_epoch = meta["info"]["epoch"]
    # never behind an epoch the run reported, at most one epoch (the one in progress) ahead of it
    assert reported <= state_epoch <= reported + 1, (reported, state_epoch)
    assert [h["epoch"] for h in meta["info"]["history"]] == list(range(1, state_epoch + 1))
    found = {"state_epoch": state_epoch}
    for name in ("last", "best"):
        model, card = load_checkpoint(run / f"{name}.safetensors")
        found[name] = card["training"]["epochs"]
    found["best_calibrated"] = bool(card["temperature"] > 0 and card["training"]["metrics"].get("test"))
    # the checkpoints are written before the state: at most one epoch ahead of it, never behind
    assert state_epoch <= found["last"] <= state_epoch + 1, found
    assert 1 <= found["best"] <= found["last"], found
    return found
