"""Smoke test of a built bundle: does the frozen application start, open films and draw them?

    python packaging/smoke_test.py --app dist/CXRViewer            (Linux, Windows: the one-folder build)
    python packaging/smoke_test.py --app "dist/CXR Viewer.app"     (macOS)

Runs the built executable (not this Python) with ``--screenshot`` on bundled sample films under the
offscreen Qt platform, and checks each PNG: it exists, has the requested size, and is not blank (a
window whose film failed to draw is a flat dark grey). One film is the plain DICOM, one the JPEG-LS
compressed DICOM, so a bundle that lost its codec plugins (pylibjpeg's entry points, pyjpegls) fails
here rather than on a reader's machine. Settings and user data go to a temporary folder, so it
neither reads nor changes the tester's own.

Exit status 0 when everything passed; the first failure is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_FILMS = ("DX_chest_NIH_nofinding.dcm", "kermany_normal_IM-0117-0001.dcm")


def find_executable(app: Path) -> Path:
    if app.is_file():
        return app
    for cand in (app / "CXRViewer", app / "CXRViewer.exe", app / "Contents" / "MacOS" / "CXRViewer"):
        if cand.is_file():
            return cand
    raise SystemExit(f"smoke test: no CXRViewer executable in {app}")


def bundled_samples(app: Path) -> Path:
    for cand in (app / "_internal" / "resources" / "samples", app / "Contents" / "Resources" / "resources" / "samples",
                 app / "Contents" / "Frameworks" / "resources" / "samples", app.parent / "_internal" / "resources" / "samples"):
        if cand.is_dir():
            return cand
    raise SystemExit(f"smoke test: no bundled resources/samples in {app}")


def check_png(path: Path, size: tuple) -> str:
    """An empty string when the screenshot is right, else what is wrong with it."""
    from PIL import Image
    import numpy as np

    if not path.is_file() or path.stat().st_size == 0:
        return "no screenshot written"
    with Image.open(path) as im:
        if im.size != size:
            return f"screenshot is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]}"
        gray = np.asarray(im.convert("L"), dtype=np.float32)
    h, w = gray.shape
    centre = gray[h // 5: 4 * h // 5, w // 4: 3 * w // 4]  # where the film is drawn
    if gray.std() < 8 or centre.std() < 8:
        return f"screenshot looks blank (std {gray.std():.1f}, centre {centre.std():.1f})"
    if len(np.unique(centre.astype(np.uint8))) < 32:
        return "screenshot has too few grey levels to contain a film"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", type=Path, required=True, help="dist/CXRViewer, its executable, or the .app")
    ap.add_argument("--film", action="append", help="film(s) to open (default: two bundled samples)")
    ap.add_argument("--size", default="1280x800")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--keep", type=Path, help="copy the screenshots into this folder")
    args = ap.parse_args(argv)

    exe = find_executable(args.app)
    films = [Path(f) for f in args.film] if args.film else [bundled_samples(args.app) / f for f in DEFAULT_FILMS]
    w, h = (int(v) for v in args.size.lower().split("x"))
    failures = []
    with tempfile.TemporaryDirectory(prefix="cxrviewer-smoke-") as tmp:
        env = dict(os.environ, CXRVIEWER_SETTINGS_DIR=str(Path(tmp) / "settings"),
                   CXRVIEWER_DATA=str(Path(tmp) / "data"))
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
        env.pop("CXRVIEWER_RESOURCES", None)  # the bundle must find its own resources
        r = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True, timeout=120)
        version = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or "CXR Viewer" not in version:
            failures.append(f"--version: exit {r.returncode}: {version[-500:]}")
        else:
            print(f"ok  {version}")
        for film in films:
            out = Path(tmp) / f"{film.stem}.png"
            t0 = time.perf_counter()
            try:
                r = subprocess.run([str(exe), "--screenshot", str(out), "--size", f"{w}x{h}",
                                    "--timeout", str(args.timeout), str(film)],
                                   env=env, capture_output=True, text=True, timeout=args.timeout + 60)
            except subprocess.TimeoutExpired:
                failures.append(f"{film.name}: no exit within {args.timeout + 60:.0f} s")
                continue
            took = time.perf_counter() - t0
            problem = f"exit status {r.returncode}: {r.stderr.strip()[-800:]}" if r.returncode != 0 else \
                check_png(out, (w, h))
            if problem:
                failures.append(f"{film.name}: {problem}")
                print(f"FAIL {film.name} ({took:.1f} s): {problem}")
            else:
                print(f"ok  {film.name}: {w}x{h} screenshot in {took:.1f} s")
            if args.keep and out.exists():
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / out.name).write_bytes(out.read_bytes())
    if failures:
        print("smoke test FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
