"""The numbers the papers report, computed one way for training, ``evaluate`` and ``compare``.

scikit-learn does the counting (it is the reference a reviewer would check against); this module only
decides the conventions: macro averages over every class (a class the split lacks counts as 0, so a
model cannot look good by never meeting a hard class), one-vs-rest AUC only for classes present with
both outcomes, ECE with 15 equal-width confidence bins on the top class, and temperature scaling fitted
by minimising the validation NLL over log T (so T stays positive).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - confidence| weighted by the bin's share."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bins are (lo, hi]
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per-bin confidence, accuracy and count, for the reliability diagram."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on held-out films (Guo et al. 2017).

    Minimised over log T with L-BFGS in float64; returns 1.0 when there is nothing to fit (no films, or a
    degenerate optimum), so a calibration step can never make a model worse than uncalibrated by NaN.
    """
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / torch.exp(log_t), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(torch.exp(log_t).detach())
    if not math.isfinite(t) or t <= 0:
        return 1.0
    # never return a temperature that is worse than none on the data it was fitted on
    nll = lambda tt: float(torch.nn.functional.cross_entropy(z / tt, y))  # noqa: E731
    return t if nll(t) <= nll(1.0) + 1e-12 else 1.0


#: The fewest validation films a temperature is fitted on. On fewer, one or two films decide T: two films
#: fitted T = 142401, which turns every film's reading into an even split; a few films all read right fit
#: T near 0, which turns every reading into 100%.
MIN_CALIBRATION_FILMS = 20
#: A fitted T outside this range is a runaway optimum, not a calibration (the model is no better than
#: chance on the validation films, T -> infinity, or nearly every film is read right, T -> 0).
TEMPERATURE_RANGE = (0.05, 20.0)


def calibration_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple:
    """(T, why no temperature was fitted, or ""). Where none is, T is 1: the network's own probabilities,
    said so in the report, rather than a temperature that would make every reading 50% or 100%."""
    n = len(labels)
    if n < MIN_CALIBRATION_FILMS:
        return 1.0, (f"the validation split has {n} film{'' if n == 1 else 's'}, fewer than the "
                     f"{MIN_CALIBRATION_FILMS} a temperature needs")
    if np.array_equal(np.asarray(logits).argmax(axis=1), np.asarray(labels)):
        # the NLL then falls all the way to T -> 0: the optimiser stops anywhere, and every reading says 100%
        return 1.0, (f"the model reads all {n} validation films right, so no temperature fits them (the fit "
                     "would shrink T towards 0 and read every film as 100%)")
    t = fit_temperature(logits, labels)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        return 1.0, f"the fit ran away to T = {t:.3g}, outside {lo:g} to {hi:g}" + (
            " (the model is no better than chance on the validation films)" if t > hi else "")
    return t, ""


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0)))) if len(labels) else float("nan")


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list, with_curves: bool = True) -> dict:
    """Accuracy, per-class and macro P/R/F1, one-vs-rest AUC, confusion matrix, ECE and NLL from probabilities."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probabilities have shape {probs.shape}, expected (N, {k})")
    n = len(labels)
    out: dict = {"n": int(n), "classes": list(classes)}
    if n == 0:
        out.update({"accuracy": None, "macro_f1": None, "macro_precision": None, "macro_recall": None, "macro_auc": None})
        return out
    pred = probs.argmax(axis=1)
    lab = list(range(k))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=lab, zero_division=0)
    out["accuracy"] = float(accuracy_score(labels, pred))
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    out["macro_precision"] = float(np.mean(p))
    out["macro_recall"] = float(np.mean(r))
    out["macro_f1"] = float(np.mean(f))
    out["confusion_matrix"] = confusion_matrix(labels, pred, labels=lab).tolist()
    aucs: dict = {}
    curves: dict = {}
    for i, c in enumerate(classes):
        pos = labels == i
        if pos.all() or not pos.any():
            aucs[c] = None  # undefined without both outcomes
            continue
        aucs[c] = float(roc_auc_score(pos.astype(int), probs[:, i]))
        if with_curves:
            fpr, tpr, _ = roc_curve(pos.astype(int), probs[:, i])
            curves[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    out["auc"] = aucs
    valid = [a for a in aucs.values() if a is not None]
    out["macro_auc"] = float(np.mean(valid)) if valid else None
    out["ece"] = expected_calibration_error(probs, labels)
    out["nll"] = nll(probs, labels)
    if with_curves:
        out["roc"] = curves
        out["reliability"] = reliability_bins(probs, labels)
    return out


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, classes: list, temperature: Optional[float] = None) -> dict:
    """Metrics on raw probabilities, plus ECE/NLL and the calibrated metrics when a temperature is given.

    Temperature scaling does not change the arg-max, so accuracy/F1/confusion are the same either way;
    only the calibration numbers (and the reliability diagram) differ, and both are reported.
    """
    raw = classification_metrics(softmax(logits), labels, classes)
    raw["ece_before_temperature"] = raw.get("ece")
    if temperature is not None:
        cal = softmax(logits, temperature)
        raw["temperature"] = float(temperature)
        raw["ece_after_temperature"] = expected_calibration_error(cal, labels) if len(labels) else None
        raw["nll_after_temperature"] = nll(cal, labels) if len(labels) else None
        raw["reliability_after_temperature"] = reliability_bins(cal, labels) if len(labels) else None
    return raw


def metric_value(metrics: dict, name: str) -> float:
    """A selection metric as 'larger is better' (loss is negated) so the loop compares one way."""
    if name == "loss":
        v = metrics.get("nll")
        return -float(v) if v is not None else float("-inf")
    v = metrics.get(name)
    return float(v) if v is not None else float("-inf")


def card_metrics(metrics: Optional[dict]) -> Optional[dict]:
    """What a model card carries about one split: the table row plus what a reader needs to judge the model
    per class (recall, precision, AUC, support), the confusion matrix (rows: true class) and calibration
    before and after temperature scaling. Curves stay in the run's ``metrics.json``."""
    if not metrics:
        return None
    out = summary_row(metrics)
    out["n"] = int(sum(v.get("support", 0) for v in (metrics.get("per_class") or {}).values()))
    out["per_class"] = {c: {k: v.get(k) for k in ("recall", "precision", "f1", "support")}
                        for c, v in (metrics.get("per_class") or {}).items()}
    for c, a in (metrics.get("auc") or {}).items():
        if c in out["per_class"]:
            out["per_class"][c]["auc"] = a
    out["confusion_matrix"] = metrics.get("confusion_matrix")
    out["ece_before_temperature"] = metrics.get("ece_before_temperature")
    out["ece_after_temperature"] = metrics.get("ece_after_temperature")
    return out


def summary_row(metrics: dict) -> dict:
    """The compact columns of a paper's results table."""
    return {
        "accuracy": metrics.get("accuracy"),
        "macro_precision": metrics.get("macro_precision"),
        "macro_recall": metrics.get("macro_recall"),
        "macro_f1": metrics.get("macro_f1"),
        "macro_auc": metrics.get("macro_auc"),
        "ece": metrics.get("ece"),
    }
