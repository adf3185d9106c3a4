"""LIME on superpixels of the model's own input, fast enough to run on every film.

The explanation is computed by ``lime.lime_image.LimeImageExplainer.explain_instance`` (lime's sampling
distribution, cosine distances, kernel and ridge regression, and so what its weights estimate, are kept as
they are) on the 224×224 image the model actually sees, produced by the shared preprocessing, so a
superpixel maps back to the film through ``Geometry.to_film`` exactly like an attention map does.

Where the time goes in lime's defaults, and what is changed (bench/bench_explain.py measures each):

- The regression is over superpixels, so the samples it needs grow with their count. lime's quickshift
  gives ~35 irregular superpixels on a 224² chest film; SLIC with ~21 compact ones (tens of
  milliseconds) reaches a more stable top-5 with 300 samples than quickshift does with 1000 (see
  :class:`LimeSettings`). The segmentation is computed once and handed to lime through
  ``segmentation_fn``; quickshift and felzenszwalb remain selectable.
- Balanced perturbations (randomised orthogonal arrays, each row followed by its complement), and
  sampling stops once the top superpixels have settled, see :class:`LimeSettings`.
- The weights estimate what lime's regression estimates, with a logistic surrogate as a control variate
  (:func:`surrogate_weights`): the same samples give a map two to five times closer to a long run's on
  the adult model, so the ranking settles sooner.
- lime builds every perturbed image in a Python loop (a deepcopy and one full-image comparison per hidden
  superpixel per sample). :class:`_BatchedLimeImageExplainer` overrides only ``data_labels`` to build a
  whole batch with one gather (same random draws, so the same explanation for the same seed), in one
  channel since the film is grey, and the batch is normalised in one call.
- The classifier function calls the Predictor's fast batch path with batches of 16 instead of 10; on a
  CPU, batches much larger than that run slower per film (their activations no longer fit the caches:
  batch 75 took twice as long as 16 on the AMX machine), so bigger is not better here.
- Cancel is checked before every batch, so it takes effect within one batch (a fraction of a second).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import numpy as np

from cxrviewer.explain import _predictor as P
from cxrviewer.explain.types import Cancelled, Explanation, film_key
from cxrviewer.preprocess import PreprocessSpec, fit_to_square, normalise

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
SAMPLINGS = ("orthogonal", "paired", "independent")
FITS = ("surrogate", "lime")


@dataclass(frozen=True)
class LimeSettings:
    """What the reader can change. Defaults tuned with ``bench/bench_explain.py --quick --tune``.

    Measured on two films (MobileNet-Lung, ImageNet backbone; Jaccard of the top-5 superpixels against a
    1500-sample lime reference on the same segmentation): lime's default (quickshift, ~36 superpixels,
    1000 samples) 0.46. SLIC n_segments=50 (~43 superpixels): 0.34 at 150 samples, 0.46 at 300.
    n_segments=30 (~21): 0.34 at 150, 0.43 at 200, 0.55 at 300 paired. n_segments=20 (~12): 0.55-0.67
    from 60 samples, but 12 superpixels is too coarse to be useful on a chest film, and top-5 of 12
    agrees by chance ~0.3 of the time. Hence ~21 compact superpixels, balanced samples, and (since the
    trained bundled model's rankings settle sooner than that untrained one's) a stopping rule rather
    than a fixed count, see ``settle_from``.

    ``sampling``: lime draws each superpixel on/off with probability 1/2, independently per sample
    (``"independent"``). ``"paired"`` follows every draw with its complement (antithetic): the pair
    cancels the even-order interactions that otherwise leak into each weight. ``"orthogonal"`` (the
    default) also balances the draws against each other: they come in blocks taken from the rows of a
    Hadamard matrix, with a random subset of its columns and each column's sign flipped at random, so
    within a block every superpixel is hidden exactly half the time and every two superpixels are
    hidden together exactly a quarter of the time, and each row still has lime's distribution (the
    random flips make any one row uniform on {0, 1}^n). lime's kernel and ridge regression are
    unchanged, and so is what they estimate; only the sampling noise is smaller. See
    :func:`orthogonal_rows` for the measurement.

    ``settle_from`` / ``settle_every``: from ``settle_from`` samples on, lime's regression is refitted
    every ``settle_every`` samples (a ridge fit on a few hundred rows: milliseconds), and sampling stops
    as soon as two successive fits name the same ``num_features`` strongest supporting superpixels (and,
    by default, pass ``settle_margin``, below); ``num_samples`` is then only the most it will draw.
    Measured on ten films with the bundled model, two runs each (Jaccard@5 against a 3000-sample gold,
    ``bench_explain --settle-study``): with orthogonal sampling, refits from 96 every 32 stopped after 141
    samples on average at Jaccard 0.95; the previous rule (paired draws, refits from 144 every 48) needed
    209 for the same 0.95, and lime's own independent draws with that rule 192 for 0.90. Refits every 48
    (the default until the fifteenth session): 151 samples for the same 0.95 there; on cs_convnext
    (quickshift, eight films) 0.96 at 165 samples where every 32 gave 0.92 at 142 and lime-1000 0.96: two
    agreeing fits 48 samples apart are better evidence that a ranking has settled than 32 apart. That
    was chosen on those eight films; on two films held out, 0.69 against lime-1000's 0.71 (ten films:
    0.90 at 182 samples, lime-1000 0.91). ``settle_from=0`` always draws ``num_samples``.

    ``settle_margin`` > 0 (1.5, with refits every 32, the default from the fifteenth session) also asks
    the fifth place to lead the sixth by more than that many times the fits' jitter (:func:`has_settled`).
    On 5000-sample golds, three runs per film, against agreement alone every 48: cs_convnext 1.00 both,
    dpn_se 0.89 both, da_covidnet 1.00 against 0.98, mobilenet_lung-adult3 0.82 against 0.79, for 4-45%
    more samples (mean 161-255 against 148-176). Chosen on those; on the default model, studied after
    (mobilenet_lung-kermany3, ten films), 0.96 at 173 samples against 0.92 at 150, lime-1000 0.91.
    1.75 since the twentieth session: replayed on every network's cached runs and 5000-sample golds it is
    above lime-1000 on all of them (da_covidnet's CPU checkpoint, three golds: 0.974 against 0.967,
    where 1.5 gave 0.963; dpn_se 0.901 against 0.892, where 1.5 gave 0.890; adult3 0.874 and 0.915, the
    default model 0.956, unchanged or up), for 2-12% more samples (the adult model without bf16: a film
    19% longer). 2 also passes on da_covidnet but falls below on adult3 (0.863 against 0.868). The value
    was chosen on those same golds. On ten fresh films (twenty-first session) the default model holds,
    0.989 against 0.901, and da_covidnet's CPU checkpoint on eight of them, 0.986 against 0.959, but adult3
    falls short, 0.808 against 0.868 (a lead of 2: 0.830): its ~43 superpixels need about a thousand
    samples there, more than any stopping rule can leave it. Over its thirty films every lead is level
    (0.866 against 0.868). docs/benchmarks.md has the tables.

    ``segmentation`` None lets the model choose (:func:`for_model`, ``CXRModel.lime_segmentation``): SLIC
    for all but cs_convnext, which asks for quickshift. On SLIC that network's evidence sits in one to
    three superpixels and the rest of a top five is noise (3000-sample golds, ``bench_explain
    --settle-study``; four films: Jaccard@5 0.61 with SLIC's ~20 superpixels, 0.74 with ~43, 0.83 on
    quickshift, lime-1000 0.92; eight films on quickshift: 0.92 at 142 samples, lime-1000 0.96).

    ``n_segments`` None likewise takes the checkpoint's own (its card's ``lime``), else 30: two trainings of
    one network can spread their evidence differently. The bundled mobilenet_lung-adult3's card asks for
    quickshift, lime's own superpixels, since the twenty-third session (SLIC-50, ~43 superpixels, from the
    sixteenth). On SLIC's ~20 its fifth and sixth superpixels often nearly tie (lime-1000 there 0.80, ours
    0.82, lime-1000 on quickshift 0.87); on SLIC-50 as well, on some films: on the seventeenth session's ten
    lime's own 1000 draws score 0.806 against golds on those superpixels. Measured with the surrogate fit,
    three runs a film of ours and of lime-1000 and golds of two seeds, over thirty films: quickshift 0.884
    at 258 samples, SLIC-50 0.868 at 271, lime-1000 (on quickshift) 0.866; per set of ten quickshift 0.894,
    0.863, 0.894 and SLIC-50 0.837, 0.933, 0.834, against 0.878, 0.881, 0.838. On quickshift the
    comparison with lime's defaults is on the very same superpixels and golds. A fourth ten, drawn after
    the switch: 0.928 at 252 against 0.894 (forty films: 0.895 against 0.873, film by film +0.022, 95%
    interval -0.004 to +0.047). Capping at 480 rather than 400 gained 0.013 on the thirty and lost 0.011
    on those ten, so ``num_samples`` stays 400.

    ``fit``: how the weights are computed from the rows drawn. ``"lime"``: lime's own weighted ridge
    regression. ``"surrogate"`` (the default from the twenty-second session): the same regression and the
    same estimand, with less noise (:func:`surrogate_weights`): a logistic curve fitted to the rows first
    takes out the network's saturation, the part of its output a linear fit cannot follow and whose
    aliasing is most of the noise in a few hundred rows. Replayed on cached runs against 5000-sample golds
    (three runs a film, lead 1.75, ``bench_explain --replay DIR --fit F``): on the adult model's ~43 SLIC
    superpixels the weights' squared error (as a share of the gold's) fell two- to five-fold per set of ten
    at every sample count from 144 to 400, and under the stopping rule from 0.119 to 0.033 over thirty
    films, which it stops on sooner: 0.870 at 271 samples against 0.858 at 298 (lime-1000 0.867; per set
    0.84-0.94, where the gold's own noise decides the near-ties at the fifth place; with lime-1000 at three
    runs a film and golds of two seeds, 0.868 against 0.866 and 0.861 with lime's fit). On the default
    model's ~21, 0.99 at 153 against 0.99 at 163 on ten fresh films. A fit takes about 1.5 ms.

    ``num_features`` is how many of the strongest superpixels are reported, and the most outlined (those
    coloured at the overlay's threshold, and with at least a tenth of the largest weight,
    ``outlined_indices``); lime itself is always asked
    for every superpixel's weight so the map shows the whole picture.
    """

    segmentation: Optional[str] = None  # None: the model's own (CXRModel.lime_segmentation), else SLIC
    n_segments: Optional[int] = None  # SLIC target; None: the checkpoint's own, else 30 (~20 superpixels at 224²)
    compactness: float = 10.0  # SLIC: higher = rounder superpixels, less hugging of edges
    kernel_size: float = 4.0  # quickshift (lime's default parameters)
    max_dist: float = 200.0
    ratio: float = 0.2
    fz_scale: float = 200.0  # felzenszwalb: larger = fewer, bigger superpixels
    fz_sigma: float = 0.8
    fz_min_size: int = 150
    num_samples: int = 400  # the most drawn; see settle_from
    num_features: int = 5
    batch_size: int = 16  # per forward pass; see the module doc for why not larger
    random_seed: int = 0
    coarse_samples: int = 48  # >0: report an early estimate after this many samples (through on_coarse)
    sampling: str = "orthogonal"  # or "paired", "independent" (lime's own); see above
    fit: str = "surrogate"  # or "lime" (lime's regression alone); see above
    settle_from: int = 96  # 0: always draw num_samples
    settle_every: int = 32
    settle_margin: float = 1.75  # 0: two agreeing fits are enough; see has_settled

    def __post_init__(self):
        if self.segmentation is not None and self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"unknown segmentation {self.segmentation!r}; choose from {', '.join(SEGMENTATIONS)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose from {', '.join(SAMPLINGS)}")
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}; choose from {', '.join(FITS)}")
        if self.n_segments is not None and (isinstance(self.n_segments, bool) or self.n_segments < 2):
            raise ValueError("SLIC needs n_segments >= 2")
        if self.num_samples < 2:
            raise ValueError("LIME needs at least 2 samples")
        if self.settle_from < 0 or self.settle_every < 1 or self.settle_margin < 0:
            raise ValueError("settle_from and settle_margin must be >= 0, and settle_every >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> tuple:
        """Everything that changes the result (batch size does not), for the cache."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("coarse_samples")
        return tuple(sorted(d.items()))


#: The segmentation for a model that does not ask for one (``CXRModel.lime_segmentation``), or a plain function.
DEFAULT_SEGMENTATION = "slic"
#: SLIC's target superpixel count for a checkpoint that does not ask for another (its card's ``lime``).
DEFAULT_N_SEGMENTS = 30


def for_model(settings: LimeSettings, predictor_or_fn) -> LimeSettings:
    """``settings`` with the segmentation filled in from the model where the reader left it open
    (``segmentation`` or ``n_segments`` None). Which superpixels make a top five stable depends on how the
    network spreads its evidence, so it is the model's to say: the architecture's
    (``CXRModel.lime_segmentation``), then the checkpoint's own card (``lime``), since two trainings of one
    network can differ (see :class:`LimeSettings`)."""
    asks = P.lime_defaults_of(predictor_or_fn)
    return replace(settings,
                   segmentation=settings.segmentation or asks.get("segmentation") or DEFAULT_SEGMENTATION,
                   n_segments=settings.n_segments or asks.get("n_segments") or DEFAULT_N_SEGMENTS)


def preload() -> None:
    """Import what an explanation needs (lime, scikit-image's segmentations, scikit-learn, scipy): about a
    second on a 2-core CPU, which the viewer pays in the background after a model's first reading rather
    than on the reader's first LIME."""
    import importlib

    for name in ("lime.lime_image", "scipy.linalg", "skimage.segmentation", "sklearn.metrics"):
        importlib.import_module(name)


def segment(image_rgb: np.ndarray, settings: LimeSettings) -> np.ndarray:
    """Superpixels of the (S, S, 3) uint8 model input, relabelled 0..n-1.

    lime indexes superpixels by column number, so labels must be exactly 0..n-1 (SLIC's default start
    label is 1, which would silently never hide the last superpixel).
    """
    from skimage.segmentation import felzenszwalb, quickshift, slic

    method = settings.segmentation or DEFAULT_SEGMENTATION
    if method == "slic":
        seg = slic(image_rgb, n_segments=settings.n_segments or DEFAULT_N_SEGMENTS, compactness=settings.compactness,
                   start_label=0, channel_axis=-1)
    elif method == "quickshift":
        seg = quickshift(image_rgb, kernel_size=settings.kernel_size, max_dist=settings.max_dist,
                         ratio=settings.ratio, rng=0)
    else:
        seg = felzenszwalb(image_rgb, scale=settings.fz_scale, sigma=settings.fz_sigma,
                           min_size=settings.fz_min_size, channel_axis=-1)
    _, inverse = np.unique(seg, return_inverse=True)
    return inverse.reshape(seg.shape).astype(np.int32)


def _lime_explainer_class():
    from lime.lime_image import LimeImageExplainer

    class _BatchedLimeImageExplainer(LimeImageExplainer):
        """lime's explainer with the perturbed images built a whole batch at a time.

        Same random draws as lime's ``data_labels`` (one ``randint`` call on the explainer's random state,
        first row all ones), so a given seed gives the same neighbourhood; only the image assembly is
        vectorised (``sampling`` "independent"; "paired" and "orthogonal" change the draws, see
        :class:`LimeSettings`). ``partial`` (if set) is called once with the first ``partial_at`` rows for a coarse map;
        ``settled`` (if set) is asked with the rows so far, from ``settle_from`` rows on and then every
        ``settle_every``, and sampling stops when it says True (lime then fits on the rows drawn).
        """

        partial: Optional[Callable] = None
        partial_at: int = 0
        sampling: str = "independent"
        settled: Optional[Callable] = None
        settle_from: int = 0
        settle_every: int = 1
        rows: Optional[tuple] = None  # (data, labels) of the last neighbourhood drawn, for a fit of our own

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
            n_features = np.unique(segments).shape[0]
            if self.sampling == "orthogonal":
                data = orthogonal_rows(num_samples, n_features, self.random_state)
            else:
                data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
                data[0, :] = 1
                if self.sampling == "paired":  # antithetic: every odd row is the complement of the one before
                    data[1::2] = 1 - data[0:-1:2][: len(data[1::2])]
            labels = []
            done = 0
            next_check = self.settle_from
            for start in range(0, num_samples, batch_size):
                rows = data[start : start + batch_size].astype(bool)
                keep = rows[:, segments]  # (B, S, S): superpixel on/off per pixel, one gather
                # one channel: the film is grey (its three channels are equal), so (B, S, S, 1) carries
                # everything and costs a third of lime's (B, S, S, 3)
                imgs = np.where(keep, image[None, :, :, 0], fudged_image[None, :, :, 0])[..., None]
                labels.append(np.asarray(classifier_fn(imgs)))
                done += len(rows)
                if self.partial is not None and self.partial_at and done >= self.partial_at and done < num_samples:
                    self.partial(data[:done], np.concatenate(labels))
                    self.partial = None
                if self.settled is not None and next_check and done >= next_check and done < num_samples:
                    next_check = done + self.settle_every
                    if self.settled(data[:done], np.concatenate(labels)):
                        self.rows = data[:done], np.concatenate(labels)
                        return self.rows
            self.rows = data, np.concatenate(labels)
            return self.rows

    return _BatchedLimeImageExplainer


def orthogonal_rows(num_samples: int, n_features: int, random_state) -> np.ndarray:
    """LIME's on/off rows (num_samples, n_features) int: lime's first row (everything on), its complement,
    then blocks of a randomised two-level orthogonal array, each row followed by its complement.

    A block is a Sylvester Hadamard matrix of order m (the smallest power of two above n_features) with
    n_features of its non-constant columns chosen at random, each column's sign flipped at random and
    the rows shuffled; every block is drawn afresh. Any one row is uniform on {0, 1}^n (the random flips
    see to that), so lime's regression estimates what it estimates from independent rows, with much
    less noise where samples are few. On ten films with the bundled model (two runs each, Jaccard@5
    against a 3000-sample independent gold on the same segmentation, ``bench_explain --settle-study``):
    at 96 samples 0.92, against 0.82 for paired and 0.81 for independent draws; at 48, 0.76 against
    0.73 and 0.72 (so the early coarse map is better too). From about 150 samples on, all three agree
    with the gold about equally (0.95-0.98 paired or orthogonal, 0.90-0.95 independent).
    """
    import scipy.linalg

    m = 1 << int(np.ceil(np.log2(n_features + 1)))
    hadamard = scipy.linalg.hadamard(m) > 0
    blocks = [np.ones((1, n_features), dtype=np.int64)]
    drawn = 1
    while 2 * drawn < num_samples + 1:
        cols = random_state.choice(np.arange(1, m), n_features, replace=False)
        flips = random_state.randint(0, 2, n_features).astype(bool)
        block = (hadamard[:, cols] ^ flips)[random_state.permutation(m)].astype(np.int64)
        blocks.append(block)
        drawn += m
    half = np.concatenate(blocks)[: (num_samples + 1) // 2]
    rows = np.empty((2 * len(half), n_features), dtype=np.int64)
    rows[0::2], rows[1::2] = half, 1 - half
    return rows[:num_samples]


def lime_fit(explainer, data: np.ndarray, labels: np.ndarray, label: int) -> tuple:
    """lime's own weighting and regression (cosine distance to the unperturbed row, its kernel, ridge) on
    the rows so far, as ``explain_instance`` does at the end; -> ([(superpixel, weight)...], R²). For the
    early map and the stopping rule here, and the benchmark's fits on the first N rows of a run."""
    _, exp, score, _ = explainer.base.explain_instance_with_data(
        data, labels, _distances(data), label, 100000, feature_selection=explainer.feature_selection)
    return exp, score


def _distances(data: np.ndarray) -> np.ndarray:
    """lime's distance of each row from the first, the unperturbed film (every superpixel on): cosine, as
    ``explain_instance`` computes it before its kernel."""
    import sklearn.metrics

    data = np.asarray(data, dtype=np.float64)
    return sklearn.metrics.pairwise_distances(data, data[:1], metric="cosine").ravel()


def weight_vector(exp, n_features: int) -> np.ndarray:
    """lime's [(superpixel, weight)...] -> weights (n_features,), 0 for any it left out."""
    w = np.zeros(n_features)
    for i, v in exp:
        w[i] = v
    return w


def has_settled(previous: Optional[np.ndarray], weights: np.ndarray, k: int, margin: float) -> bool:
    """The stopping rule (:class:`LimeSettings` ``settle_*``), from two successive fits' weights (one per
    superpixel; ``previous`` None: this is the first fit): both name the same ``k`` strongest, and, where
    ``margin`` > 0, the ``k``-th of them either leads the next by more than ``margin`` times the most any
    of the ``k + 1`` strongest moved between the two fits, or is itself no further than that from zero.

    Why the lead: two fits that share most of their rows can name the same top five by chance while the
    fifth and sixth places are still within the fits' jitter of each other; how far the weights moved
    between the fits is a free measure of that jitter. On a film with a near-tie at the fifth place the
    rule then draws on (up to ``num_samples``) rather than stop on a coin toss. Why the exception: where
    the network's evidence sits in fewer than ``k`` superpixels, the last places are a tie of weights
    near zero that no affordable run resolves."""
    if previous is None:
        return False
    order = np.argsort(-weights, kind="stable")
    if set(order[:k].tolist()) != set(np.argsort(-previous, kind="stable")[:k].tolist()):
        return False
    if margin <= 0 or len(weights) <= k:
        return True
    kth, lead = weights[order[k - 1]], weights[order[k - 1]] - weights[order[k]]
    jitter = margin * float(np.max(np.abs(weights[order[: k + 1]] - previous[order[: k + 1]])))
    return bool(lead > jitter or kth <= jitter)


def kernel_weights(explainer, data: np.ndarray) -> np.ndarray:
    """lime's sample weights: its kernel on each row's distance from the unperturbed one (:func:`_distances`)."""
    return np.asarray(explainer.base.kernel_fn(_distances(data)), dtype=np.float64)


def _weighted_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = 1.0) -> tuple:
    """lime's final regression in closed form (weighted ridge with an intercept, the penalty on the
    coefficients only) -> (intercept, coefficients (p,), A^-1 with A = X^T W X + alpha I on weight-centred
    rows, the centred rows)."""
    mean_x = (w @ x) / w.sum()
    mean_y = (w @ y) / w.sum()
    xc = x - mean_x
    a_inv = np.linalg.inv(xc.T @ (w[:, None] * xc) + alpha * np.eye(x.shape[1]))
    coef = a_inv @ (xc.T @ (w * (y - mean_y)))
    return mean_y - mean_x @ coef, coef, a_inv, xc


def lime_fit_covariance(explainer, data: np.ndarray, labels: np.ndarray, label: int) -> tuple:
    """lime's final fit (its kernel on cosine distances to the unperturbed row, weighted ridge with alpha 1
    and an intercept: the weights :func:`lime_fit` returns) in closed form, with its covariance ->
    (weights (p,), covariance (p, p)). The covariance is the heteroscedasticity-robust sandwich
    ``A^-1 (sum w_i^2 r_i^2 x_i x_i^T) A^-1`` with ``A = X^T W X + I`` on weight-centred rows (the
    residuals of a local linear model are misfit, not noise of one size), scaled by n / (n - p - 1) for
    the few rows a stopping rule looks at. Used by :func:`top_separation`."""
    x = np.asarray(data, dtype=np.float64)
    n, p = x.shape
    w = kernel_weights(explainer, x)
    y = np.asarray(labels, dtype=np.float64)[:, label]
    _, coef, a_inv, xc = _weighted_ridge(x, y, w)
    yc = y - (w @ y) / w.sum()
    scores = xc * (w * (yc - xc @ coef))[:, None]
    return coef, a_inv @ (scores.T @ scores) @ a_inv * (n / max(n - p - 1, 1))


#: Rows standing in for lime's whole neighbourhood in :func:`surrogate_weights` (a balanced design, so
#: few rows integrate a smooth curve closely: its error is a small fraction of a few hundred rows' noise).
POPULATION_ROWS = 8192
_POPULATION: dict = {}


def _population(explainer, n_features: int) -> tuple:
    """(rows, operator): the neighbourhood's stand-in rows, and the linear map from a function's values on
    them to lime's least-squares weights for it (the same for every film with this many superpixels and
    this kernel, so it is built once: a fit is then one product)."""
    kernel = explainer.base.kernel_fn(np.array([0.05, 0.2, 0.4, 0.8]))
    key = (n_features, tuple(np.round(np.asarray(kernel, dtype=np.float64), 12)))
    entry = _POPULATION.get(key)  # read once: another worker thread may clear the dict meanwhile
    if entry is None:
        rows = orthogonal_rows(POPULATION_ROWS, n_features, np.random.RandomState(20261205)).astype(np.float64)
        w = kernel_weights(explainer, rows)
        _, _, a_inv, xc = _weighted_ridge(rows, np.zeros(len(rows)), w, alpha=1e-9)
        # weight-centred columns sum to zero under w, so the outputs need no centring of their own
        entry = rows, a_inv @ (xc.T * w)
        if len(_POPULATION) >= 4:  # a few superpixel counts in use at once; a fine SLIC's is ~20 MB
            _POPULATION.clear()
        _POPULATION[key] = entry
    return entry


def surrogate_weights(explainer, data: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """lime's weights (what its ridge regression converges to with many rows) from few rows, with a
    control variate -> weights (n_features,).

    A network's probability of one class, as superpixels are hidden, is close to a logistic curve of an
    additive score: near 1 (or 0) it saturates, and it is that bend, which no linear fit follows, that
    makes lime's weights noisy where rows are few (it is aliased onto the superpixels differently by every
    neighbourhood). So a logistic surrogate ``h`` is fitted to the rows first (lime's kernel-weighted ridge
    on the logit of the probability), and the weights are lime's regression of what ``h`` leaves
    (``y - h`` on the rows drawn) plus lime's regression of ``h`` itself over the whole neighbourhood,
    which costs no network pass (``h`` is known everywhere: a large balanced set of rows stands in for
    all 2^n, :data:`POPULATION_ROWS`). Whatever ``h`` is, the two parts add up to an estimate of what
    lime's regression estimates (it is linear in the output, and ``h``'s part is computed almost exactly);
    the better ``h`` follows the network, the less noise is left. The rows' share keeps lime's ridge (alpha
    1); the neighbourhood's is a plain least-squares fit, as lime's is in the limit of many rows."""
    x = np.asarray(data, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)[:, label]
    w = kernel_weights(explainer, x)
    p = np.clip(y, 1e-4, 1 - 1e-4)
    a, theta, _, _ = _weighted_ridge(x, np.log(p / (1 - p)), w)

    def h(rows):
        return 1.0 / (1.0 + np.exp(-(a + rows @ theta)))

    everywhere, projection = _population(explainer, x.shape[1])
    return _weighted_ridge(x, y - h(x), w)[1] + projection @ h(everywhere)


def fit_weights(explainer, data: np.ndarray, labels: np.ndarray, label: int, fit: str) -> np.ndarray:
    """One weight per superpixel from the rows so far, with ``fit`` (:class:`LimeSettings`): for the early
    map, the stopping rule, the final map, and the benchmark's fits on the first N rows of a run."""
    if fit == "surrogate":
        return surrogate_weights(explainer, data, labels, label)
    return weight_vector(lime_fit(explainer, data, labels, label)[0], np.asarray(data).shape[1])


def top_separation(explainer, data: np.ndarray, labels: np.ndarray, label: int, k: int) -> float:
    """How clearly lime's fit on these rows separates its ``k`` strongest supporting superpixels from the
    rest: the smallest ``(w_i - w_j) / se(w_i - w_j)`` over i in the top k and j outside it (inf when
    every superpixel is in the top k; covariance from :func:`lime_fit_covariance`).

    Why: two successive fits naming the same top five is a cheap sign that the ranking has settled, and
    on a network whose weights are well spread (the bundled model) it is a good one. On a network with
    near-ties at the fifth place, two noisy fits can agree by chance long before either agrees with a
    long run; the weights' sampling error says which case this is. The settle study
    (``bench_explain --settle-study``, rules ``F:E:Z``) scores stopping rules that ask for it; none is the
    default, since on cs_convnext the near-ties are at noise level and those rules drew every sample
    without agreeing better (docs/benchmarks.md, seventh session).
    """
    if np.asarray(data).shape[1] <= k:
        return float("inf")
    coef, cov = lime_fit_covariance(explainer, data, labels, label)
    order = np.argsort(-coef, kind="stable")
    inside, outside = order[:k], order[k:]
    diff = coef[inside][:, None] - coef[outside][None, :]
    var = np.diag(cov)[inside][:, None] + np.diag(cov)[outside][None, :] - 2 * cov[np.ix_(inside, outside)]
    return float(np.min(diff / np.sqrt(np.maximum(var, 1e-30))))


def _input_of(film_or_gray, spec: PreprocessSpec) -> tuple:
    """(uint8 (S, S) model input, Geometry, film key) from a Film or a rendered 2-D grey image."""
    if hasattr(film_or_gray, "pixels"):
        from cxrviewer.film.display import render

        gray, key = render(film_or_gray), film_key(film_or_gray)
    else:
        gray = np.asarray(film_or_gray)
        if gray.ndim == 3:
            gray = gray[..., 0]
        if gray.dtype != np.uint8:
            raise TypeError("a raw image must be the rendered uint8 grey film (see cxrviewer.film.display.render)")
        key = film_key(gray)
    square, geo = fit_to_square(gray, spec.input_size, spec.resize)
    return square, geo, key


def explain_lime(
    predictor_or_fn,
    film_or_gray,
    class_index: Optional[int] = None,
    settings: Optional[LimeSettings] = None,
    progress: Optional[Callable[[float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
    on_coarse: Optional[Callable[[Explanation], None]] = None,
    *,
    spec: Optional[PreprocessSpec] = None,
    class_names: Optional[list] = None,
    fast: bool = True,
    segments: Optional[np.ndarray] = None,
) -> Explanation:
    """Explain one class of one film with LIME superpixels. Safe to call from a worker thread.

    ``predictor_or_fn``: a Predictor (its fast batch path is used), a CXRModel, or a function
    (N, 3, S, S) normalised float32 -> (N, C) probabilities (then give ``spec`` if not the default).
    ``class_index`` None explains the top class. ``progress(fraction)`` is called after every batch;
    ``cancel()`` is polled before every batch and raises :class:`Cancelled`. ``on_coarse`` receives an
    early, rougher Explanation (``coarse=True``) after ``settings.coarse_samples`` samples.
    ``segments`` reuses a segmentation of this film's model input (e.g. from an earlier class, or the
    same one for a reference comparison); ``settings``' segmentation fields are then not used.
    """
    settings = for_model(settings or LimeSettings(), predictor_or_fn)
    spec = spec or P.spec_of(predictor_or_fn)
    batch_fn = P.batch_fn_of(predictor_or_fn, fast=fast, batch_size=settings.batch_size)
    t0 = time.perf_counter()

    def check_cancel():
        if cancel is not None and cancel():
            raise Cancelled("LIME explanation cancelled")

    check_cancel()
    square, geo, key = _input_of(film_or_gray, spec)
    image = np.repeat(square[:, :, None], 3, axis=2)  # lime works on RGB; the model sees grey x3 anyway
    if segments is None:
        segments = segment(image, settings)
    elif segments.shape != square.shape:
        raise ValueError(f"segments {segments.shape} do not match the model input {square.shape}")
    check_cancel()
    # bf16 is checked on this film, not only on the first one explained; a film it fails turns it off.
    # Told no class, the check's exact forward also gives the class a reader is shown as the top one.
    x0 = normalise(square[None], spec)
    fast_error, exact0 = P.verify_fast_of(predictor_or_fn, x0, fast, with_probs=class_index is None)

    done = [0]
    first_probs = []  # the unperturbed image's probabilities (lime's first sample keeps every superpixel)

    def classifier_fn(imgs: np.ndarray) -> np.ndarray:
        check_cancel()
        x = normalise(np.asarray(imgs)[..., 0], spec)  # (B, S, S[, C]) uint8 -> (B, 3, S, S)
        probs = batch_fn(x)
        if not first_probs:
            first_probs.append(np.asarray(probs[0], dtype=np.float64))
        done[0] += len(imgs)
        if progress is not None:
            progress(min(1.0, done[0] / settings.num_samples))
        return probs

    names = class_names or P.class_names_of(predictor_or_fn)
    explainer_cls = _lime_explainer_class()
    explainer = explainer_cls(random_state=settings.random_seed)
    explainer.sampling = settings.sampling
    if class_index is None:
        probs0 = exact0 if exact0 is not None else batch_fn(x0)
        class_index = int(np.argmax(probs0[0]))
    model_name = P.model_name_of(predictor_or_fn) if not _is_plain_fn(predictor_or_fn) else ""

    def build(weights, data_labels0, coarse: bool) -> Explanation:
        # The probability printed beside the map, coarse or final, is the exact one the reader is shown,
        # not the first sample's bf16 one (a report read 90.3% over a bar of 90.8%); where the check ran no
        # exact forward (fp32), the first sample is that forward.
        probs0 = exact0[0] if exact0 is not None else data_labels0
        weights = np.asarray(weights, dtype=np.float32)
        return Explanation(
            method="lime",
            class_index=int(class_index),
            class_name=names[class_index] if class_index < len(names) else f"class {class_index}",
            model_map=weights[segments].astype(np.float32),
            geometry=geo,
            elapsed=time.perf_counter() - t0,
            settings=settings.to_dict(),
            segments=segments,
            segment_weights=weights,
            probability=float(probs0[class_index]) if probs0 is not None else None,
            model_name=model_name,
            film_key=key,
            coarse=coarse,
        )

    def fit(data, labels):
        return fit_weights(explainer, data, labels, class_index, settings.fit)

    if on_coarse is not None and 0 < settings.coarse_samples < settings.num_samples:
        def partial(data, labels):
            on_coarse(build(fit(data, labels), labels[0], coarse=True))

        explainer.partial = partial
        explainer.partial_at = settings.coarse_samples

    if settings.settle_from:
        previous = [None]

        def settled(data, labels) -> bool:
            weights = fit(data, labels)
            done = has_settled(previous[0], weights, settings.num_features, settings.settle_margin)
            previous[0] = weights
            return done

        explainer.settled = settled
        explainer.settle_from, explainer.settle_every = settings.settle_from, settings.settle_every

    lime_exp = explainer.explain_instance(
        image,
        classifier_fn,
        labels=(class_index,),
        top_labels=None,
        hide_color=None,  # lime's default: a hidden superpixel takes its own mean grey
        num_features=100000,  # every superpixel's weight; num_features only picks what is outlined
        num_samples=settings.num_samples,
        batch_size=max(1, settings.batch_size),
        segmentation_fn=lambda _img: segments,
        random_seed=settings.random_seed,
    )
    check_cancel()
    weights = (weight_vector(lime_exp.local_exp[class_index], int(segments.max()) + 1) if settings.fit == "lime"
               else fit(*explainer.rows))
    result = build(weights, first_probs[0], coarse=False)
    result.score = float(lime_exp.score)  # R² of lime's own linear fit: how far the map is from the whole story
    result.settings["samples_used"] = int(done[0])
    # None: the stopping rule never asked (off, or the cap comes first); False: it ran out of samples
    result.settings["settled"] = (int(done[0]) < settings.num_samples
                                  if 0 < settings.settle_from < settings.num_samples else None)
    result.settings["fast_error"] = fast_error  # reduced precision's max |Δp| on this film (None: fp32)
    pred0 = getattr(lime_exp, "local_pred", None)
    result.settings["local_pred"] = float(np.ravel(pred0)[0]) if pred0 is not None else None
    return result


def unsettled_note(explanation) -> str:
    """A sentence for the reader when a LIME run drew every sample it may without its top superpixels
    settling, else "". Such runs are the ones that disagree with a long run: on the 5000-sample studies of
    the twenty-first session, 20 of 90 runs of the adult model ended so and matched the gold's top five at
    0.60-0.79 on average, against 0.87-0.94 for the runs that settled (docs/benchmarks.md), so the reader
    should not read much into which of the near-tied superpixels are outlined."""
    s = explanation.settings or {}
    if explanation.method != "lime" or s.get("settled") is not False:
        return ""
    return (f"its top {s.get('num_features', 5)} superpixels had not settled after {s.get('samples_used')} "
            "samples: which of them are outlined may change from run to run")


def _is_plain_fn(obj) -> bool:
    return callable(obj) and not hasattr(obj, "parameters") and not hasattr(obj, "predict_film")
