"""Help ▸ About: what is running (versions, device) and under which licences its models and films are.

A bug report or a validation record needs the exact versions; the licences must be visible because the
bundled sample films (CC BY 4.0, MIT) and models carry attribution duties. The text is built from the
installation itself (the samples README table, the model cards), not written by hand, so it cannot go
stale. torch is reported only when it is already loaded: importing it just to print a version would cost
seconds and defeat the window-before-torch start-up.
"""

from __future__ import annotations

import html
import platform
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

from cxrviewer import DISCLAIMER, __version__, paths


def versions() -> dict:
    import PySide6
    from PySide6.QtCore import qVersion

    torch = sys.modules.get("torch")
    info = {
        "CXR Viewer": __version__,
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "Qt": qVersion(),
        "PySide6": PySide6.__version__,
        "torch": getattr(torch, "__version__", "?") if torch is not None else "loaded on first use",
        "System": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }
    if getattr(sys, "frozen", False):
        info["Build"] = "bundled application"
    return info


def sample_licences(readme: Optional[Path] = None) -> list:
    """(file, licence) rows of the samples README's table (the column headed "licence")."""
    readme = readme or paths.samples_dir() / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return []
    rows, header = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None  # a table ended; the next one has its own header
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
            continue
        if "licence" in header or "license" in header:
            col = header.index("licence") if "licence" in header else header.index("license")
            if len(cells) > col:
                rows.append((cells[0].strip("`"), cells[col]))
    return rows


def model_licences(choices: Iterable) -> list:
    """(model name, source, licence) from the model cards, bundled models first."""
    out = []
    for c in choices:
        meta = c.metadata or {}
        card = meta.get("card") if isinstance(meta.get("card"), dict) else {}
        licence = card.get("licence") or card.get("license") or meta.get("licence") or "not stated in the model card"
        out.append((c.display_name, c.source, str(licence)))
    out.sort(key=lambda r: (r[1] != "bundled", r[0]))
    return out


def _md_inline(text: str) -> str:
    """The few Markdown bits the README table uses (**bold**, `code`), as HTML; everything else escaped."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def about_html(choices: Iterable = (), device: str = "", models_listed: bool = True) -> str:
    rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>"
                   for k, v in versions().items())
    rows += f"<tr><td><b>Device</b></td><td>{html.escape(device or 'chosen when a model loads')}</td></tr>"
    models = model_licences(choices)
    if models:
        mtext = "".join(f"<li>{html.escape(n)} ({html.escape(s or 'model')}): {_md_inline(lic)}</li>"
                        for n, s, lic in models)
        mtext = f"<ul>{mtext}</ul>"
    elif not models_listed:
        mtext = "<p>The model list is still being read.</p>"
    else:
        mtext = "<p>No model is installed or bundled with this installation.</p>"
    samples = sample_licences()
    stext = ("<ul>" + "".join(f"<li><code>{html.escape(f)}</code>: {_md_inline(lic)}</li>" for f, lic in samples)
             + "</ul><p>Details and citations: <code>" + html.escape(str(paths.samples_dir() / "README.md"))
             + "</code></p>") if samples else "<p>No sample films are bundled.</p>"
    return (
        f"<h2>CXR Viewer {html.escape(__version__)}</h2>"
        f"<p>A local, second-opinion viewer for chest X-ray films.</p>"
        f"<p style='color:#f2c572'>{html.escape(DISCLAIMER)}</p>"
        f"<table cellspacing='6'>{rows}</table>"
        f"<h3>Models</h3>{mtext}"
        f"<h3>Sample films</h3>{stext}"
        "<h3>Software</h3><p>CXR Viewer: Apache-2.0. Qt for Python (PySide6): LGPLv3. "
        "PyTorch: BSD-3-Clause. pydicom: MIT.</p>"
    )


def show_about(win) -> "QDialog":  # noqa: F821
    """A non-modal dialog (selectable text, so versions can be pasted into a report)."""
    from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

    dlg = QDialog(win)
    dlg.setObjectName("aboutDialog")
    dlg.setWindowTitle("About CXR Viewer")
    text = QTextBrowser()
    text.setOpenExternalLinks(True)
    device = win.device_label.text().removeprefix("Device: ")
    text.setHtml(about_html(win.choices, device, models_listed=not win._discover_pending))
    buttons = QDialogButtonBox(QDialogButtonBox.Close)
    buttons.rejected.connect(dlg.close)
    lay = QVBoxLayout(dlg)
    lay.addWidget(text)
    lay.addWidget(buttons)
    dlg.resize(620, 560)
    dlg.text = text
    dlg.show()
    return dlg
