"""The reader's first LIME after choosing a model: with the viewer's background warm-up against without.

In the viewer a model's first LIME used to pay for two one-off costs on top of the explanation itself:
importing the explanation libraries (lime, scikit-image's segmentations, scikit-learn: about a second)
and building the fast batch copy (channels-last, traced and frozen: 1-8 s by network). The window now
does both on a worker right after the model's first reading is shown (``Backend.warm``), while the
reader looks at the film. This measures what the reader waits for when they then ask for LIME, in a
fresh process per trial so the imports are really cold:

- **cold**: load the model, read the film (``predict_film``), then ``explain`` LIME: the old first LIME;
- **warmed**: the same, with ``Backend.warm`` run (untimed, as the window does) before the LIME is asked.

Trials alternate cold and warmed. The second, warm LIME of each process is also printed: the target is a
first LIME that costs what later ones do.

    python bench/bench_first_lime.py [--model resources/models/...safetensors] [--film FILM] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "resources/models/mobilenet_lung-kermany3.safetensors"
FILM = ROOT / "resources/samples/kermany_normal_IM-0117-0001.dcm"

CHILD = r"""
import json, sys, time
warm = sys.argv[1] == "warm"
from cxrviewer.film.loader import load_film
from cxrviewer.gui.backend import Backend
from cxrviewer.inference import Predictor
import cxrviewer.explain as ex

class Ctx:
    cancelled = False
    def check(self):
        pass

film = load_film(sys.argv[3])
predictor = Predictor.from_checkpoint(sys.argv[2], "cpu")
reading = predictor.predict_film(film)
if warm:
    t = time.perf_counter()
    Backend().warm(Ctx(), predictor)
    warm_s = time.perf_counter() - t
else:
    warm_s = 0.0
times = []
for _ in range(2):
    t = time.perf_counter()
    ex.explain(predictor, film, "lime", prediction=reading)
    times.append(time.perf_counter() - t)
print(json.dumps({"first": times[0], "second": times[1], "warm": warm_s}))
"""


def trial(mode: str, model: str, film: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, model, film], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} trial failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--film", default=str(FILM))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    runs = {"cold": [], "warmed": []}
    for i in range(args.repeats):
        for mode in ("cold", "warmed"):
            r = trial("warm" if mode == "warmed" else "cold", args.model, args.film)
            runs[mode].append(r)
            print(f"  {mode} {i + 1}: first LIME {r['first']:.2f} s, second {r['second']:.2f} s"
                  + (f" (warm-up {r['warm']:.2f} s, before the LIME was asked)" if mode == "warmed" else ""),
                  flush=True)
    med = {m: statistics.median(r["first"] for r in rs) for m, rs in runs.items()}
    second = statistics.median(r["second"] for rs in runs.values() for r in rs)
    warm = statistics.median(r["warm"] for r in runs["warmed"])
    print(f"\n{Path(args.model).name}, {Path(args.film).name}, median of {args.repeats}:")
    print("| first LIME, cold (s) | first LIME, warmed (s) | cold / warmed | a later LIME (s) | warm-up, in the background (s) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {med['cold']:.2f} | {med['warmed']:.2f} | **{med['cold'] / med['warmed']:.2f}×** | {second:.2f} | {warm:.2f} |")
    print(f"\nwarmed first LIME / later LIME: {med['warmed'] / second:.2f} (target: about 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
