"""Turning a finished training run into a model a reader can be handed: the run's best weights with a
complete model card (what the data was, the exact command, held-out metrics per class, the confusion
matrix, calibration, time and hardware, limits), written as one checkpoint.

The card's words about the data and the limits come from a JSON file the engineer writes (they know the
source, licence and population; the trainer cannot), the numbers from the run itself, so a published card
cannot quote metrics the run did not produce. This is how ``resources/models/`` is made.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.metrics import card_metrics

CARD_TEXT_FIELDS = ("description", "intended_use", "data", "limits", "licence", "training_notes", "population")


class PublishError(Exception):
    """A run that cannot be published; ``str()`` says what is missing."""


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as e:
        raise PublishError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path} must hold a JSON object")
    return data


def publish(run_dir, card_file, out, *, default: bool = False) -> dict:
    """Write ``out`` (a ``.safetensors``) from ``run_dir``'s best checkpoint and ``metrics.json`` plus the
    text fields of ``card_file`` (``display_name``, ``version``, any of ``CARD_TEXT_FIELDS``, and ``lime``,
    the superpixels its explanations use, see :func:`cxrviewer.checkpoint.validate_card`).

    ``run_dir`` may instead be a published model: its weights, training record and metrics are kept and
    only the card file's part is rewritten (a corrected limit, a LIME setting measured after publishing),
    so a card can change without the run folder or retraining. Returns the card written."""
    from cxrviewer.checkpoint import card_defaults, card_spec, load_checkpoint, save_checkpoint

    run_dir = Path(run_dir)
    text = _read_json(card_file, "the model card's text (display_name, version, description, data, limits, ...)")
    unknown = sorted(set(text) - set(CARD_TEXT_FIELDS) - {"display_name", "version", "name", "lime"})
    if unknown:
        raise PublishError(f"{card_file}: unknown field(s) {', '.join(unknown)}; "
                           f"allowed: name, display_name, version, lime, {', '.join(CARD_TEXT_FIELDS)}")
    if run_dir.suffix.lower() == ".safetensors":
        model, old = load_checkpoint(run_dir)
        training, default = old.get("training") or {}, default or bool(old.get("default"))
    else:
        metrics = _read_json(run_dir / "metrics.json", "the run has not finished (no metrics.json)")
        if not metrics.get("test"):
            raise PublishError(f"{run_dir} has no test split: a published model needs held-out metrics")
        model, old = load_checkpoint(run_dir / "best.safetensors")
        training = dict(old.get("training") or {})
        history = metrics.get("history") or []
        training["train_seconds"] = round(sum(float(h.get("seconds") or 0) for h in history), 1)
        training["metrics"] = {"test": card_metrics(metrics["test"]), "val": card_metrics(metrics.get("val")),
                               "temperature": metrics.get("temperature"), "best_epoch": metrics.get("best_epoch"),
                               "select_metric": metrics.get("select_metric")}
    card = card_defaults(model, old["classes"], card_spec(old), name=text.get("name", old["name"]),
                         display_name=text.get("display_name"), version=text.get("version", "1.0"),
                         temperature=old.get("temperature", 1.0), training=training,
                         card={k: text[k] for k in CARD_TEXT_FIELDS if text.get(k)}, ood=old.get("ood"),
                         lime=text.get("lime", old.get("lime")), default=default)
    save_checkpoint(out, model, card)
    return card


def main_publish(args) -> int:
    card = publish(args.run, args.card, args.out, default=args.default)
    t = card["training"]["metrics"]["test"]
    print(f"{args.out}: {card['display_name']} — test accuracy {t['accuracy']:.3f}, macro F1 {t['macro_f1']:.3f} "
          f"on {t['n']} films")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("publish", help="write a finished run's best model with a complete model card")
    p.add_argument("run", type=Path, help="the run folder (holds best.safetensors and metrics.json), or a "
                                          "published .safetensors whose card is to be rewritten")
    p.add_argument("--card", type=Path, required=True,
                   help="JSON with display_name, version, the card's text (" + ", ".join(CARD_TEXT_FIELDS)
                        + ") and optionally lime, the superpixels its explanations use")
    p.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    p.add_argument("--default", action="store_true", help="mark it as the model the viewer starts with")
