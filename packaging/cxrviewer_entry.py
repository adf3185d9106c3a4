"""The frozen application's entry point (PyInstaller runs a script, not ``-m cxrviewer``).

``freeze_support`` must run first: in a frozen build ``multiprocessing`` children (the trainer and data
loader workers) re-execute this same executable, and without it each child would start another viewer.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from cxrviewer.cli import main

    sys.exit(main())
