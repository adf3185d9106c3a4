"""Reading back the text of the PDFs the app exports (reports), for tests that check what a page says."""

from __future__ import annotations

import re
import zlib


def pdf_text(data: bytes) -> str:
    """Text shown by a matplotlib PDF: the strings of Tj/TJ operators in every (deflated) content stream."""
    chunks = []
    for m in re.finditer(rb">>\s*stream\r?\n", data):
        if b"/Subtype /Image" in data[data.rfind(b" obj", 0, m.start()) : m.start()]:
            continue  # pixels, not text (and scanning them is slow)
        end = data.find(b"endstream", m.end())
        body = data[m.end() : end]
        try:
            chunks.append(zlib.decompress(body))
        except zlib.error:
            chunks.append(body)
    out = []
    for c in chunks:
        for arr in re.findall(rb"\[(.*?)\]\s*TJ", c, re.S):
            out.append(b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", arr)))
        out.extend(re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", c))
    return b"\n".join(out).decode("latin-1").replace("\\", "")
