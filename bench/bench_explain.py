"""Explanation speed and faithfulness, against lime's own defaults, same model, same films, same run.

    python bench/bench_explain.py                       # the five attention models, ten films
    python bench/bench_explain.py --quick               # mobilenet_lung, two films, 2000-sample gold
    python bench/bench_explain.py --models mobilenet_lung,dpn_se --films 4
    python bench/bench_explain.py --quick --tune        # sweep superpixel count x sample count
    python bench/bench_explain.py --checkpoints resources/models/mobilenet_lung-kermany3.safetensors \
        --settle-study --films 10 --gold 3000           # how to sample, when to stop (LimeSettings)
    python bench/bench_explain.py --checkpoints RUN/best.safetensors --speed-only --ref-films 2
                                                        # speed only, for networks too slow for golds on a CPU
    python bench/bench_explain.py --replay A,A2 --replay B,B2 --samples 400
                                                        # a settle study's --cache folders scored again
                                                        # without the network: two sets of films, each
                                                        # against golds of two seeds, then both together

**Reference** (issue 4): ``lime_image.LimeImageExplainer().explain_instance(image, predict,
num_samples=1000)`` with lime's defaults (quickshift kernel 4 / max_dist 200 / ratio 0.2, batch 10,
top_labels 5) and a plain fp32 predict function (``model(x)`` under ``no_grad``, NCHW, softmax). It is
timed on the first ``--ref-films`` films (it costs ~14 s per film for a MobileNetV2 on 2 cores).

**Ours**: :func:`cxrviewer.explain.explain_lime` with its default :class:`LimeSettings`, through the
Predictor's fast batch path, timed on every film (segmentation, sampling, regression, everything).

**Faithfulness**: Jaccard index of the top-5 superpixels (largest weight towards the explained class) of an
explanation against a ``--gold``-sample (5000 by default) reference explanation *on the same
segmentation* with a different seed. For lime's default the pair is (1000 samples, quickshift) vs (gold,
quickshift); for ours (defaults) vs (gold, our segmentation). The target: our mean Jaccard over the films
is at least the reference's. In a ``--settle-study`` ours is three runs a film (``--settle-seeds``) and
lime's default as many (``--ref-seeds``, 3), each scored against the gold: on films whose fifth and sixth
places nearly tie, one run's agreement is a coin toss. The gold and 1000-sample runs are computed with
lime's sampling and regression (``LimeBase.explain_instance_with_data``: cosine distance, kernel width
0.25, ridge) on an fp32 predictor in large batches (``fast_predict_batch(bf16=False)``: the same fp32
function, only faster), because 2 × 5000 network passes per film at batch 10 would take most of an hour
per model. ``--data-fast`` runs them through the fast path instead, as the explanation under test runs
(bf16 where the CPU has it and the Predictor's check keeps it: the probabilities move by ~1e-3), for
networks whose fp32 golds would not fit a session on a 2-core CPU.

**Grad-CAM / attention**: time of ``gradcam_film`` and ``explain_attention`` (which includes the forward
pass) divided by the single-film exact inference time ``predict_film`` (target < 3).

Models come from ``--checkpoints`` (trained .safetensors) or are built from the registry:
``mobilenet_lung`` with the offline ImageNet backbone, the others from random weights with batch-norm
statistics re-estimated on real films and a classifier that spreads the logits, so their outputs vary
from film to film as a trained model's do (LIME on a constant function would be meaningless).

Times are wall-clock on a machine shared with other work: compare the ratios (measured in the same run),
not the absolute seconds. Prints a markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # lime's per-sample progress bar
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cxrviewer.inference  # noqa: E402  (--no-bf16 and --bf16-input-side set its switches)
from cxrviewer.explain import explain_attention, gradcam_film  # noqa: E402
from cxrviewer.explain.lime_explainer import (FITS, SAMPLINGS, SEGMENTATIONS, LimeSettings,  # noqa: E402
                                              _lime_explainer_class, explain_lime, for_model, has_settled,
                                              segment, top_separation)
from cxrviewer.explain.lime_explainer import fit_weights as core_fit_weights  # noqa: E402
from cxrviewer.explain.overlay import OverlaySettings  # noqa: E402
from cxrviewer.explain.types import NoAttention, outline_floor, outlined_indices  # noqa: E402
from cxrviewer.film import load_film  # noqa: E402
from cxrviewer.film.display import render  # noqa: E402
from cxrviewer.preprocess import PreprocessSpec, fit_to_square, normalise  # noqa: E402
from cxrviewer.testing import spread_outputs  # noqa: E402

ATTENTION_MODELS = ["mobilenet_lung", "cs_convnext", "da_covidnet", "dpn_se", "fusion_tl"]
CLASSES = ["Normal", "Pneumonia", "COVID-19"]
DATA = ROOT.parent / "shared" / "data"
TOP_K = 5
GOLD_SEED = 4242
#: where every network of a run is placed (``--device``); the lime reference runs its plain copy there too
DEVICE = torch.device("cpu")
#: films named in a file (``--film-list``), in place of :func:`pick_films`'s choice from ``DATA``
FILM_LIST: list = []
#: --data-fast: golds and references through the fast path (bf16 where kept), not fp32; see exact_batched
DATA_FAST = False


# --- films and models --------------------------------------------------------------------------------
def pick_films(n: int) -> list:
    """Alternating paediatric full-resolution and adult films, spread over the classes, deterministic."""
    if FILM_LIST:
        return FILM_LIST[:n]
    groups = []
    for sub in ("kermany-fullres", "adult"):
        root = DATA / sub
        if not root.exists():
            continue
        per_class = [sorted(p for p in d.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                     for d in sorted(root.iterdir()) if d.is_dir()]
        mixed = [f for tier in zip(*per_class) for f in tier] if per_class else []
        groups.append(mixed[::7] + [f for f in mixed if f not in mixed[::7]])
    out = [f for pair in zip(*groups) for f in pair] if len(groups) == 2 else (groups[0] if groups else [])
    if not out:
        raise SystemExit(f"no films under {DATA}")
    return out[:n]


def realistic(model: nn.Module, grays: list, spec: PreprocessSpec, restat_bn: bool = True) -> nn.Module:
    """Outputs that vary from film to film like a trained model's (random-init nets give nearly constant
    outputs, which no explainer can explain); ``restat_bn=False`` keeps an ImageNet backbone as it is."""
    x = torch.from_numpy(np.stack([normalise(fit_to_square(g, spec.input_size, spec.resize)[0], spec) for g in grays]))
    return spread_outputs(model, x, restat_bn=restat_bn)


def build_predictor(name_or_path: str, calib_grays: list):
    from cxrviewer.checkpoint import card_defaults
    from cxrviewer.inference import Predictor
    from cxrviewer.models import create_model

    if name_or_path.endswith(".safetensors"):
        pred = Predictor.from_checkpoint(name_or_path, DEVICE)
    else:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pretrained = "imagenet-offline" if name_or_path == "mobilenet_lung" else None
            model = create_model(name_or_path, len(CLASSES), pretrained=pretrained).eval()
        spec = PreprocessSpec()
        model = realistic(model, calib_grays, spec, restat_bn=pretrained is None)  # keep an ImageNet backbone
        pred = Predictor(model, card_defaults(model, CLASSES, name=name_or_path), DEVICE)
    # what the viewer does in the background once a model's first reading is shown (Backend.warm): without
    # it the first film explained would pay for importing lime, scikit-image and scikit-learn (about a
    # second), which the lime reference timed after it then would not
    from cxrviewer.explain.lime_explainer import preload

    preload()
    pred.prepare_fast()
    return pred


# --- lime pieces ---------------------------------------------------------------------------------------


def plain_copy(model):
    """The network as plain eager PyTorch holds it (NCHW), for a reference: a Predictor may keep its own
    copy channels-last (``CXRModel.exact_channels_last``), which is part of what is being measured."""
    import copy

    return copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()


def plain_predict(model, spec):
    """The reference's predict function: uint8 RGB batch -> fp32 eager softmax, NCHW."""
    def predict(imgs):
        x = torch.from_numpy(np.stack([normalise(im[:, :, 0], spec) for im in imgs])).to(DEVICE)
        with torch.no_grad():
            return torch.softmax(model(x), dim=1).cpu().numpy()

    return predict


def exact_batched(pred, spec, batch=None):
    """The gold and reference runs' predict function: fp32, or with ``--data-fast`` the Predictor's fast
    path as the explanation under test uses it (bf16 where the hardware has it and the check keeps it)."""
    batch = batch or data_batch()

    def predict(imgs):
        return pred.fast_predict_batch(normalise(imgs[..., 0], spec), batch_size=batch,
                                       bf16=None if DATA_FAST else False)

    return predict


def data_batch() -> int:
    """Batch of the gold and reference runs' network passes: CPU batches much above 16 run slower per
    film; a GPU wants large ones."""
    return 16 if DEVICE.type == "cpu" else 256


def lime_data(predict, image, segments, n, seed, batch=None, sampling="independent", known=None):
    """lime's neighbourhood (same random stream as ``explain_instance`` with ``random_state=seed``).

    ``known``: (data, labels) of an earlier, shorter run with the same seed and sampling. Its rows are the
    first rows of this one (every sampling draws a longer run as a continuation of a shorter one), so only
    the rows after them go through the network: a cached study is lengthened without paying again."""
    explainer = _lime_explainer_class()(random_state=seed)
    explainer.sampling = sampling
    fudged = image.copy()
    for s in np.unique(segments):
        fudged[segments == s] = image[segments == s].mean(axis=0)
    classify = predict
    if known is not None:
        old_data, old_labels = known
        have, done = len(old_labels), [0]

        def continued(imgs):  # the known rows' outputs, the network's for the rest
            start, done[0] = done[0], done[0] + len(imgs)
            if start >= have:
                return predict(imgs)
            head = np.asarray(old_labels[start: start + len(imgs)])
            return head if len(head) == len(imgs) else np.concatenate([head, predict(imgs[len(head):])])

        classify = continued
    data, labels = explainer.data_labels(image, fudged, segments, classify, n, batch_size=batch or data_batch())
    if known is not None and not np.array_equal(data[:have], old_data[: len(data)]):
        raise RuntimeError("a cached run is not the start of a longer one with its seed: rebuild the cache")
    return explainer, data, labels


def fit_weights(explainer, data, labels, label, n_rows=None, fit="lime"):
    """A fit (lime's regression by default, as for the golds and references; ``LimeSettings.fit``) on the
    first ``n_rows`` samples -> weight per superpixel."""
    d = data[:n_rows] if n_rows else data
    return core_fit_weights(explainer, d, labels[: len(d)], label, fit)


def top(w, k=TOP_K) -> set:
    return set(np.argsort(-w, kind="stable")[:k].tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


#: The outline floor at the viewer's default threshold: what the outlined-set Jaccard asks about.
MATERIAL = outline_floor(OverlaySettings().threshold)


def jaccard_material(w, gold) -> float:
    """Jaccard of the superpixels the viewer outlines at its default threshold (``outlined_indices``: of
    the top five, those with at least :data:`MATERIAL` of the largest weight), ours against the gold's;
    1 when neither outlines any.
    Why next to Jaccard@5: a network whose explanation sits in two or three superpixels (cs_convnext one
    epoch in) leaves the 4th and 5th places to weights a hundredth of the first, whose order is noise for
    any run, lime's included; this asks only about the superpixels that matter, and that a reader sees."""
    a, b = set(outlined_indices(w, TOP_K, floor=MATERIAL)), set(outlined_indices(gold, TOP_K, floor=MATERIAL))
    return jaccard(a, b) if a | b else 1.0


def weight_error(w, gold) -> float:
    """Squared distance of every superpixel's weight from the gold's, as a share of the gold's squared norm:
    the whole map's error, where Jaccard@5 asks only which five lead (and near-ties there are decided by
    the gold's own noise as much as by ours)."""
    return float(np.sum((np.asarray(w) - gold) ** 2) / max(np.sum(np.asarray(gold) ** 2), 1e-30))


def best_time(fn, repeats=5) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


# --- the benchmark ---------------------------------------------------------------------------------------
def bench_model(name, films, args, settings: LimeSettings) -> dict:
    grays = [render(load_film(f)) for f in films]
    calib = [render(load_film(f)) for f in pick_films(12)[-8:]]  # head/BN statistics need a few films
    pred = build_predictor(name, calib)
    spec = pred.spec
    # the fp32 gold runs get their own Predictor: sharing one would make it rebuild its fast copy each time
    # the explanation under test and the gold alternate (a cost the viewer, with one fast copy, never pays)
    from cxrviewer.inference import Predictor

    gold_pred = Predictor(pred.model, pred.card, DEVICE)
    label = pred.model_name if name.endswith(".safetensors") else name  # the card's name, not "best"
    res = {"model": label, "films": len(films), "j_ref": [], "j_ours": [], "jm_ref": [], "jm_ours": [], "t_ours": [], "t_ref": [], "t_ours_ref": [],
           "n_seg_qs": [], "n_seg_ours": [], "samples": [], "tune": {}, "bf16_ours": [], "bf16_data": []}
    for i, (path, gray) in enumerate(zip(films, grays)):
        image, cls = model_image(gray, pred, spec)
        exact = exact_batched(gold_pred, spec)

        t0 = time.perf_counter()
        ours = explain_lime(pred, gray, cls, settings)
        t_ours = time.perf_counter() - t0
        res["t_ours"].append(t_ours)
        res["samples"].append(ours.settings.get("samples_used", settings.num_samples))
        res["bf16_ours"].append(pred.fast_uses_bf16())  # checked on this film before its samples were drawn

        seg_qs = segment(image, LIMES)
        seg_ours = ours.segments
        res["n_seg_qs"].append(int(seg_qs.max()) + 1)
        res["n_seg_ours"].append(int(seg_ours.max()) + 1)

        if not args.speed_only:
            ex, data, labels = lime_data(exact, image, seg_qs, args.gold, args.gold_seed)
            gold_qs = fit_weights(ex, data, labels, cls)
            ex, data, labels = lime_data(exact, image, seg_qs, 1000, 0)
            ref = fit_weights(ex, data, labels, cls)
            ref_run = (ex, data, labels)
            ex, data, labels = lime_data(exact, image, seg_ours, args.gold, args.gold_seed)
            gold_ours = fit_weights(ex, data, labels, cls)
            res["j_ref"].append(jaccard(top(ref), top(gold_qs)))
            res["j_ours"].append(jaccard(top(ours.segment_weights), top(gold_ours)))
            res["jm_ref"].append(jaccard_material(ref, gold_qs))
            res["jm_ours"].append(jaccard_material(ours.segment_weights, gold_ours))
            res["bf16_data"].append(DATA_FAST and gold_pred.fast_uses_bf16())

        if args.tune and not args.speed_only:
            tune_film(res["tune"], image, cls, gold_qs, ref_run, exact, args)

        if i < args.ref_films:
            from lime import lime_image

            model = plain_copy(pred.model)
            t0 = time.perf_counter()
            lime_image.LimeImageExplainer().explain_instance(image, plain_predict(model, spec), num_samples=1000)
            res["t_ref"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # ours again on the same film straight after, for a fair ratio
            explain_lime(pred, gray, cls, settings)
            res["t_ours_ref"].append(time.perf_counter() - t0)
        faith = "" if args.speed_only else f" J ref {res['j_ref'][-1]:.2f} ours {res['j_ours'][-1]:.2f};"
        print(f"  {name} film {i + 1}/{len(films)} {path.parent.name}/{path.name}:{faith}"
              f" ours {t_ours:.2f} s ({res['samples'][-1]} samples)"
              + (f"; reference {res['t_ref'][-1]:.1f} s" if i < args.ref_films else ""), flush=True)

    print(f"  bf16 on films: ours {sum(res['bf16_ours'])} of {len(films)}"
          + ("" if args.speed_only else f"; golds and lime-1000 {sum(res['bf16_data'])} of {len(films)}"), flush=True)
    # Grad-CAM and attention against single-film inference, on the first film
    film = load_film(films[0])
    res["t_infer"] = best_time(lambda: pred.predict_film(film))
    res["t_gradcam"] = best_time(lambda: gradcam_film(pred, film))
    try:
        res["t_attention"] = best_time(lambda: explain_attention(pred, film))
    except NoAttention:
        res["t_attention"] = None
    e = gradcam_film(pred, film)
    res["t_film_map"] = best_time(lambda: e.geometry.to_film(e.model_map))
    return res


def tune_film(store, image, cls, gold_qs, ref_run, exact, args):
    """Jaccard vs sample count for several superpixel counts, from one run per count (lime's rows are a
    sequential random stream, so the first N rows of a longer run are exactly an N-sample run)."""
    for n_seg in args.tune_segments:
        seg = segment(image, LimeSettings(n_segments=n_seg))
        ex, data, labels = lime_data(exact, image, seg, args.gold, args.gold_seed)
        gold = top(fit_weights(ex, data, labels, cls))
        for sampling in SAMPLINGS:
            ex, data, labels = lime_data(exact, image, seg, max(args.tune_samples), 0, sampling=sampling)
            for n in args.tune_samples:
                store.setdefault((f"slic {sampling}", n_seg, n), []).append(
                    jaccard(top(fit_weights(ex, data, labels, cls, n, args.fit)), gold))
    ex, data, labels = ref_run  # lime's default: quickshift, seed 0, 1000 samples
    for n in sorted(set(args.tune_samples) | {1000}):
        if n <= 1000:
            store.setdefault(("quickshift", 0, n), []).append(
                jaccard(top(fit_weights(ex, data, labels, cls, n)), top(gold_qs)))


def settle_study(name, films, args, settings: LimeSettings) -> None:
    """Samplings and stopping rules against fixed sample counts: Jaccard@5 against an independent-sampling
    gold, and the samples each rule draws, on our segmentation, over ``--settle-seeds`` runs per film and
    sampling (the fits are lime's, on the first N rows of one run of ``num_samples`` rows, which is
    exactly an N-sample run; exact fp32 predictions). A rule "from F every E" refits at F samples and
    every E after, and stops at the first refit that :func:`has_settled` (the viewer's own test) passes
    against the one before: the same top five, and with "F:E:mM" a fifth place that leads the sixth by
    more than M times the fits moved; "F:E:Z" also asks that refit to separate its top five from the rest
    by Z standard errors (``top_separation``), and "F:E:Z:alone" asks only that. With ``--cache DIR`` the
    network's outputs (gold and every run) are kept per film, so a second study with other rules costs
    seconds, not the network's time again (``--replay DIR`` scores them without the network at all).
    ``settings`` carries ``--segmentation``, ``--segments`` and ``--samples`` (the most a run draws)."""
    pred = build_predictor(name, [render(load_film(f)) for f in pick_films(12)[-8:]])
    spec, settings = pred.spec, for_model(settings, pred)  # the cache key names the segmentation
    exact = exact_batched(pred, spec)
    samplings = [v for v in args.samplings.split(",") if v]
    tally = SettleTally([parse_rule(r) for r in args.rules.split(",")], settings.num_samples, settings.fit)
    for path in films:
        t0 = time.perf_counter()
        ref = reference_run(name, path, pred, exact, spec, args) if args.with_reference else None
        if not samplings:
            tally.add_film(film_name(path), None, ref, [], 0, t0)
            continue
        run = settle_runs(name, path, pred, exact, spec, settings, samplings, args)
        tally.add_film(film_name(path), run, ref, samplings, args.settle_seeds, t0)
    tally.report(f"{name}: {len(films)} films x {args.settle_seeds} seeds, Jaccard@5 against a {args.gold}-sample "
                 "independent gold on the same segmentation")


def replay_study(sets, args) -> None:
    """``--replay DIR[,DIR...]``: a settle study's rules scored on what its ``--cache DIR`` kept (every film
    there, every sampling and seed it holds), without the network: for rules studied on a machine that is
    gone (a lent GPU's caches come back as tarballs, ``bench/device/settle.sh``). A run stops at the viewer's
    ``num_samples`` (or ``--samples``) at most: exactly a run of that many, as a longer orthogonal run
    begins with the same rows. Several folders (the same films and runs against golds of other
    ``--gold-seed``) are scored each on its own and then together: the mean over golds of the mean over
    films, the expected score against a reference of any seed rather than of one. ``--replay`` given again
    names another set of films; the sets are then also scored all together, film by film against lime's
    default (:meth:`SettleTally.paired`), since one set of ten can sit on either side by chance."""
    tallies = [replay_set([Path(f) for f in str(folders).split(",") if f], args) for folders in sets]
    if len(tallies) > 1:
        pooled = SettleTally(tallies[0].rules, tallies[0].most, args.fit)
        for tally in tallies:
            pooled.absorb(tally)
        pooled.report(f"{len(sets)} sets of films together ({'; '.join(sets)})")


def replay_set(folders: list, args) -> "SettleTally":
    """One set of films of :func:`replay_study`, against each of its golds; returns them together."""
    together = None
    for folder in folders:
        refs = {str(r["film"]): r for r in (dict(np.load(f)) for f in sorted(folder.glob("reference-*.npz")))
                if "film" in r}
        runs = sorted((dict(np.load(f)) for f in folder.glob("settle-*.npz")), key=lambda r: str(r.get("film", "")))
        if not runs:
            raise SystemExit(f"--replay: no settle-*.npz in {folder}")
        tally = None
        for run in runs:
            keys = [k[len("data_"):].rsplit("_", 1) for k in run if k.startswith("data_")]
            samplings = sorted({k[0] for k in keys}, key=SAMPLINGS.index)
            seeds = min(sum(1 for k in keys if k[0] == v) for v in samplings)
            if tally is None:
                most = min(len(run[f"data_{samplings[0]}_0"]), args.samples or LimeSettings().num_samples)
                tally = SettleTally([parse_rule(r) for r in args.rules.split(",")], most, args.fit)
                together = together or SettleTally(tally.rules, most, args.fit)
            film = str(run.get("film", "?"))
            tally.add_film(film, run, refs.get(film), samplings, seeds, time.perf_counter())
        tally.report(f"{folder}: {len(runs)} films, Jaccard@5 against each film's gold on the same segmentation")
        together.absorb(tally)
    if len(folders) > 1:
        together.report(f"{len(folders)} golds a film ({', '.join(map(str, folders))}): the mean over them")
    return together


class SettleTally:
    """Scores of the stopping rules over a settle study's films, one film's cached runs at a time, and
    the table at the end: one scoring for a study with the network and one replayed from its cache."""

    def __init__(self, rules: list, most: int, fit: str):
        self.rules, self.most, self.fit = rules, most, fit  # fit: how our runs' weights are computed
        self.fixed = sorted({n for n in (48, 96, 144, 192, 288, 400) if n < most} | {most})
        self.refits = set(self.fixed) | {n for f, e, *_ in rules for n in range(f, most + 1, e)}
        self.rows = {}  # (sampling, rule label) -> [(jaccard@5, jaccard outlined, samples)]
        self.films = {}  # (sampling, rule label) -> the film of each of its rows

    def stop_at(self, weights, zs, rule) -> int:
        start, every, z_min, alone, margin = rule
        checks = list(range(start, self.most + 1, every))
        for a, b in zip([None] + checks, checks):  # the viewer's own test, on the fits it would make
            agreed = has_settled(weights[a] if a is not None else None, weights[b], TOP_K, margin)
            separated = z_min is None or zs[b] >= z_min
            if separated and (agreed or alone):  # "alone" rules always have a z (parse_rule)
                return b
        return self.most  # never settled: every sample is drawn

    def add(self, film, sampling, rule, ours, gold, n) -> None:
        self.rows.setdefault((sampling, rule), []).append(
            (jaccard(top(ours), top(gold)), jaccard_material(ours, gold), n, weight_error(ours, gold)))
        self.films.setdefault((sampling, rule), []).append(film)

    def absorb(self, other: "SettleTally") -> None:
        """Another tally's rows (the same films against another gold, or other films) added to these."""
        for key, rows in other.rows.items():
            self.rows.setdefault(key, []).extend(rows)
            self.films.setdefault(key, []).extend(other.films[key])

    def paired(self, key, reference=("independent", "lime-1000, quickshift"), resamples: int = 10000):
        """(mean over films of this rule's Jaccard@5 less lime-1000's on the same film, its 95% bootstrap
        interval over films, films better / level / worse, films), each film's Jaccard the mean of its runs
        and golds; None without lime-1000's rows. Paired by film because films differ far more from each
        other (a clear top five, or a near-tie at the fifth place) than the two explainers do on one film."""
        if reference not in self.rows or key == reference:
            return None
        def per_film(k):
            by = {}
            for film, row in zip(self.films[k], self.rows[k]):
                by.setdefault(film, []).append(row[0])
            return {film: float(np.mean(v)) for film, v in by.items()}
        ours, ref = per_film(key), per_film(reference)
        films = sorted(set(ours) & set(ref))
        if not films:
            return None
        d = np.array([ours[f] - ref[f] for f in films])
        draws = np.random.default_rng(0).integers(0, len(d), (resamples, len(d)))
        lo, hi = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])
        level = np.isclose(d, 0.0)
        counts = int((~level & (d > 0)).sum()), int(level.sum()), int((~level & (d < 0)).sum())
        return float(d.mean()), (float(lo), float(hi)), counts, len(films)

    def add_film(self, label, run, ref, samplings, seeds, t0) -> None:
        before = {k: len(v) for k, v in self.rows.items()}
        if ref is not None:  # lime-1000 on quickshift against a gold on quickshift, as bench_model does
            for key in reference_keys(ref):
                self.add(label, "independent", "lime-1000, quickshift", ref[key], ref["gold"], 1000)
        if run is None:
            print(f"  {label}: reference, {time.perf_counter() - t0:.0f} s", flush=True)
            return
        cls = int(run["cls"])
        for key in reference_keys(run, "ref1000"):
            self.add(label, "independent", "lime-1000, our segmentation", run[key], run["gold"], 1000)
        for sampling in samplings:
            for seed in range(seeds):
                data, labels = run[f"data_{sampling}_{seed}"], run[f"labels_{sampling}_{seed}"]
                ex = _lime_explainer_class()(random_state=seed)
                weights = {n: fit_weights(ex, data, labels, cls, n, self.fit) for n in self.refits}
                zs = ({n: top_separation(ex, data[:n], labels[:n], cls, TOP_K) for n in self.refits}
                      if any(r[2] is not None for r in self.rules) else {})
                stops = {f"fixed {n}": n for n in self.fixed}
                stops.update({rule_label(r): self.stop_at(weights, zs, r) for r in self.rules})
                for rule, n in stops.items():
                    self.add(label, sampling, rule, weights[n], run["gold"], n)
        this_film = {rule: np.mean(v[before.get((sampling, rule), 0):], axis=0)
                     for (sampling, rule), v in self.rows.items()
                     if not rule.startswith("fixed")}  # the references and the rules, on this film alone
        print(f"  {label}: {run['seg'].max() + 1} superpixels, {time.perf_counter() - t0:.0f} s; "
              + "; ".join(f"{rule} {j5:.2f} at {n:.0f}" for rule, (j5, _, n, _) in this_film.items()), flush=True)

    def report(self, title: str) -> None:
        print(f"\n{title}")
        print(f"| sampling | rule | mean Jaccard@5 | mean Jaccard, outlined (>= {MATERIAL:g} of the largest weight) "
              "| mean samples | weights' squared error (of the gold's) |")
        print("|---|---|---:|---:|---:|---:|")
        for (sampling, rule), v in self.rows.items():
            j5, jm, n, err = np.mean(v, axis=0)
            print(f"| {sampling} | {rule} | {j5:.3f} | {jm:.3f} | {n:.0f} | {err:.3f} |")
        for key in self.rows:
            against = None if key[1].startswith("fixed") else self.paired(key)
            if against:
                diff, (lo, hi), (better, level, worse), films = against
                print(f"{key[1]} ({key[0]}) less lime-1000 on quickshift, film by film: {diff:+.3f} "
                      f"(95% bootstrap interval {lo:+.3f} to {hi:+.3f} over {films} films; better on {better}, "
                      f"level on {level}, worse on {worse})")


def parse_rule(text: str) -> tuple:
    """"F:E" | "F:E:mM" | "F:E:Z" | "F:E:Z:alone" -> (from, every, z or None, alone, margin): M is
    ``LimeSettings.settle_margin`` (``has_settled``), Z a ``top_separation`` the refit must reach."""
    parts = text.strip().split(":")
    try:
        if len(parts) == 3 and parts[2].startswith("m"):
            return int(parts[0]), int(parts[1]), None, False, float(parts[2][1:])
        if len(parts) in (2, 3, 4) and (len(parts) < 4 or parts[3] == "alone"):
            return int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else None, len(parts) == 4, 0.0
    except ValueError:
        pass
    raise SystemExit(f"--rules: {text!r} is not FROM:EVERY[:mMARGIN | :Z[:alone]]")


def rule_label(rule: tuple) -> str:
    start, every, z_min, alone, margin = rule
    if margin:
        return f"from {start} every {every}, lead > {margin:g}x moved"
    if z_min is None:
        return f"from {start} every {every}"
    return f"from {start} every {every}, " + (f"z >= {z_min:g} alone" if alone else f"agree and z >= {z_min:g}")


def cache_file(kind: str, name: str, path, args, settings: LimeSettings):
    """Where ``--cache`` keeps one film's network outputs for a study (None without ``--cache``)."""
    import hashlib

    if not args.cache:
        return None
    size = Path(name).stat().st_size if name.endswith(".safetensors") else ""
    settings = for_model(settings, None)  # an open segmentation is the default one, as keys were written
    # not the stopping rule (it is simulated), the fit (it is replayed) nor the most a run draws (a shorter
    # cached run is lengthened)
    network_side = {k: v for k, v in settings.to_dict().items()
                    if k not in ("settle_from", "settle_every", "settle_margin", "sampling", "coarse_samples",
                                 "batch_size", "num_samples", "fit")}
    ident = (f"{name}|{size}|{path}|{args.gold}|{sorted(network_side.items())}" + ("|fast" if DATA_FAST else "")
             + (f"|gold seed {args.gold_seed}" if args.gold_seed != GOLD_SEED else ""))  # keys written before it
    return Path(args.cache) / f"{kind}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"


def cached_run(kind: str, name: str, path, args, settings: LimeSettings) -> tuple:
    """(where ``--cache`` keeps this film's run, what it holds: {} when nothing). With ``--runs-from-gold
    G`` a film not yet cached for this ``--gold`` and ``--gold-seed`` starts from its cache for a
    ``G``-sample gold of the default seed, less that gold: the runs are the same draws of the same network,
    so a larger gold, or a gold of another seed, costs only the gold."""
    cached = cache_file(kind, name, path, args, settings)
    if cached is None:
        return None, {}
    if cached.exists():
        return cached, dict(np.load(cached))
    if getattr(args, "runs_from_gold", None):
        other = cache_file(kind, name, path, argparse.Namespace(**{**vars(args), "gold": args.runs_from_gold,
                                                            "gold_seed": GOLD_SEED}),
                           settings)
        if other.exists():
            run = dict(np.load(other))
            run.pop("gold", None)
            return cached, run
    return cached, {}


def model_image(gray, pred, spec) -> tuple:
    """(model-input RGB image as lime sees it, class explained: the top one) for a rendered film."""
    square, _ = fit_to_square(gray, spec.input_size, spec.resize)
    return np.repeat(square[:, :, None], 3, axis=2), int(pred.predict_gray(gray).top_index)


def film_name(path) -> str:
    """A film as the study's logs and caches name it (its class folder and file name)."""
    return f"{Path(path).parent.name}/{Path(path).name}"


def save_cache(cached, run: dict) -> None:
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cached, **run)


#: lime's default segmentation, as the reference uses it
LIMES = LimeSettings(segmentation="quickshift")


def segmentation_fields(settings: LimeSettings) -> tuple:
    return settings.kernel_size, settings.max_dist, settings.ratio


def reference_keys(run: dict, name: str = "ref") -> list:
    """A cache's lime-1000 runs: ``name`` (seed 0), then ``name_1``, ``name_2``... (``--ref-seeds``); "ref"
    on quickshift in a reference cache, "ref1000" on our segmentation in a settle cache."""
    extra = sorted((k for k in run if k.startswith(name + "_") and k[len(name) + 1:].isdigit()),
                   key=lambda k: int(k[len(name) + 1:]))
    return ([name] if name in run else []) + extra


def seed_keys(name: str, args) -> list:
    """The keys of ``--ref-seeds`` lime-1000 runs (seeds 0, 1...), as :func:`reference_keys` reads them."""
    return [name] + [f"{name}_{seed}" for seed in range(1, getattr(args, "ref_seeds", 1))]


def reference_run(name, path, pred, exact, spec, args) -> dict:
    """lime's default for one film, as in :func:`bench_model`: weights of ``--ref-seeds`` 1000-sample runs
    (seeds 0, 1...) and of a ``--gold``-sample run (another seed), all on lime's quickshift segmentation;
    cached like :func:`settle_runs`. Several runs, as ours are three a film, because one run is a coin
    toss on every film whose fifth and sixth places nearly tie."""
    cached, run = cached_run("reference", name, path, args, LIMES)
    keys = seed_keys("ref", args)
    if "gold" in run and all(k in run for k in keys):
        return run
    image, cls = model_image(render(load_film(path)), pred, spec)
    if "seg" in run:  # more runs for a cached film: on the class and superpixels its first ones explained
        cls, seg = int(run["cls"]), run["seg"]
    else:
        seg = segment(image, LIMES)
    run.update(cls=cls, seg=seg, film=film_name(path))
    if "gold" not in run:
        ex, data, labels = lime_data(exact, image, seg, args.gold, args.gold_seed)
        run["gold"] = fit_weights(ex, data, labels, cls)
    for seed, key in enumerate(keys):
        if key not in run:
            ex, data, labels = lime_data(exact, image, seg, 1000, seed)
            run[key] = fit_weights(ex, data, labels, cls)
    save_cache(cached, run)
    return run


def settle_runs(name, path, pred, exact, spec, settings, samplings, args) -> dict:
    """The network's part of a settle study for one film: class, segmentation, gold weights, and the rows
    and outputs of every (sampling, seed) run; read from ``--cache`` when an earlier study kept them."""
    cached, run = cached_run("settle", name, path, args, settings)
    before = set(run) if cached is not None and cached.exists() else set()
    limes = settings.segmentation == "quickshift" and segmentation_fields(settings) == segmentation_fields(LIMES)
    if "gold" not in run:
        image, run["cls"] = model_image(render(load_film(path)), pred, spec)
        if limes:  # lime's segmentation: the reference's gold (same seed) is this study's
            ref = reference_run(name, path, pred, exact, spec, args)
            run["seg"], run["gold"] = ref["seg"], ref["gold"]
        else:
            run["seg"] = segment(image, settings)
            ex, data, labels = lime_data(exact, image, run["seg"], args.gold, args.gold_seed)
            run["gold"] = fit_weights(ex, data, labels, run["cls"])
        run["image"], run["film"] = image, film_name(path)
    cls, seg, image = int(run["cls"]), run["seg"], run["image"]
    wanted = seed_keys("ref1000", args) if args.with_reference else []
    if any(key not in run for key in wanted):  # lime's own 1000 draws, on our segmentation
        ref = reference_run(name, path, pred, exact, spec, args) if limes else {}
        for seed, (key, same) in enumerate(zip(wanted, seed_keys("ref", args))):
            if key in run:
                continue
            if limes:
                run[key] = ref[same]
            else:
                ex, data, labels = lime_data(exact, image, seg, 1000, seed)
                run[key] = fit_weights(ex, data, labels, cls)
    for sampling in samplings:
        for seed in range(args.settle_seeds):
            keys = f"data_{sampling}_{seed}", f"labels_{sampling}_{seed}"
            if keys[0] not in run or len(run[keys[0]]) < settings.num_samples:  # new, or longer than cached
                known = (run[keys[0]], run[keys[1]]) if keys[0] in run else None
                _, data, labels = lime_data(exact, image, seg, settings.num_samples, seed, sampling=sampling,
                                            known=known)
                run[keys[0]], run[keys[1]] = data, labels
    if set(run) != before:  # only what the network computed this time is written
        save_cache(cached, run)
    run["cls"] = cls
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated registry names or checkpoint paths")
    p.add_argument("--checkpoints", default=None, help="comma-separated .safetensors files (instead of --models)")
    p.add_argument("--films", type=int, default=None, help="films for faithfulness (default 10; quick 2)")
    p.add_argument("--gold", type=int, default=None, help="samples of the gold reference (default 5000; quick 2000)")
    p.add_argument("--gold-seed", type=int, default=GOLD_SEED,
                   help=f"lime's random_state for the gold (default {GOLD_SEED}): a gold of another seed, to "
                        "see how much one seed's gold decides near-ties by chance (--replay DIR,DIR)")
    p.add_argument("--ref-films", type=int, default=None, help="films the 1000-sample reference is timed on (default 2; quick 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tune", action="store_true", help="also sweep superpixel and sample counts")
    p.add_argument("--settle-study", action="store_true", help="only compare samplings and rules for when to stop sampling")
    p.add_argument("--settle-seeds", type=int, default=3, help="--settle-study: runs per film and sampling")
    p.add_argument("--rules", default="144:48,96:32,96:32:1,96:32:2,96:32:3:alone",
                   help="--settle-study: stopping rules as FROM:EVERY[:mMARGIN | :Z[:alone]], comma-separated (see settle_study)")
    p.add_argument("--samplings", default=",".join(SAMPLINGS), help="--settle-study: samplings to compare "
                   "(empty: none, for a --with-reference run on its own)")
    p.add_argument("--with-reference", action="store_true",
                   help="--settle-study: also lime-1000 (lime's own draws) against the gold, on quickshift as "
                        "lime's default does, and on our segmentation")
    p.add_argument("--ref-seeds", type=int, default=3,
                   help="--settle-study --with-reference: lime-1000 runs a film (seeds 0, 1...), on quickshift "
                        "and on our segmentation, each scored against the gold as each of ours is")
    p.add_argument("--replay", action="append", default=None, metavar="DIR[,DIR...]",
                   help="score --rules on a settle study's --cache DIR alone, without the network; several "
                        "folders (golds of other --gold-seed) are also scored together; given again, another "
                        "set of films, and all sets together, film by film against lime-1000 (replay_study)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="--settle-study: keep the network's outputs per film here, and reuse them")
    p.add_argument("--runs-from-gold", type=int, default=None, metavar="G",
                   help="--settle-study: a film not cached for this --gold and --gold-seed reuses its --cache runs "
                        "for a G-sample gold of the default seed (only the gold is drawn again)")
    p.add_argument("--speed-only", action="store_true",
                   help="only time ours against lime-1000 (on --ref-films films), no gold: for networks too slow "
                        "for 5000-sample golds on a CPU")
    p.add_argument("--samples", type=int, default=None, help="override our num_samples")
    p.add_argument("--segments", type=int, default=None, help="override our SLIC n_segments")
    p.add_argument("--settle-every", type=int, default=None, help="override our settle_every (the stopping rule)")
    p.add_argument("--settle-margin", type=float, default=None, help="override our settle_margin (see has_settled)")
    p.add_argument("--fit", choices=FITS, default=LimeSettings().fit,
                   help="how our runs' weights are computed (LimeSettings.fit); golds and references are lime's own")
    p.add_argument("--segmentation", choices=SEGMENTATIONS, default=None,
                   help="override our segmentation (default: the model's own, see CXRModel.lime_segmentation)")
    p.add_argument("--tune-segments", default="20,30,50", help="SLIC n_segments values --tune sweeps")
    p.add_argument("--tune-samples", default="60,100,150,200,300,400", help="sample counts --tune sweeps")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps: where the networks run (the "
                   "targets are stated for a CPU; a GPU run times the same work there)")
    p.add_argument("--data-fast", action="store_true",
                   help="golds and 1000-sample references through the fast path (bf16 where the CPU has it and "
                        "the check keeps it) instead of fp32, for networks whose fp32 golds take too long; the "
                        "function explained is then the one our explanation sees. The timed reference stays plain fp32")
    p.add_argument("--no-bf16", action="store_true",
                   help="run as on a CPU without native bf16 (the fast path stays fp32); with ATEN_CPU_CAPABILITY=avx2 "
                        "and ONEDNN_MAX_CPU_ISA=AVX2 in the environment, an AVX-512 machine stands in for an AVX2 one")
    p.add_argument("--bf16-input-side", action="store_true",
                   help="the bf16 copy rounds the layers a model keeps in fp32 too (CXRModel.reduced_precision_fp32), "
                        "as before the seventeenth session: the A/B for what keeping them costs and saves")
    p.add_argument("--film-list", default=None, metavar="FILE",
                   help="films to use, one path per line (relative to the file's folder), instead of the "
                        "choice from ../shared/data; for a machine that has only a copy of those films")
    args = p.parse_args(argv)
    global DEVICE, FILM_LIST, DATA_FAST
    DEVICE, DATA_FAST = torch.device(args.device), args.data_fast
    if args.no_bf16:
        cxrviewer.inference.cpu_supports_bf16 = lambda: False
    if args.bf16_input_side:
        cxrviewer.inference.FP32_INPUT_SIDE = False
    if args.film_list:
        listed = Path(args.film_list)
        FILM_LIST = [listed.parent / line.strip() for line in listed.read_text().splitlines() if line.strip()]
    q = args.quick
    names = (args.checkpoints or args.models or ("mobilenet_lung" if q else ",".join(ATTENTION_MODELS))).split(",")
    args.films = args.films or (2 if q else 10)
    args.gold = args.gold or (2000 if q else 5000)
    args.ref_films = args.ref_films if args.ref_films is not None else (1 if q else 2)
    args.tune_segments = [int(v) for v in args.tune_segments.split(",")]
    args.tune_samples = [int(v) for v in args.tune_samples.split(",")]
    overrides = {k: v for k, v in (("num_samples", args.samples), ("n_segments", args.segments),
                                   ("segmentation", args.segmentation), ("settle_every", args.settle_every),
                                   ("settle_margin", args.settle_margin), ("fit", args.fit)) if v is not None}
    settings = LimeSettings(**overrides)
    if args.replay:
        replay_study(args.replay, args)
        return 0
    films = pick_films(args.ref_films if args.speed_only else args.films)
    if args.settle_study:
        for name in names:
            settle_study(name.strip(), films, args, settings)
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DEVICE}; settings: {settings}", flush=True)
    rows = []
    for name in names:
        print(f"{name}:", flush=True)
        rows.append(bench_model(name.strip(), films, args, settings))

    print("\n| model | films | superpixels ours / quickshift | samples ours | Jaccard@5 ours | Jaccard@5 lime-1000 | ours s | lime-1000 s | speed-up | Grad-CAM / inference | attention / inference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        # speed only: no faithfulness measured, so it neither passes nor fails here
        jo, jr = (float(np.mean(r["j_ours"])), float(np.mean(r["j_ref"]))) if r["j_ours"] else (float("nan"),) * 2
        speed = (np.mean(r["t_ref"]) / np.mean(r["t_ours_ref"])) if r["t_ref"] else float("nan")
        g = r["t_gradcam"] / r["t_infer"]
        a = (r["t_attention"] / r["t_infer"]) if r["t_attention"] is not None else None
        ok &= (jo >= jr or args.speed_only) and (speed >= 10 or np.isnan(speed)) and g < 3 and (a is None or a < 3)
        print(f"| {r['model']} | {r['films']} | {np.mean(r['n_seg_ours']):.0f} / {np.mean(r['n_seg_qs']):.0f} | "
              f"{np.mean(r['samples']):.0f} | "
              f"{jo:.2f} | {jr:.2f} | {np.mean(r['t_ours']):.2f} | "
              f"{np.mean(r['t_ref']) if r['t_ref'] else float('nan'):.1f} | {speed:.1f}x | {g:.2f} | "
              f"{'n/a' if a is None else f'{a:.2f}'} |")
    if not args.speed_only:
        print(f"\nJaccard of the outlined superpixels (>= {MATERIAL:g} of the largest weight, see "
              "jaccard_material), ours / lime-1000: " + "; ".join(
                  f"{r['model']} {np.mean(r['jm_ours']):.2f} / {np.mean(r['jm_ref']):.2f}" for r in rows))
    print("\nsingle-film inference / Grad-CAM / full-res map resampling (s): " + "; ".join(
        f"{r['model']} {r['t_infer']:.3f} / {r['t_gradcam']:.3f} / {r['t_film_map']:.3f}" for r in rows))
    for r in rows:
        if r["tune"]:
            print(f"\n{r['model']}: mean Jaccard@5 vs {args.gold}-sample gold on the same segmentation")
            keys = sorted(r["tune"])
            samples = sorted({k[2] for k in keys})
            print("| segmentation | " + " | ".join(f"N={n}" for n in samples) + " |")
            print("|---|" + "---|" * len(samples))
            for seg in sorted({k[:2] for k in keys}):
                cells = [f"{np.mean(r['tune'][seg + (n,)]):.2f}" if seg + (n,) in r["tune"] else "" for n in samples]
                print(f"| {seg[0]} {seg[1] or ''} | " + " | ".join(cells) + " |")
    print("\ntargets (" + ("speed only: " if args.speed_only else "Jaccard ours >= lime-1000, ")
          + "speed-up >= 10x, maps < 3x inference):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
