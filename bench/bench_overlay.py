"""What one move of the opacity or threshold slider costs the viewer's GUI thread with LIME on screen.

Every move redraws the overlay (``overlay.explanation_rgba``: colours, then the outlines of the strongest
superpixels) on the preview grid the window uses (at most 1024 pixels a side). The explanation keeps its
film-grid map and, per (superpixels, grid), its outline (``Explanation.film_outline``), so a redraw
only colours and paints. The reference, timed in the same run on the same explanation, is the same draw
with nothing kept (``drop_film_grids`` before each draw): resampling the map and tracing each outlined
superpixel every time, which is also what the first draw after flipping back to a film costs.

    python bench/bench_overlay.py [--film FILM] [--model CHECKPOINT] [--repeats 20]

The film defaults to the largest full-resolution Kermany film in ``../shared/data/`` (2102×1974), the
model to the bundled one. Prints both medians and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILM = ROOT.parent / "shared/data/kermany-fullres/Normal/IM-0147-0001.png"
MODEL = ROOT / "resources/models/mobilenet_lung-kermany3.safetensors"
PREVIEW_SIDE = 1024  # the window's preview grid (Backend.explain's out_side)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--film", default=str(FILM))
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)

    import torch

    import cxrviewer.explain as ex
    from cxrviewer.explain.overlay import OverlaySettings, explanation_rgba
    from cxrviewer.explain.types import outline_floor
    from cxrviewer.film.loader import load_film
    from cxrviewer.inference import Predictor
    from cxrviewer.preprocess import preview_shape

    film = load_film(args.film)
    predictor = Predictor.from_checkpoint(args.model, "cpu")
    expl = ex.explain(predictor, film, "lime", prediction=predictor.predict_film(film))
    h, w = film.shape
    shape = preview_shape(film.shape, PREVIEW_SIDE)
    outlined = expl.outlined_segments(5, True, outline_floor(OverlaySettings().threshold))
    print(f"{Path(args.film).name} {w}×{h}, preview {shape[1]}×{shape[0]}, {expl.segment_weights.size} "
          f"superpixels, {len(outlined)} outlined; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")

    def draws(keep: bool) -> list:
        times = []
        for i in range(args.repeats):
            settings = OverlaySettings(opacity=0.3 + 0.02 * (i % 10))  # the slider moving
            if not keep:
                expl.drop_film_grids()
            t = time.perf_counter()
            explanation_rgba(expl, settings, shape)
            times.append(time.perf_counter() - t)
        return times

    draws(True)  # the first draw of each kind fills what is kept
    kept, fresh = [], []
    for _ in range(2):  # alternate, so drift in the machine's speed falls on both
        kept += draws(True)
        fresh += draws(False)
    k, f = statistics.median(kept) * 1000, statistics.median(fresh) * 1000
    print(f"redraw with the map and outline kept: {k:.1f} ms (median of {len(kept)})")
    print(f"redraw recomputing them (reference):  {f:.1f} ms (median of {len(fresh)})")
    print(f"ratio reference / kept: {f / k:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
