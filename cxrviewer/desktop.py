"""Linux desktop integration: ``cxrviewer --install-desktop`` / ``--uninstall-desktop``.

Registers CXR Viewer with the user's desktop the freedesktop.org way, in the user's own folders (no root,
no system files touched), so a double-click on a ``.dcm``, an extension-less DICOM or a PNG in the file
manager opens it here:

- ``$XDG_DATA_HOME/applications/cxrviewer.desktop`` (the launcher; ``Exec`` is the installed command),
- ``$XDG_DATA_HOME/mime/packages/cxrviewer.xml`` (``application/dicom``: ``*.dcm``/``*.dicom`` and the
  ``DICM`` magic at offset 128, which is what identifies DICOM files that have no extension),
- ``$XDG_DATA_HOME/icons/hicolor/<N>x<N>/apps/cxrviewer.png`` and ``scalable/apps/cxrviewer.svg``,
- defaults in ``$XDG_CONFIG_HOME/mimeapps.list`` (DICOM, PNG, JPEG by default).

Then the caches are refreshed with ``update-mime-database`` / ``update-desktop-database`` and the defaults
set with ``xdg-mime default`` where those tools exist; where they do not, that is reported, not an error
(the launcher still works; file managers rebuild the caches themselves on most desktops).

Everything written is recorded in a manifest (``$XDG_DATA_HOME/cxrviewer/desktop-install.json``) so that
uninstalling removes exactly that, restores the previous default handlers, and leaves the user's other
files alone. Installing twice is the same as installing once.

Qt-free: it runs before any window exists and in environments without a display.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from cxrviewer import paths

DESKTOP_ID = "cxrviewer.desktop"
ICON_NAME = "cxrviewer"
MIME_PACKAGE = "cxrviewer.xml"
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
#: what the launcher says it can open (file managers list it under "Open With")
HANDLED_TYPES = ("application/dicom", "image/png", "image/jpeg", "image/tiff", "image/bmp")
#: what a double-click opens here after ``--install-desktop``
DEFAULT_TYPES = ("application/dicom", "image/png", "image/jpeg")
MANIFEST_VERSION = 1

MIME_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- CXR Viewer: DICOM files, including those without an extension (identified by the "DICM" marker
     after the 128-byte preamble, as the DICOM standard PS3.10 defines the file format). -->
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="application/dicom">
    <comment>DICOM image</comment>
    <acronym>DICOM</acronym>
    <expanded-acronym>Digital Imaging and Communications in Medicine</expanded-acronym>
    <generic-icon name="image-x-generic"/>
    <magic priority="80">
      <match type="string" value="DICM" offset="128"/>
    </magic>
    <glob pattern="*.dcm"/>
    <glob pattern="*.dicom"/>
    <glob pattern="DICOMDIR" case-sensitive="true"/>
  </mime-type>
</mime-info>
"""


def _desktop_quote(arg: str) -> str:
    """Quote one Exec argument as the Desktop Entry spec requires (and escape % for field codes)."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def desktop_entry(command: Iterable[str] = ("cxrviewer",)) -> str:
    """The launcher's text; ``command`` is the program and its fixed arguments (``%F`` is appended)."""
    exec_line = " ".join(_desktop_quote(a) for a in command) + " %F"
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.4",
        "Name=CXR Viewer",
        "GenericName=Chest X-ray Viewer",
        "Comment=Review chest X-ray films with a second opinion from a CNN (decision support, not a diagnosis)",
        f"Exec={exec_line}",
        f"Icon={ICON_NAME}",
        "Terminal=false",
        "StartupNotify=true",
        "Categories=Graphics;Viewer;MedicalSoftware;",
        "MimeType=" + "".join(t + ";" for t in HANDLED_TYPES),
        "Keywords=DICOM;X-ray;radiograph;radiology;chest;CXR;PACS;",
        "",
    ])


def launch_command() -> list:
    """How the file manager should start CXR Viewer: the frozen executable, the installed ``cxrviewer``
    script, else this interpreter with ``-m cxrviewer`` (a source checkout)."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).resolve())]
    found = shutil.which("cxrviewer")
    if found:
        return [str(Path(found).resolve())]
    cmd = [str(Path(sys.executable).resolve()), "-m", "cxrviewer"]
    root = Path(__file__).resolve().parent.parent
    import site

    installed = {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in installed:  # a source checkout: the file manager's environment has no PYTHONPATH for it
        cmd = ["env", f"PYTHONPATH={root}"] + cmd
    return cmd


def data_home(prefix=None) -> Path:
    if prefix is not None:
        return Path(prefix)
    env = os.environ.get("XDG_DATA_HOME", "").strip()
    return Path(env) if env and os.path.isabs(env) else Path.home() / ".local" / "share"


def config_home(config=None) -> Path:
    if config is not None:
        return Path(config)
    env = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(env) if env and os.path.isabs(env) else Path.home() / ".config"


def _icon_sources() -> dict:
    """size -> PNG bytes, from the pre-rendered icon set when it ships (source tree, frozen bundle),
    else scaled from the bundled 512 px PNG with Pillow."""
    candidates = [Path(__file__).resolve().parent.parent / "packaging" / "linux" / "icons" / "hicolor"]
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        candidates.insert(0, Path(frozen) / "packaging" / "linux" / "icons" / "hicolor")
    for base in candidates:
        found = {n: base / f"{n}x{n}" / "apps" / f"{ICON_NAME}.png" for n in ICON_SIZES}
        if all(p.is_file() for p in found.values()):
            return {n: p.read_bytes() for n, p in found.items()}
    png = paths.icons_dir() / "cxrviewer.png"
    if not png.is_file():
        return {}
    from PIL import Image

    out = {}
    with Image.open(png) as im:
        im = im.convert("RGBA")
        for n in ICON_SIZES:
            buf = io.BytesIO()
            im.resize((n, n), Image.LANCZOS).save(buf, "PNG")
            out[n] = buf.getvalue()
    return out


@dataclass
class DesktopResult:
    """What happened, for the command line to print: files written/removed, tools run, notes."""

    files: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    defaults: dict = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"  wrote   {p}" for p in self.files] + [f"  removed {p}" for p in self.removed]
        lines += [f"  ran     {c}" for c in self.commands]
        lines += [f"  default {t} -> {DESKTOP_ID}" for t in self.defaults]
        lines += [f"  note    {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers
def _manifest_path(data: Path) -> Path:
    return data / "cxrviewer" / "desktop-install.json"


def _read_manifest(data: Path) -> dict:
    try:
        m = json.loads(_manifest_path(data).read_text(encoding="utf-8"))
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_if_changed(path: Path, content: bytes, result: DesktopResult) -> None:
    """Write atomically, and only when the content differs (idempotent, no needless mtime bumps)."""
    try:
        if path.read_bytes() == content:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".cxrviewer-tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    result.files.append(str(path))


def _run(cmd: list, result: DesktopResult, env: Optional[dict] = None) -> bool:
    tool = shutil.which(cmd[0])
    if tool is None:
        result.notes.append(f"{cmd[0]} not found: skipped (install it, or log out and in, to refresh that cache)")
        return False
    try:
        proc = subprocess.run([tool] + cmd[1:], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.notes.append(f"{cmd[0]} failed: {exc}")
        return False
    result.commands.append(" ".join(shlex.quote(c) for c in cmd))
    if proc.returncode != 0:
        result.notes.append(f"{cmd[0]} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")
        return False
    return True


def _read_defaults(path: Path) -> dict:
    """The ``[Default Applications]`` group of a mimeapps.list (later duplicate keys win, as in the spec)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    out, section = {}, None
    for line in lines:
        t = line.strip()
        if t.startswith("[") and t.endswith("]"):
            section = t[1:-1]
        elif section == "Default Applications" and "=" in t and not t.startswith("#"):
            k, v = t.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _edit_defaults(path: Path, changes: dict) -> None:
    """Set (value) or delete (None) keys of ``[Default Applications]``, line by line, so the user's other
    groups, comments and order survive byte for byte (a config parser would rewrite the whole file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    todo = dict(changes)
    out, section, group_end = [], None, None
    for line in lines:
        t = line.strip()
        if t.startswith("[") and t.endswith("]"):
            if section == "Default Applications":
                group_end = len(out)
            section = t[1:-1]
        elif section == "Default Applications" and "=" in t and not t.startswith("#"):
            key = t.split("=", 1)[0].strip()
            if key in changes:
                value = todo.pop(key, None) if key in todo else None
                if value is not None:
                    out.append(f"{key}={value}\n")
                continue  # deleted, or a duplicate of a key already written
        out.append(line)
    if section == "Default Applications" and group_end is None:
        group_end = len(out)
    new = [f"{k}={v}\n" for k, v in todo.items() if v is not None]
    if new:
        if group_end is None:
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n"
            out += ["[Default Applications]\n"] + new
        else:
            if group_end > 0 and not out[group_end - 1].endswith("\n"):
                out[group_end - 1] += "\n"
            out[group_end:group_end] = new
    # an empty [Default Applications] group we leave behind is dropped
    cleaned = []
    for i, line in enumerate(out):
        if line.strip() == "[Default Applications]":
            rest = out[i + 1:]
            nxt = next((x for x in rest if x.strip()), "")
            if not nxt or nxt.strip().startswith("["):
                continue
        cleaned.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".cxrviewer-tmp")
    tmp.write_text("".join(cleaned), encoding="utf-8")
    os.replace(tmp, path)


def _set_defaults(types: Iterable[str], config: Path, data: Path, result: DesktopResult,
                  previous: dict) -> None:
    """Make CXR Viewer the default for ``types``, remembering each previous default for uninstall.

    ``xdg-mime default`` is used where installed (on GNOME/KDE it goes through their own tools);
    otherwise the ``[Default Applications]`` group of mimeapps.list is edited directly, as the
    freedesktop "Association between MIME types and applications" spec allows."""
    path = config / "mimeapps.list"
    if not path.exists():
        previous.setdefault("__created_mimeapps__", True)
    current = _read_defaults(path)
    for t in types:
        old = current.get(t)
        if t not in previous:
            previous[t] = old if old is not None and old.split(";")[0] != DESKTOP_ID else None
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), XDG_DATA_HOME=str(data))
    if shutil.which("xdg-mime") and all(_run(["xdg-mime", "default", DESKTOP_ID, t], result, env) for t in types):
        result.defaults.update({t: DESKTOP_ID for t in types})
        return
    if not shutil.which("xdg-mime"):
        result.notes.append("xdg-mime not found: defaults written to mimeapps.list directly")
    current = _read_defaults(path)
    changes = {t: DESKTOP_ID for t in types if current.get(t) != DESKTOP_ID}
    result.defaults.update({t: DESKTOP_ID for t in types})
    if changes:
        _edit_defaults(path, changes)
        result.files.append(str(path))


def _restore_defaults(config: Path, previous: dict, result: DesktopResult) -> None:
    """Undo only our own defaults: an entry someone changed since is left as it is."""
    path = config / "mimeapps.list"
    created = bool(previous.pop("__created_mimeapps__", False))
    if not path.is_file():
        return
    current = _read_defaults(path)
    changes = {}
    for t, old in previous.items():
        cur = current.get(t)
        if cur is None or cur.split(";")[0] != DESKTOP_ID:
            continue
        rest = ";".join(x for x in cur.split(";") if x and x != DESKTOP_ID)
        changes[t] = old or rest or None
    if not changes:
        return
    _edit_defaults(path, changes)
    if created and not path.read_text(encoding="utf-8").strip():
        path.unlink()  # we created it and only our defaults were in it
        result.removed.append(str(path))
    else:
        result.removed.append(f"{path} (CXR Viewer defaults)")


# ------------------------------------------------------------------------------------------- API
def install_desktop(prefix=None, *, config=None, defaults: Iterable[str] = DEFAULT_TYPES,
                    command: Optional[list] = None, run_tools: bool = True) -> DesktopResult:
    """Register the launcher, the DICOM MIME type, the icons and the default handlers for this user.

    ``prefix`` replaces ``$XDG_DATA_HOME`` and ``config`` ``$XDG_CONFIG_HOME`` (tests, staged installs);
    ``command`` replaces the detected launch command. Safe to run again (after moving the installation,
    it points the launcher at the new place)."""
    data, conf = data_home(prefix), config_home(config)
    result = DesktopResult()
    manifest = _read_manifest(data)
    created_dirs = list(manifest.get("created_dirs", []))
    for d in (data / "mime", data / "applications"):
        if not d.exists() and str(d) not in created_dirs:
            created_dirs.append(str(d))
    created_caches = list(manifest.get("created_caches", []))
    cache = data / "applications" / "mimeinfo.cache"  # update-desktop-database's output
    if not cache.exists() and str(cache) not in created_caches:
        created_caches.append(str(cache))
    written = set(manifest.get("files", []))

    targets = {data / "applications" / DESKTOP_ID: desktop_entry(command or launch_command()).encode(),
               data / "mime" / "packages" / MIME_PACKAGE: MIME_XML.encode()}
    for n, png in _icon_sources().items():
        targets[data / "icons" / "hicolor" / f"{n}x{n}" / "apps" / f"{ICON_NAME}.png"] = png
    svg = paths.icons_dir() / "cxrviewer.svg"
    if svg.is_file():
        targets[data / "icons" / "hicolor" / "scalable" / "apps" / f"{ICON_NAME}.svg"] = svg.read_bytes()
    else:
        result.notes.append(f"no scalable icon at {svg}")
    for path, content in targets.items():
        _write_if_changed(path, content, result)
        written.add(str(path))

    previous = dict(manifest.get("previous_defaults", {}))
    if defaults:
        _set_defaults(list(defaults), conf, data, result, previous)
    if run_tools:
        _run(["update-mime-database", str(data / "mime")], result)
        _run(["update-desktop-database", str(data / "applications")], result)

    new_manifest = {"version": MANIFEST_VERSION, "files": sorted(written), "created_dirs": created_dirs,
                    "created_caches": created_caches,
                    "config": str(conf), "previous_defaults": previous}
    mpath = _manifest_path(data)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(new_manifest, indent=2), encoding="utf-8")
    return result


def uninstall_desktop(prefix=None, *, config=None, run_tools: bool = True) -> DesktopResult:
    """Remove what :func:`install_desktop` wrote (per its manifest) and restore previous defaults.

    Without a manifest (an older or manual install) only the files with our own names are removed."""
    data = data_home(prefix)
    result = DesktopResult()
    manifest = _read_manifest(data)
    conf = config_home(config if config is not None else manifest.get("config"))
    files = [Path(p) for p in manifest.get("files", [])]
    if not manifest:
        files = [data / "applications" / DESKTOP_ID, data / "mime" / "packages" / MIME_PACKAGE]
        files += [data / "icons" / "hicolor" / f"{n}x{n}" / "apps" / f"{ICON_NAME}.png" for n in ICON_SIZES]
        files += [data / "icons" / "hicolor" / "scalable" / "apps" / f"{ICON_NAME}.svg"]
    for p in files:
        try:
            p.unlink()
            result.removed.append(str(p))
        except FileNotFoundError:
            pass
        except OSError as exc:
            result.notes.append(f"cannot remove {p}: {exc}")
        # mime/packages stays: update-mime-database refuses to run without it
        _prune_empty(p.parent, stop=data / "mime" / "packages" if p.name == MIME_PACKAGE else data)
    _restore_defaults(conf, dict(manifest.get("previous_defaults", {})) or {t: None for t in DEFAULT_TYPES}, result)

    if run_tools:
        if (data / "mime" / "packages").is_dir():
            _run(["update-mime-database", str(data / "mime")], result)
        if (data / "applications").is_dir():
            _run(["update-desktop-database", str(data / "applications")], result)
    # caches that did not exist before the install were made because of it: remove them
    for c in map(Path, manifest.get("created_caches", [])):
        if c.is_file():
            c.unlink()
            result.removed.append(str(c))
            _prune_empty(c.parent, stop=data)
    # folders that did not exist before the install hold only generated caches now: remove them
    for d in map(Path, manifest.get("created_dirs", [])):
        if d.is_dir() and not _has_user_files(d):
            shutil.rmtree(d, ignore_errors=True)
            result.removed.append(str(d))
    mpath = _manifest_path(data)
    if mpath.exists():
        mpath.unlink()
        result.removed.append(str(mpath))
        _prune_empty(mpath.parent, stop=data)
    if not result.removed:
        result.notes.append("CXR Viewer was not installed in " + str(data))
    return result


# caches the freedesktop tools regenerate from the sources we removed: not the user's own files
_GENERATED = {"mimeinfo.cache", "mime.cache", "globs", "globs2", "magic", "aliases", "subclasses", "types",
              "generic-icons", "icons", "treemagic", "XMLnamespaces", "version"}


def _has_user_files(folder: Path) -> bool:
    for dirpath, _dirs, names in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for n in names:
            if rel == Path(".") and n in _GENERATED:
                continue
            if rel.parts and rel.parts[0] != "packages" and n.endswith(".xml"):
                continue  # mime/<media>/<type>.xml, generated by update-mime-database
            return True
    return False


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove folders left empty by the uninstall, up to (not including) ``stop``."""
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def write_templates(out: Path) -> list:
    """The packaged copies in ``packaging/linux/`` (for distribution packagers), with ``Exec=cxrviewer``."""
    out.mkdir(parents=True, exist_ok=True)
    d, m = out / DESKTOP_ID, out / "cxrviewer-mime.xml"
    d.write_text(desktop_entry(), encoding="utf-8")
    m.write_text(MIME_XML, encoding="utf-8")
    return [d, m]


def main(argv=None) -> int:
    """``python -m cxrviewer.desktop install|uninstall|templates DIR``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cxrviewer.desktop")
    ap.add_argument("action", choices=("install", "uninstall", "templates"))
    ap.add_argument("dir", nargs="?", help="data folder (default $XDG_DATA_HOME) or, for templates, the output")
    args = ap.parse_args(argv)
    if args.action == "templates":
        for p in write_templates(Path(args.dir or Path(__file__).resolve().parent.parent / "packaging" / "linux")):
            print(p)
        return 0
    return cli_action(args.action, args.dir)


def cli_action(action: str, prefix=None) -> int:
    """What ``cxrviewer --install-desktop`` / ``--uninstall-desktop`` run; prints a short report."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        print("Desktop integration by this command is for Linux desktops; on Windows use the installer "
              "(file associations), on macOS the app bundle's document types (see packaging/README.md).",
              file=sys.stderr)
        return 1
    try:
        if action == "install":
            res = install_desktop(prefix)
            print(f"CXR Viewer registered with the desktop ({data_home(prefix)}):")
        else:
            res = uninstall_desktop(prefix)
            print(f"CXR Viewer removed from the desktop ({data_home(prefix)}):")
    except OSError as exc:
        print(f"cxrviewer: desktop integration failed: {exc}", file=sys.stderr)
        return 1
    print(res.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
