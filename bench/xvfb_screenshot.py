"""Real-window check: run CXR Viewer as a real X11 window under Xvfb and save what it shows.

    python bench/xvfb_screenshot.py                       -> docs/screenshot.png
    python bench/xvfb_screenshot.py --app dist/CXRViewer  (the built bundle instead of this checkout)

The test suite runs Qt's "offscreen" platform, which never creates a window on a display server; this
script uses the real xcb platform on a virtual X server, so window creation, the GL/raster backing store,
fonts and the X event loop are exercised as on a reader's desktop. It opens the bundled sample films
(a worklist), lets the app's ``--screenshot`` mode wait until everything shown is computed (film,
model, prediction, heatmap, worklist readings), and saves the window as the README screenshot.

Xvfb missing is a skip, not a failure (``apt-get install xvfb``); the Qt xcb plugin also needs the
xcb utility libraries (Debian: libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 ...).
With no model in ``resources/models/`` the screenshot shows the "no model installed" state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = 0  # a skip is not a failure of the code under test; --strict turns it into 77 (automake's "skipped")


def start_xvfb(size: str) -> tuple:
    """Xvfb on a free display (it picks one and reports it on -displayfd): (process, ":N")."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size}x24", "-nolisten", "tcp",
                             "-noreset"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 20
    with os.fdopen(read_fd, "rb") as fh:
        while time.monotonic() < deadline and not number.endswith(b"\n"):
            chunk = fh.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip().isdigit():
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"Xvfb did not start: {err.strip()[-500:]}")
    return proc, f":{number.decode().strip()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("films", nargs="*", help="films or folders (default: the bundled samples as a worklist)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--size", default="1600x1000", help="window size")
    ap.add_argument("--app", type=Path, help="a built bundle (dist/CXRViewer) instead of python -m cxrviewer")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the model and heatmap")
    ap.add_argument("--strict", action="store_true", help="exit 77 instead of 0 when Xvfb is missing")
    args = ap.parse_args(argv)

    if shutil.which("Xvfb") is None:
        print("SKIP: Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb); no real-window check done.")
        return 77 if args.strict else SKIP
    films = args.films or [str(ROOT / "resources" / "samples")]
    if args.app:
        exe = args.app if args.app.is_file() else args.app / "CXRViewer"
        cmd = [str(exe)]
    else:
        cmd = [sys.executable, "-m", "cxrviewer"]
    w, h = (int(v) for v in args.size.lower().split("x"))
    xvfb, display = start_xvfb(f"{w + 64}x{h + 64}")
    try:
        with tempfile.TemporaryDirectory(prefix="cxrviewer-xvfb-") as tmp:
            tmp_out = Path(tmp) / "shot.png"
            env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb",
                       CXRVIEWER_SETTINGS_DIR=str(Path(tmp) / "settings"),  # not the tester's settings
                       CXRVIEWER_DATA=str(Path(tmp) / "data"),  # only bundled models: reproducible
                       CXRVIEWER_TIMING="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            env.pop("WAYLAND_DISPLAY", None)
            t0 = time.perf_counter()
            r = subprocess.run(cmd + ["--screenshot", str(tmp_out), "--size", f"{w}x{h}",
                                      "--timeout", str(args.timeout)] + films,
                               env=env, capture_output=True, text=True, timeout=args.timeout + 120, cwd=ROOT)
            took = time.perf_counter() - t0
            for line in r.stderr.splitlines():
                if "window shown" in line or "cxrviewer:" in line:
                    print(line)
            if "could not load the qt platform plugin" in r.stderr.lower() or r.returncode not in (0, 3):
                print(f"FAIL: exit status {r.returncode} under Xvfb {display} (xcb):\n{r.stderr.strip()[-2000:]}",
                      file=sys.stderr)
                return 1
            from PIL import Image
            import numpy as np

            with Image.open(tmp_out) as im:
                size, gray = im.size, np.asarray(im.convert("L"), dtype=np.float32)
            if size != (w, h) or gray.std() < 8:
                print(f"FAIL: screenshot is {size}, std {gray.std():.1f} (expected {w}x{h}, not blank)", file=sys.stderr)
                return 1
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_out, args.out)
            note = " (no model: the 'no model installed' state)" if r.returncode == 3 else ""
            print(f"ok: real X11 window (xcb on Xvfb {display}), everything computed and saved in {took:.1f} s{note}")
            print(f"screenshot: {args.out} ({w}x{h})")
            return 0
    finally:
        xvfb.terminate()
        try:
            xvfb.wait(5)
        except subprocess.TimeoutExpired:
            xvfb.kill()


if __name__ == "__main__":
    raise SystemExit(main())
