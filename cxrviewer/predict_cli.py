"""``cxrviewer predict``: probabilities for films from the command line, for batch work and scripts.

    cxrviewer predict FILM_OR_FOLDER... [--model NAME_OR_PATH] [--device DEV] [--json] [--csv OUT]

Output goes to stdout (a table; CSV when a folder is given; a JSON list with ``--json``), problems to
stderr, one line each, so a pipeline keeps the good rows. Films are named by file name only: folder names
and DICOM headers can carry patient identifiers, and this output is meant to be pasted and shared. Where two
films share a name (IM0001.dcm in every series folder of a PACS export) the rows cannot be told apart, so
stderr says so, and ``--paths`` names each film by its path as given (the reader's choice, as with a report's
identifiers).

Exit status: 0 all films predicted; 1 some film (or the model) could not be used; 2 usage error (bad
arguments, no such model).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

from cxrviewer.cli_support import Parser, err as _err, open_predictor, parse_args


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cxrviewer predict", description="Print a model's class probabilities for chest films.")
    p.add_argument("films", nargs="+", metavar="FILM_OR_FOLDER", help="films (DICOM or images) or folders of films")
    p.add_argument("--model", metavar="NAME_OR_PATH",
                   help="model name (bundled or installed) or a .safetensors file; default: the bundled default")
    p.add_argument("--device", metavar="DEV", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--csv", metavar="OUT", help="also write the results as CSV to OUT")
    p.add_argument("--paths", action="store_true",
                   help="name films by their path (a folder as given, then the folders under it) instead of the file "
                        "name alone; folder names can carry patient identifiers, so this is off by default")
    return p


def _expand(inputs) -> tuple:
    """Films to run, in order (a folder's as the folder was typed, then the path under it: what ``--paths``
    shows), whether any argument was a folder (-> CSV output), and the arguments that do not exist."""
    from cxrviewer.film.loader import iter_films

    films, any_folder, missing = [], False, []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            any_folder = True
            films.extend(iter_films(p))
        elif p.exists():
            films.append(p)
        else:
            missing.append(p)
    return films, any_folder, missing


def _csv_text(rows, classes) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "top_class", "top_probability", *classes, "ood_verdict", "ood_score"])
    for r in rows:
        ood = r.get("ood") or {}
        w.writerow([r["file"], r["top_class"], f"{r['top_probability']:.6f}",
                    *(f"{v:.6f}" for v in r["probabilities"]), ood.get("verdict", ""),
                    f"{ood['score']:.4f}" if ood else ""])
    return buf.getvalue()


def _table_text(rows, classes) -> str:
    names = [r["file"] for r in rows]
    w0 = max([4, *map(len, names)])
    wt = max([9, *map(len, classes)])
    wc = [max(7, len(c)) for c in classes]
    lines = ["  ".join([f"{'file':<{w0}}", f"{'top class':<{wt}}", *(f"{c:>{w}}" for c, w in zip(classes, wc)),
                        "training distribution"])]
    for r in rows:
        ood = r.get("ood")
        lines.append("  ".join([f"{r['file']:<{w0}}", f"{r['top_class']:<{wt}}",
                                *(f"{v:>{w}.4f}" for v, w in zip(r["probabilities"], wc)),
                                f"{ood['verdict']} ({ood['score']:.2f})" if ood else "not checked"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args

    from cxrviewer.film import FilmError, load_film

    films, any_folder, missing = _expand(args.films)
    failed = 0
    for p in missing:
        _err(f"Cannot open {p.name}: no such file or folder")
        failed += 1

    predictor = open_predictor("cxrviewer predict", args.model, args.device)
    if isinstance(predictor, int):
        return predictor

    if not args.paths:
        shared = sorted(n for n, k in Counter(p.name for p in films).items() if k > 1)
        if shared:
            _err(f"note: {len(shared)} file name(s) are shared by films in different folders ({', '.join(shared[:3])}"
                 f"{' …' if len(shared) > 3 else ''}), so their rows look alike; --paths names films by their path")
    rows = []
    seen_notices = len(predictor.notices)
    for p in films:
        try:
            film = load_film(p)
            pred = predictor.predict_film(film)
        except FilmError as e:
            _err(str(e))
            failed += 1
            continue
        except Exception as e:  # a model failure on one film must not lose the others' results
            _err(f"Cannot predict {p.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            failed += 1
            continue
        finally:
            for n in predictor.notices[seen_notices:]:  # e.g. the GPU failed and the CPU took over
                _err(f"note: {n}")
            seen_notices = len(predictor.notices)
        row = {"file": p.as_posix() if args.paths else p.name, **pred.to_dict()}
        row.pop("device", None)
        rows.append(row)

    classes = list(predictor.classes)
    if args.csv:
        try:
            Path(args.csv).write_text(_csv_text(rows, classes), encoding="utf-8")
        except OSError as e:
            _err(f"Cannot write {args.csv}: {e.strerror or e}")
            failed += 1
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif any_folder and not args.csv:
        sys.stdout.write(_csv_text(rows, classes))
    elif rows:
        sys.stdout.write(f"model: {predictor.display_name} ({predictor.device})\n")
        sys.stdout.write(_table_text(rows, classes))
    sys.stdout.flush()
    if not films and not missing:
        _err("cxrviewer predict: no films found")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
