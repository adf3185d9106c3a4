"""The ``cxrviewer`` command: the viewer by default, or a headless subcommand.

    cxrviewer [FILM_OR_FOLDER ...] [--model NAME] [--device DEV] [--screenshot OUT.png]
    cxrviewer predict FILM... [--model NAME] [--json]
    cxrviewer explain FILM --method lime|attention|gradcam --out FILE.png

Subcommands import torch; the viewer path does not import it before the window is shown.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "predict": "cxrviewer.predict_cli",
    "explain": "cxrviewer.explain.cli",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        return int(module.main(argv[1:]) or 0)
    from cxrviewer.gui.app import run

    return int(run(argv) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
