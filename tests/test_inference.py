"""The inference engine: exact path, calibration, fast-path tolerance, device choice and GPU fallback."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrviewer import device as devmod
from cxrviewer.checkpoint import card_defaults, save_checkpoint
from cxrviewer.device import cpu_supports_bf16, describe_device, select_device
from cxrviewer.film import Film
from cxrviewer.inference import FAST_TOLERANCE, InferenceError, Predictor, fold_batchnorm, softmax64
from cxrviewer.preprocess import PreprocessSpec, preprocess_film, preprocess_gray

from inference_helpers import CLASSES3, TINY, calibrate, chest_like, make_checkpoint, make_model, realistic_mobilenet_lung


def _film(seed=0, shape=(320, 288)):
    pix = chest_like(*shape, seed=seed).astype(np.float32)
    return Film(path=Path(f"film{seed}.png"), pixels=pix, kind="raster")


def _predictor(arch=TINY, temperature=1.0, seed=0, classes=CLASSES3, spec=None):
    if arch == "mobilenet_lung":
        m = realistic_mobilenet_lung(classes, seed)
    else:
        m = calibrate(make_model(arch, classes, seed=seed), spec, seed=seed)
    return Predictor(m, card_defaults(m, classes, spec, name=f"{arch}-t", temperature=temperature), "cpu")


def _real_like_batch(n, spec=PreprocessSpec()):
    return np.stack([preprocess_gray(chest_like(seed=100 + i), spec)[0] for i in range(n)])


# --- exact path -----------------------------------------------------------------------------------


def test_predict_film_fields():
    pr = _predictor()
    film = _film(shape=(300, 200))
    res = pr.predict_film(film)
    assert res.classes == tuple(CLASSES3) and res.model_name == f"{TINY}-t" and res.device == "cpu"
    assert res.probs.dtype == np.float64 and res.probs.shape == (3,)
    assert abs(res.probs.sum() - 1.0) < 1e-12 and (res.probs > 0).all()
    assert res.top_index == int(np.argmax(res.probs)) and res.top_class == CLASSES3[res.top_index]
    assert res.features.shape == (16,) and res.logits.shape == (3,)
    assert res.attention.shape == (56, 56) and res.attention.dtype == np.float32  # 224 / 4
    assert res.geometry.film_shape == (300, 200) and res.geometry.size == 224
    assert [c for c, _ in res.ranked()][0] == res.top_class
    d = res.to_dict()
    assert d["top_class"] == res.top_class and d["probabilities"] == pytest.approx(list(res.probs))


def test_predict_film_uses_the_shared_preprocessing_and_matches_batch():
    pr = _predictor(spec=PreprocessSpec(resize="letterbox"))
    film = _film(seed=2, shape=(400, 250))
    res = pr.predict_film(film)
    x, geo = preprocess_film(film, pr.spec)
    assert geo == res.geometry and geo.off_x > 0  # letterbox from the card was used
    with torch.no_grad():
        logits = pr.model(torch.from_numpy(x)[None]).double().numpy()[0]
    np.testing.assert_allclose(res.logits, logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pr.predict_batch(x[None])[0], res.probs, rtol=0, atol=1e-12)


def test_temperature_is_applied():
    film = _film(seed=1)
    p1 = _predictor(temperature=1.0).predict_film(film)
    p3 = _predictor(temperature=3.0).predict_film(film)
    np.testing.assert_allclose(p1.logits, p3.logits)
    np.testing.assert_allclose(p3.probs, softmax64(p1.logits / 3.0), atol=1e-12)
    assert p3.probs.max() < p1.probs.max()  # a higher temperature is less confident


def test_predict_batch_chunks_agree_and_validate_shapes():
    pr = _predictor()
    x = _real_like_batch(5)
    whole = pr.predict_batch(x, batch_size=32)
    chunked = pr.predict_batch(torch.from_numpy(x), batch_size=2)
    np.testing.assert_allclose(whole, chunked, atol=1e-4)  # fp32 kernels differ by batch size
    assert whole.dtype == np.float64 and whole.shape == (5, 3)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        pr.predict_batch(np.zeros((2, 1, 224, 224), np.float32))
    with pytest.raises(ValueError):
        pr.predict_batch(np.zeros((2, 3, 128, 128), np.float32))


def test_non_finite_output_is_an_error():
    pr = _predictor()
    with torch.no_grad():
        pr.model.head.bias[0] = float("nan")
    with pytest.raises(InferenceError, match="non-finite"):
        pr.predict_film(_film())


def test_concurrent_calls_are_serialised_and_correct():
    pr = _predictor()
    films = [_film(seed=s) for s in range(4)]
    expected = [pr.predict_film(f) for f in films]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                r = pr.predict_film(films[i])
                assert np.array_equal(r.probs, expected[i].probs)
                assert np.array_equal(r.attention, expected[i].attention)  # not another thread's map
                pr.fast_predict_batch(_real_like_batch(2))
            results[i] = True
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4


# --- fast path ------------------------------------------------------------------------------------


def test_fast_path_within_tolerance_mobilenet_lung():
    pr = _predictor("mobilenet_lung", seed=3, temperature=1.0)
    rng = np.random.default_rng(0)
    x = np.concatenate([_real_like_batch(6), rng.normal(0, 1, (4, 3, 224, 224)).astype(np.float32)])
    exact = pr.predict_batch(x)
    fast = pr.fast_predict_batch(x, batch_size=4)
    assert np.ptp(exact[:, 0]) > 0.2 and exact.max() > 0.9  # confident, input-dependent outputs
    diff = np.abs(fast - exact).max()
    assert diff <= FAST_TOLERANCE, diff
    np.testing.assert_allclose(fast.sum(axis=1), 1.0, atol=1e-9)
    assert "channels-last" in pr.prepare_fast()


def _mixed_batch(n_real=6, n_noise=6, seed=1):
    rng = np.random.default_rng(seed)
    return np.concatenate([_real_like_batch(n_real), rng.normal(0, 1, (n_noise, 3, 224, 224)).astype(np.float32)])


def test_fast_path_bf16_kept_when_within_tolerance():
    # bf16 is forced here (emulated on CPUs without it) so the reduced-precision branch used on CUDA and
    # AVX512-BF16/AMX machines is exercised everywhere. The tiny network keeps the emulation cheap.
    m = make_model(TINY, CLASSES3, seed=4, sharpen=6.0)
    pr = Predictor(m, card_defaults(m, CLASSES3, name="t"), "cpu")
    x = _mixed_batch()
    exact = pr.predict_batch(x)
    fast = pr.fast_predict_batch(x, bf16=True)
    how = pr.prepare_fast(bf16=True)
    assert "bfloat16 autocast" in how and "traced" in how  # passed its check, still in use; traced on a CPU
    assert np.ptp(exact[:, 0]) > 0.02
    diff = np.abs(fast - exact).max()
    assert 0 < diff <= FAST_TOLERANCE, diff  # > 0: bf16 really was used
    assert pr.fast_reduced_error <= FAST_TOLERANCE / 2


def test_fast_path_drops_bf16_that_would_break_the_tolerance():
    # A network whose logits swing on small feature differences (confident, input-dependent): bf16 rounding
    # moves its probabilities by more than the tolerance, so the fast path must notice and use fp32.
    pr = _predictor(TINY, seed=4)
    x = _mixed_batch()
    exact = pr.predict_batch(x)
    assert np.ptp(exact[:, 0]) > 0.5
    fast = pr.fast_predict_batch(x, bf16=True)
    assert pr.fast_reduced_error > FAST_TOLERANCE / 2  # bf16 was tried and measured...
    assert not pr.fast_uses_bf16() and "autocast" not in pr.prepare_fast(bf16=True)  # ...and dropped
    assert np.abs(fast - exact).max() <= FAST_TOLERANCE
    assert np.abs(pr.fast_predict_batch(x, bf16=True) - exact).max() <= FAST_TOLERANCE


def test_lime_checks_bf16_on_every_film_and_uses_fp32_on_one_it_fails(monkeypatch):
    """bf16's check on one film cannot speak for the next, either way: this network saturates on a noise
    film (bf16 exact there) and swings on a chest-like one. LIME checks each film's unperturbed image
    first, so the chest-like film is explained in fp32 and the next noise film in bf16 again, each
    precision's copy built once."""
    from cxrviewer import inference
    from cxrviewer.explain import LimeSettings, explain_lime

    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)  # as on AMX machines; emulated elsewhere
    pr = _predictor(TINY, seed=4)
    built = []
    copy_of = pr._fast_copy
    monkeypatch.setattr(pr, "_fast_copy", lambda dev, bf16: built.append(bf16) or copy_of(dev, bf16))
    settings = LimeSettings(num_samples=48, settle_from=0)
    noise = np.random.default_rng(0).integers(0, 256, (300, 260)).astype(np.uint8)
    first = explain_lime(pr, noise, None, settings)
    assert first.settings["fast_error"] <= FAST_TOLERANCE / 2 and "autocast" in pr.prepare_fast()
    film = chest_like(seed=100)
    second = explain_lime(pr, film, None, settings)
    assert second.settings["fast_error"] > FAST_TOLERANCE / 2
    assert "autocast" not in pr.prepare_fast() and not pr.fast_uses_bf16()
    exact = pr.predict_batch(preprocess_gray(film, pr.spec)[0][None])[0]
    assert second.probability == pytest.approx(exact[second.class_index], abs=1e-4)  # sampled in fp32
    third = explain_lime(pr, noise, None, settings)
    assert third.settings["fast_error"] <= FAST_TOLERANCE / 2 and "autocast" in pr.prepare_fast()
    np.testing.assert_allclose(third.segment_weights, first.segment_weights, atol=1e-9)  # bf16, as the first
    assert explain_lime(pr, film, None, settings).settings["fast_error"] > FAST_TOLERANCE / 2
    assert built == [True, False]  # switched between the two copies, never rebuilt
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert explain_lime(pr, film, None, settings).settings["fast_error"] is None  # fp32: nothing to check


@pytest.mark.parametrize("bf16", [False, True])
def test_lime_takes_the_top_class_from_the_exact_check_without_a_forward_of_its_own(monkeypatch, bf16):
    """Told no class, LIME explains the one the reader is shown on top (the exact path's), and learns it
    from the exact forward the bf16 check makes anyway (fp32: one exact forward instead of a fast one):
    every fast film is one of the samples. The probability it reports is the exact one either way."""
    from cxrviewer import inference
    from cxrviewer.explain import LimeSettings, explain_lime

    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: bf16)
    m = make_model(TINY, CLASSES3, seed=4, sharpen=6.0)
    pr = Predictor(m, card_defaults(m, CLASSES3, name="t"), "cpu")
    film = chest_like(seed=100)
    exact = pr.predict_batch(preprocess_gray(film, pr.spec)[0][None])[0]
    exact_top = int(np.argmax(exact))
    fast_rows, exact_calls = [], []
    fast_predict, exact_logits = pr.fast_predict_batch, pr._exact_logits
    monkeypatch.setattr(pr, "fast_predict_batch", lambda x, **kw: fast_rows.append(len(x)) or fast_predict(x, **kw))
    monkeypatch.setattr(pr, "_exact_logits", lambda dev, t: exact_calls.append(len(t)) or exact_logits(dev, t))
    result = explain_lime(pr, film, None, LimeSettings(num_samples=48, settle_from=0))
    assert result.class_index == exact_top
    assert result.probability == pytest.approx(exact[exact_top], abs=1e-6)  # the reader's, not bf16's
    assert (result.settings["fast_error"] is not None) == bf16
    assert exact_calls == [1]
    assert sum(fast_rows) == result.settings["samples_used"] == 48
    # Told the class, only the bf16 check runs the exact path (in fp32 nothing does)
    other = (exact_top + 1) % len(CLASSES3)
    told = explain_lime(pr, film, other, LimeSettings(num_samples=48, settle_from=0))
    assert exact_calls == [1, 1] if bf16 else exact_calls == [1]
    assert told.probability == pytest.approx(exact[other], abs=1e-6)


def test_bf16_path_folds_batch_norm_in_fp32_and_stays_exact_in_fp32():
    # The bf16 copy has its batch norms folded into the convolutions (in fp32, before any rounding): run
    # in fp32 the folded copy must give the network's own outputs.
    from cxrviewer.models import create_model

    torch.manual_seed(0)
    model = calibrate(create_model("mobilenet_lung", 3, pretrained=None), seed=0).eval()
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded, model, 224)
    assert n >= 50  # MobileNetV2: every conv of every inverted residual
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(_real_like_batch(3))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-3, rtol=1e-3)  # fp32 reassociation only
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the reference untouched
    pr = Predictor(model, card_defaults(model, CLASSES3, name="m"), "cpu")
    assert "batch norms folded" in pr.prepare_fast(bf16=True)


@pytest.mark.parametrize("arch, kept", [("mobilenet_lung", 3), ("mobilenetv2", 2)])
def test_reduced_precision_copy_runs_the_models_input_side_in_fp32(monkeypatch, arch, kept):
    """MobileNet-Lung declares its stem, stem SE and first block (``reduced_precision_fp32``): inside the
    bf16 copy they take and give fp32, the blocks after them bf16; the plain baseline has no stem SE."""
    from cxrviewer import inference as I
    from cxrviewer.models import create_model

    torch.manual_seed(0)
    model = calibrate(create_model(arch, 3, pretrained=None), seed=0).eval()
    pr = Predictor(model, card_defaults(model, CLASSES3, name="m"), "cpu")
    monkeypatch.setattr(I, "TRACE_FAST_CPU", False)  # eager, so hooks see every module
    assert f"{kept} input-side modules in fp32" in pr.prepare_fast(bf16=True)
    fast = pr._fast_copy(torch.device("cpu"), True)[0]
    wrapped = [n for n, m in fast.named_modules() if isinstance(m, I.FullPrecision)]
    assert len(wrapped) == kept and all(n.removeprefix("model.") in model.reduced_precision_fp32 for n in wrapped)
    seen = {}
    for name in ("model.backbone.features.0", "model.backbone.features.1", "model.backbone.features.2"):
        fast.get_submodule(name).register_forward_hook(
            lambda mod, args, out, name=name: seen.update({name: (args[0].dtype, out.dtype)}))
    with torch.inference_mode():
        fast(torch.from_numpy(_real_like_batch(2)).contiguous(memory_format=torch.channels_last))
    assert seen["model.backbone.features.0"] == seen["model.backbone.features.1"] == (torch.float32, torch.float32)
    assert seen["model.backbone.features.2"][1] == torch.bfloat16  # the rest of the trunk in bf16
    assert all(not isinstance(m, I.FullPrecision) for m in pr.model.modules())  # the exact model untouched


def test_a_model_naming_a_module_it_has_not_for_fp32_is_refused():
    from cxrviewer.inference import keep_in_fp32
    from cxrviewer.models import create_model

    model = create_model("mobilenetv2", 3, pretrained=None)
    assert keep_in_fp32(model, ("stem_se", "backbone.features.0"), "cpu") == 1  # absent stem SE: skipped
    with pytest.raises(AttributeError, match="backbone.stem"):
        keep_in_fp32(model, ("backbone.stem",), "cpu")


def test_batch_norm_folding_undone_when_a_guessed_pair_is_not_in_sequence():
    # conv1/bn1 by name, but the block normalises its input before the convolution: folding would change
    # the result, so it must be detected and undone.
    class PreNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.conv1(self.bn1(x)).mean(dim=(2, 3))

    torch.manual_seed(0)
    ref = PreNorm().eval()
    with torch.no_grad():
        ref.bn1.running_mean.uniform_(-1, 1)
        ref.bn1.running_var.uniform_(0.5, 2)
    model = copy.deepcopy(ref)
    assert fold_batchnorm(model, ref, 32) == 0
    assert isinstance(model.bn1, torch.nn.BatchNorm2d) and type(model.conv1) is torch.nn.Conv2d
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_fast_path_does_not_touch_the_exact_model():
    pr = _predictor()
    before = {k: v.clone() for k, v in pr.model.state_dict().items()}
    pr.fast_predict_batch(_real_like_batch(3))
    for k, v in pr.model.state_dict().items():
        assert torch.equal(v, before[k]) and v.stride() == before[k].stride(), k  # same layout, unfolded


def test_warming_the_fast_path_in_the_background_never_holds_up_a_reading(monkeypatch):
    """The viewer prepares LIME's fast copy on a worker after a model's first reading; tracing it takes
    seconds for a big network. A reading asked for meanwhile must not wait for it, and the copy is then
    installed and used: the first explanation does not build it again. In fp32: on a CPU with native bf16
    the first batch's precision check may rightly refuse bf16 and rebuild, which is not what this is about."""
    from cxrviewer import inference

    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    pr = _predictor()
    tracing, release = threading.Event(), threading.Event()
    real_trace = Predictor._trace_and_freeze

    def slow_trace(self, fast, dev):
        tracing.set()
        assert release.wait(30)
        return real_trace(self, fast, dev)

    monkeypatch.setattr(Predictor, "_trace_and_freeze", slow_trace)
    warmed = {}
    worker = threading.Thread(target=lambda: warmed.update(how=pr.warm_fast()))
    worker.start()
    assert tracing.wait(30)
    done = {}
    reader = threading.Thread(target=lambda: done.update(pred=pr.predict_film(_film())))
    reader.start()
    reader.join(10)
    try:
        assert "pred" in done, "the reading waited for the fast copy to be traced"
    finally:
        release.set()
        worker.join(30)
    assert "traced" in warmed["how"] and pr.prepare_fast() == warmed["how"]
    monkeypatch.setattr(Predictor, "_fast_copy", lambda *a: pytest.fail("the warmed copy was built again"))
    x = _real_like_batch(3)
    assert np.abs(pr.fast_predict_batch(x) - pr.predict_batch(x)).max() <= FAST_TOLERANCE


def test_a_warmed_copy_never_replaces_one_built_meanwhile(monkeypatch):
    pr = _predictor()
    real_trace = Predictor._trace_and_freeze

    built = []

    def trace_while_an_explanation_builds_its_own(self, fast, dev):
        monkeypatch.setattr(Predictor, "_trace_and_freeze", real_trace)
        self.prepare_fast()  # what an explanation started meanwhile does
        built.append(self._fast)
        return real_trace(self, fast, dev)

    monkeypatch.setattr(Predictor, "_trace_and_freeze", trace_while_an_explanation_builds_its_own)
    pr.warm_fast()
    assert built and pr._fast is built[0]


def test_fast_path_falls_back_to_eager_when_tracing_fails(monkeypatch):
    pr = _predictor()

    def no_trace(*a, **k):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    x = _real_like_batch(3)
    assert "traced" not in pr.prepare_fast()
    assert np.abs(pr.fast_predict_batch(x) - pr.predict_batch(x)).max() <= FAST_TOLERANCE
    how = pr.prepare_fast(bf16=True)  # the reduced-precision copy falls back the same way
    assert "traced" not in how and "eager" in how
    assert pr.fast_predict_batch(x, bf16=True).shape == (3, len(pr.classes))


def test_traced_reduced_precision_copy_computes_what_its_eager_copy_does():
    # Tracing the bf16 copy (trunk under autocast, head in fp32) must change speed only: same outputs as
    # the same copy run eagerly, at a batch size other than the one traced.
    from cxrviewer import inference as I

    m = make_model(TINY, CLASSES3, seed=4, sharpen=6.0)
    x = _mixed_batch(3, 2)
    got = {}
    for trace in (False, True):
        pr = Predictor(m, card_defaults(m, CLASSES3, name="t"), "cpu")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(I, "TRACE_FAST_CPU", trace)
            got[trace] = pr.fast_predict_batch(x, bf16=True)
            assert ("traced" in pr.prepare_fast(bf16=True)) == trace
    np.testing.assert_allclose(got[True], got[False], atol=1e-6)


# --- devices --------------------------------------------------------------------------------------


def test_select_device_order_and_overrides(monkeypatch):
    monkeypatch.delenv(devmod.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "mps_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setattr(devmod, "mps_available", lambda: True)
    assert select_device() == torch.device("mps")  # auto: MPS before CPU
    assert select_device("cpu") == torch.device("cpu")  # argument wins
    monkeypatch.setenv(devmod.ENV_VAR, "cpu")
    assert select_device() == torch.device("cpu")  # environment
    assert select_device("auto") == torch.device("mps")  # argument over environment
    monkeypatch.setenv(devmod.ENV_VAR, "tpu-please")
    notes = []
    assert select_device(None, notes) == torch.device("mps") and "CXRVIEWER_DEVICE" in notes[0]
    with pytest.raises(ValueError, match="unknown device"):
        select_device("quantum")


def test_unavailable_device_falls_back_with_notice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "mps_available", lambda: False)
    notes = []
    assert select_device("cuda", notes) == torch.device("cpu")
    assert "cuda" in notes[0] and "CPU" in notes[0]
    notes.clear()
    assert select_device("mps", notes) == torch.device("cpu") and "MPS" in notes[0]


def test_describe_and_bf16_detection(monkeypatch):
    assert describe_device("cpu").startswith("CPU (")
    assert isinstance(cpu_supports_bf16(), bool)
    monkeypatch.setattr(devmod.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_supports_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_supports_bf16() is True
    assert "bf16" in describe_device("cpu")


def test_runtime_cuda_failure_falls_back_to_cpu(monkeypatch):
    """A fake GPU: the predictor believes it is on CUDA and the first forward fails as a lost device does.
    The request must still complete, on the CPU, with a notice; later calls stay on the CPU."""
    pr = _predictor()
    film = _film(seed=5)
    expected = pr.predict_film(film).probs
    real_forward = pr.model.forward_with_features
    calls = []

    def failing(x):
        calls.append(pr.device.type)
        if pr.device.type == "cuda":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_forward(x)

    monkeypatch.setattr(pr.model, "forward_with_features", failing)
    monkeypatch.setattr(pr, "_to_device", lambda t, dev: t)  # the fake GPU keeps tensors in host memory
    pr.device = torch.device("cuda")  # what Predictor would hold on a GPU machine
    res = pr.predict_film(film)
    assert res.device == "cpu" and pr.device == torch.device("cpu")
    assert np.array_equal(res.probs, expected)
    assert any("GPU failed" in n for n in res.notices)
    assert calls == ["cuda", "cpu"]  # failed once on the "GPU", then completed on the CPU
    # the batch paths fall back the same way
    pr.device = torch.device("cuda")
    x = _real_like_batch(2)
    assert np.abs(pr.fast_predict_batch(x) - pr.predict_batch(x)).max() <= FAST_TOLERANCE
    assert pr.device == torch.device("cpu")


def test_cpu_errors_are_not_swallowed(monkeypatch):
    pr = _predictor()

    def broken(x):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(pr.model, "forward_with_features", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pr.predict_film(_film())
    assert pr.notices == []


@pytest.fixture
def tf32_flags():
    """The process-wide TF32 flags, put back afterwards (cuBLAS's is a property monkeypatch cannot
    restore under pytest 9); cuDNN's starts at its default, True."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_requesting_cuda_without_gpu_runs_on_cpu(tmp_path, tf32_flags):
    p = make_checkpoint(tmp_path / "t.safetensors")
    pr = Predictor.from_checkpoint(p, "cuda")
    assert pr.device == torch.device("cpu") and pr.notices
    assert pr.predict_film(_film()).device == "cpu"
    # forcing the device object past select_device: the move itself fails and is caught
    pr2 = Predictor(make_model(), card_defaults(make_model(), CLASSES3, name="t"), torch.device("cuda"))
    assert pr2.device == torch.device("cpu") and "Could not use cuda" in pr2.notices[0]
    # asking for a GPU turned its TF32 convolutions off before anything ran there (exact means fp32)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_exact_and_fast(tmp_path):
    m = realistic_mobilenet_lung()
    p = save_checkpoint(tmp_path / "ml.safetensors", m, card_defaults(m, ["Normal", "Lung Opacity", "Viral Pneumonia"]))
    cpu = Predictor.from_checkpoint(p, "cpu")
    gpu = Predictor.from_checkpoint(p, "cuda")
    x = _real_like_batch(8)
    exact = cpu.predict_batch(x)
    # fp32 on both (TF32 convolutions, cuDNN's default, keep 10 mantissa bits), NCHW on the GPU
    gap = np.abs(gpu.predict_batch(x) - exact).max()
    assert gap < 1e-4, gap
    assert not torch.backends.cudnn.allow_tf32 and gpu.memory_format == torch.contiguous_format
    film = gpu.predict_film(_film())
    assert film.device.startswith("cuda") and np.abs(film.probs - cpu.predict_film(_film()).probs).max() < 1e-4
    # bf16 where its check passes on these inputs (this random-backbone model's probabilities move far more
    # under bf16 than a trained network's, and the check may refuse it: fp32 then), within tolerance either way
    fast_gap = np.abs(gpu.fast_predict_batch(x) - exact).max()
    assert fast_gap <= FAST_TOLERANCE, fast_gap
    print(f"CUDA exact vs CPU exact {gap:.2e}; CUDA fast ({'bf16' if gpu.fast_uses_bf16() else 'fp32'}) "
          f"vs CPU exact {fast_gap:.2e}")
