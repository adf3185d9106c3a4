"""The run's figures as PNG files: ROC curves, confusion matrix, loss and accuracy per epoch, reliability.

Drawn with matplotlib's object API on an Agg canvas, never through pyplot: pyplot keeps global state
and picks a GUI backend, and these functions also run inside the viewer's process (``evaluate``) where
Qt owns the screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(w: float = 6.0, h: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def plot_roc(metrics: dict, path: Path, title: str = "ROC, one vs rest") -> Path:
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for cls, curve in (metrics.get("roc") or {}).items():
        auc = (metrics.get("auc") or {}).get(cls)
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.8, label=f"{cls} (AUC {auc:.3f})" if auc is not None else cls)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    if metrics.get("roc"):
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(metrics: dict, path: Path, title: str = "Confusion matrix") -> Path:
    classes = metrics.get("classes") or []
    cm = np.asarray(metrics.get("confusion_matrix") or np.zeros((len(classes), len(classes))), dtype=np.int64)
    k = len(classes)
    fig = _figure(1.6 + 0.9 * k, 1.2 + 0.8 * k)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, np.maximum(rows, 1))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_history(history: list, path: Path) -> Path:
    fig = _figure(9.0, 3.8)
    ep = [h["epoch"] for h in history]
    ax1 = fig.add_subplot(1, 2, 1)
    ax1.plot(ep, [h["train_loss"] for h in history], marker="o", markersize=3, label="train")
    ax1.plot(ep, [h.get("val_loss") for h in history], marker="o", markersize=3, label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (cross-entropy)")
    ax1.set_title("Loss per epoch")
    ax1.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(ep, [h["train_acc"] for h in history], marker="o", markersize=3, label="train")
    ax2.plot(ep, [h.get("val_acc") for h in history], marker="o", markersize=3, label="validation")
    ax2.plot(ep, [h.get("val_macro_f1") for h in history], marker=".", linestyle=":", label="validation macro F1")
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax2.axvline(best[-1], color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best[-1]})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("Accuracy per epoch")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(metrics: dict, path: Path, title: str = "Reliability") -> Path:
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for key, label in (("reliability", "before temperature"), ("reliability_after_temperature", "after temperature")):
        rel = metrics.get(key)
        if not rel:
            continue
        pts = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n]
        if pts:
            c, a = zip(*pts)
            ece = metrics.get("ece_before_temperature" if key == "reliability" else "ece_after_temperature")
            ax.plot(c, a, marker="o", markersize=4, label=f"{label} (ECE {ece:.3f})" if ece is not None else label)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_all(metrics: dict, history: list, folder: Path, prefix: str = "") -> dict:
    """Every figure for one evaluated split (``metrics``) plus the training curves; returns name -> path."""
    folder = Path(folder)
    out = {}
    if metrics and metrics.get("n"):
        out["roc"] = plot_roc(metrics, folder / f"{prefix}roc.png", f"ROC, one vs rest ({prefix.rstrip('_') or 'all'})")
        out["confusion"] = plot_confusion(metrics, folder / f"{prefix}confusion.png",
                                          f"Confusion matrix ({prefix.rstrip('_') or 'all'})")
        out["reliability"] = plot_reliability(metrics, folder / f"{prefix}reliability.png",
                                              f"Reliability ({prefix.rstrip('_') or 'all'})")
    if history:
        out["history"] = plot_history(history, folder / "history.png")
    return out
