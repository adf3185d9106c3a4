"""What the command-line subcommands (``predict``, ``explain``) share: one way to report errors and one
way to turn ``--model``/``--device`` into a ready predictor, so both answer a bad model or device with the
same words and the same exit codes.

Exit codes: 0 done, 1 a file could not be used, 2 the command line itself was wrong.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Union

USAGE_ERROR = 2
FILE_ERROR = 1


def err(msg: str) -> None:
    """Messages go to stderr so stdout stays machine-readable (tables, JSON)."""
    print(msg, file=sys.stderr, flush=True)


class UsageError(Exception):
    """A command-line mistake; ``str()`` is the message for the user."""


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so ``main()`` returns codes (and tests
    and the GUI's single-instance forwarding can call it in-process)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def parse_args(parser: argparse.ArgumentParser, argv) -> Union[argparse.Namespace, int]:
    """The parsed arguments, or the exit code after a usage error (2) or ``--help`` (0)."""
    try:
        return parser.parse_args(argv)
    except UsageError as e:
        err(str(e))
        return USAGE_ERROR
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)


def open_predictor(prog: str, model: Optional[str], device: Optional[str]) -> Union["object", int]:
    """The predictor for ``--model`` (a path or an installed model's name; the default model when None) on
    ``--device``, with its notices printed; or the exit code after printing why there is none."""
    from cxrviewer.checkpoint import CheckpointError
    from cxrviewer.device import select_device
    from cxrviewer.inference import Predictor
    from cxrviewer.model_store import default_model_entry, find_model

    notices: list = []
    try:
        dev = select_device(device, notices)
        entry = find_model(model) if model else default_model_entry()
    except (ValueError, LookupError) as e:
        err(f"{prog}: {e.args[0] if e.args else e}")
        return USAGE_ERROR
    except CheckpointError as e:
        err(str(e))
        return FILE_ERROR
    if entry is None:
        err(f"{prog}: no model is installed; pass --model PATH.safetensors")
        return USAGE_ERROR
    try:
        predictor = Predictor.from_checkpoint(entry.path, dev)
    except CheckpointError as e:
        err(str(e))
        return FILE_ERROR
    for n in notices + list(predictor.notices):
        err(f"note: {n}")
    return predictor
