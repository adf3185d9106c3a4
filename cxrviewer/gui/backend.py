"""The window's one door to the Qt-free core: films, models, devices, predictions, explanations.

Everything here may run on a worker thread and is imported lazily, so the window can be shown before
torch (or pydicom) is imported. The window talks to a :class:`Backend`; tests hand it a fake one (a slow
predictor, a failing model) without monkeypatching the core.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class ModelChoice:
    """A model as the selector shows it; ``entry`` is model_store's own record."""

    key: str
    display_name: str
    classes: list
    source: str = ""
    path: str = ""
    arch: str = ""
    metadata: dict = field(default_factory=dict)
    entry: Any = None
    install_problem: str = ""  # File > Open model… could not copy it into the model folder (used in place)

    def tooltip(self) -> str:
        return f"{self.display_name}\nClasses: {', '.join(self.classes)}\nSource: {self.source}\n{self.path}"

    def label(self) -> str:
        version = self.metadata.get("version")
        return f"{self.display_name}" + (f" · v{version}" if version else "")

    @property
    def temperature_not_fitted(self) -> str:
        """Why the trainer fitted no temperature (``trainer.metrics.calibration_temperature``), or ""."""
        return ((self.metadata.get("training") or {}).get("metrics") or {}).get("temperature_not_fitted") or ""

    def calibration_caution(self) -> str:
        """A sentence for the reading panel when the trainer fitted no temperature: the reader sees the
        percentages on every film, the card only when asked."""
        if not self.temperature_not_fitted:
            return ""
        return ("This model's percentages are not calibrated (its training fitted no temperature; see the model "
                "card): read them as a ranking of the classes.")


@dataclass
class PredictionResult:
    """A prediction in plain types, tagged with the film it belongs to."""

    film_key: str
    model_key: str
    classes: list
    probs: list
    top_class: str
    attention: Optional[np.ndarray] = None  # model space (h, w), or None
    geometry: Any = None
    notices: list = field(default_factory=list)
    raw: Any = None
    ood: Any = None  # cxrviewer.ood.OodResult, or None when the model carries no guard
    header_evidence: list = field(default_factory=list)  # sentences from the DICOM header (cxrviewer.ood)
    first_heatmap: str = "gradcam"  # the map to open on before the reader chooses (every model has Grad-CAM)


def choice_from_entry(entry) -> ModelChoice:
    """model_store's record (a :class:`~cxrviewer.model_store.ModelEntry`, its card already validated) as
    the selector shows it."""
    return ModelChoice(
        key=entry.name, display_name=entry.display_name, classes=[str(c) for c in entry.classes],
        source=entry.source, path=str(entry.path), arch=entry.arch, metadata=dict(entry.card), entry=entry,
    )


class Backend:
    """The real core. Methods taking ``ctx`` run on workers (see :mod:`cxrviewer.gui.jobs`)."""

    def __init__(self, max_pixels: Optional[int] = None):
        self.max_pixels = max_pixels
        self._cache = None
        self._expl_cache = None
        self._lock = threading.Lock()
        self._infer_lock = threading.RLock()
        self.problems: list = []
        self.device_notices: list = []
        self.device_text = ""

    # ------------------------------------------------------------------------------------ films
    def load_film(self, ctx, path):
        from cxrviewer.film.loader import load_film

        return load_film(path, max_pixels=self.max_pixels) if self.max_pixels else load_film(path)

    def list_folder(self, ctx, folder) -> list:
        from cxrviewer.film.loader import iter_films

        return [str(p) for p in iter_films(folder)]

    # ----------------------------------------------------------------------------------- models
    def discover(self) -> list:
        """Installed and bundled models; [] when none can be found (the "no model" state).

        Files that could not be used are kept in ``self.problems`` (path, reason) for the selector's hint.
        """
        from cxrviewer import model_store

        self.problems = []
        try:
            entries, self.problems = model_store.discover_models()
        except Exception as exc:  # noqa: BLE001  (a broken model folder must not stop the viewer)
            log.warning("model discovery failed: %s", exc)
            return []
        return [choice_from_entry(e) for e in entries]

    def default_key(self, choices) -> Optional[str]:
        try:
            from cxrviewer import model_store

            e = model_store.default_model_entry([c.entry for c in choices if c.entry is not None] or None)
            if e is not None:
                return choice_from_entry(e).key
        except Exception:  # noqa: BLE001
            pass
        return choices[0].key if choices else None

    def install(self, path) -> ModelChoice:
        """File > Open model…: validated and copied into the user's model folder by model_store.

        When that folder cannot be written (read-only, full, a file in its place) the checked file is used
        where it is, as ``--model`` does; ``install_problem`` on the result says why it was not copied."""
        from cxrviewer import model_store

        try:
            return choice_from_entry(model_store.install_model(path))
        except OSError as exc:
            log.warning("cannot copy %s into the model folder: %s", Path(path).name, exc.strerror or exc)
            choice = choice_from_entry(model_store.find_model(str(path)))
            choice.install_problem = str(exc.strerror or exc)
            return choice

    def find(self, name_or_path) -> ModelChoice:
        """``--model``: an installed model's name, or a checkpoint file used where it is."""
        from cxrviewer import model_store

        return choice_from_entry(model_store.find_model(name_or_path))

    def load_predictor(self, ctx, choice: ModelChoice, device_pref: Optional[str]):
        """Load (or fetch from the cache) a model on the chosen device: torch is first imported here."""
        from cxrviewer import device as devmod
        from cxrviewer import model_store

        with self._lock:
            if self._cache is None:
                self._cache = model_store.ModelCache()
            cache = self._cache
        notices: list = []
        dev = devmod.select_device(device_pref, notices=notices)
        predictor = cache.get(choice.entry if choice.entry is not None else choice.path, dev)
        text = devmod.describe_device(predictor.device)
        self.device_text = text
        self.device_notices = notices
        return predictor, text

    def warm(self, ctx, predictor) -> str:
        """Make a model's first explanation as quick as its later ones: import the explanation libraries
        (about a second) and build the fast batch copy (channels-last, traced and frozen: 1-8 s by network
        on a 2-core CPU). The window runs this after the model's first reading is shown, and the copy is
        traced outside the predictor's lock (``Predictor.warm_fast``), so it never delays a reading.
        The price is the copy's memory for every model read, not only those explained (Fusion-TL, the
        largest, about 330 MB; the model cache keeps at most four models). Returns what the fast path
        does ("" when this predictor has none)."""
        from cxrviewer.explain import lime_explainer

        lime_explainer.preload()
        ctx.check()
        return predictor.warm_fast()

    def predict(self, ctx, predictor, film, film_key: str, model_key: str) -> PredictionResult:
        # one forward at a time per process: the worklist batch and the current film share the model,
        # and attention maps are read from the model right after its forward pass
        with self._infer_lock:
            pred = predictor.predict_film(film)
        from cxrviewer.ood import header_evidence

        return prediction_result(pred, film_key, model_key,
                                 header_evidence(film.info, predictor.population))

    def explain(self, ctx, predictor, film, prediction: PredictionResult, method: str, target_class,
                out_side: int = 1024, cache_key=None, settings=None):
        """An overlay-ready explanation: (Explanation, the shape of its preview grid). ``settings``: the
        reader's LimeSettings for LIME (None: the defaults).

        The preview grid has the film's field of view and at most ``out_side`` pixels a side; the overlay
        is drawn on it and stretched over the film, so it looks the same as full resolution and keeps
        3000×3000 films quick. The map is resampled onto it here, in the worker, through the
        preprocessing's exact inverse, and kept by the explanation for the window's first draw.
        """
        from cxrviewer.preprocess import preview_shape

        out_shape = preview_shape(film.shape, out_side)
        class_index = None
        if target_class in prediction.classes:
            class_index = prediction.classes.index(target_class)
        import cxrviewer.explain as ex

        with self._lock:
            if self._expl_cache is None:
                self._expl_cache = ex.ExplanationCache()
        with self._infer_lock:
            expl = ex.explain(
                predictor, film, method, class_index=class_index, settings=settings,
                progress=lambda f: ctx.report(("progress", float(f))),
                cancel=lambda: ctx.cancelled, prediction=prediction.raw, cache=self._expl_cache,
                on_coarse=lambda e: ctx.report(("coarse", cache_key, e, _drawn(e, out_shape))),
            )
        _drawn(expl, out_shape)
        from cxrviewer.explain import overlay  # matplotlib's colour maps: imported here, not on the first draw

        overlay.heatmap_rgba(np.zeros((2, 2), np.float32))
        return expl, out_shape


def _drawn(expl, shape: tuple) -> tuple:
    """Resample ``expl`` onto the preview grid here, in the worker (the explanation keeps it), so the
    window's first draw does not; returns the grid's shape."""
    expl.film_map(shape)
    return shape


def prediction_result(pred, film_key: str, model_key: str, evidence=()) -> PredictionResult:
    """An :class:`~cxrviewer.inference.Prediction` in the plain types the window keeps per film."""
    return PredictionResult(
        film_key=film_key, model_key=model_key, classes=[str(c) for c in pred.classes],
        probs=[float(p) for p in np.asarray(pred.probs, dtype=np.float64).ravel()], top_class=str(pred.top_class),
        attention=pred.attention, geometry=pred.geometry, notices=[str(n) for n in pred.notices], raw=pred,
        ood=pred.ood, header_evidence=list(evidence), first_heatmap=str(pred.first_heatmap),
    )


def is_supported(path) -> bool:
    from cxrviewer.film.loader import is_supported_path

    return bool(is_supported_path(path))
