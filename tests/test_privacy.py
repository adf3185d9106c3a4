"""Hardening (issue 8): no patient identifier leaves the session unless the reader asks, and nothing
touches the network.

a. A DICOM full of identifiers, in a file named after the patient, goes through a whole reading: opened in
   the window, predicted, explained, the overlay and the report exported, ``cxrviewer predict --json --csv``
   run on it. Every log record (all loggers, DEBUG), Qt message, stdout/stderr, the window's title and
   every text it shows, the exported files (bytes, PNG text chunks, PDF metadata and page text) and every
   file the session wrote under the settings and data folders are searched for each identifier in several
   spellings. The film's *file name* is the reader's own label for the film: the window, the
   recent-files list and the CLI's ``file`` column name it (the search there ignores that exact name);
   our own log records and the exports must not carry even that (third-party DEBUG records, which the
   app never enables, may name the file a library reads). Then the report is exported with the reader's explicit opt-in and the
   same search finds every identifier in it: the check can fail.
b. No network at run time: with every socket connect and name lookup blocked and recorded, a full cycle
   (film, prediction, LIME, Grad-CAM, attention, a 1-epoch smoke training) attempts no connection. Asking
   the trainer for hub weights is the one place the network may be tried; it must fall back to random
   weights with a clear warning, quickly, and try nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import dicom_factory as df  # noqa: E402
import inference_helpers as ih  # noqa: E402
from pdf_text import pdf_text  # noqa: E402
from gui_helpers import settle as _settle, show_window  # noqa: E402

IDENTIFIERS = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-123456",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-987654",
    "InstitutionName": "St Elsewhere General Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
}
FILE_NAME = "DOE^JANE chest PA.dcm"  # what a PACS export or a hurried reader names a film


def _spellings(keyword: str, value: str) -> set:
    out = {value}
    if "^" in value:
        family, given = value.split("^", 1)
        out |= {value.replace("^", " "), f"{family}, {given}", f"{given} {family}", value.replace("^", "_")}
    if keyword == "PatientBirthDate":
        y, m, d = value[:4], value[4:6], value[6:]
        out |= {f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}"}
    return {s.lower() for s in out}


SPELLINGS = {k: _spellings(k, v) for k, v in IDENTIFIERS.items()}


def leaks(text: str) -> list:
    """The identifiers found in ``text`` (any spelling, any case)."""
    low = text.lower()
    return sorted(k for k, forms in SPELLINGS.items() if any(f in low for f in forms))


def byte_leaks(data: bytes) -> list:
    """The identifiers found in raw bytes, as UTF-8 / Latin-1 or UTF-16 (either byte order) text."""
    found = set(leaks(data.decode("latin-1")))
    for enc in ("utf-16-le", "utf-16-be"):
        for shift in (0, 1):
            found |= set(leaks(data[shift:].decode(enc, errors="ignore")))
    return sorted(found)


def without_file_name(text: str, film: Path) -> str:
    """The reader's own label for the film (its path, name, stem) removed: the places that must name the
    film may, everything else in the text is still searched."""
    for s in (str(film), str(film.parent / film.stem), film.name, film.stem):
        text = text.replace(s, "<film>")
    return text


def file_leaks(path: Path) -> list:
    """Identifiers in a file: its bytes, and for images and PDFs what a viewer shows of its metadata/text."""
    data = path.read_bytes()
    found = set(byte_leaks(data))
    if data[:5] == b"%PDF-":
        found |= set(leaks(pdf_text(data)))
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as im:
            found |= set(leaks(" ".join(f"{k} {v}" for k, v in im.info.items() if isinstance(v, (str, bytes)))))
    return sorted(found)


# ------------------------------------------------------------------------------------ no network
class NetworkBlocked:
    """Every connect / name lookup is recorded and refused (local Unix sockets still work)."""

    def __init__(self, monkeypatch):
        self.attempts: list = []
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        local = (getattr(socket, "AF_UNIX", None),)

        def refuse(what, target):
            self.attempts.append((what, target))
            raise OSError(101, f"network blocked by the test: {what} {target!r}")

        def connect(sock, address):
            if sock.family in local:
                return real_connect(sock, address)
            refuse("connect", address)

        def connect_ex(sock, address):
            if sock.family in local:
                return real_connect_ex(sock, address)
            refuse("connect_ex", address)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse("create_connection", address))
        monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse("getaddrinfo", host))
        monkeypatch.setattr(socket, "gethostbyname", lambda host: refuse("gethostbyname", host))


@pytest.fixture()
def network(monkeypatch):
    # no "offline" switches: the app must stay off the network by itself
    for var in ("HF_HUB_OFFLINE", "CXRVIEWER_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    from cxrviewer.models import pretrained

    monkeypatch.setattr(pretrained, "_ONLINE_CACHE", {})
    return NetworkBlocked(monkeypatch)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture()
def tiny_model():
    ih.ensure_tiny_registered()
    folder = Path(os.environ["CXRVIEWER_DATA"]) / "models"
    return ih.make_checkpoint(folder / "tiny.safetensors", sharpen=5.0, name="tiny", display_name="Tiny model")


@pytest.fixture()
def phi_film(tmp_path) -> Path:
    pixels = ih.chest_like(192, 160)
    ds = df.make_dataset(pixels, bits_allocated=8, bits_stored=8, phi=True, modality="DX", sop_class=df.DX_STORAGE,
                         OtherPatientIDs="PID-123456", StudyID="ACC-987654", PatientAge="054Y", **IDENTIFIERS)
    folder = tmp_path / "incoming"
    folder.mkdir()
    return df.write(ds, folder / FILE_NAME)


def _shown_texts(win) -> list:
    """Every text the window shows or keeps ready to show: labels, buttons, fields, tooltips, titles, menus,
    the status bar, the visible DICOM tag rows, the worklist, the empty-view text."""
    from PySide6.QtGui import QAction
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLabel, QLineEdit, QWidget

    out = [win.windowTitle(), win.statusBar().currentMessage(), win.view.empty_text]
    for w in win.findChildren(QWidget):
        out += [w.windowTitle(), w.toolTip(), w.statusTip()]
        if isinstance(w, (QLabel, QAbstractButton, QLineEdit)):
            out.append(w.text())
        if isinstance(w, QComboBox):
            out += [w.itemText(i) for i in range(w.count())]
    for a in win.findChildren(QAction):
        out += [a.text(), a.toolTip(), a.statusTip(), str(a.data() or "")]
    proxy = win.tags.proxy
    for r in range(proxy.rowCount()):
        out += [str(proxy.data(proxy.index(r, c)) or "") for c in range(proxy.columnCount())]
    out += [f"{k} {vars(v)}" for k, v in win.worklist.rows.items()]
    out += [str(win.probs.message), str(win.probs.caution), str(win.probs.pairs), str(win.heatmap.note.text())]
    return [t for t in out if t]


# ------------------------------------------------------------------------------- a. identifiers
def test_identifiers_never_leave_the_session_unless_asked(qtbot, tmp_path, tiny_model, phi_film, caplog, capfd,
                                                          qtlog, network):
    from cxrviewer import cli
    from cxrviewer.gui.main_window import MainWindow

    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):  # every logger, whatever level it was given
        lg = logging.getLogger(name)
        if lg.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)
    out = tmp_path / "exports"
    out.mkdir()

    # --- the window: open, predict, explain (attention, Grad-CAM), export overlay and reports
    win = show_window(qtbot, persist=True, size=(1100, 750))
    win.open_paths([str(phi_film)])
    _settle(qtbot, win)
    assert win.film is not None and win.probs.state == "ready", win.errors
    assert win.film.phi["patient_name"] == "DOE^JANE"  # the loader did read them: there is something to leak
    titles = [win.windowTitle()]
    texts = _shown_texts(win)
    win.heatmap.set_method("attention")
    _settle(qtbot, win)
    texts += _shown_texts(win)
    win.heatmap.set_method("gradcam")
    _settle(qtbot, win)
    assert win.view.overlay is not None, win.heatmap.note.text()
    texts += _shown_texts(win)
    exports = [out / "overlay.png", out / "report.pdf", out / "report.png"]
    win.export_overlay(str(exports[0]))
    win.export_report(str(exports[1]))
    win.export_report(str(exports[2]))
    _settle(qtbot, win)
    texts += _shown_texts(win)
    titles.append(win.windowTitle())
    win.close()  # settings are saved (recent files, last folder, model, heatmap)

    # --- the command line: predict --json --csv
    capfd.readouterr()
    csv_path = out / "predictions.csv"
    assert cli.main(["predict", str(phi_film), "--model", str(tiny_model), "--json", "--csv", str(csv_path)]) == 0
    cli_out, cli_err = capfd.readouterr()
    assert json.loads(cli_out)[0]["top_class"] in ih.CLASSES3

    # --- search everything
    ours = ("cxrviewer", "trainer")
    logs = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    own_logs = [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.split(".")[0] in ours]
    logs += [str(r.message) for r in qtlog.records]
    assert any("opened film-" in m for m in own_logs)  # the capture works (the loader logs each film it opens)
    session_files = [p for d in ("CXRVIEWER_SETTINGS_DIR", "CXRVIEWER_DATA")
                     for p in Path(os.environ[d]).rglob("*") if p.is_file()]
    assert any(p.suffix == ".ini" for p in session_files)
    findings = {}
    for label, text in ([("log", m) for m in logs] + [("title", t) for t in titles]
                        + [("window text", t) for t in texts]
                        + [("cli stdout", cli_out), ("cli stderr", cli_err)]):
        if leaks(without_file_name(text, phi_film)):
            findings.setdefault(label, []).append(text[:200])
    for m in own_logs:  # ours are searched as they are: they name a film by a digest, not its file name
        if leaks(m):  # (pydicom's DEBUG trace, which the app never turns on, names the file it reads)
            findings.setdefault("own log", []).append(m[:200])
    for f in session_files + [csv_path]:
        data = without_file_name(f.read_bytes().decode("latin-1"), phi_film).encode("latin-1")
        if byte_leaks(data):
            findings[str(f)] = byte_leaks(data)
    for f in exports:  # searched as they are: the exports carry not even the film's file name
        assert f.stat().st_size > 1000, win.errors
        if file_leaks(f):
            findings[f.name] = file_leaks(f)
    assert not findings, findings
    print(f"\nsearched {len(logs)} log records, {len(titles) + len(texts)} window texts, 2 CLI streams, "
          f"{len(session_files) + 1} session files and {len(exports)} exports for {len(IDENTIFIERS)} identifiers "
          f"in {sum(map(len, SPELLINGS.values()))} spellings: none found")
    assert Path(FILE_NAME).stem in win.windowTitle()  # (the window names the film by its file name)
    assert len(caplog.records) > 5 and len(texts) > 100

    # --- with the reader's explicit opt-in the identifiers are in the report: the search above can fail
    win2 = MainWindow(persist_settings=False)
    qtbot.addWidget(win2)
    win2.show()
    win2.open_paths([str(phi_film)])
    _settle(qtbot, win2)
    win2.heatmap.set_method("gradcam")
    _settle(qtbot, win2)
    named = [out / "named.pdf", out / "named.png"]
    for f in named:
        win2.export_report(str(f), include_identifiers=True)
    _settle(qtbot, win2)
    assert file_leaks(named[0]) == sorted(IDENTIFIERS), file_leaks(named[0])  # page text and metadata
    assert file_leaks(named[1]) == sorted(IDENTIFIERS), file_leaks(named[1])  # PNG description chunk
    win2.tags.show_phi.setChecked(True)  # "Show identifiers" in the tag panel: shown when asked
    assert leaks(" ".join(_shown_texts(win2))) == sorted(IDENTIFIERS)
    win2.close()
    assert network.attempts == []


# ------------------------------------------------------------------------------------- b. network
def test_a_full_cycle_makes_no_network_connection(tmp_path, tiny_model, phi_film, network, capsys, one_thread):
    from cxrviewer import cli
    from cxrviewer.models.pretrained import PretrainedWarning
    from trainer.loop import FitOptions, fit
    from trainer.progress import Progress, parse_line
    from trainer.recipes import apply_overrides, get_recipe

    from _trainer_synth import make_dataset

    # film -> prediction -> explanations (LIME with few samples, Grad-CAM, attention) and a report
    assert cli.main(["predict", str(phi_film), "--model", str(tiny_model), "--json"]) == 0
    for method, extra in (("lime", ["--samples", "40", "--segments", "12"]), ("gradcam", []), ("attention", [])):
        outp = tmp_path / f"{method}.png"
        rc = cli.main(["explain", str(phi_film), "--method", method, "--model", str(tiny_model), "--out", str(outp),
                       "--report", str(tmp_path / f"{method}.pdf"), *extra])
        assert rc == 0 and outp.stat().st_size > 1000, capsys.readouterr().err
    assert network.attempts == []

    # a 1-epoch smoke training from random weights
    data = make_dataset(tmp_path / "data", per_class=6, size=32, dicom=False, corrupt=False)
    recipe = apply_overrides(get_recipe("smoke"), {"input_size": 32, "batch_size": 8, "epochs": 1})

    def train(arch, pretrained, name):
        jsonl = tmp_path / f"{name}.jsonl"
        progress = Progress.from_target(str(jsonl), quiet=True)
        try:
            res = fit(FitOptions(data=data, out=tmp_path / name, recipe=recipe, arch=arch, seed=0,
                                 pretrained=pretrained), progress)
        finally:
            progress.close()
        assert res.checkpoint.is_file() and len(res.history) == 1
        return [parse_line(x) for x in jsonl.read_text().splitlines()]

    train("mobilenet_lung", "none", "none")
    assert network.attempts == []

    # hub weights asked for, no network: random weights, a clear warning, no hang, nothing but the probe
    for arch in ("resnet18", "squeezenet"):  # timm (Hugging Face) and torchvision (download.pytorch.org)
        t0 = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            events = train(arch, "hub", f"hub-{arch}")
        assert time.monotonic() - t0 < 120
        said = [str(w.message) for w in caught if issubclass(w.category, PretrainedWarning)]
        assert any("RANDOM initialisation" in s for s in said), said
        # the training's own progress stream (what the dialog and scripts read) says so too
        warned = [e["message"] for e in events if e["event"] == "warning"]
        assert any("random" in w.lower() and "pretrained" in w.lower() for w in warned), warned
    hosts = {t[0] if isinstance(t, tuple) else t for _what, t in network.attempts}
    assert hosts <= {"huggingface.co", "download.pytorch.org"}, network.attempts
    assert len(network.attempts) <= 2, network.attempts  # one reachability probe per host, then cached
    print(f"\nnetwork attempts: {network.attempts}")
