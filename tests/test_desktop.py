"""``--install-desktop`` / ``--uninstall-desktop`` into a temporary XDG home: right files, valid content,
idempotent, and an uninstall that leaves exactly what was there before."""

import configparser
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from cxrviewer import desktop

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    data, conf = tmp_path / "share", tmp_path / "config"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(conf))
    return data, conf


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _parse_desktop(path: Path) -> dict:
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    return dict(cp["Desktop Entry"])


def test_install_writes_a_valid_launcher_mime_type_and_icons(xdg):
    data, conf = xdg
    res = desktop.install_desktop(command=["/opt/CXR Viewer/cxrviewer"])
    entry_path = data / "applications" / "cxrviewer.desktop"
    entry = _parse_desktop(entry_path)
    assert entry["Type"] == "Application" and entry["Name"] == "CXR Viewer" and entry["Icon"] == "cxrviewer"
    assert entry["Exec"] == '"/opt/CXR Viewer/cxrviewer" %F'  # quoted (space), files as %F
    assert "application/dicom;" in entry["MimeType"] and "image/png;" in entry["MimeType"]
    if shutil.which("desktop-file-validate"):
        r = subprocess.run(["desktop-file-validate", str(entry_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    mime = ET.parse(data / "mime" / "packages" / "cxrviewer.xml").getroot()
    t = mime.find("m:mime-type[@type='application/dicom']", ns)
    match = t.find("m:magic/m:match", ns)
    assert (match.get("value"), match.get("offset"), match.get("type")) == ("DICM", "128", "string")
    assert {g.get("pattern") for g in t.findall("m:glob", ns)} >= {"*.dcm", "*.dicom"}

    for n in desktop.ICON_SIZES:
        icon = data / "icons" / "hicolor" / f"{n}x{n}" / "apps" / "cxrviewer.png"
        with Image.open(icon) as im:
            assert im.size == (n, n)
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / "cxrviewer.svg").is_file()

    apps = configparser.ConfigParser(interpolation=None)
    apps.optionxform = str
    apps.read(conf / "mimeapps.list")
    for t in desktop.DEFAULT_TYPES:
        assert apps["Default Applications"][t] == "cxrviewer.desktop"
    assert res.defaults and not any("Traceback" in n for n in res.notes)


@pytest.mark.skipif(not shutil.which("update-mime-database"), reason="shared-mime-info not installed")
def test_the_mime_database_recognises_dicom_without_an_extension(xdg):
    data, _ = xdg
    res = desktop.install_desktop(command=["cxrviewer"])
    assert any(c.startswith("update-mime-database") for c in res.commands)
    magic = (data / "mime" / "magic").read_bytes()
    assert b"application/dicom" in magic and b"DICM" in magic  # the compiled magic rule exists
    assert (data / "mime" / "application" / "dicom.xml").is_file()


def test_install_is_idempotent_and_uninstall_restores_the_previous_state(xdg):
    data, conf = xdg
    conf.mkdir(parents=True)
    (conf / "mimeapps.list").write_text("[Default Applications]\nimage/png=org.gnome.eog.desktop\n"
                                        "text/plain=gedit.desktop\n")
    keep = data / "applications" / "someone-else.desktop"
    keep.parent.mkdir(parents=True)
    keep.write_text("[Desktop Entry]\nType=Application\nName=Other\nExec=other\n")
    before_data, before_conf = _snapshot(data), _snapshot(conf)

    desktop.install_desktop(command=["cxrviewer"])
    first = _snapshot(data)
    again = desktop.install_desktop(command=["cxrviewer"])
    assert _snapshot(data).keys() == first.keys()
    assert not [f for f in again.files if "mimeapps" not in f and "mime/" not in f]  # nothing rewritten

    res = desktop.uninstall_desktop()
    assert _snapshot(data) == before_data  # our files and generated caches gone, the other launcher kept
    assert _snapshot(conf) == before_conf  # the previous PNG default is back, text/plain untouched
    assert res.removed
    again = desktop.uninstall_desktop()  # nothing left to remove: says so, no error
    assert any("not installed" in n for n in again.notes)


def test_a_changed_default_is_not_reverted_by_uninstall(xdg):
    data, conf = xdg
    desktop.install_desktop(command=["cxrviewer"])
    lst = conf / "mimeapps.list"
    lst.write_text(lst.read_text().replace("image/png=cxrviewer.desktop", "image/png=gimp.desktop"))
    desktop.uninstall_desktop()
    text = lst.read_text()
    assert "image/png=gimp.desktop" in text and "cxrviewer.desktop" not in text


def test_the_packaged_templates_match_what_install_writes(tmp_path):
    """packaging/linux/ holds the same launcher and MIME XML (for distribution packagers)."""
    out = desktop.write_templates(tmp_path)
    for p in out:
        assert (REPO / "packaging" / "linux" / p.name).read_text() == p.read_text(), \
            f"run: python -m cxrviewer.desktop templates ({p.name} differs)"


def test_command_line_flags_run_before_any_window(xdg, tmp_path):
    data, _ = xdg
    env = dict(os.environ, PYTHONPATH=str(REPO), QT_QPA_PLATFORM="offscreen")
    code = ("import sys; from cxrviewer.cli import main; rc = main(sys.argv[1:]); "
            "print('widgets', 'PySide6.QtWidgets' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "--install-desktop"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "registered" in r.stdout and "widgets False" in r.stdout
    exec_line = _parse_desktop(data / "applications" / "cxrviewer.desktop")["Exec"]
    assert exec_line.endswith(" %F") and ("cxrviewer" in exec_line)
    r = subprocess.run([sys.executable, "-c", code, "--uninstall-desktop"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not (data / "applications" / "cxrviewer.desktop").exists()
