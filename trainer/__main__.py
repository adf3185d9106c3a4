"""``python -m trainer`` and ``torchrun -m trainer``: the same entry point as ``cxr-train``."""

import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
