"""Out-of-distribution guard: is this film like the films the model was trained on?

A classifier answers every input with confident-looking probabilities, a hand X-ray included. The guard
scores how far a film's pooled features (the same forward pass that gave the probabilities; no second model)
lie from the training films', and the viewer greys the answer out when the film is outside.

The description stored in the checkpoint (the card's ``ood`` field, JSON) is a Gaussian model of the
training features, kept small enough for the checkpoint header: features are centred, projected on their
top ``k`` principal components, and modelled there by class means and one shared (within-class) covariance
(Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples"); what the k
components leave out is modelled as isotropic noise (probabilistic PCA), so a film unlike anything in
training scores high even when its projection happens to land near a class. The score is

    score = min over classes of  mahalanobis²(projection − class mean) + residual² / residual variance

divided by the feature count, so 1 is typical. Thresholds are percentiles of the validation films' scores
(films the model did not train on but that come from the training distribution): above ``unusual`` (95th
percentile) a film is unusual, above ``outside`` (99th percentile, times a margin) it is outside.

Arrays are stored as base64 little-endian float32 (the projection as float16: it is the large one).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

OOD_VERSION = 1
N_COMPONENTS = 32
UNUSUAL_PERCENTILE = 95.0
OUTSIDE_PERCENTILE = 99.0
OUTSIDE_MARGIN = 1.5  # the 99th percentile of ~500 validation films is itself noisy; outside means clearly beyond it

INSIDE, UNUSUAL, OUTSIDE = "inside", "unusual", "outside"
VERDICT_TEXT = {
    INSIDE: "within the training distribution",
    UNUSUAL: "unusual for this model's training films",
    OUTSIDE: "outside the training distribution",
}


def _enc(a: np.ndarray, dtype=np.float32) -> dict:
    a = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"shape": list(a.shape), "dtype": np.dtype(dtype).name, "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _dec(d: dict) -> np.ndarray:
    dt = np.dtype(d["dtype"]).newbyteorder("<")
    a = np.frombuffer(base64.b64decode(d["b64"]), dtype=dt).reshape(d["shape"])
    return a.astype(np.float64)


def fit_ood_stats(train_features, train_labels, val_features, val_labels=None, classes=None,
                  n_components: int = N_COMPONENTS) -> dict:
    """The JSON description of the training features (the trainer calls this once a run has finished)."""
    X = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels)
    V = np.asarray(val_features, dtype=np.float64)
    if X.ndim != 2 or len(X) < 4 or len(V) < 2:
        raise ValueError("need at least 4 training and 2 validation feature vectors")
    d = X.shape[1]
    mean = X.mean(0)
    Xc = X - mean
    # at least two films per dimension for the within-class covariance: with k = n - 1 (twenty films fitted
    # k = 19) it is singular but for the ridge below, and a new film scored in the millions where 1 is typical
    k = int(max(1, min(n_components, d, (len(X) - len(np.unique(y))) // 2)))
    # principal axes from the SVD of the centred training features
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    P = vt[:k]  # (k, d)
    P16 = P.astype(np.float16).astype(np.float64)  # score with what is stored
    Z = Xc @ P16.T
    labels = np.unique(y)
    mus = np.stack([Z[y == c].mean(0) for c in labels])
    within = Z - mus[np.searchsorted(labels, y)]
    cov = within.T @ within / max(1, len(Z) - len(labels))
    cov += np.eye(k) * (1e-6 * np.trace(cov) / k + 1e-12)
    prec = np.linalg.inv(cov)
    resid = Xc - Z @ P16
    rvar = float(np.mean(np.sum(resid ** 2, axis=1)) / max(1, d - k)) + 1e-12
    stats = {
        "method": "pca-mahalanobis",
        "version": OOD_VERSION,
        "n_features": d,
        "n_components": k,
        "classes": [str(c) for c in (classes if classes is not None else labels)],
        "mean": _enc(mean),
        "components": _enc(P, np.float16),
        "class_means": _enc(mus),
        "precision": _enc(prec),
        "residual_variance": rvar,
        "n_train": int(len(X)),
        "n_val": int(len(V)),
    }
    guard = OodGuard(stats)
    val_scores = guard.scores(V)
    stats["thresholds"] = {
        "unusual": float(np.percentile(val_scores, UNUSUAL_PERCENTILE)),
        "outside": float(np.percentile(val_scores, OUTSIDE_PERCENTILE) * OUTSIDE_MARGIN),
        "unusual_percentile": UNUSUAL_PERCENTILE,
        "outside_percentile": OUTSIDE_PERCENTILE,
        "outside_margin": OUTSIDE_MARGIN,
    }
    stats["val_score_median"] = float(np.median(val_scores))
    return stats


@dataclass(frozen=True)
class OodResult:
    score: float
    verdict: str  # INSIDE / UNUSUAL / OUTSIDE
    unusual_at: float
    outside_at: float
    evidence: tuple = ()  # sentences from the DICOM header (see with_header)

    @property
    def sentence(self) -> str:
        if self.verdict == OUTSIDE:
            why = f"score {self.score:.1f}, outside above {self.outside_at:.1f}"
            if self.score <= self.outside_at and self.evidence:
                why = f"its DICOM header says so; image score {self.score:.1f}"
            return f"This film is outside what the model was trained on ({why}): its probabilities are not meaningful."
        if self.verdict == UNUSUAL:
            return (f"This film is unusual for the model's training films (score {self.score:.1f}, "
                    f"typical below {self.unusual_at:.1f}): read the probabilities with extra care.")
        return f"Within the training distribution (score {self.score:.1f}, typical below {self.unusual_at:.1f})."

    def to_dict(self) -> dict:
        return {"score": round(self.score, 4), "verdict": self.verdict,
                "thresholds": {"unusual": round(self.unusual_at, 4), "outside": round(self.outside_at, 4)},
                "header_evidence": list(self.evidence)}


class OodGuard:
    """Scores feature vectors against a checkpoint's stored description."""

    def __init__(self, stats: dict):
        if not isinstance(stats, dict) or stats.get("method") != "pca-mahalanobis":
            raise ValueError("unknown out-of-distribution description")
        if int(stats.get("version", 0)) > OOD_VERSION:
            raise ValueError(f"out-of-distribution description version {stats.get('version')} is newer than this viewer reads")
        self.mean = _dec(stats["mean"])
        self.P = _dec(stats["components"])
        self.mus = _dec(stats["class_means"])
        self.prec = _dec(stats["precision"])
        self.rvar = float(stats["residual_variance"])
        self.d = int(stats["n_features"])
        if self.P.shape != (int(stats["n_components"]), self.d) or self.mean.shape != (self.d,):
            raise ValueError("out-of-distribution description has inconsistent shapes")
        th = stats.get("thresholds") or {}
        self.unusual_at = float(th.get("unusual", np.inf))
        self.outside_at = float(th.get("outside", np.inf))

    @classmethod
    def from_card(cls, card: dict) -> Optional["OodGuard"]:
        """The guard of a checkpoint, or None when it carries none (older or imported models) or an
        unreadable one (the guard is an extra: it must not stop the model from being used)."""
        stats = (card or {}).get("ood")
        if not stats:
            return None
        try:
            return cls(stats)
        except (ValueError, KeyError, TypeError):
            return None

    def scores(self, features) -> np.ndarray:
        F = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if F.shape[1] != self.d:
            raise ValueError(f"expected {self.d} features, got {F.shape[1]}")
        Fc = F - self.mean
        Z = Fc @ self.P.T
        resid = np.sum((Fc - Z @ self.P) ** 2, axis=1) / self.rvar
        diff = Z[:, None, :] - self.mus[None, :, :]  # (n, classes, k)
        maha = np.einsum("nck,kl,ncl->nc", diff, self.prec, diff).min(axis=1)
        return (maha + resid) / self.d

    def assess(self, features) -> OodResult:
        s = float(self.scores(np.asarray(features).reshape(1, -1))[0])
        verdict = OUTSIDE if s > self.outside_at else UNUSUAL if s > self.unusual_at else INSIDE
        return OodResult(s, verdict, self.unusual_at, self.outside_at)


CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAX_AP", "PORT CHEST")
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT", "SC", "")


AGE_MARGIN_YEARS = 5  # beyond the trained age range by more than this: outside; by less: unusual


def age_years(text) -> Optional[float]:
    """DICOM Age String ("004Y", "018M", "003W", "010D") in years, or None. Bare digits ("81", written by
    some exporters, the NIH set among them) are read as years."""
    t = str(text or "").strip().upper()
    if t.isdigit() and len(t) <= 3:
        return float(int(t))
    if len(t) < 2 or not t[:-1].isdigit() or t[-1] not in "YMWD":
        return None
    return int(t[:-1]) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[t[-1]]


def trained_ages(population: Optional[dict]) -> Optional[str]:
    """A model card's population as the reader is told it ("1 to 5", "18 and over", "up to 16"; years),
    or None when the card states no age: one wording for the card and the panel's caution."""
    lo = (population or {}).get("min_age_years")
    hi = (population or {}).get("max_age_years")
    if lo is None and hi is None:
        return None
    if hi is None:
        return f"{float(lo):g} and over"
    return f"up to {float(hi):g}" if lo is None else f"{float(lo):g} to {float(hi):g}"


def header_findings(info: Optional[dict], population: Optional[dict] = None) -> list:
    """Cheap evidence from a DICOM header that a film is not what a frontal chest-film model expects, as
    ``(verdict, sentence)``: a body part other than the chest, or a modality that is not a projection
    radiograph, is OUTSIDE whatever the image looks like; a lateral view is UNUSUAL. With the model's
    ``population`` (its card's ``{"min_age_years", "max_age_years"}``), a patient age beyond the trained
    range is UNUSUAL, or OUTSIDE when more than ``AGE_MARGIN_YEARS`` beyond it (an adult on a paediatric
    model). A film that gives no age (raster files, many secondary captures) to a model that states its
    population gets an INSIDE finding, a reminder of the trained range that leaves the verdict alone:
    absence is not evidence, but the image guard cannot tell a child's film from an adult's (the bundled
    adult model read the paediatric sample film as inside, COVID-19 at 94%), and the reader can. Empty
    when the header agrees or says nothing else."""
    info = info or {}
    out = []
    age = age_years(info.get("patient_age"))
    lo = (population or {}).get("min_age_years")
    hi = (population or {}).get("max_age_years")
    ages = trained_ages(population)
    if ages:
        lo_, hi_ = float(lo if lo is not None else 0), float(hi if hi is not None else 200)
        trained = f"ages {ages}"
        if age is None:
            out.append((INSIDE, f"No patient age on this film: the model was trained on {trained} only."))
        elif age < lo_ or age > hi_:
            off = max(lo_ - age, age - hi_)
            shown = f"{age:.0f} years" if age >= 2 else f"{age * 12:.0f} months"
            out.append((OUTSIDE if off > AGE_MARGIN_YEARS else UNUSUAL,
                        f"Patient age {shown}: the model was trained on {trained}."))
    modality = str(info.get("modality") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        out.append((OUTSIDE, f"Modality {modality}: not a projection radiograph."))
    body = str(info.get("body_part") or "").strip().upper()
    if body and not any(w in body for w in CHEST_WORDS):
        out.append((OUTSIDE, f"Body part examined: {body}, not chest."))
    view = str(info.get("view_position") or "").strip().upper()
    if view in ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE"):
        out.append((UNUSUAL, f"View position {view}: the models were trained on frontal (PA/AP) films."))
    return out


def header_evidence(info: Optional[dict], population: Optional[dict] = None) -> list:
    """The sentences of :func:`header_findings`."""
    return [sentence for _, sentence in header_findings(info, population)]


_RANK = {INSIDE: 0, UNUSUAL: 1, OUTSIDE: 2}


def with_header(result: Optional[OodResult], info: Optional[dict],
                population: Optional[dict] = None) -> Optional[OodResult]:
    """``result`` with the header's evidence attached and its verdict raised to what the header says (a hip
    film is outside a chest model even when its pixels score only unusual); never lowered."""
    findings = header_findings(info, population)
    if result is None or not findings:
        return result
    verdict = max([result.verdict] + [v for v, _ in findings], key=_RANK.__getitem__)
    return replace(result, verdict=verdict, evidence=tuple(s for _, s in findings))
