"""The run folder: everything a reviewer needs to trust (or reproduce) a model, written as it happens.

Inputs are written before the first epoch (``command.txt``, ``recipe.json``, ``split.json``, ``data.json``
with the data fingerprint and the skipped films), so even an interrupted run documents what it was
doing. Results come at the end: ``metrics.json`` (everything, machine-readable), ``plots/*.png`` and
``report.md``, which reads top to bottom: what was trained on what, how, the curves, the test results,
calibration, then how to reproduce it. Patient identifiers never appear (the split holds hashes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from trainer.plots import plot_all
from trainer.recipes import describe
from cxrviewer.atomic import atomic_write_text


def _dump(obj) -> str:
    return json.dumps(_clean(obj), indent=1, allow_nan=False)


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 0) == 0:
        return _clean(o.item())
    if hasattr(o, "tolist"):
        return _clean(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def data_summary(fs, split_json: Optional[dict] = None) -> dict:
    src = fs.source
    return {
        "origin": str(src.origin),
        "layout": src.kind,
        "classes": list(fs.classes),
        "films_found": len(src.samples),
        "films_used": len(fs.rels),
        "data_fingerprint": fs.fingerprint(),
        "fingerprint_method": "sha256 over sorted (relative path, label, sha256 of file bytes)",
        "skipped": [{"path": p, "reason": why} for p, why in fs.skipped],
        "problems": list(src.problems),
        "split_counts": (split_json or {}).get("counts"),
    }


def write_run_inputs(run_dir: Path, opts, fs, split_json: dict, spec) -> None:
    run_dir = Path(run_dir)
    cmd = (opts.command or "(called from Python)") + "\n"
    previous = run_dir / "command.txt"
    if getattr(opts, "resume", False) and previous.is_file():  # keep the original command; add the resume
        cmd = previous.read_text() + "# resumed with:\n" + cmd
    atomic_write_text(previous, cmd)
    recipe = opts.recipe.to_dict()
    recipe["_run"] = {"arch": opts.arch, "arch_args": opts.arch_args, "seed": opts.seed,
                      "pretrained": str(opts.pretrained), "preprocess": spec.to_dict()}
    atomic_write_text(run_dir / "recipe.json", _dump(recipe))
    atomic_write_text(run_dir / "split.json", _dump(split_json))
    atomic_write_text(run_dir / "data.json", _dump(data_summary(fs, split_json)))


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _results_md(m: dict, title: str) -> list:
    classes = m["classes"]
    lines = [f"### {title} ({m['n']} films)", ""]
    if not m.get("n"):
        return lines + ["No films in this split.", ""]
    lines += [
        f"Accuracy **{_fmt(m['accuracy'])}**, macro precision {_fmt(m['macro_precision'])}, macro recall "
        f"{_fmt(m['macro_recall'])}, macro F1 **{_fmt(m['macro_f1'])}**, macro one-vs-rest AUC {_fmt(m.get('macro_auc'))}.",
        "",
        "| class | precision | recall | F1 | AUC (one vs rest) | films |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in classes:
        pc = m["per_class"][c]
        lines.append(f"| {c} | {_fmt(pc['precision'])} | {_fmt(pc['recall'])} | {_fmt(pc['f1'])} | "
                     f"{_fmt(m['auc'].get(c))} | {pc['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for c, row in zip(classes, m["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"Calibration: ECE {_fmt(m.get('ece_before_temperature'))} before temperature scaling, "
                  f"{_fmt(m.get('ece_after_temperature'))} after (T = {_fmt(m.get('temperature'), 3)}); "
                  f"NLL {_fmt(m.get('nll'))} -> {_fmt(m.get('nll_after_temperature'))}.", ""]
    return lines


def write_run_report(run_dir: Path, opts, fs, split_json: dict, metrics: dict, card: dict, seconds: float) -> Path:
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.json", _dump(metrics))
    plots_dir = run_dir / "plots"
    history = metrics.get("history") or []
    figs = {}
    figs.update({f"val_{k}": v for k, v in plot_all(metrics["val"], history, plots_dir, "val_").items()})
    if metrics.get("test"):
        figs.update({f"test_{k}": v for k, v in plot_all(metrics["test"], [], plots_dir, "test_").items()})
    r = opts.recipe
    ds = data_summary(fs, split_json)
    counts = split_json["counts"]
    lines = [
        f"# Training run `{run_dir.name}`: {opts.arch} with recipe {r.name}",
        "",
        f"Model file: `best.safetensors` (best epoch {metrics['best_epoch']} of {len(history)} by validation "
        f"{r.select_metric}); `last.safetensors` is the last epoch. Trained in {seconds / 60:.1f} min on "
        f"{card['training'].get('hardware', '?')}.",
        "",
        "> Decision support only. These numbers describe this data and this split; they are not evidence of "
        "clinical performance on other hospitals' films.",
        "",
        "## Data",
        "",
        f"- Source: `{ds['origin']}` ({ds['layout']}), {ds['films_found']} films found, {ds['films_used']} used.",
        f"- Data fingerprint: `{ds['data_fingerprint']}` ({ds['fingerprint_method']}).",
        f"- Split ({split_json['method']}, seed {split_json['seed']}, ratios "
        f"{':'.join(f'{x:g}' for x in split_json['ratios'])}); films per class:",
        "",
        "| split | " + " | ".join(fs.classes) + " | total |",
        "|---|" + "---:|" * (len(fs.classes) + 1),
    ]
    for s in ("train", "val", "test"):
        row = counts[s]
        lines.append(f"| {s} | " + " | ".join(str(row[c]) for c in fs.classes) + f" | {sum(row.values())} |")
    lines.append("")
    if ds["skipped"]:
        lines += [f"**{len(ds['skipped'])} film(s) could not be read and were skipped:**", ""]
        lines += [f"- `{s['path']}`: {s['reason']}" for s in ds["skipped"]]
        lines.append("")
    if ds["problems"]:
        lines += ["Other things found in the data:", ""] + [f"- {p}" for p in ds["problems"]] + [""]
    lines += ["## Recipe", "", "```", describe(r), "```", "",
              f"Class imbalance handling: **{r.balance}**. Preprocessing: {card['preprocess']['input_size']} px, "
              f"{card['preprocess']['resize']}, mean {[round(v, 4) for v in card['preprocess']['mean']]}, "
              f"std {[round(v, 4) for v in card['preprocess']['std']]} (the viewer's own pipeline, version "
              f"{card['preprocess']['version']}).", ""]
    if metrics.get("stopped_early"):
        lines += [f"Training stopped early: validation {r.early_stop_metric} did not improve for "
                  f"{r.early_stop_patience} epochs.", ""]
    lines += ["## Training", "", "![loss and accuracy per epoch](plots/history.png)", "",
              "| epoch | train loss | train acc | val loss | val acc | val macro F1 | lr | |",
              "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for h in history:
        lines.append(f"| {h['epoch']} | {_fmt(h['train_loss'], 4)} | {_fmt(h['train_acc'])} | {_fmt(h.get('val_loss'), 4)} | "
                     f"{_fmt(h.get('val_acc'))} | {_fmt(h.get('val_macro_f1'))} | {h['lr']:.3g} | "
                     f"{'best' if h['epoch'] == metrics['best_epoch'] else ''} |")
    lines += ["", "## Results", ""]
    if metrics.get("test"):
        lines += ["The test split was evaluated once, with the best checkpoint, after training.", ""]
        lines += _results_md(metrics["test"], "Test split")
        lines += ["![ROC curves, test](plots/test_roc.png) ![confusion matrix, test](plots/test_confusion.png)", "",
                  "![reliability, test](plots/test_reliability.png)", ""]
    else:
        lines += ["There is no test split: the numbers below are on the validation split, which also chose the "
                  "checkpoint and the temperature, so they are optimistic.", ""]
    not_fitted = metrics.get("temperature_not_fitted")
    lines += _results_md(metrics["val"], "Validation split (chose the checkpoint"
                         + ("" if not_fitted else " and fitted the temperature") + ")")
    if metrics["val"].get("n"):
        lines += ["![ROC curves, validation](plots/val_roc.png) ![confusion matrix, validation](plots/val_confusion.png)",
                  "", "![reliability, validation](plots/val_reliability.png)", ""]
    lines += ["## Calibration", ""]
    lines += ([f"**No temperature was fitted**: {not_fitted}. The checkpoint stores T = 1, so the viewer shows the "
               "network's own probabilities, which are often overconfident: read them as a ranking of the classes, "
               "not as calibrated chances. Validate on more films to calibrate.", ""] if not_fitted else
              [f"Temperature scaling fitted on the validation split: T = {metrics['temperature']:.4f}, stored in the "
               "checkpoint; the viewer divides the logits by T before the softmax. It changes confidences, not "
               "which class is predicted.", ""])
    lines += ["## Out-of-distribution statistics", "",
              "Stored in the checkpoint." if card.get("ood") else
              f"Not stored ({metrics.get('ood_not_stored') or 'no OOD module available at training time'}): the "
              "viewer cannot tell when a film is unlike this model's training films.", ""]
    cmd_file = run_dir / "command.txt"
    command = cmd_file.read_text().strip() if cmd_file.is_file() else (opts.command or "(called from Python)")
    lines += ["## Reproduce", "", "```", command, "```", "",
              "`split.json` (with `--split-file`) reproduces the exact split; `recipe.json` the recipe; the data "
              "fingerprint in `data.json` tells whether the data folder is still the same.", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def write_eval_report(out: Path, checkpoint, card: dict, fs, metrics: dict, command: str) -> Path:
    out = Path(out)
    atomic_write_text(out / "metrics.json", _dump({"checkpoint": str(checkpoint), "test": metrics,
                                                   "skipped": [{"path": p, "reason": w} for p, w in fs.skipped]}))
    atomic_write_text(out / "data.json", _dump(data_summary(fs)))
    atomic_write_text(out / "command.txt", (command or "(called from Python)") + "\n")
    plot_all(metrics, [], out / "plots", "test_")
    tr = card.get("training") or {}
    lines = [f"# Evaluation of `{Path(checkpoint).name}` ({card['arch']})", "",
             f"Model: {card.get('display_name', card['name'])}, classes {', '.join(card['classes'])}; trained on data "
             f"`{str(tr.get('data_fingerprint', 'unknown'))[:16]}`. Evaluated on `{fs.source.origin}`, data fingerprint "
             f"`{fs.fingerprint()}`.", ""]
    if tr.get("data_fingerprint") == fs.fingerprint():
        lines += ["**Warning: this is the data the model was trained on**; these numbers are not a test.", ""]
    if fs.skipped:
        lines += [f"**{len(fs.skipped)} film(s) could not be read and were skipped:**", ""]
        lines += [f"- `{p}`: {w}" for p, w in fs.skipped] + [""]
    if fs.source.problems:
        lines += ["Other things found in the data:", ""] + [f"- {p}" for p in fs.source.problems] + [""]
    lines += _results_md(metrics, "All films")
    lines += ["![ROC curves](plots/test_roc.png) ![confusion matrix](plots/test_confusion.png)", "",
              "![reliability](plots/test_reliability.png)", "", "```", command or "", "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def write_compare(out: Path, rows: list, split_json: dict, recipe_name: str, command: str) -> Path:
    """One table across architectures, as the papers print theirs."""
    out = Path(out)
    atomic_write_text(out / "compare.json", _dump({"recipe": recipe_name, "rows": rows, "split_counts": split_json["counts"],
                                                    "data_fingerprint": split_json["data_fingerprint"]}))
    which = "test" if any(r.get("split") == "test" for r in rows) else "validation"
    lines = [f"# Architecture comparison (recipe {recipe_name}, one shared split)", "",
             f"Every model trained on the same split (`split.json`, data `{split_json['data_fingerprint'][:16]}`), "
             f"scored on the {which} split with its best-on-validation checkpoint.", "",
             "| architecture | parameters | epochs | accuracy | macro precision | macro recall | macro F1 | macro AUC | ECE (T) | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['arch']} | | | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['arch']} | {r['params'] / 1e6:.1f} M | {r['epochs']} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['macro_precision'])} | {_fmt(r['macro_recall'])} | {_fmt(r['macro_f1'])} | "
                     f"{_fmt(r['macro_auc'])} | {_fmt(r.get('ece_after'))} | {r['minutes']:.1f} |")
    lines += ["", "```", command or "", "```", ""]
    path = out / "compare.md"
    atomic_write_text(path, "\n".join(lines))
    return path
