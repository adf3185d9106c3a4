"""Film I/O: one entry point, :func:`load_film`, for DICOM and ordinary raster images.

Qt-free and torch-free so the loader runs in worker threads, the trainer's data loader and tests alike.
"""

from cxrviewer.film.types import Film, FilmError, TagRow, VoiLut, Window

__all__ = ["Film", "FilmError", "TagRow", "VoiLut", "Window", "load_film", "is_supported_path", "iter_films"]


def __getattr__(name):  # keep pydicom/PIL imports lazy until a film is actually loaded
    if name in ("load_film", "is_supported_path", "iter_films", "DEFAULT_MAX_PIXELS"):
        from cxrviewer.film import loader

        return getattr(loader, name)
    raise AttributeError(name)
