"""The shared preprocessing and its exact inverse (heatmaps land on the anatomy that caused them)."""

import numpy as np
import pytest

from cxrviewer.preprocess import IMAGENET_MEAN, PreprocessSpec, fit_to_square, preprocess_gray


@pytest.mark.parametrize("mode", ["squash", "letterbox", "center_crop"])
@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (224, 224)])
def test_hot_spot_maps_back_onto_the_film(mode, shape):
    H, W = shape
    gray = np.zeros(shape, dtype=np.uint8)
    r0, r1, c0, c1 = H * 2 // 5, H * 3 // 5, W * 2 // 5, W * 3 // 5  # a central block (visible in every mode)
    gray[r0:r1, c0:c1] = 255
    x, geo = preprocess_gray(gray, PreprocessSpec(input_size=224, resize=mode))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # The model-space "heatmap" is the model input itself: mapping it back must reproduce the block.
    model_map = (x[0] - x[0].min()) / (x[0].max() - x[0].min())
    back = geo.to_film(model_map)
    assert back.shape == shape
    inside = back[r0 + 3 : r1 - 3, c0 + 3 : c1 - 3].mean()
    outside = np.concatenate([back[: r0 - 3].ravel(), back[r1 + 3 :].ravel()]).mean()
    assert inside > 0.9 and outside < 0.1


def test_off_centre_spot_on_non_square_film():
    gray = np.zeros((400, 1000), dtype=np.uint8)
    gray[40:80, 850:950] = 255
    _, geo = fit_to_square(gray, 224, "letterbox")
    hm = np.zeros((7, 7), dtype=np.float32)
    y, x = geo.film_to_model(60, 900)
    hm[int(y * 7 / 224), int(x * 7 / 224)] = 1.0
    back = geo.to_film(hm)
    r, c = np.unravel_index(np.argmax(back), back.shape)
    assert abs(r - 60) < 400 / 7 * 224 / 1000 * 2 + 20 and 800 < c < 1000


def test_film_model_coordinates_round_trip():
    for mode in ("squash", "letterbox", "center_crop"):
        _, geo = fit_to_square(np.zeros((123, 457), np.uint8), 224, mode)
        y, x = geo.film_to_model(50.5, 300.25)
        assert geo.model_to_film(y, x) == pytest.approx((50.5, 300.25))


def test_normalisation_and_spec_round_trip():
    spec = PreprocessSpec(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, _ = preprocess_gray(np.full((10, 20), 255, np.uint8), spec)
    assert x.shape == (3, 64, 64) and np.allclose(x, 2.0)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    x2, _ = preprocess_gray(np.zeros((8, 8), np.uint8), PreprocessSpec())
    assert np.allclose(x2[0], -IMAGENET_MEAN[0] / 0.229)


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="unknown resize mode"):
        fit_to_square(np.zeros((4, 4), np.uint8), 8, "stretch")


def test_normalise_batch_is_the_single_image_arithmetic():
    from cxrviewer.preprocess import PreprocessSpec, normalise

    rng = np.random.default_rng(0)
    grays = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    spec = PreprocessSpec()
    batch = normalise(grays, spec)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([normalise(g, spec) for g in grays]))
