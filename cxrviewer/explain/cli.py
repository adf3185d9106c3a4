"""``cxrviewer explain``: an explanation map for one film from the command line.

    cxrviewer explain FILM --method lime|attention|gradcam [--model NAME_OR_PATH] [--class NAME]
                      [--out FILE.png] [--report FILE.pdf|FILE.png] [--side-by-side] [--include-identifiers]

Writes the overlay on the full-resolution film (``--out``; default ``<film>-<method>.png`` in the current
folder) and optionally a one-page report. Prints one summary line; problems go to stderr. Exit status as
``cxrviewer predict``: 0 done; 1 the film, the model or the method could not be used; 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cxrviewer.cli_support import USAGE_ERROR, Parser, UsageError, err as _err, open_predictor, parse_args


def build_parser() -> argparse.ArgumentParser:
    from cxrviewer.explain.lime_explainer import FITS, SAMPLINGS, SEGMENTATIONS, LimeSettings
    from cxrviewer.explain.overlay import COLORMAPS, OverlaySettings

    d, o = LimeSettings(), OverlaySettings()
    p = Parser(prog="cxrviewer explain", description="Show where a model looked on a chest film.")
    p.add_argument("film", metavar="FILM", help="a DICOM or image file")
    p.add_argument("--method", required=True, choices=("lime", "attention", "gradcam"))
    p.add_argument("--model", metavar="NAME_OR_PATH", help="model name or .safetensors file (default: the bundled default)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class to explain, by name or index (default: the top prediction)")
    p.add_argument("--out", metavar="FILE.png", help="overlay image to write")
    p.add_argument("--report", metavar="FILE.pdf", help="also write a one-page report (.pdf or .png)")
    p.add_argument("--include-identifiers", action="store_true",
                   help="print patient identifiers and the file name on the report (off by default)")
    p.add_argument("--side-by-side", action="store_true", help="write film | film + map instead of the overlay alone")
    p.add_argument("--device", metavar="DEV", default=None, help="auto, cpu, cuda, cuda:N or mps")
    g = p.add_argument_group("LIME")
    g.add_argument("--samples", type=int, default=d.num_samples,
                   help=f"most perturbed samples (default {d.num_samples}); sampling stops earlier once the "
                        f"strongest superpixels stop changing, unless --all-samples")
    g.add_argument("--all-samples", action="store_true", help="always draw --samples samples")
    g.add_argument("--sampling", choices=SAMPLINGS, default=d.sampling,
                   help="how superpixels are hidden: balanced blocks with complements (default), independent "
                        "draws with complements, or lime's own independent draws")
    g.add_argument("--fit", choices=FITS, default=d.fit,
                   help="how the weights come from the samples: lime's regression with a logistic surrogate "
                        "taking out the network's saturation (default; same result, less noise), or lime's alone")
    g.add_argument("--segmentation", choices=SEGMENTATIONS, default=d.segmentation,
                   help="superpixel method (default: the model's own; SLIC for most, quickshift for cs_convnext)")
    g.add_argument("--segments", type=int, default=d.n_segments,
                   help="SLIC's target superpixel count (default: the model's own; 30 unless its card says)")
    g.add_argument("--features", type=int, default=d.num_features, help="the most superpixels to outline (those coloured at the threshold, and with at least a tenth of the largest weight)")
    g.add_argument("--seed", type=int, default=d.random_seed)
    g = p.add_argument_group("overlay")
    g.add_argument("--colormap", choices=COLORMAPS, default=o.colormap)
    g.add_argument("--opacity", type=float, default=o.opacity)
    g.add_argument("--threshold", type=float, default=o.threshold)
    return p


def _class_index(spec: str, classes) -> int:
    names = [c.lower() for c in classes]
    if spec.lower() in names:
        return names.index(spec.lower())
    if spec.isdigit() and int(spec) < len(classes):
        return int(spec)
    raise UsageError(f"cxrviewer explain: no class {spec!r}; the model's classes are: {', '.join(classes)}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args

    from cxrviewer.explain import Cancelled, NoAttention, explain
    from cxrviewer.explain.lime_explainer import LimeSettings, unsettled_note
    from cxrviewer.explain.overlay import OverlaySettings, render_overlay, side_by_side
    from cxrviewer.explain.report import REPORT_SUFFIXES, export_path, save_overlay_png, save_report
    from cxrviewer.explain.types import outline_floor
    from cxrviewer.film import FilmError, load_film
    from cxrviewer.film.display import render

    try:
        settings = LimeSettings(segmentation=args.segmentation, n_segments=args.segments, num_samples=args.samples,
                                num_features=args.features, random_seed=args.seed, sampling=args.sampling, fit=args.fit,
                                **({"settle_from": 0} if args.all_samples else {}))
        overlay_settings = OverlaySettings(colormap=args.colormap, opacity=args.opacity, threshold=args.threshold,
                                           outline_top=args.features)
        # the names first: a refusal after a minute of LIME would waste the minute
        out = export_path(args.out or f"{Path(args.film).stem}-{args.method}.png")
        report = export_path(args.report, REPORT_SUFFIXES) if args.report else None
    except ValueError as e:
        _err(f"cxrviewer explain: {e}")
        return USAGE_ERROR

    predictor = open_predictor("cxrviewer explain", args.model, args.device)
    if isinstance(predictor, int):
        return predictor
    try:
        class_index = _class_index(args.class_name, predictor.classes) if args.class_name else None
    except UsageError as e:
        _err(str(e))
        return USAGE_ERROR

    try:
        film = load_film(args.film)
    except FilmError as e:
        _err(str(e))
        return 1
    t0 = time.perf_counter()
    try:
        prediction = predictor.predict_film(film)
        if class_index is None:
            class_index = int(prediction.top_index)
        result = explain(predictor, film, args.method, class_index, settings if args.method == "lime" else None,
                         prediction=prediction)
    except (NoAttention, Cancelled) as e:
        _err(f"cxrviewer explain: {e}")
        return 1
    except Exception as e:  # a model that cannot be explained this way: say so, do not dump a traceback
        _err(f"cxrviewer explain: {args.method} failed on {film.display_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 1

    image = render(film)
    overlay = render_overlay(result, image, overlay_settings)
    out_img = side_by_side(image, overlay) if args.side_by_side else overlay
    try:
        save_overlay_png(out, out_img)
        if report:
            legend = None if result.signed else f"colour map: {args.colormap}, threshold {args.threshold:.2f}"
            save_report(report, image, overlay, result, prediction, model_name=predictor.display_name,
                        model_version=str(predictor.card.get("version", "")), film=film,
                        include_identifiers=args.include_identifiers, legend=legend,
                        outline_floor=outline_floor(overlay_settings.threshold))
    except OSError as e:
        _err(f"Cannot write {e.filename or out}: {e.strerror or e}")
        return 1
    took = time.perf_counter() - t0
    extra = f" and {report}" if report else ""
    used = (result.settings or {}).get("samples_used")
    how = f" ({used} samples)" if args.method == "lime" and used else ""
    print(f"{args.method} for {result.class_name} (p = {prediction.probs[result.class_index]:.3f}) with "
          f"{predictor.display_name} in {took:.1f} s{how} -> {out}{extra}")
    unsettled = unsettled_note(result)
    if unsettled:
        print(f"Note: {unsettled}; a larger --samples may settle them.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
