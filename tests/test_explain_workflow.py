"""The explanation workflow around the maps: cancel, coarse-then-refined LIME, the cache, attention, the
exports (no identifiers unless asked) and the ``cxrviewer explain`` command."""

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from explain_synth import FakePredictor, box_model_for, textured_film
from cxrviewer.explain import (Cancelled, ExplanationCache, LimeSettings, NoAttention, OverlaySettings, cache_key,
                               explain, explain_attention, explain_lime, film_key, render_overlay, save_report,
                               side_by_side)
from cxrviewer.explain.report import save_overlay_png
from cxrviewer.film.types import Film
from cxrviewer.preprocess import PreprocessSpec
from pdf_text import pdf_text  # noqa: E402

REGION = (60, 140, 320, 440)
PHI_NAME = "Zyxwvut^Quirinus"
PHI_ID = "MRN-99173"


@pytest.fixture(scope="module")
def setup():
    spec = PreprocessSpec()
    gray = textured_film((300, 500))
    pred = FakePredictor(box_model_for(gray, REGION, spec), spec)
    film = Film(path=Path("/films/Zyxwvut_Quirinus.png"), pixels=gray.astype(np.float32), kind="raster",
                phi={"Patient name": PHI_NAME, "Patient ID": PHI_ID}, bits_stored=8)
    return gray, spec, pred, film


def test_cancel_mid_lime_raises_promptly(setup):
    gray, spec, _, _ = setup
    slow = FakePredictor(box_model_for(gray, REGION, spec), spec, delay=0.05)
    flag = threading.Event()
    progress = []

    def on_progress(f):
        progress.append(f)
        if f >= 0.3:
            flag.set()

    with pytest.raises(Cancelled):
        explain_lime(slow, gray, 1, LimeSettings(num_samples=640, batch_size=32, settle_from=0),
                     progress=on_progress, cancel=flag.is_set)  # every sample: the box model settles by 30%
    # Stopped right after the batch that crossed 30%: no model call once cancel() said so.
    crossed = next(i for i, f in enumerate(progress) if f >= 0.3)
    assert len(progress) == crossed + 1 and len(slow.batches) == crossed + 1 < 640 // 32


def test_cancel_from_another_thread_while_running(setup):
    gray, spec, _, _ = setup
    slow = FakePredictor(box_model_for(gray, REGION, spec), spec, delay=0.05)
    flag = threading.Event()
    outcome = {}

    def work():
        try:
            explain_lime(slow, gray, 1, LimeSettings(num_samples=5000, batch_size=64), cancel=flag.is_set)
            outcome["r"] = "finished"
        except Cancelled:
            outcome["r"] = "cancelled"

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.4)
    t_cancel = time.perf_counter()
    flag.set()
    t.join(timeout=10)
    assert not t.is_alive() and outcome["r"] == "cancelled"
    assert time.perf_counter() - t_cancel < 2.0


def test_coarse_result_comes_first_and_is_not_cached(setup):
    gray, _, pred, film = setup
    coarse = []
    cache = ExplanationCache()
    s = LimeSettings(num_samples=200, batch_size=64, coarse_samples=64)
    final = explain(pred, film, "lime", 1, s, on_coarse=coarse.append, cache=cache)
    assert len(coarse) == 1 and coarse[0].coarse and not final.coarse
    assert coarse[0].segments is final.segments or np.array_equal(coarse[0].segments, final.segments)
    assert len(cache) == 1 and cache.get(cache_key(film_key(film), pred.card["name"], "lime", 1, s)) is final
    # the early map already points at the same place
    assert np.argmax(coarse[0].segment_weights) in final.top_segments(3)


def test_cache_returns_the_same_object_and_separates_classes_methods_settings_films(setup):
    gray, spec, pred, film = setup
    cache = ExplanationCache(max_items=10)
    s = LimeSettings(num_samples=60, batch_size=64)
    a = explain(pred, film, "lime", 1, s, cache=cache)
    n_batches = len(pred.batches)
    assert explain(pred, film, "lime", 1, s, cache=cache) is a
    assert len(pred.batches) == n_batches  # served from the cache: the model did not run
    b = explain(pred, film, "lime", 0, s, cache=cache)
    c = explain(pred, film, "gradcam", 1, cache=cache)
    d = explain(pred, film, "lime", 1, LimeSettings(num_samples=60, batch_size=64, n_segments=45), cache=cache)
    assert len({id(a), id(b), id(c), id(d)}) == 4 and len(cache) == 4
    assert b.class_index == 0 and c.method == "gradcam"
    other = Film(path=Path("/films/other.png"), pixels=textured_film((300, 500), seed=5).astype(np.float32),
                 kind="raster", bits_stored=8)
    e = explain(pred, other, "lime", 1, s, cache=cache)
    assert e is not a and e.film_key != a.film_key  # never the previous film's map
    # batch size changes speed, not the result: same key
    assert cache_key("f", "m", "lime", 1, s) == cache_key("f", "m", "lime", 1, LimeSettings(num_samples=60, batch_size=128))
    cache.invalidate(film_key=film_key(film))
    assert len(cache) == 1


def test_lime_is_reproducible_for_a_seed_and_explains_the_top_class_by_default(setup):
    gray, _, pred, _ = setup
    s = LimeSettings(num_samples=80, batch_size=64)
    a = explain_lime(pred, gray, None, s)
    b = explain_lime(pred, gray, None, s)
    assert a.class_index in (0, 1) and np.array_equal(a.segment_weights, b.segment_weights)
    assert a.probability == pytest.approx(0.5, abs=1e-3)  # the calibrated synthetic model sits mid-range


def test_lime_stops_sampling_once_its_top_superpixels_settle(setup):
    """The box model's ranking is clear early: with the default rule sampling stops at one of its checks
    (96, 128, 160, ...) well before the most allowed, gives the same top superpixels as drawing them all,
    and says how many it drew; agreement alone (``settle_margin=0``, checks every 48) stops at the second
    check, 144 (the stop is deterministic for a seed, so that count is exact; lime's own fit, noisier,
    agrees only at the third, 192)."""
    gray, _, pred, _ = setup
    full = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, settle_from=0, batch_size=16))
    settled = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, batch_size=16))
    used = settled.settings["samples_used"]
    assert full.settings["samples_used"] == 400 and 96 < used < 400 and (used - 96) % 32 == 0
    assert set(settled.top_segments(5)) == set(full.top_segments(5))
    assert settled.settings["settled"] is True and full.settings["settled"] is None  # no rule asked
    again = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, batch_size=16))
    assert np.array_equal(again.segment_weights, settled.segment_weights)  # the stop is reproducible too
    agreed = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, settle_every=48, settle_margin=0, batch_size=16))
    assert agreed.settings["samples_used"] == 144 and set(agreed.top_segments(5)) == set(full.top_segments(5))
    limes = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, settle_every=48, settle_margin=0, batch_size=16,
                                                     fit="lime"))
    assert limes.settings["samples_used"] == 192
    with pytest.raises(ValueError):
        LimeSettings(settle_every=0)


def test_the_stopping_rule_waits_out_a_near_tie_at_the_fifth_place_but_not_a_tie_of_zeros():
    """``has_settled`` on hand-made fits of eight superpixels: the rule the viewer and the settle study share."""
    from cxrviewer.explain.lime_explainer import has_settled

    clear = np.array([0.9, 0.7, 0.6, 0.5, 0.4, 0.1, 0.05, 0.0])
    assert not has_settled(None, clear, 5, 1.5)  # a first fit has nothing to agree with
    assert not has_settled(clear[[0, 1, 2, 3, 5, 4, 6, 7]], clear, 5, 1.5)  # another top five
    assert has_settled(clear + 0.02, clear, 5, 1.5)  # same five, the fifth 0.3 ahead, the fits 0.02 apart
    tie = np.array([0.9, 0.7, 0.6, 0.5, 0.40, 0.38, 0.05, 0.0])
    wobbly = tie + np.array([0.0, 0.0, 0.0, 0.0, 0.03, -0.03, 0.0, 0.0])  # same five, but 0.06 of jitter
    assert has_settled(wobbly, tie, 5, 0.0)  # agreement alone (settle_margin 0) stops here
    assert not has_settled(wobbly, tie, 5, 1.5)  # the lead of 0.02 is within 1.5 x 0.03: draw on
    assert has_settled(tie + 0.005, tie, 5, 1.5)  # the same tie, once the fits hardly move
    zeros = np.array([0.9, 0.6, 0.5, 0.4, 0.02, 0.01, -0.01, 0.0])  # evidence in four superpixels only
    assert has_settled(zeros + np.array([0, 0, 0, 0, -0.01, 0.01, 0, 0]), zeros, 5, 1.5) is False  # not the same five
    assert has_settled(zeros + np.array([0, 0, 0, 0, 0.015, -0.015, 0, 0]), zeros, 5, 1.5)  # fifth within jitter of 0
    with pytest.raises(ValueError):
        LimeSettings(settle_margin=-1)


def test_attention_from_the_prediction_and_a_clear_message_without_it(setup):
    gray, spec, pred, film = setup

    class P:  # a Prediction-like record, as cxrviewer.inference returns it
        probs = np.array([0.2, 0.8])
        classes = ("Normal", "Pneumonia")
        attention = np.outer(np.hanning(14), np.hanning(14)).astype(np.float32)
        geometry = None

    from cxrviewer.preprocess import fit_to_square

    P.geometry = fit_to_square(gray, 224, "letterbox")[1]
    e = explain_attention(pred, film, prediction=P)
    assert e.class_index == 1 and e.class_name == "Pneumonia" and e.probability == pytest.approx(0.8)
    fm = e.film_map()
    assert fm.shape == gray.shape and np.unravel_index(np.argmax(fm), fm.shape)[0] in range(120, 180)
    with pytest.raises(NoAttention, match="no spatial attention; use Grad-CAM"):
        explain_attention(pred, film)  # the box model has no attention


@pytest.mark.parametrize("suffix", [".pdf", ".png"])
def test_report_has_no_identifiers_unless_asked(setup, tmp_path, suffix):
    from PIL import Image

    gray, _, pred, film = setup
    expl = explain(pred, film, "gradcam", 1)
    overlay = render_overlay(expl, gray, OverlaySettings())
    probs = {"Normal": 0.3, "Pneumonia": 0.7}
    plain = save_report(tmp_path / f"plain{suffix}", gray, overlay, expl, probs, model_name="Box model",
                        model_version="0.1", film=film)
    named = save_report(tmp_path / f"named{suffix}", gray, overlay, expl, probs, model_name="Box model",
                        model_version="0.1", film=film, include_identifiers=True)
    raw = plain.read_bytes()
    if suffix == ".pdf":
        text, named_text = pdf_text(raw), pdf_text(named.read_bytes())
        assert "Pneumonia" in text and "Decision support only" in text  # the extraction works...
    for phi in (PHI_NAME, PHI_ID, "Zyxwvut_Quirinus"):
        assert phi.encode() not in raw
        if suffix == ".pdf":
            assert phi not in text  # ...and the identifier is not there
            assert phi in named_text
        else:
            meta = Image.open(plain).info
            assert not any(phi in str(v) for v in meta.values())
            assert any(phi in str(v) for v in Image.open(named).info.values())


def test_report_never_prints_a_probability_as_certain(setup, tmp_path):
    gray, _, pred, film = setup
    expl = replace(explain(pred, film, "gradcam", 1), probability=0.99962)
    overlay = render_overlay(expl, gray, OverlaySettings())
    probs = {"Normal": 0.00038, "Pneumonia": 0.99962}
    text = pdf_text(save_report(tmp_path / "r.pdf", gray, overlay, expl, probs, model_name="Box model").read_bytes())
    assert "(p = >99.9%)" in text and ">99.9%" in text and "<0.1%" in text
    assert "100.0%" not in text and "1.000" not in text and "0.000" not in text


def test_report_text_keeps_inside_the_page_margins(setup, tmp_path):
    """matplotlib's own wrap ran the notes and the disclaimer to the page's very edge, where a printer cuts
    them off; a long model name ran past it. Every line now ends inside the right margin."""
    from PIL import Image

    gray, _, pred, film = setup
    expl = explain(pred, film, "gradcam", 1)
    overlay = render_overlay(expl, gray, OverlaySettings())
    name = "MobileNet-Lung retrained on the radiology department's own films, " * 3
    page = save_report(tmp_path / "r.png", gray, overlay, expl, {"Normal": 0.3, "Pneumonia": 0.7}, model_name=name)
    ink = np.asarray(Image.open(page).convert("L")) < 128
    width = ink.shape[1]
    assert ink[:, int(0.955 * width):].sum() == 0  # the films end at 95% of the width, and so does every line
    text = pdf_text(save_report(tmp_path / "r.pdf", gray, overlay, expl, {"Normal": 0.3}, model_name=name).read_bytes())
    assert "Decision support only" in text and text.count("radiology") == 3  # wrapped, nothing dropped


def test_overlay_png_and_side_by_side(setup, tmp_path):
    from PIL import Image

    gray, _, pred, film = setup
    expl = explain(pred, film, "gradcam", 1)
    ov = render_overlay(expl, gray, OverlaySettings(colormap="viridis", opacity=0.6))
    assert np.array_equal(render_overlay(expl, gray, OverlaySettings(visible=False)), np.repeat(gray[..., None], 3, 2))
    sbs = side_by_side(gray, ov, gap=6)
    assert sbs.shape == (300, 1006, 3)
    p = save_overlay_png(tmp_path / "o.png", sbs)
    back = np.asarray(Image.open(p))
    assert np.array_equal(back, sbs) and not Image.open(p).text


def test_explain_cli_end_to_end(tmp_path, capsys):
    pytest.importorskip("cxrviewer.checkpoint")
    from inference_helpers import make_checkpoint, write_png
    from PIL import Image

    from cxrviewer.cli import main

    ckpt = make_checkpoint(tmp_path / "tiny.safetensors", sharpen=4.0)
    film = write_png(tmp_path / "film.png", shape=(320, 288))
    out, rep = tmp_path / "o.png", tmp_path / "r.pdf"
    rc = main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--class", "Pneumonia-Viral",
               "--samples", "64", "--out", str(out), "--report", str(rep)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "lime for Pneumonia-Viral" in captured.out
    assert np.asarray(Image.open(out)).shape == (320, 288, 3)
    assert rep.read_bytes().startswith(b"%PDF") and "Pneumonia-Viral" in pdf_text(rep.read_bytes())
    assert "orthogonal sampling; lime's regression with a logistic surrogate" in pdf_text(rep.read_bytes())
    assert "not settled" not in captured.out  # 64 samples: the stopping rule (from 96) never asked
    # 100 samples: one fit at 96, nothing to agree with; the reader is told, and how to do better
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--samples", "100",
                 "--out", str(tmp_path / "short.png")]) == 0
    assert "had not settled after 100 samples" in capsys.readouterr().out
    for method in ("attention", "gradcam"):
        o = tmp_path / f"{method}.png"
        assert main(["explain", str(film), "--method", method, "--model", str(ckpt), "--out", str(o),
                     "--side-by-side"]) == 0
        assert np.asarray(Image.open(o)).shape == (320, 288 * 2 + 8, 3)
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--class", "Nope"]) == 2
    assert "Nope" in capsys.readouterr().err
    # lime's own independent draws stay selectable (to compare with lime itself); an unknown one is refused
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--sampling", "independent",
                 "--samples", "32", "--all-samples", "--out", str(tmp_path / "ind.png")]) == 0
    assert "(32 samples)" in capsys.readouterr().out
    # and so does lime's own regression, in place of the surrogate-assisted fit
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--fit", "lime", "--samples", "64",
                 "--out", str(tmp_path / "limefit.png"), "--report", str(rep)]) == 0
    assert "lime's regression alone" in pdf_text(rep.read_bytes())
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--fit", "lasso"]) == 2
    assert "lasso" in capsys.readouterr().err
    assert main(["explain", str(film), "--method", "lime", "--model", str(ckpt), "--sampling", "sobol"]) == 2
    assert "sobol" in capsys.readouterr().err
    # a PNG is not written under a name that says it is something else; a bare name gets its extension
    for flag, name in (("--out", "overlay.txt"), ("--report", "report.docx")):
        args = ["--out", str(tmp_path / "x.png")] if flag == "--report" else []
        assert main(["explain", str(film), "--method", "gradcam", "--model", str(ckpt), flag, str(tmp_path / name),
                     *args]) == 2
        err = capsys.readouterr().err
        assert f"cannot save {name}" in err and not (tmp_path / name).exists() and not (tmp_path / "x.png").exists()
    assert "must end in .pdf or .png" in err
    assert main(["explain", str(film), "--method", "gradcam", "--model", str(ckpt), "--out", str(tmp_path / "bare"),
                 "--report", str(tmp_path / "bare-report")]) == 0
    assert f"-> {tmp_path / 'bare.png'} and {tmp_path / 'bare-report.pdf'}" in capsys.readouterr().out
    assert (tmp_path / "bare.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "bare-report.pdf").read_bytes().startswith(b"%PDF") and not (tmp_path / "bare").exists()


def test_lime_says_when_its_top_superpixels_never_settled(setup):
    """A run that draws every sample it may without its ranking settling says so, on the explanation and
    on the report: at 100 samples the rule fits once, at 96, and one fit cannot agree with another."""
    from cxrviewer.explain.lime_explainer import unsettled_note
    from cxrviewer.explain.report import build_report_figure

    gray, _, pred, _ = setup
    short = explain_lime(pred, gray, 1, LimeSettings(num_samples=100, batch_size=16))
    assert short.settings["samples_used"] == 100 and short.settings["settled"] is False
    note = unsettled_note(short)
    assert "top 5 superpixels had not settled after 100 samples" in note
    film_rgb = np.repeat(gray[..., None], 3, axis=2)
    fig = build_report_figure(film_rgb, film_rgb, short)
    assert any(note in t.get_text() and "Uncertain" in t.get_text() for t in fig.texts)
    settled = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, batch_size=16))
    assert unsettled_note(settled) == ""
    assert not any("Uncertain" in t.get_text() for t in build_report_figure(film_rgb, film_rgb, settled).texts)


def test_paired_sampling_and_reused_segments(setup):
    """Antithetic rows are exact complements (lime's first row, all superpixels on, is kept), and a
    segmentation passed in is used as is (the bench compares on one shared segmentation)."""
    from cxrviewer.explain.lime_explainer import _lime_explainer_class

    gray, spec, pred, _ = setup
    ex = _lime_explainer_class()(random_state=3)
    ex.sampling = "paired"
    seen = []
    image = np.repeat(gray[:224, :224, None], 3, axis=2)
    seg = (np.arange(224)[:, None] // 56 * 4 + np.arange(224)[None, :] // 56).astype(np.int32)  # 16 squares
    data, labels = ex.data_labels(image, image // 2, seg, lambda imgs: seen.append(len(imgs)) or
                                  np.zeros((len(imgs), 2)), 9, batch_size=4)
    assert data.shape == (9, 16) and seen == [4, 4, 1]
    assert data[0].all() and not data[1].any()
    assert np.array_equal(data[3], 1 - data[2]) and np.array_equal(data[7], 1 - data[6])
    e = explain_lime(pred, gray, 1, LimeSettings(num_samples=40, batch_size=64, sampling="paired"),
                     segments=np.repeat(np.repeat(seg[::56, ::56], 56, 0), 56, 1))
    assert e.segment_weights.shape == (16,) and np.array_equal(e.segments[::56, ::56], seg[::56, ::56])


def test_orthogonal_sampling_is_balanced_paired_and_has_limes_distribution_row_by_row():
    """lime's first row (everything on) and its complement, then blocks in which every superpixel is hidden
    half the time and every two superpixels are hidden together a quarter of the time, each row followed
    by its complement; the same seed gives the same rows, and over seeds any one row is uniform, as
    lime's own independent draws are (so the regression estimates the same thing)."""
    from cxrviewer.explain.lime_explainer import orthogonal_rows

    rows = orthogonal_rows(400, 21, np.random.RandomState(7))
    assert rows.shape == (400, 21) and set(np.unique(rows)) == {0, 1}
    assert rows[0].all() and not rows[1].any()
    assert np.array_equal(rows[1::2], 1 - rows[0::2])
    for start in (2, 66, 130):  # 21 superpixels: Hadamard order 32, a block and its complements = 64 rows
        block = rows[start : start + 64] * 2 - 1
        assert np.array_equal(block.T @ block, 64 * np.eye(21, dtype=int))
    assert np.array_equal(rows, orthogonal_rows(400, 21, np.random.RandomState(7)))
    assert not np.array_equal(rows, orthogonal_rows(400, 21, np.random.RandomState(8)))
    assert orthogonal_rows(3, 4, np.random.RandomState(0)).shape == (3, 4)
    many = np.stack([orthogonal_rows(12, 5, np.random.RandomState(s))[[2, 7, 11]] for s in range(3000)])
    counts = np.bincount((many @ (1 << np.arange(5))).ravel(), minlength=32)  # each of the 32 patterns
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    with pytest.raises(ValueError, match="sampling"):
        LimeSettings(sampling="sobol")


def test_orthogonal_sampling_finds_the_region_that_drives_the_model_with_few_samples(setup):
    """The box model depends on one region only: with balanced draws, 64 samples already rank that
    region's superpixels first, as lime's independent draws do with many more."""
    gray, _, pred, _ = setup
    few = explain_lime(pred, gray, 1, LimeSettings(num_samples=64, settle_from=0, batch_size=32))
    many = explain_lime(pred, gray, 1, LimeSettings(num_samples=400, settle_from=0, batch_size=32,
                                                    sampling="independent"))
    assert set(few.top_segments(2)) == set(many.top_segments(2))


def test_lime_fit_covariance_is_limes_fit_and_its_sampling_error():
    """The closed-form fit behind the settle study's separation test gives lime's own weights, and its
    covariance is what repeated sampling shows: over 300 independent 200-row neighbourhoods of a model
    with interactions (misfit for a linear surrogate), the predicted variances match the observed."""
    from cxrviewer.explain.lime_explainer import (_lime_explainer_class, lime_fit, lime_fit_covariance,
                                                  top_separation)

    ex = _lime_explainer_class()(random_state=0)
    p = 12
    rng = np.random.default_rng(1)
    beta, inter = rng.normal(0, 1, p), rng.normal(0, 0.3, (p, p))

    def model(rows):
        prob = 1 / (1 + np.exp(-(0.4 * rows @ beta + 0.1 * np.einsum("ni,ij,nj->n", rows, inter, rows) - 1.5)))
        return np.stack([prob, 1 - prob], axis=1)

    def rows(seed, n=200):
        data = np.random.RandomState(seed).randint(0, 2, (n, p))
        data[0] = 1  # lime's first row: the film itself
        return data

    data = rows(0)
    exp, _ = lime_fit(ex, data, model(data), 0)
    coef, cov = lime_fit_covariance(ex, data, model(data), 0)
    np.testing.assert_allclose(coef, [dict(exp)[i] for i in range(p)], atol=1e-12)
    fits = [lime_fit_covariance(ex, d, model(d), 0) for d in map(rows, range(300))]
    observed = np.cov(np.stack([c for c, _ in fits]).T)
    predicted = np.mean([v for _, v in fits], axis=0)
    ratio = np.diag(predicted) / np.diag(observed)
    assert 0.8 < ratio.mean() < 1.25 and 0.6 < ratio.min() and ratio.max() < 1.6, ratio
    # separation grows with the rows: the same model, four times the rows, a larger z
    z200, z800 = (top_separation(ex, d, model(d), 0, 3) for d in (rows(5), rows(5, 800)))
    assert 0 < z200 < z800 and top_separation(ex, data[:, :3], model(data), 0, 3) == float("inf")


def test_the_surrogate_fit_estimates_limes_weights_with_less_noise():
    """``fit="surrogate"`` estimates what lime's regression converges to, with less noise. A saturating
    model with interactions (a logistic curve of an additive score plus pairwise terms, near 1 on the
    unperturbed image, as a confident network is): lime's own fit on 60000 independent rows is the
    truth; over 40 neighbourhoods of 160 balanced rows, the surrogate's mean is the truth (no bias
    larger than its noise allows) and its squared error is under half lime's fit's on the same rows."""
    from cxrviewer.explain.lime_explainer import _lime_explainer_class, fit_weights, orthogonal_rows

    ex = _lime_explainer_class()(random_state=0)
    p = 20
    rng = np.random.default_rng(3)
    beta, inter = rng.gamma(1.0, 0.5, p), rng.normal(0, 0.05, (p, p))

    def model(rows):
        prob = 1 / (1 + np.exp(-(rows @ beta + np.einsum("ni,ij,nj->n", rows, inter, rows) - 2.5)))
        return np.stack([prob, 1 - prob], axis=1)

    big = np.random.RandomState(0).randint(0, 2, (60000, p))
    big[0] = 1
    truth = fit_weights(ex, big, model(big), 0, "lime")
    runs = [orthogonal_rows(160, p, np.random.RandomState(seed)) for seed in range(40)]
    ours = np.stack([fit_weights(ex, d, model(d), 0, "surrogate") for d in runs])
    limes = np.stack([fit_weights(ex, d, model(d), 0, "lime") for d in runs])
    err_ours, err_lime = (np.mean(np.sum((w - truth) ** 2, axis=1)) for w in (ours, limes))
    assert err_ours < 0.5 * err_lime, (err_ours, err_lime)
    bias = np.abs(ours.mean(axis=0) - truth)
    assert np.all(bias < 4 * ours.std(axis=0) / np.sqrt(len(runs)) + 0.02 * np.abs(truth).max()), bias
    with pytest.raises(ValueError):
        LimeSettings(fit="lasso")


def test_the_viewers_lime_uses_the_surrogate_fit_and_lime_alone_gives_limes_own_weights(setup):
    """The default fit is the surrogate; ``fit="lime"`` gives lime's own ``explain_instance`` weights, and
    on the box model both find the region (every sample drawn: the same rows for both)."""
    gray, _, pred, _ = setup
    assert LimeSettings().fit == "surrogate"
    s = LimeSettings(num_samples=160, settle_from=0, batch_size=32)
    ours, limes = explain_lime(pred, gray, 1, s), explain_lime(pred, gray, 1, replace(s, fit="lime"))
    assert not np.array_equal(ours.segment_weights, limes.segment_weights)
    assert set(ours.top_segments(2)) == set(limes.top_segments(2))
    assert ours.settings["fit"] == "surrogate" and limes.settings["fit"] == "lime"


def test_only_superpixels_that_carry_weight_are_outlined():
    """Of the five strongest supporting superpixels, one with a hundredth of the largest weight is not
    outlined (its place in a top five is noise), in the exported overlay as in the viewer (both ask
    ``outlined_segments``); nor is a weak supporter when the map's largest weight opposes the class."""
    from cxrviewer.explain.types import Explanation, outlined_indices
    from cxrviewer.preprocess import fit_to_square

    gray = np.full((224, 224), 120, np.uint8)
    _, geo = fit_to_square(gray, 224, "squash")
    segments = (np.arange(224)[:, None] // 56 * 4 + np.arange(224)[None, :] // 56).astype(np.int32)  # 16 squares
    weights = np.zeros(16, np.float32)
    weights[[5, 6, 9, 10, 3]] = [0.4, 0.2, 0.05, 0.004, 0.001]  # three that matter, two at noise level
    weights[[12, 15]] = [-0.3, -0.002]
    expl = Explanation(method="lime", class_index=1, class_name="Pneumonia", model_map=weights[segments],
                       geometry=geo, segments=segments, segment_weights=weights,
                       settings={"num_features": 5, "samples_used": 128, "segmentation": "slic"})
    assert expl.top_segments(5) == [5, 6, 9, 10, 3]
    assert expl.outlined_segments(5) == [5, 6, 9] and expl.outlined_segments(5, positive=False) == [12]
    out = render_overlay(expl, gray, OverlaySettings(opacity=0.0, threshold=0.05, outline_top=5))
    outline = np.all(out == np.array(OverlaySettings().outline_rgb, np.uint8), axis=-1)
    outlined = set(np.unique(segments[outline]).tolist())
    assert {5, 6, 9} <= outlined and not outlined & {10, 3, 0, 15}  # neighbours' edges may touch, not these
    opposed = expl.segment_weights.copy()
    opposed[[5, 6, 9]] = 0.0  # nothing much supports the class; one superpixel strongly opposes it
    assert outlined_indices(opposed, 5) == [] and outlined_indices(opposed, 5, positive=False) == [12]


def test_outlines_follow_the_colour_threshold():
    """A reader who raises the threshold slider hides weak superpixels; their outlines go with them, so
    every outlined superpixel is also coloured (a weight between the outline floor and the threshold was
    outlined on bare film before). In the viewer's overlay as in the exported one."""
    from cxrviewer.explain.types import Explanation, outline_floor
    from cxrviewer.gui.main_window import overlay_rgba
    from cxrviewer.gui.viewmath import HeatmapRequest
    from cxrviewer.preprocess import fit_to_square

    gray = np.full((224, 224), 120, np.uint8)
    _, geo = fit_to_square(gray, 224, "squash")
    segments = (np.arange(224)[:, None] // 56 * 4 + np.arange(224)[None, :] // 56).astype(np.int32)
    weights = np.zeros(16, np.float32)
    weights[[5, 6, 9, 10]] = [0.4, 0.2, 0.06, 0.03]  # 1, 0.5, 0.15 and 0.075 of the largest
    expl = Explanation(method="lime", class_index=1, class_name="Pneumonia", model_map=weights[segments],
                       geometry=geo, segments=segments, segment_weights=weights,
                       settings={"num_features": 5, "samples_used": 128, "segmentation": "slic"})
    yellow = np.array(OverlaySettings().outline_rgb, np.uint8)
    for threshold, expected in ((0.0, {5, 6, 9}), (0.12, {5, 6, 9}), (0.2, {5, 6}), (0.6, {5})):
        assert outline_floor(threshold) == max(0.1, threshold)
        settings = OverlaySettings(opacity=0.5, threshold=threshold, outline_top=5)
        drawn = [np.all(render_overlay(expl, gray, settings) == yellow, axis=-1),
                 np.all(overlay_rgba(expl, gray.shape, HeatmapRequest(threshold=threshold))[..., :3] == yellow, axis=-1)]
        fill = render_overlay(expl, gray, settings.with_(outline_top=0)) != gray[..., None]
        for outline in drawn:
            outlined = set(np.unique(segments[outline]).tolist())  # outlines lie on a superpixel's inner edge
            assert outlined == expected, (threshold, outlined)
            assert all(fill[segments == i].any() for i in outlined)


def test_lime_segments_as_the_model_asks_unless_the_reader_chooses(setup):
    """A network can ask for another superpixel method (``CXRModel.lime_segmentation``; cs_convnext asks
    for quickshift, because on SLIC its evidence sits in one to three superpixels); the reader's own
    choice wins, and the explanation records the method used."""
    from cxrviewer.explain.lime_explainer import DEFAULT_SEGMENTATION, for_model, segment

    gray, spec, _, _ = setup
    quick = LimeSettings(num_samples=48, coarse_samples=0, settle_from=0)
    model = box_model_for(gray, REGION, spec)
    results = {}
    for asks in (None, "quickshift", "felzenszwalb"):
        model.lime_segmentation = asks
        results[asks] = explain_lime(FakePredictor(model, spec), gray, 1, quick)
        method = asks or DEFAULT_SEGMENTATION
        assert results[asks].settings["segmentation"] == method
    # each explanation is cut by the method it names: the same film segmented that way gives its segments
    from cxrviewer.preprocess import fit_to_square

    square, _ = fit_to_square(gray, spec.input_size, spec.resize)
    rgb = np.repeat(square[:, :, None], 3, axis=2)
    for asks, expl in results.items():
        np.testing.assert_array_equal(expl.segments, segment(rgb, replace(quick, segmentation=asks or "slic")))
    assert not np.array_equal(results[None].segments, results["quickshift"].segments)
    model.lime_segmentation = "quickshift"
    mine = explain_lime(FakePredictor(model, spec), gray, 1, replace(quick, segmentation="slic"))
    assert mine.settings["segmentation"] == "slic"
    np.testing.assert_array_equal(mine.segments, results[None].segments)
    assert for_model(quick, lambda x: x).segmentation == DEFAULT_SEGMENTATION  # a plain function asks nothing
    from cxrviewer.models.cs_convnext import CSConvNeXt
    from cxrviewer.models.mobilenet_lung import MobileNetV2Classifier

    assert CSConvNeXt.lime_segmentation == "quickshift" and MobileNetV2Classifier.lime_segmentation is None
    # a checkpoint can ask too, over its architecture (its card's "lime": the bundled adult model asks for
    # SLIC's 50), and the reader's choice still wins
    card_asks = FakePredictor(model, spec)
    card_asks.card["lime"] = {"segmentation": "slic", "n_segments": 50}
    fine = explain_lime(card_asks, gray, 1, quick)
    assert fine.settings["segmentation"] == "slic" and fine.settings["n_segments"] == 50
    np.testing.assert_array_equal(fine.segments, segment(rgb, replace(quick, segmentation="slic", n_segments=50)))
    assert fine.segments.max() > results[None].segments.max()
    mine = explain_lime(card_asks, gray, 1, replace(quick, n_segments=30))
    np.testing.assert_array_equal(mine.segments, results[None].segments)
