"""PNG / JPEG / TIFF / BMP decoder behind :func:`cxrviewer.film.loader.load_film`, through Pillow.

Colour is reduced to grey exactly as Pillow's ``convert("L")`` does (ITU-R 601 weights, alpha ignored) so
that a film gives the same grey levels whether it was published as RGB or as grey, which is what the
Kermany models were trained on. The image size is checked from the header before any pixel is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrviewer.film.dicom import too_large_reason
from cxrviewer.film.types import Film, FilmError, TagRow

_FORMATS = {"PNG", "JPEG", "TIFF", "BMP", "MPO"}  # MPO: multi-picture JPEGs from some cameras/phones


def read_raster(path: Path, max_pixels: int) -> Film:
    """Decode an ordinary image into a :class:`Film` (raises only :class:`FilmError`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    notes: list = []
    _check_png_header(path, max_pixels)
    try:
        with Image.open(path, formats=None) as im:
            fmt = (im.format or "").upper()
            if fmt not in _FORMATS:
                raise FilmError(path, f"unsupported image format {fmt or 'unknown'}")
            w, h = im.size
            if w <= 0 or h <= 0:
                raise FilmError(path, f"invalid image size in the header ({w}×{h})")
            if w * h > max_pixels:
                raise FilmError(path, too_large_reason(w, h, max_pixels))
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            mode_in = im.mode
            im.load()
            oriented = ImageOps.exif_transpose(im)
            orientation = _orientation(im)
            if orientation not in (None, 1):
                notes.append(f"EXIF orientation {orientation} applied.")
            pixels, bits = _to_grey(oriented, notes)
            dpi = im.info.get("dpi")
    except FilmError:
        raise
    except Image.DecompressionBombError as exc:
        raise FilmError(path, f"image too large (decompression bomb: {_short(exc)})") from None
    except UnidentifiedImageError:
        # The signature matched (the loader checked), so the header itself is cut short or damaged.
        raise FilmError(path, f"truncated or corrupt {_kind(path)} file (unreadable header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's truncation / corruption errors
        msg = _short(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise FilmError(path, f"truncated image file ({msg})") from None
        raise FilmError(path, f"corrupt {_kind(path)} file ({msg})") from None
    if n_frames > 1:
        notes.append(f"Frame 1 of {n_frames} shown.")

    info = {
        "format": fmt,
        "mode": mode_in,
        "size": f"{pixels.shape[1]}×{pixels.shape[0]}",
        "rows": int(pixels.shape[0]),
        "columns": int(pixels.shape[1]),
        "bits_stored": bits,
    }
    if dpi:
        try:
            info["dpi"] = f"{float(dpi[0]):g}×{float(dpi[1]):g}"
        except (TypeError, ValueError, IndexError):
            pass
    if n_frames > 1:
        info["frames"] = n_frames
    tags = [TagRow("", k.replace("_", " ").capitalize(), "", str(v)) for k, v in info.items()]
    return Film(
        path=path,
        pixels=pixels,
        kind="raster",
        windows=[],
        voi_lut=None,
        monochrome1=False,
        info=info,
        phi={},
        tags=tags,
        notes=notes,
        bits_stored=bits,
    )


def _check_png_header(path: Path, max_pixels: int) -> None:
    """Read a PNG's size from its IHDR ourselves: Pillow refuses huge ones on open, without saying how big."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if w * h > max_pixels:
            raise FilmError(path, too_large_reason(w, h, max_pixels))


def _to_grey(im, notes: list) -> tuple:
    """A Pillow image -> (2-D float32 pixels, bits stored)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.float32), 16
    if mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float32)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 65535:
            return arr, 16
        notes.append(f"{'32-bit integer' if mode == 'I' else 'Floating-point'} image: shown over its full range.")
        return arr, 32
    if mode == "L":
        return np.asarray(im).astype(np.float32), 8
    if mode == "1":
        return np.asarray(im.convert("L")).astype(np.float32), 8
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0)).astype(np.float32), 8
    if mode in ("P", "PA"):
        grey_palette = _palette_is_grey(im)
        if not grey_palette:
            notes.append("Palette colour image converted to grey (luminance, ITU-R 601).")
        return np.asarray(im.convert("RGB").convert("L")).astype(np.float32), 8
    # RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's own luminance, alpha ignored
    rgb = im.convert("RGB") if mode != "RGB" else im
    arr = np.asarray(rgb)
    if arr.ndim == 3 and (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])):
        return arr[..., 0].astype(np.float32), 8  # a grey film saved as RGB: nothing to convert
    notes.append(f"{mode} colour image converted to grey (luminance, ITU-R 601).")
    return np.asarray(rgb.convert("L")).astype(np.float32), 8


def _palette_is_grey(im) -> bool:
    try:
        pal = np.frombuffer(im.palette.tobytes(), dtype=np.uint8)
        if im.palette.mode != "RGB":
            return False
        pal = pal[: len(pal) // 3 * 3].reshape(-1, 3)
        return bool(np.all(pal[:, 0] == pal[:, 1]) and np.all(pal[:, 1] == pal[:, 2]))
    except Exception:  # noqa: BLE001 - only decides whether to add a note
        return False


def _orientation(im):
    try:
        return im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001
        return None


def _kind(path: Path) -> str:
    from cxrviewer.film.loader import raster_format

    try:
        with open(path, "rb") as fh:
            return raster_format(fh.read(32)) or "image"
    except OSError:
        return "image"


def _short(exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."
