"""Exporting what the reader saw: the overlay as PNG, and a one-page report (PNG or PDF).

Reports leave the machine (e-mailed, attached to tickets, pasted into slides), so identifiers are opt-in:
by default the page and the file's metadata carry no patient name, ID, birth date, accession number and
not even the film's file name (file names are often built from those); the film is named by a short
fingerprint instead (``film_key``), enough to match a report back to the film on the reading machine.
With ``include_identifiers=True`` the film's ``phi`` and file name are printed on the page and put in the
file's description metadata.

Rendering uses matplotlib's object API (``Figure`` + Agg/PDF canvas, no pyplot state), so it is safe
from a worker thread and needs no display.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrviewer import DISCLAIMER, __version__
from cxrviewer.explain.lime_explainer import unsettled_note
from cxrviewer.explain.types import MATERIAL_FRACTION
from cxrviewer.probability_text import percent

METHOD_TITLES = {"lime": "LIME superpixels", "gradcam": "Grad-CAM", "attention": "Model attention"}
REPORT_PIXELS = 1400  # longest side of the film images embedded in a report (keeps a PDF to a few MB)
# characters a line holds between the page's margins (6% each side of A4) at the text's size in points;
# matplotlib's own wrap runs to the page's edge, where a printer cuts it off
_CHARS_AT_POINTS = {8: 124, 9: 108, 9.5: 102}


def _wrap(lines: Sequence, points: float) -> list:
    import textwrap

    return [w for line in lines for w in (textwrap.wrap(line, _CHARS_AT_POINTS[points]) or [""])]


OVERLAY_SUFFIXES = (".png",)
REPORT_SUFFIXES = (".pdf", ".png")


def export_path(path, suffixes: Sequence = OVERLAY_SUFFIXES) -> Path:
    """The file an export writes. A name without an extension gets the first of ``suffixes`` (save dialogs
    on some desktops return just what was typed); another extension is refused with ``ValueError``: a PNG
    written as "report.docx" or "overlay.txt" opens as garbage in whatever that extension calls."""
    path = Path(path)
    if not path.suffix:
        return path.with_name(path.name + suffixes[0])
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot save {path.name}: this export is {' or '.join(s[1:].upper() for s in suffixes)}, "
                         f"so its name must end in {' or '.join(suffixes)}")
    return path


def save_overlay_png(path, rgb: np.ndarray) -> Path:
    """The overlay (or side-by-side image) as a PNG with no text metadata at all."""
    from PIL import Image

    path = export_path(path)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path, format="PNG")
    return path


def _shrink(img: np.ndarray, longest: int = REPORT_PIXELS) -> np.ndarray:
    from PIL import Image

    from cxrviewer.preprocess import preview_shape

    h, w = preview_shape(img.shape, longest)
    if (h, w) == img.shape[:2]:
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).resize((w, h), Image.LANCZOS))


def _probabilities(prediction, classes: Optional[Sequence] = None) -> list:
    """[(class, probability)] from a Prediction, a dict, or a list of pairs, in the model's class order."""
    if prediction is None:
        return []
    if isinstance(prediction, dict):
        return [(str(k), float(v)) for k, v in prediction.items()]
    probs = getattr(prediction, "probs", None)
    if probs is not None:
        names = list(getattr(prediction, "classes", None) or classes or range(len(probs)))
        return [(str(n), float(p)) for n, p in zip(names, np.asarray(probs).ravel())]
    return [(str(k), float(v)) for k, v in prediction]


def _identifier_lines(film) -> list:
    lines = []
    phi = dict(getattr(film, "phi", {}) or {})
    for k, v in phi.items():
        lines.append(f"{k}: {v}")
    name = getattr(film, "display_name", None)
    if name:
        lines.append(f"File: {name}")
    return lines


def build_report_figure(
    film_image: np.ndarray,
    overlay: np.ndarray,
    explanation,
    prediction=None,
    *,
    model_name: str = "",
    model_version: str = "",
    film=None,
    include_identifiers: bool = False,
    date: Optional[_dt.datetime] = None,
    legend: Optional[str] = None,
    outline_floor: float = MATERIAL_FRACTION,
):
    """The report page as a matplotlib Figure (A4 portrait). ``outline_floor``: the one the overlay's
    outlines were drawn with (``types.outline_floor`` of its threshold), so the notes describe them."""
    from matplotlib.figure import Figure

    date = date or _dt.datetime.now().astimezone()
    fig = Figure(figsize=(8.27, 11.69), dpi=150)
    fig.text(0.06, 0.965, "CXR Viewer \u2014 explanation report", fontsize=16, weight="bold", va="top")
    method = METHOD_TITLES.get(explanation.method, explanation.method)
    prob = f" (p = {percent(explanation.probability)})" if explanation.probability is not None else ""
    header = [
        f"Model: {model_name or explanation.model_name or 'unknown'}" + (f", version {model_version}" if model_version else ""),
        f"Explanation: {method} for class \u201c{explanation.class_name}\u201d{prob}",
        f"Generated: {date.strftime('%Y-%m-%d %H:%M %Z').strip()} by CXR Viewer {__version__}",
    ]
    if include_identifiers and film is not None:
        header += _identifier_lines(film)
    elif explanation.film_key:
        header.append(f"Film fingerprint: {explanation.film_key[:12]} (identifiers omitted)")
    header = _wrap(header, 9.5)
    fig.text(0.06, 0.93, "\n".join(header), fontsize=9.5, va="top", linespacing=1.5)

    top = 0.93 - 0.022 * (len(header) + 1)
    img_h = min(0.45, top - 0.30)
    for i, (img, title) in enumerate(((film_image, "Film"), (overlay, f"Film + {method}"))):
        ax = fig.add_axes((0.05 + i * 0.46, top - img_h, 0.44, img_h))
        ax.imshow(_shrink(np.asarray(img)), cmap="gray" if np.ndim(img) == 2 else None, vmin=0, vmax=255,
                  interpolation="lanczos")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    if legend:
        fig.text(0.51, top - img_h - 0.012, legend, fontsize=8, va="top")

    probs = _probabilities(prediction)
    if probs:
        ax = fig.add_axes((0.30, 0.13, 0.60, min(0.12, 0.035 * len(probs) + 0.02)))
        names = [n for n, _ in probs][::-1]
        vals = [p for _, p in probs][::-1]
        colors = ["#c0392b" if n == explanation.class_name else "#7f8c8d" for n in names]
        ax.barh(names, vals, color=colors)
        ax.set_xlim(0, 1)
        for y, v in enumerate(vals):  # past the bar's end; inside it, in white, where no room is left
            inside = v > 0.88
            ax.text(v - 0.01 if inside else v + 0.01, y, percent(v), va="center", fontsize=8,
                    ha="right" if inside else "left", color="white" if inside else "black")
        ax.tick_params(labelsize=8)
        ax.set_title("Class probabilities (exact model output)", fontsize=9)

    notes = []
    s = explanation.settings or {}
    if explanation.method == "lime":
        fit = f" Local fit R\u00b2 = {explanation.score:.2f}." if explanation.score is not None else ""
        how = ("lime's regression with a logistic surrogate" if s.get("fit") == "surrogate"
               else "lime's regression alone")
        notes.append(f"LIME: {s.get('samples_used', s.get('num_samples'))} samples ({s.get('sampling', 'independent')} "
                     f"sampling; {how}), {len(explanation.segment_weights)} superpixels "
                     f"({s.get('segmentation')}); red supports the class, blue opposes it; "
                     f"of the {s.get('num_features')} strongest supporting superpixels, those with at least "
                     f"{outline_floor:.0%} of the largest weight are outlined.{fit}")
        unsettled = unsettled_note(explanation)
        if unsettled:
            notes.append(f"Uncertain: {unsettled}.")
    elif explanation.method == "attention" and s.get("description"):
        notes.append(f"Attention: {s['description']}")
    elif explanation.method == "gradcam":
        notes.append("Grad-CAM: where the class score's gradient meets strong activations in the model's last "
                     "spatial layer; coarse by construction.")
    fig.text(0.06, 0.095, "\n".join(_wrap([n for n in notes if n], 8)), fontsize=8, va="top")
    fig.text(0.06, 0.04, "\n".join(_wrap([DISCLAIMER], 9)), fontsize=9, style="italic", va="top")
    return fig


def save_report(path, film_image: np.ndarray, overlay: np.ndarray, explanation, prediction=None, **page) -> Path:
    """Write the one-page report; the format follows the suffix (.pdf or .png, see :func:`export_path`).
    ``page`` takes :func:`build_report_figure`'s keyword arguments; identifiers reach the file's metadata
    only with ``include_identifiers=True``, as on the page."""
    path = export_path(path, REPORT_SUFFIXES)
    fig = build_report_figure(film_image, overlay, explanation, prediction, **page)
    film, include_identifiers = page.get("film"), page.get("include_identifiers", False)
    pdf = path.suffix.lower() == ".pdf"
    subject = f"{METHOD_TITLES.get(explanation.method, explanation.method)} explanation"
    meta = {"Title": "CXR Viewer explanation report", "Software" if not pdf else "Creator": f"CXR Viewer {__version__}"}
    if pdf:
        meta.update({"Subject": subject, "Author": None, "Keywords": None})
    else:
        meta["Description"] = subject
    if include_identifiers and film is not None:
        ids = "; ".join(_identifier_lines(film))
        if pdf:
            meta["Keywords"] = ids
        else:
            meta["Description"] = f"{subject}; {ids}"
    fig.savefig(path, format="pdf" if pdf else "png", metadata=meta)
    return path
