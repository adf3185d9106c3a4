"""Qt-free arithmetic behind the image view, window/level dragging and the worklist.

Kept apart from the widgets so it can be unit-tested without a display and so the Qt layer stays a thin
translation of mouse and key events into calls here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from cxrviewer.film.types import Window
from cxrviewer.probability_text import percent

ROTATIONS = (0, 90, 180, 270)
ZOOM_MIN, ZOOM_MAX = 0.02, 32.0
NORMAL_NAMES = ("normal", "no finding", "no_finding", "nofinding", "healthy", "negative")


# --------------------------------------------------------------------------------------------------
# display orientation and the film -> screen transform
# --------------------------------------------------------------------------------------------------
@dataclass
class ViewState:
    """What the reader has done to the display of one film (never to its pixels).

    ``center`` is the point of the *oriented* image (after flips and rotation) shown at the middle of
    the viewport; ``fit`` means the zoom follows the viewport size until the reader zooms or pans.
    """

    zoom: float = 1.0
    center: tuple = (0.0, 0.0)
    rotation: int = 0
    flip_h: bool = False
    flip_v: bool = False
    fit: bool = True


def oriented_size(width: int, height: int, rotation: int) -> tuple:
    return (height, width) if rotation % 180 else (width, height)


def orientation_matrix(width: int, height: int, rotation: int, flip_h: bool, flip_v: bool) -> np.ndarray:
    """3×3 matrix taking film coordinates (x=col, y=row, continuous) to the oriented image's coordinates.

    Flips are applied in film space first, then a clockwise rotation, so "rotate then flip H" in the
    menu always mirrors what is on screen left-right: callers translate screen flips via
    :func:`screen_flip`.
    """
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}")
    w, h = float(width), float(height)
    m = np.eye(3)
    if flip_h:
        m = np.array([[-1, 0, w], [0, 1, 0], [0, 0, 1]], float) @ m
    if flip_v:
        m = np.array([[1, 0, 0], [0, -1, h], [0, 0, 1]], float) @ m
    if rotation == 90:
        r = np.array([[0, -1, h], [1, 0, 0], [0, 0, 1]], float)
    elif rotation == 180:
        r = np.array([[-1, 0, w], [0, -1, h], [0, 0, 1]], float)
    elif rotation == 270:
        r = np.array([[0, 1, 0], [-1, 0, w], [0, 0, 1]], float)
    else:
        r = np.eye(3)
    return r @ m


def screen_flip(state: ViewState, horizontal: bool) -> ViewState:
    """Flip what is on screen horizontally/vertically whatever the current rotation.

    With a 90° or 270° rotation the screen's horizontal axis is the film's vertical one, so the film-space
    flip to toggle is the other one.
    """
    film_h = horizontal if state.rotation % 180 == 0 else not horizontal
    if film_h:
        return replace(state, flip_h=not state.flip_h)
    return replace(state, flip_v=not state.flip_v)


def view_matrix(film_w: int, film_h: int, state: ViewState, viewport_w: float, viewport_h: float) -> np.ndarray:
    """Film coordinates -> widget pixels: orientation, then centre on ``state.center``, then zoom."""
    o = orientation_matrix(film_w, film_h, state.rotation, state.flip_h, state.flip_v)
    cx, cy = state.center
    z = state.zoom
    t = np.array([[z, 0, viewport_w / 2.0 - z * cx], [0, z, viewport_h / 2.0 - z * cy], [0, 0, 1]], float)
    return t @ o


def map_point(m: np.ndarray, x: float, y: float) -> tuple:
    v = m @ np.array([x, y, 1.0])
    return float(v[0]), float(v[1])


def screen_to_film(film_w: int, film_h: int, state: ViewState, vw: float, vh: float, sx: float, sy: float) -> tuple:
    return map_point(np.linalg.inv(view_matrix(film_w, film_h, state, vw, vh)), sx, sy)


def fit_state(film_w: int, film_h: int, state: ViewState, vw: float, vh: float, margin: float = 0.98) -> ViewState:
    """The state that shows the whole oriented film centred in the viewport."""
    ow, oh = oriented_size(film_w, film_h, state.rotation)
    if ow <= 0 or oh <= 0 or vw <= 0 or vh <= 0:
        return replace(state, center=(ow / 2.0, oh / 2.0), fit=True)
    z = min(vw / ow, vh / oh) * margin
    return replace(state, zoom=clamp_zoom(z), center=(ow / 2.0, oh / 2.0), fit=True)


def clamp_zoom(z: float) -> float:
    return float(min(max(z, ZOOM_MIN), ZOOM_MAX))


def zoom_about(state: ViewState, factor: float, anchor: tuple, vw: float, vh: float) -> ViewState:
    """Zoom by ``factor`` keeping the image point under ``anchor`` (widget pixels) where it is."""
    new_zoom = clamp_zoom(state.zoom * factor)
    ax, ay = anchor
    cx, cy = state.center
    # oriented-image point currently under the anchor
    px = cx + (ax - vw / 2.0) / state.zoom
    py = cy + (ay - vh / 2.0) / state.zoom
    new_center = (px - (ax - vw / 2.0) / new_zoom, py - (ay - vh / 2.0) / new_zoom)
    return replace(state, zoom=new_zoom, center=new_center, fit=False)


def pan(state: ViewState, dx: float, dy: float) -> ViewState:
    """Move the image with the mouse by (dx, dy) widget pixels."""
    cx, cy = state.center
    return replace(state, center=(cx - dx / state.zoom, cy - dy / state.zoom), fit=False)


def rotate(state: ViewState, film_w: int, film_h: int, clockwise: bool = True) -> ViewState:
    """Rotate by 90° keeping the same point of the film at the viewport centre."""
    old = orientation_matrix(film_w, film_h, state.rotation, state.flip_h, state.flip_v)
    fx, fy = map_point(np.linalg.inv(old), *state.center)
    new_rot = (state.rotation + (90 if clockwise else 270)) % 360
    new = replace(state, rotation=new_rot)
    nm = orientation_matrix(film_w, film_h, new_rot, new.flip_h, new.flip_v)
    return replace(new, center=map_point(nm, fx, fy))


def one_to_one(state: ViewState, film_w: int, film_h: int) -> ViewState:
    """One film pixel per screen pixel, around the same centre."""
    return replace(state, zoom=1.0, fit=False)


# --------------------------------------------------------------------------------------------------
# window / level
# --------------------------------------------------------------------------------------------------
def drag_sensitivity(value_range: tuple) -> float:
    """Modality units per mouse pixel: the whole range in about 600 px, so 8-bit and 16-bit films feel alike."""
    lo, hi = value_range
    return max((float(hi) - float(lo)) / 600.0, 1e-3)


def drag_window(start: Window, dx: float, dy: float, value_range: tuple) -> Window:
    """PACS convention: horizontal drag changes the width (right = wider), vertical the level (down = higher).

    Width never drops below 1 and the centre stays within a range's width of the data, so a wild drag can
    always be undone by dragging back.
    """
    s = drag_sensitivity(value_range)
    lo, hi = float(value_range[0]), float(value_range[1])
    span = max(hi - lo, 1.0)
    width = max(1.0, float(start.width) + dx * s * 2.0)
    width = min(width, span * 4.0)
    center = float(start.center) + dy * s
    center = min(max(center, lo - span), hi + span)
    return Window(center=center, width=width, function="LINEAR", label="Manual")


def describe_window(window: Optional[Window]) -> str:
    if window is None:
        return "W/L: VOI LUT (from file)"
    return f"C {_fmt(window.center)} / W {_fmt(window.width)}"


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.1f}"


def format_value(v: float) -> str:
    if not math.isfinite(v):
        return "—"
    return f"{v:.0f}" if float(v).is_integer() or abs(v) >= 1000 else f"{v:.2f}"


def preview_step(shape: tuple, max_pixels: int = 1_000_000) -> int:
    """Subsampling step so an interactive re-render touches at most about ``max_pixels`` pixels."""
    h, w = shape[:2]
    n = h * w
    if n <= max_pixels:
        return 1
    return int(math.ceil(math.sqrt(n / max_pixels)))


# --------------------------------------------------------------------------------------------------
# worklist ordering
# --------------------------------------------------------------------------------------------------
def suspicion(classes: Sequence[str], probs: Sequence[float]) -> float:
    """How much a film deserves a reader's early look: 1 - P(normal) when the model has a normal class,
    otherwise the top probability (a model without a normal class says nothing about normality)."""
    if not classes or probs is None or len(probs) == 0:
        return -1.0
    for name, p in zip(classes, probs):
        if str(name).strip().lower() in NORMAL_NAMES:
            return float(1.0 - float(p))
    return float(max(probs))


def short_class_name(name: str, classes: Sequence[str]) -> str:
    """The class name without a prefix it shares with another class ("Pneumonia-Bacterial" beside
    "Pneumonia-Viral" -> "Bacterial"): in a narrow worklist column the part that tells them apart is the end."""
    head, sep, rest = str(name).partition("-")
    if sep and rest and any(str(c) != name and str(c).startswith(head + sep) for c in classes):
        return rest
    return str(name)


@dataclass
class WorklistRow:
    path: str
    name: str
    top_class: str = ""
    top_prob: Optional[float] = None
    suspicion: Optional[float] = None
    error: str = ""
    extra: dict = field(default_factory=dict)
    ood_verdict: str = ""  # "outside": the film is not one the model knows; its class is not shown as a reading
    top_short: str = ""  # the top class as the column shows it (short_class_name); the tooltip has top_class

    def reading(self, full: bool = False) -> str:
        """The worklist's second column: the model's top class, or why the film cannot be read."""
        if self.error:
            return "unreadable"
        if self.ood_verdict == "outside":
            return "outside training data"
        if self.top_class:  # the number first: a narrow column cuts the end, and "83% Bacter…" still reads
            return f"{percent(self.top_prob, 0)} {self.top_class if full else (self.top_short or self.top_class)}"
        return ""


SORT_KEYS = ("name", "suspicion", "top")


def sort_rows(rows: Sequence[WorklistRow], key: str = "name") -> list:
    """Order worklist rows; films without a prediction go last in the prediction orders, by name."""
    if key == "name":
        return sorted(rows, key=lambda r: (r.name.lower(), r.path))
    if key == "suspicion":
        return sorted(rows, key=lambda r: (r.suspicion is None, -(r.suspicion or 0.0), r.name.lower()))
    if key == "top":
        return sorted(rows, key=lambda r: (r.top_prob is None, -(r.top_prob or 0.0), r.name.lower()))
    raise ValueError(f"unknown sort key {key!r}")


def step_index(current: int, count: int, delta: int) -> int:
    """Next/previous in a worklist, clamped (no wrap: the reader must notice reaching the end)."""
    if count <= 0:
        return -1
    if current < 0:
        return 0 if delta >= 0 else count - 1
    return max(0, min(count - 1, current + delta))


# --------------------------------------------------------------------------------------------------
# probability panel and heatmap state
# --------------------------------------------------------------------------------------------------
def sorted_probabilities(classes: Sequence[str], probs: Sequence[float]) -> list:
    """(class, prob) pairs, highest first; ties keep the model's class order."""
    pairs = [(str(c), float(p)) for c, p in zip(classes, probs)]
    return sorted(pairs, key=lambda cp: -cp[1])


HEATMAP_METHODS = ("none", "attention", "gradcam", "lime")
HEATMAP_LABELS = {"none": "None", "attention": "Attention", "gradcam": "Grad-CAM", "lime": "LIME"}
COLORMAPS = ("jet", "inferno", "viridis", "hot")


@dataclass(frozen=True)
class HeatmapRequest:
    """What the reader asked to see over the film; the GUI turns it into an explanation job.

    ``target_class`` None means the top prediction.
    """

    method: str = "none"
    opacity: float = 0.45
    colormap: str = "jet"
    target_class: Optional[str] = None
    threshold: float = 0.2

    @property
    def active(self) -> bool:
        return self.method != "none"

    def cache_key(self, film_key: str, model_name: str) -> tuple:
        """What the computed map depends on (opacity and colour map only change its look)."""
        return (film_key, model_name, self.method, self.target_class)
