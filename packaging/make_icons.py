"""Render the application icon set from ``resources/icons/cxrviewer.svg``.

One vector source, every platform's raster format derived from it, so the icons never drift apart:

- ``packaging/linux/icons/hicolor/<N>x<N>/apps/cxrviewer.png`` for N in 16..512 (the XDG icon theme
  sizes; file managers pick the nearest size instead of scaling a single PNG badly),
- ``packaging/windows/cxrviewer.ico`` (16..256, what Explorer and the taskbar use),
- ``packaging/macos/cxrviewer.icns`` (16..1024, what Finder and the Dock use).

The SVG is rendered with Qt's QSvgRenderer (PySide6 is a runtime dependency already); the .ico and
.icns containers are written with Pillow. Run it again after changing the SVG:

    QT_QPA_PLATFORM=offscreen python packaging/make_icons.py
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SVG = ROOT / "resources" / "icons" / "cxrviewer.svg"
LINUX_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn on a transparent ``size``×``size`` canvas, as PNG bytes."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    if QGuiApplication.instance() is None:  # QImage painting needs a GUI application for fonts/plugins
        render_png._app = QGuiApplication([sys.argv[0]])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setRenderHint(QPainter.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.WriteOnly)
    image.save(buf, "PNG")
    buf.close()
    return bytes(data)


def make_icons(svg: Path = SVG, out: Path = HERE) -> list:
    from PIL import Image

    written = []
    for n in LINUX_SIZES:
        dest = out / "linux" / "icons" / "hicolor" / f"{n}x{n}" / "apps" / "cxrviewer.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(render_png(svg, n))
        written.append(dest)
    big = Image.open(io.BytesIO(render_png(svg, 1024))).convert("RGBA")
    ico = out / "windows" / "cxrviewer.ico"
    ico.parent.mkdir(parents=True, exist_ok=True)
    big.save(ico, format="ICO", sizes=[(n, n) for n in ICO_SIZES])
    written.append(ico)
    icns = out / "macos" / "cxrviewer.icns"
    icns.parent.mkdir(parents=True, exist_ok=True)
    big.save(icns, format="ICNS", append_images=[
        Image.open(io.BytesIO(render_png(svg, n))).convert("RGBA") for n in ICNS_SIZES if n != 1024])
    written.append(icns)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--svg", type=Path, default=SVG)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    for p in make_icons(args.svg, args.out):
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
