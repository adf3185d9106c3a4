"""LIME and Grad-CAM find the one region a synthetic model looks at, and the full-resolution overlay puts
the map on that region of a non-square film (through the shared preprocessing's inverse)."""

import numpy as np
import pytest

from explain_synth import FakePredictor, box_model_for, textured_film
from cxrviewer.explain import LimeSettings, OverlaySettings, explain_lime, gradcam_film, render_overlay
from cxrviewer.explain.gradcam import explain_gradcam
from cxrviewer.preprocess import PreprocessSpec, preprocess_gray

# (film shape, region the model looks at in film pixels (r0, r1, c0, c1), resize mode)
CASES = [
    ((300, 500), (60, 140, 320, 440), "squash"),
    ((300, 500), (60, 140, 320, 440), "letterbox"),
    ((520, 280), (330, 450, 30, 150), "letterbox"),
]
IDS = ["wide-squash", "wide-letterbox", "tall-letterbox"]


def _setup(shape, region, mode):
    spec = PreprocessSpec(input_size=224, resize=mode)
    gray = textured_film(shape, seed=shape[0])
    model = box_model_for(gray, region, spec)
    return gray, spec, FakePredictor(model, spec)


def _inside(region, r, c, margin=0):
    r0, r1, c0, c1 = region
    return r0 - margin <= r < r1 + margin and c0 - margin <= c < c1 + margin


@pytest.mark.parametrize("shape,region,mode", CASES, ids=IDS)
def test_lime_puts_its_strongest_weight_on_the_region_and_the_overlay_lands_there(shape, region, mode):
    gray, spec, pred = _setup(shape, region, mode)
    # fine superpixels (the default ~20 are coarser than this small box)
    expl = explain_lime(pred, gray, class_index=1, settings=LimeSettings(n_segments=50, num_samples=150, batch_size=64))
    assert expl.method == "lime" and expl.class_name == "Pneumonia"
    assert min(pred.batches) >= 22 and max(pred.batches) == 64  # big batches, not lime's 10

    fm = expl.film_map()
    assert fm.shape == shape
    r, c = np.unravel_index(np.argmax(fm), fm.shape)
    assert _inside(region, r, c), f"strongest LIME weight at {(r, c)}, outside {region}"
    r0, r1, c0, c1 = region
    assert fm[r0:r1, c0:c1].mean() > 0
    # Superpixels that do not touch the model's box cannot change its output: only sampling noise is left.
    y0, y1, x0, x1 = pred.model.box
    touching = set(np.unique(expl.segments[y0:y1, x0:x1]).tolist())
    w = expl.segment_weights
    away = [abs(w[i]) for i in range(len(w)) if i not in touching]
    assert away and max(away) < 0.35 * w.max()
    assert set(expl.top_segments(3)) <= touching

    # The overlay on the full-resolution film: its top outlined superpixel and the red mass sit on the region.
    out = render_overlay(expl, gray, OverlaySettings(opacity=0.8, threshold=0.5, outline_top=1))
    assert out.shape == shape + (3,)
    red = (out[..., 0].astype(int) - out[..., 2] > 60) & (out[..., 0] > 120)
    ys, xs = np.nonzero(red)
    assert len(ys) > 50
    assert _inside(region, ys.mean(), xs.mean()), f"red centroid {(ys.mean(), xs.mean())} off {region}"
    outline = np.all(out == np.array([255, 235, 0], np.uint8), axis=-1)
    oy, ox = np.nonzero(outline)
    assert len(oy) > 10 and _inside(region, oy.mean(), ox.mean(), margin=15)


@pytest.mark.parametrize("shape,region,mode", CASES, ids=IDS)
def test_gradcam_puts_its_weight_on_the_region_and_the_overlay_lands_there(shape, region, mode):
    gray, spec, pred = _setup(shape, region, mode)
    expl = gradcam_film(pred, gray, class_index=1)
    assert expl.model_map.min() >= 0 and expl.model_map.max() == pytest.approx(1.0)
    fm = expl.film_map()
    r, c = np.unravel_index(np.argmax(fm), fm.shape)
    assert _inside(region, r, c)
    out = render_overlay(expl, gray, OverlaySettings(opacity=1.0, threshold=0.05, colormap="inferno"))
    changed = np.any(out != np.repeat(gray[..., None], 3, axis=2), axis=-1)
    ys, xs = np.nonzero(changed)
    assert len(ys) > 100
    inside = np.mean([_inside(region, y, x, margin=3) for y, x in zip(ys[::7], xs[::7])])
    assert inside > 0.97, f"only {inside:.0%} of the drawn heatmap is on the region"


def test_gradcam_of_the_other_class_is_empty_and_layer_lists_are_averaged():
    gray, spec, pred = _setup((300, 500), (60, 140, 320, 440), "squash")
    x, geo = preprocess_gray(gray, spec)
    # Class 0's logit falls as texture rises: every gradient is negative, so ReLU leaves nothing.
    assert explain_gradcam(pred.model, x, 0, geometry=geo).model_map.max() == 0.0
    both = explain_gradcam(pred.model, x, 1, layer=[pred.model.features, pred.model.pool], geometry=geo)
    one = explain_gradcam(pred.model, x, 1, geometry=geo)
    assert both.model_map.shape == one.model_map.shape == (224, 224)
    assert np.corrcoef(both.model_map.ravel(), one.model_map.ravel())[0, 1] > 0.3
    assert both.probability == pytest.approx(one.probability)
