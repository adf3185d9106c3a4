"""``cxrviewer [FILM_OR_FOLDER ...]``: start the window.

The window is shown before torch is imported: torch comes in with the first model load, on a worker
thread, after ``show()``. ``--screenshot`` runs the same window headless-friendly, waits until every job
has finished (film, model, prediction, heatmap, worklist), saves the window as a PNG and exits, so docs,
tests and reviewers see exactly what a user sees.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_T0 = time.perf_counter()

EXIT_OK, EXIT_FILM, EXIT_MODEL, EXIT_TIMEOUT, EXIT_SAVE = 0, 2, 3, 4, 5


def process_age_s():
    """Seconds since this process started (Linux /proc; None elsewhere): startup is measured from the
    real start, interpreter and imports included, not from when this module was imported."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    from cxrviewer import __version__

    p = argparse.ArgumentParser(
        prog="cxrviewer",
        description="CXR Viewer: review chest films with a second opinion from an attention CNN. "
        "Subcommands: 'cxrviewer predict …', 'cxrviewer explain …'.",
    )
    p.add_argument("paths", nargs="*", metavar="FILM_OR_FOLDER", help="films to open; a folder opens as a worklist")
    p.add_argument("--model", metavar="NAME_OR_PATH", help="model to use: an installed model's name or a .safetensors file")
    p.add_argument("--device", metavar="DEV", help="where the model runs: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--heatmap", choices=("none", "attention", "gradcam", "lime"),
                   help="heatmap to show (default: last used; with --screenshot and a model: the model's "
                        "first map, its own attention or Grad-CAM)")
    p.add_argument("--screenshot", metavar="OUT.png", help="open the film(s), wait for everything to be computed, "
                   "save the window as PNG and exit (non-zero if a film cannot be opened)")
    p.add_argument("--size", default="1600x1000", metavar="WxH", help="window size for --screenshot (default 1600x1000)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up a --screenshot after this many seconds")
    p.add_argument("--version", action="version", version=f"CXR Viewer {__version__}")
    # --- desktop integration (issue 7) ---------------------------------------------------------------
    p.add_argument("--new-instance", action="store_true",
                   help="open a new window even if CXR Viewer is already running (by default the films are "
                   "handed to the running window)")
    desk = p.add_mutually_exclusive_group()
    desk.add_argument("--install-desktop", action="store_true",
                      help="register CXR Viewer with the Linux desktop for this user (launcher, icons, DICOM "
                      "file type, default for .dcm/PNG/JPEG) and exit")
    desk.add_argument("--uninstall-desktop", action="store_true",
                      help="remove what --install-desktop registered and exit")
    return p


def _qt_app():
    from PySide6.QtWidgets import QApplication

    from cxrviewer.gui.settings import APP, ORG

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "cxrviewer"])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    from cxrviewer import __version__

    app.setApplicationVersion(__version__)
    app.setDesktopFileName("cxrviewer")  # Wayland app id / X11 startup notification: matches cxrviewer.desktop
    from cxrviewer.gui.theme import apply_theme

    apply_theme(app)
    return app


def run(argv=None, backend=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code or 0)
    if args.install_desktop or args.uninstall_desktop:  # no window, no Qt: a shell command
        from cxrviewer.desktop import cli_action

        return cli_action("install" if args.install_desktop else "uninstall")
    if _single_instance_wanted(args) and _hand_over(args.paths):
        return 0
    app = _qt_app()
    instance = _become_instance(args)
    if instance is False:  # another instance came up meanwhile and took the films
        return 0
    from PySide6.QtGui import QIcon

    from cxrviewer.gui.main_window import MainWindow, app_icon_path

    icon = app_icon_path()
    if icon is not None:
        app.setWindowIcon(QIcon(str(icon)))
    shot = args.screenshot
    win = MainWindow(backend=backend, device=args.device, persist_settings=not shot)
    if instance is not None:  # before the first processEvents: no hand-over may arrive unconnected
        from cxrviewer.gui.single_instance import attach_window

        attach_window(instance, win)
    if not shot:
        from cxrviewer.gui.single_instance import install_file_open_filter

        install_file_open_filter(app, win)  # macOS Finder's "open this file" events
    if shot:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            print(f"cxrviewer: --size must look like 1600x1000, not {args.size!r}", file=sys.stderr)
            return 2
        win.resize(w, h)
    win.show()
    app.processEvents()  # the first paint: the window is really on screen now
    shown = time.perf_counter()
    win.startup = {"shown_s": shown - _T0, "since_process_start_s": process_age_s(),
                   "torch_imported_before_show": (win.torch_imported_at_first_show
                                                  if win.torch_imported_at_first_show is not None
                                                  else "torch" in sys.modules)}
    if os.environ.get("CXRVIEWER_TIMING"):
        age = win.startup["since_process_start_s"]
        print(f"window shown after {win.startup['shown_s'] * 1000:.0f} ms"
              + (f" ({age * 1000:.0f} ms since the process started)" if age is not None else "")
              + f" (torch imported before show: {win.startup['torch_imported_before_show']})", file=sys.stderr)
    if args.heatmap:
        win.heatmap.set_method(args.heatmap)
    if args.model:
        win.use_model_argument(args.model)
    if shot and not args.heatmap:
        win.heatmap_if_model = "attention"
    if args.paths:
        win.open_paths(args.paths)
    win.start_background_work()
    if shot:
        return _screenshot(app, win, shot, args.timeout, model_requested=bool(args.model))
    _quit_on_signals(win)
    code = app.exec()
    return int(code)


# --- single instance (issue 7) ----------------------------------------------------------------------
def _single_instance_wanted(args) -> bool:
    """A file manager's double-click passes only paths. ``--screenshot`` runs are always independent (docs,
    tests, CI run them in parallel), and so are deliberate command lines that choose a model, device or
    heatmap: the running window would ignore those choices."""
    return not (args.new_instance or args.screenshot or args.model or args.device or args.heatmap)


def _hand_over(paths) -> bool:
    """Give the films to a running viewer; True when it took them. Needs QtNetwork only (no torch)."""
    from cxrviewer.gui.single_instance import send_to_running

    return send_to_running(paths)


def _become_instance(args):
    """The listening server, None when single instance is off or unavailable, False when another
    instance won a start-up race and took the films (this process then exits)."""
    if not _single_instance_wanted(args):
        return None
    from cxrviewer.gui.single_instance import InstanceServer, send_to_running

    server = InstanceServer()
    if server.listen():
        return server
    if send_to_running(args.paths):
        return False
    return None  # cannot listen and nobody answers: run as an independent window


def _quit_on_signals(win) -> None:
    """Ctrl-C or a TERM from the shell closes the window properly (settings saved, jobs cancelled).

    Python only runs signal handlers when the interpreter gets control, so a light timer wakes it."""
    import signal

    from PySide6.QtCore import QTimer

    def close(*_):
        win.close()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, close)
        except (ValueError, OSError):  # not the main thread, or unsupported here
            return
    timer = QTimer(win)
    timer.timeout.connect(lambda: None)
    timer.start(250)


def wait_settled(app, win, timeout_s: float) -> bool:
    """Process events until no job is running (checked twice, so queued results are handled too)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    state = {"idle": 0, "ok": False}
    deadline = time.monotonic() + timeout_s

    def poll():
        if win.is_settled():
            state["idle"] += 1
            if state["idle"] >= 3:
                state["ok"] = True
                loop.quit()
                return
        else:
            state["idle"] = 0
        if time.monotonic() > deadline:
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(30)
    loop.exec()
    timer.stop()
    return state["ok"]


def _screenshot(app, win, out: str, timeout_s: float, model_requested: bool) -> int:
    ok = wait_settled(app, win, timeout_s)
    code = EXIT_OK
    if not ok:
        print(f"cxrviewer: gave up after {timeout_s:.0f} s waiting for {', '.join(win.runner.active_labels())}",
              file=sys.stderr)
        code = EXIT_TIMEOUT
    if win.film_error:
        print(f"cxrviewer: {win.film_error}", file=sys.stderr)
        code = EXIT_FILM
    elif model_requested and win.model_error:
        print(f"cxrviewer: {win.model_error}", file=sys.stderr)
        code = EXIT_MODEL
    if code in (EXIT_OK, EXIT_MODEL):
        app.processEvents()
        pix = win.grab()
        if not pix.save(out, "PNG"):
            print(f"cxrviewer: cannot write {out}", file=sys.stderr)
            code = EXIT_SAVE
    win.close()
    return code
