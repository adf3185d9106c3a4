"""`python -m cxrviewer` is the same program as the `cxrviewer` command."""

from cxrviewer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
