"""Metrics on hand-made cases, where the right answer is known without the code under test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.metrics import (
    calibration_temperature, classification_metrics, evaluate_logits, expected_calibration_error, fit_temperature,
    metric_value, softmax,
)
from trainer.progress import Progress, format_eta, parse_line

CLASSES = ["a", "b", "c"]


def one_hot_probs(pred, k=3, conf=0.9):
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_counts_precision_recall_f1_confusion():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 2, 1, 1, 2, 0])
    m = classification_metrics(one_hot_probs(pred), y, CLASSES)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[2, 1, 1], [0, 2, 0], [1, 0, 1]]
    # class a: TP 2, FP 1 (a true c), FN 2 -> P 2/3, R 1/2, F1 4/7
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "support": 4})
    # b: TP 2, FP 1 -> P 2/3, R 1, F1 0.8; c: TP 1, FP 1, FN 1 -> 0.5, 0.5, 0.5
    assert m["macro_f1"] == pytest.approx((4 / 7 + 0.8 + 0.5) / 3)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_class_never_predicted_counts_as_zero_and_absent_class_auc_is_undefined():
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(one_hot_probs(np.array([0, 0, 0, 0])), y, CLASSES)
    assert m["per_class"]["b"]["f1"] == 0.0 and m["per_class"]["c"]["support"] == 0
    assert m["auc"]["c"] is None  # no film of c: AUC undefined, excluded from the macro mean
    assert m["macro_auc"] is not None and not math.isnan(m["macro_auc"])


def test_auc_one_vs_rest():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.6, .3, .1], [.3, .6, .1], [.5, .4, .1], [.1, .1, .8], [.2, .2, .6]])
    m = classification_metrics(probs, y, CLASSES)
    assert m["auc"]["c"] == 1.0
    # class a scores: positives .8 .6, negatives .3 .5 .1 .2 -> all 8 pairs ranked right
    assert m["auc"]["a"] == 1.0
    # class b: positives .6 .4; negatives .1 .3 .1 .2 -> 8/8
    assert m["auc"]["b"] == 1.0
    probs[3] = [.45, .05, .5]  # b's positive now below a negative's b-score? .05 < .1 .3 .1 .2 -> 4 of 8 pairs lost
    assert classification_metrics(probs, y, CLASSES)["auc"]["b"] == pytest.approx(0.5)


def test_ece_by_hand():
    # 4 films at confidence 0.9 of which 2 right -> |0.5 - 0.9| weighted 0.5;
    # 4 films at confidence 0.6, all right -> |1 - 0.6| weighted 0.5
    probs = np.array([[.9, .1]] * 4 + [[.6, .4]] * 4)
    y = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 3), np.array([0, 0, 0])) == pytest.approx(0.0)


def test_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, y)  # the model is 3x overconfident
    assert t == pytest.approx(3.0, rel=0.1)
    m = evaluate_logits(true_logits * 3.0, y, CLASSES, t)
    assert m["ece_after_temperature"] < m["ece_before_temperature"] / 2
    assert m["nll_after_temperature"] < m["nll"]
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_no_temperature_from_too_few_films_or_a_runaway_fit():
    """Two validation films fitted T = 142401 (every reading an even split) and a few films all read right
    fit T near 0 (every reading 100%): neither is calibration, so T stays 1 and the run says why."""
    assert calibration_temperature(np.array([[3.0, 0.0], [3.0, 0.0]]), np.array([0, 1])) == (
        1.0, "the validation split has 2 films, fewer than the 20 a temperature needs")
    same = np.tile([3.0, 0.0], (24, 1))  # logits that say nothing about the label
    t, why = calibration_temperature(same, np.arange(24) % 2)
    assert t == 1.0 and why.startswith("the fit ran away to T = ") and "no better than chance" in why
    assert fit_temperature(same, np.arange(24) % 2) > 20  # what would have been stored
    t, why = calibration_temperature(same, np.zeros(24, int))
    assert t == 1.0 and "reads all 24 validation films right" in why
    # a real validation split is fitted as before
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (400, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    t, why = calibration_temperature(true_logits * 3.0, y)
    assert why == "" and t == pytest.approx(fit_temperature(true_logits * 3.0, y)) and 2.0 < t < 4.5


def test_selection_metric_direction():
    assert metric_value({"nll": 0.2}, "loss") > metric_value({"nll": 0.5}, "loss")
    assert metric_value({"macro_f1": None}, "macro_f1") == float("-inf")


def test_progress_events_are_json_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    p = Progress.from_target(str(path), quiet=True)
    p.emit("start", epochs=3, value=float("nan"), arr=np.float32(1.5))
    p.step(1, 3, 1, 10, 0.5, 0.25, eta_s=12.0, films_per_s=100.0)
    p.step(1, 3, 2, 10, 0.5, 0.25, eta_s=11.0, films_per_s=100.0)  # throttled
    p.step(1, 3, 10, 10, 0.4, 0.5, eta_s=1.0, films_per_s=100.0)  # the last step of an epoch is always sent
    p.close()
    events = [parse_line(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "step"]
    assert events[0]["value"] is None and events[0]["arr"] == 1.5
    assert events[2]["step"] == 10 and set(events[1]) >= {"epoch", "epochs", "step", "steps", "loss", "acc", "eta_s"}
    assert parse_line("not json") is None and parse_line(json.dumps([1])) is None
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "--:--"
