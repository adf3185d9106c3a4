"""The out-of-distribution guard: fitted from features, stored as JSON in the card, scored with the same
forward pass as the prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrviewer.ood import INSIDE, OUTSIDE, OodGuard, fit_ood_stats


def _features(rng, n, centres, shift=0.0, noise=0.5):
    y = rng.integers(0, len(centres), n)
    return np.maximum(0, centres[y] + rng.normal(size=(n, centres.shape[1])) * noise + shift), y


def test_scores_separate_shifted_features_and_survive_json():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 256))
    X, y = _features(rng, 600, centres)
    V, vy = _features(rng, 120, centres)
    stats = fit_ood_stats(X, y, V, vy, ["a", "b", "c"])
    stats = json.loads(json.dumps(stats, allow_nan=False))  # what the checkpoint header holds
    g = OodGuard(stats)
    inside = [g.assess(v).verdict for v in _features(rng, 100, centres)[0]]
    assert inside.count(INSIDE) >= 85 and OUTSIDE not in inside
    other = rng.normal(size=(3, 256))  # other classes altogether
    assert all(g.assess(v).verdict == OUTSIDE for v in _features(rng, 40, other)[0])
    assert g.scores(V).mean() == pytest.approx(1.0, rel=0.3)  # normalised: typical is about 1
    assert stats["thresholds"]["unusual"] < stats["thresholds"]["outside"]
    assert len(json.dumps(stats)) < 200_000  # fits in a checkpoint header


def test_a_guard_from_a_small_training_folder_scores_on_the_usual_scale():
    """Twenty training films once fitted 19 components to 20 points: the covariance was singular but for its
    ridge and a film of the training distribution scored in the millions ("score 4386853.1, typical below
    4341537.7" on the reading panel). Two films a dimension keep 1 typical."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 1280))
    X, y = _features(rng, 20, centres)
    V, vy = _features(rng, 4, centres)
    stats = fit_ood_stats(X, y, V, vy)
    assert stats["n_components"] == 9
    g = OodGuard(stats)
    assert 0.3 < float(np.median(g.scores(_features(rng, 50, centres)[0]))) < 5
    assert stats["thresholds"]["outside"] < 10
    assert all(g.assess(v).verdict == OUTSIDE for v in _features(rng, 10, rng.normal(size=(2, 1280)))[0])


def test_bad_descriptions_are_ignored_not_fatal():
    assert OodGuard.from_card({}) is None
    assert OodGuard.from_card({"ood": {"method": "something-else"}}) is None
    rng = np.random.default_rng(1)
    X, y = _features(rng, 50, rng.normal(size=(2, 16)))
    stats = fit_ood_stats(X, y, X[:10], y[:10])
    assert OodGuard.from_card({"ood": dict(stats, version=99)}) is None
    assert OodGuard.from_card({"ood": dict(stats, n_features=17)}) is None
    with pytest.raises(ValueError, match="expected 16 features"):
        OodGuard(stats).assess(np.zeros(20))
    with pytest.raises(ValueError):
        fit_ood_stats(X[:2], y[:2], X[:1])


def test_the_dicom_header_raises_the_verdict_never_lowers_it():
    from cxrviewer.ood import UNUSUAL, OodResult, header_evidence, with_header

    inside = OodResult(0.5, INSIDE, 2.0, 4.0)
    hip = with_header(inside, {"modality": "CR", "body_part": "HIP", "view_position": "AP"})
    assert hip.verdict == OUTSIDE and hip.evidence == ("Body part examined: HIP, not chest.",)
    assert "DICOM header" in hip.sentence and "not meaningful" in hip.sentence
    assert with_header(inside, {"modality": "CT"}).verdict == OUTSIDE
    assert with_header(inside, {"modality": "DX", "view_position": "LL"}).verdict == UNUSUAL
    outside = OodResult(9.0, OUTSIDE, 2.0, 4.0)
    assert with_header(outside, {"view_position": "LAT"}).verdict == OUTSIDE
    for agreeing in ({}, None, {"modality": "DX", "body_part": "CHEST", "view_position": "PA"}):
        assert with_header(inside, agreeing) is inside and header_evidence(agreeing) == []
    assert with_header(None, {"body_part": "HAND"}) is None
    assert hip.to_dict()["header_evidence"] == list(hip.evidence)


def test_patient_age_beyond_the_trained_population():
    from cxrviewer.ood import UNUSUAL, OodResult, age_years, with_header

    assert age_years("004Y") == 4 and age_years("018M") == 1.5 and age_years("") is None and age_years("81") == 81
    assert age_years("0x4Y") is None and age_years("12345") is None
    kids = {"min_age_years": 1, "max_age_years": 5}
    inside = OodResult(0.5, INSIDE, 2.0, 4.0)
    adult = with_header(inside, {"patient_age": "081Y"}, kids)
    assert adult.verdict == OUTSIDE and "81 years" in adult.evidence[0] and "1 to 5" in adult.evidence[0]
    assert with_header(inside, {"patient_age": "008Y"}, kids).verdict == UNUSUAL
    assert with_header(inside, {"patient_age": "003Y"}, kids) is inside
    assert with_header(inside, {"patient_age": "081Y"}, None) is inside  # no population: no claim
    assert with_header(inside, {"patient_age": "006Y"}, {"min_age_years": 18}).verdict == OUTSIDE


def test_a_film_without_an_age_is_reminded_of_the_models_population_without_changing_the_verdict():
    """The image guard cannot tell a child's film from an adult's; a film without an age in its header (every
    raster file) read by a model that states its population says whom that model was trained on."""
    from cxrviewer.ood import UNUSUAL, OodResult, header_evidence, header_findings, with_header

    adults = {"min_age_years": 18}
    inside = OodResult(0.5, INSIDE, 2.0, 4.0)
    noted = with_header(inside, {"modality": "SC", "patient_age": ""}, adults)
    assert noted.verdict == INSIDE and noted.score == inside.score
    assert noted.evidence == ("No patient age on this film: the model was trained on ages 18 and over only.",)
    assert header_findings(None, {"min_age_years": 1, "max_age_years": 5}) == [
        (INSIDE, "No patient age on this film: the model was trained on ages 1 to 5 only.")]
    assert with_header(OodResult(3.0, UNUSUAL, 2.0, 4.0), {}, adults).verdict == UNUSUAL  # never lowered
    assert header_evidence({}, None) == [] and header_evidence({}, {}) == []  # no population: no claim
    assert header_evidence({"patient_age": "040Y"}, adults) == []  # an age in range: nothing to say
    assert header_evidence({}, {"max_age_years": 16}) == [
        "No patient age on this film: the model was trained on ages up to 16 only."]
