"""Does fitting the out-of-distribution statistics on a 2,000-film sample of the training films (what the
trainer does above 2,000) describe them as well as fitting on all of them?

    python bench/ood_sample_check.py                                   # the bundled default model
    python bench/ood_sample_check.py --model X.safetensors --threads 2

Takes the pooled features of every Kermany film (``../shared/data/kermany``), splits them as the trainer's
default 0.7/0.2/0.1 split with seed 0, fits the statistics on all training films and on three seeded
samples, and compares the test films' scores, the thresholds and the verdicts. Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrviewer.checkpoint import card_spec, load_checkpoint  # noqa: E402
from cxrviewer.ood import OodGuard, fit_ood_stats  # noqa: E402
from trainer import data as D  # noqa: E402
from trainer.loop import OOD_MAX_TRAIN, Normaliser, ood_sample, predict  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "resources/models/mobilenet_lung-kermany3.safetensors"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/kermany/MANIFEST.csv"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, card = load_checkpoint(a.model)
    spec = card_spec(card)
    fs = D.decode(D.discover(a.data), spec.input_size, spec.resize)
    split = D.split_films(fs, (0.7, 0.2, 0.1), 0)
    tr, va, te = (np.flatnonzero(split == i) for i in range(3))
    t = time.time()
    _, F = predict(model, fs.images, np.arange(len(fs.rels)), Normaliser(spec.mean, spec.std), "cpu", features=True)
    print(f"{card['name']}: features of {len(F)} films in {time.time() - t:.0f} s")

    def guard(ids):
        return OodGuard(fit_ood_stats(F[ids], fs.labels[ids], F[va], fs.labels[va], list(fs.classes)))

    full = guard(tr)
    ref_scores = full.scores(F[te])
    ref_verdicts = [full.assess(f).verdict for f in F[te]]
    for seed in (0, 1, 2):
        ids = ood_sample(tr, fs.labels[tr], seed, OOD_MAX_TRAIN)
        g = guard(ids)
        scores = g.scores(F[te])
        agree = np.mean([g.assess(f).verdict == v for f, v in zip(F[te], ref_verdicts)])
        print(f"seed {seed}: {len(tr)} against {len(ids)} training films; test scores correlate at "
              f"{np.corrcoef(ref_scores, scores)[0, 1]:.4f} (median ratio {np.median(scores / ref_scores):.3f}); "
              f"unusual above {full.unusual_at:.2f} / {g.unusual_at:.2f}, outside above {full.outside_at:.2f} / "
              f"{g.outside_at:.2f}; verdicts agree on {agree:.1%} of {len(te)} test films")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
