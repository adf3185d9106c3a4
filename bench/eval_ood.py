"""How well a model's out-of-distribution guard separates its own kind of film from others, on real files.

    python bench/eval_ood.py                                   # the bundled default model
    python bench/eval_ood.py --model resources/models/X.safetensors --split RUN/split.json

Films (from ``../shared/data``, present on every developer machine and in CI, not in the repo):

- in distribution: Kermany films the model did not train on (the run's test split when ``--split`` is
  given, else a random sample of the folder, which may include training films and flatters the guard);
- the 12 real DICOM files: 4 adult chest films and 8 non-chest films (hip, extremity, teeth, OFFIS test
  images), each listed with its verdict;
- ``adult/``: adult chest films from other hospitals and sources (a paediatric model should find many of
  them unusual or outside; what share it does is reported, not judged).

Prints the share of each group flagged unusual/outside and the area under the ROC curve of the score
separating Kermany films from the non-chest films (and from adult films). Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

NON_CHEST = ("hip", "extremity", "teeth", "OT_")


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties half: the ROC area."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _manifest(folder: Path) -> list:
    with open(folder / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        return [folder / r["path"] for r in csv.DictReader(f)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint (default: the bundled default model)")
    ap.add_argument("--split", type=Path, help="the run's split.json: Kermany films are taken from its test split")
    ap.add_argument("--kermany", type=int, default=300, help="Kermany films to score (default 300)")
    ap.add_argument("--adult", type=int, default=300, help="adult films to score (default 300)")
    args = ap.parse_args(argv)

    from cxrviewer.film import FilmError, load_film
    from cxrviewer.inference import Predictor
    from cxrviewer.model_store import default_model_entry, find_model
    from cxrviewer.ood import header_evidence

    entry = find_model(args.model) if args.model else default_model_entry()
    if entry is None:
        print("no model: pass --model")
        return 2
    pred = Predictor.from_checkpoint(entry.path, "cpu")
    if pred.ood_guard is None:
        print(f"{pred.display_name} carries no out-of-distribution description")
        return 2
    rng = np.random.default_rng(0)

    def score(paths):
        out = []
        for p in paths:
            try:
                film = load_film(p)
            except FilmError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            r = pred.predict_film(film)
            out.append((p, r.ood.score, r.ood.verdict, r.top_class, r.top_prob, header_evidence(film.info)))
        return out

    if args.split:
        split = json.loads(args.split.read_text())
        kermany = [DATA / "kermany" / f["path"] for f in split["films"]["test"]]
        where = f"test split of {args.split.parent.name} ({len(kermany)} films)"
    else:
        kermany = _manifest(DATA / "kermany")
        where = "random sample of the folder (may include training films)"
    kermany = [kermany[i] for i in sorted(rng.choice(len(kermany), min(args.kermany, len(kermany)), replace=False))]
    adult = _manifest(DATA / "adult")
    adult = [adult[i] for i in sorted(rng.choice(len(adult), min(args.adult, len(adult)), replace=False))]
    dicoms = sorted((DATA / "dicom").glob("*.dcm"))

    k, a, d = score(kermany), score(adult), score(dicoms)
    fullres = score(sorted((DATA / "kermany-fullres").rglob("*.png")))
    g = pred.ood_guard
    print(f"model: {pred.display_name}; thresholds: unusual > {g.unusual_at:.2f}, outside > {g.outside_at:.2f}\n")
    print("| films | n | inside | unusual | outside | median score |\n|---|---:|---:|---:|---:|---:|")
    non_chest = [x for x in d if any(t in x[0].name for t in NON_CHEST)]
    chest_dcm = [x for x in d if x not in non_chest]
    for name, rows in ((f"Kermany, {where}", k), ("Kermany full resolution (30, train split)", fullres),
                       ("adult chest films (adult/)", a), ("adult chest DICOM (dicom/)", chest_dcm),
                       ("non-chest DICOM (dicom/)", non_chest)):
        if not rows:
            continue
        v = [r[2] for r in rows]
        print(f"| {name} | {len(rows)} | {v.count('inside') / len(v):.0%} | {v.count('unusual') / len(v):.0%} | "
              f"{v.count('outside') / len(v):.0%} | {np.median([r[1] for r in rows]):.2f} |")
    ks = [r[1] for r in k]
    if non_chest:
        print(f"\nROC AUC of the score, non-chest DICOM vs Kermany: {_auc([r[1] for r in non_chest], ks):.3f}")
    if a:
        print(f"ROC AUC of the score, adult films vs Kermany: {_auc([r[1] for r in a], ks):.3f}")
    print("\n| DICOM file | score | verdict | top class (p) | header evidence |\n|---|---:|---|---|---|")
    for p, s, v, top, tp, ev in d:
        print(f"| {p.name} | {s:.2f} | {v} | {top} ({tp:.2f}) | {' '.join(ev) or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
