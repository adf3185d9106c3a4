"""Explanations kept per (film, model, method, class, settings), so flipping back to a class is instant.

A small LRU: a LIME map at 224² plus its segments is well under a megabyte, but the full-resolution
``film_map`` an Explanation memoises can be 16 MB, so the count is bounded. Thread-safe: workers put,
the GUI thread gets. ``get_or_compute`` runs the computation outside the lock (LIME takes a second and the
GUI must not block on a get meanwhile).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional


def cache_key(film_key: str, model_name: str, method: str, class_index: int, settings=None) -> tuple:
    """The identity of one explanation. ``settings``: a LimeSettings, a dict, a tuple or None."""
    if settings is None:
        s = ()
    elif hasattr(settings, "key"):
        s = settings.key()
    elif isinstance(settings, dict):
        s = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    else:
        s = tuple(settings)
    return (str(film_key), str(model_name), str(method), int(class_index), s)


class ExplanationCache:
    def __init__(self, max_items: int = 48):
        self.max_items = int(max_items)
        self._items: "OrderedDict[tuple, object]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value) -> None:
        """Store a finished explanation. Coarse (early) LIME results are not kept: they are replaced
        seconds later and must never be served as the answer."""
        if getattr(value, "coarse", False):
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get_or_compute(self, key: tuple, compute: Callable[[], object]):
        hit = self.get(key)
        if hit is not None:
            return hit
        value = compute()
        with self._lock:
            existing = self._items.get(key)
            if existing is not None:  # another worker finished first: keep one object per key
                self._items.move_to_end(key)
                return existing
        self.put(key, value)
        return value

    def invalidate(self, film_key: Optional[str] = None, model_name: Optional[str] = None) -> None:
        """Drop entries of a film (closed or re-windowed) or a model (unloaded); both None: everything."""
        with self._lock:
            for k in list(self._items):
                if (film_key is None or k[0] == film_key) and (model_name is None or k[1] == model_name):
                    del self._items[k]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items
