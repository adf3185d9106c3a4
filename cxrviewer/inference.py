"""Running a checkpoint on films: the exact path the reader sees and the fast path explanations use.

Two paths, on purpose:

- **Exact** (:meth:`Predictor.predict_film`, :meth:`Predictor.predict_batch`): the checkpoint's network as
  trained, fp32, eval mode, no autograd, NCHW, with the card's calibration temperature. These are the
  probabilities displayed, so nothing here trades accuracy for speed.
- **Fast** (:meth:`Predictor.fast_predict_batch`): for LIME and other explanation work that scores hundreds
  of perturbed copies of one film. A private copy of the network in channels-last layout, run under
  ``torch.inference_mode`` in chunks. It uses bf16 autocast only where the hardware computes bf16 natively
  (CUDA, or a CPU with AVX512-BF16/AMX), because emulated bf16 is slower than fp32, with the batch norms
  folded into the convolutions first, in fp32 (:func:`fold_batchnorm`); since bf16's effect depends on the
  network and the film, it is checked against the exact path on the first real inputs and again on each
  film an explanation starts (:meth:`Predictor.verify_fast`), and an fp32 copy serves wherever it would
  break the tolerance. On the CPU the copy, fp32 or bf16, is then traced and frozen (:data:`TRACE_FAST_CPU`):
  in fp32 that folds batch norm and fuses conv+add+relu; in bf16 it removes the per-op dispatch and
  autocast overhead, worth most for networks of many small layers (MobileNet, Fusion-TL's three trunks;
  docs/benchmarks.md). Probabilities stay within :data:`FAST_TOLERANCE` (max absolute difference) of the
  exact path; tests/test_inference.py measures it.

The preprocessing is :func:`cxrviewer.preprocess.preprocess_film`, the trainer's own. A CUDA failure at run
time (driver reset, out of memory, a GPU that went away) moves the predictor to the CPU, records a notice
and completes the request there. All public methods hold one lock per predictor: the viewer calls from
worker threads, and the network records its last attention map on itself.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cxrviewer.checkpoint import card_spec, load_checkpoint, validate_card
from cxrviewer.device import cpu_supports_bf16, exact_fp32, select_device
from cxrviewer.ood import OodGuard, OodResult, with_header
from cxrviewer.preprocess import Geometry, preprocess_film, preprocess_gray

log = logging.getLogger(__name__)

#: Largest absolute probability difference allowed between the fast and the exact path (see module doc).
FAST_TOLERANCE = 0.02
EXACT_CHUNK = 32
FAST_CHUNK_CPU = 16
FAST_CHUNK_GPU = 64


class InferenceError(RuntimeError):
    """A model ran but its output cannot be used (e.g. not finite)."""


@dataclass
class Prediction:
    """One film's result. ``probs`` are float64, calibrated, summing to 1; ``logits`` are the raw (before
    temperature) outputs; ``attention`` is the model's own spatial attention in model-input space (map it
    onto the film with ``geometry.to_film``), None for models without one."""

    classes: tuple
    probs: np.ndarray
    logits: np.ndarray
    top_index: int
    top_class: str
    features: np.ndarray
    attention: Optional[np.ndarray]
    geometry: Geometry
    model_name: str
    device: str
    notices: list = field(default_factory=list)
    ood: Optional[OodResult] = None  # None: the model carries no out-of-distribution description
    first_heatmap: str = "gradcam"  # the model's choice of map to open on (CXRModel.first_heatmap)

    @property
    def top_prob(self) -> float:
        return float(self.probs[self.top_index])

    def ranked(self) -> list:
        """(class, probability) pairs, most probable first."""
        order = np.argsort(-self.probs, kind="stable")
        return [(self.classes[i], float(self.probs[i])) for i in order]

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "classes": list(self.classes),
            "probabilities": [float(p) for p in self.probs],
            "top_class": self.top_class,
            "top_probability": self.top_prob,
            "device": self.device,
            "ood": self.ood.to_dict() if self.ood is not None else None,
        }


def softmax64(logits, temperature: float = 1.0) -> np.ndarray:
    """Calibrated softmax in float64 (rows sum to 1 to machine precision, as the panel shows them)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _is_device_failure(exc: BaseException) -> bool:
    # Driver errors, device-side asserts, OOM and "no driver" are RuntimeErrors (AcceleratorError and
    # OutOfMemoryError derive from it); a CPU-only build raises AssertionError("Torch not compiled with CUDA");
    # an operator missing on Apple MPS raises NotImplementedError.
    return isinstance(exc, (RuntimeError, AssertionError, NotImplementedError))


class Predictor:
    """A loaded checkpoint bound to a device. Build with :meth:`from_checkpoint`, or from a model and its
    card (the trainer does that to evaluate). ``device`` None means automatic (see
    :func:`cxrviewer.device.select_device`)."""

    def __init__(self, model, card: dict, device=None, *, path=None, notices: Optional[list] = None):
        self.card = validate_card(card, path)
        self.spec = card_spec(self.card)
        self.classes = tuple(self.card["classes"])
        self.temperature = float(self.card["temperature"])
        self.model_name = self.card["name"]
        self.display_name = self.card["display_name"]
        self.path = Path(path) if path is not None else None
        self.notices: list = list(notices or [])
        self.lock = threading.RLock()
        self.model = model.eval()
        self.ood_guard = OodGuard.from_card(self.card)
        pop = (self.card.get("card") or {}).get("population")
        self.population = pop if isinstance(pop, dict) else None  # e.g. the trained age range
        self._fast = None  # (device, bf16, run, description)
        self._fast_spare = None  # the other precision's copy, kept so a film's verdict switches without a rebuild
        self._reduced_ok: Optional[bool] = None  # reduced precision checked on real inputs: None = not yet
        self.fast_reduced_error: Optional[float] = None  # what that check measured
        self.device = torch.device("cpu")
        dev = device if isinstance(device, torch.device) else select_device(device, self.notices)
        with self.lock:
            self._move_to(dev)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, device=None) -> "Predictor":
        """Load and check a checkpoint (on the CPU, then moved, so a GPU failure cannot lose it)."""
        notices: list = []
        dev = device if isinstance(device, torch.device) else select_device(device, notices)
        model, card = load_checkpoint(path, "cpu")
        return cls(model, card, dev, path=path, notices=notices)

    def _notice(self, msg: str) -> None:
        log.warning(msg)
        self.notices.append(msg)

    def _move_to(self, dev: torch.device) -> None:
        try:
            self._place(dev)
        except Exception as e:
            if dev.type == "cpu" or not _is_device_failure(e):
                raise
            self._notice(f"Could not use {dev} ({_short(e)}); running on the CPU")
            self._place(torch.device("cpu"))
        self._fast, self._fast_spare, self._reduced_ok = None, None, None

    def _place(self, dev: torch.device) -> None:
        """Put the network on ``dev``, channels-last where the model asks for it
        (``CXRModel.exact_channels_last``) and the device is a CPU: cuDNN's fp32 NHWC convolutions were
        slower than NCHW on an H200, and MPS's NHWC support varies by operator. The exact path's inputs
        follow (:meth:`_exact_input`)."""
        nhwc = dev.type == "cpu" and bool(getattr(self.model, "exact_channels_last", False))
        self.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        exact_fp32(dev)
        self.model.to(dev, memory_format=self.memory_format)
        self.device = dev

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        self._notice(f"The GPU failed ({_short(exc)}); switched to the CPU for this model")
        self._fast, self._fast_spare, self._reduced_ok = None, None, None  # other hardware: check afresh
        try:
            self._place(torch.device("cpu"))
        except Exception:  # a dead CUDA context can fail the copy back; reload from the file then
            if self.path is None:
                raise
            self.model, _ = load_checkpoint(self.path, "cpu")
            self._place(torch.device("cpu"))

    def _to_device(self, t: torch.Tensor, dev: torch.device) -> torch.Tensor:
        return t.to(dev, non_blocking=dev.type == "cuda")

    def _exact_input(self, t: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """An exact-path input on ``dev`` in the network's memory format (see :meth:`_place`)."""
        return self._to_device(t, dev).contiguous(memory_format=self.memory_format)

    def _guarded(self, fn):
        """Run ``fn(device)``; on a GPU failure move to the CPU and run it again there."""
        dev = self.device
        try:
            return fn(dev)
        except Exception as e:
            if dev.type == "cpu" or not _is_device_failure(e):  # CUDA, and MPS likewise
                raise
            self._fall_back_to_cpu(e)
            return fn(self.device)

    # ---------------------------------------------------------------------------------------------
    def preprocess(self, film) -> tuple:
        """The model input for a film, (3, S, S) float32, and its Geometry (the shared preprocessing)."""
        return preprocess_film(film, self.spec)

    def _as_batch(self, x) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        if not isinstance(t, torch.Tensor):
            raise TypeError("expected a numpy array or torch tensor of shape (B, 3, S, S)")
        t = t.detach().to("cpu", torch.float32)
        if t.ndim == 3:
            t = t[None]
        s = self.spec.input_size
        if t.ndim != 4 or t.shape[1] != 3 or tuple(t.shape[2:]) != (s, s):
            raise ValueError(f"expected input of shape (B, 3, {s}, {s}), got {tuple(t.shape)}")
        return t

    def _check_finite(self, logits: torch.Tensor) -> None:
        if not bool(torch.isfinite(logits).all()):
            raise InferenceError(f"model {self.model_name} produced non-finite outputs")

    # --- exact path --------------------------------------------------------------------------------
    def predict_film(self, film) -> Prediction:
        """Exact, calibrated prediction for one film, with pooled features and the model's attention."""
        x, geo = self.preprocess(film)
        pred = self.predict_input(x, geo)
        pred.ood = with_header(pred.ood, getattr(film, "info", None), self.population)
        return pred

    def predict_gray(self, gray: np.ndarray) -> Prediction:
        """Same as :meth:`predict_film` for an already rendered uint8 grey image."""
        x, geo = preprocess_gray(gray, self.spec)
        return self.predict_input(x, geo)

    def predict_input(self, x, geometry: Geometry) -> Prediction:
        """Exact prediction for one preprocessed input (3, S, S) whose placement is ``geometry``."""
        batch = self._as_batch(x)[:1]
        with self.lock:
            def run(dev):
                with torch.inference_mode():
                    logits, pooled = self.model.forward_with_features(self._exact_input(batch, dev))
                    amap = self.model.attention_map()
                    return (logits.float().cpu(), pooled.float().cpu(),
                            None if amap is None else amap.float().cpu())

            logits, pooled, amap = self._guarded(run)
            notices = list(self.notices)
            device = str(self.device)
        self._check_finite(logits)
        probs = softmax64(logits.numpy()[0], self.temperature)
        top = int(np.argmax(probs))
        features = pooled.numpy()[0].reshape(-1).copy()
        attention = None
        if amap is not None:
            a = amap[0] if amap.ndim == 3 else amap
            attention = np.ascontiguousarray(a.reshape(a.shape[-2], a.shape[-1]).numpy(), dtype=np.float32)
        return Prediction(
            classes=self.classes, probs=probs, logits=logits.numpy()[0].astype(np.float64), top_index=top,
            top_class=self.classes[top], features=features, attention=attention,
            geometry=geometry, model_name=self.model_name, device=device, notices=notices,
            ood=self._assess(features), first_heatmap=getattr(self.model, "first_heatmap", "gradcam"),
        )

    def _assess(self, features: np.ndarray) -> Optional[OodResult]:
        if self.ood_guard is None:
            return None
        try:
            return self.ood_guard.assess(features)
        except ValueError as e:  # features of another size: a card that does not match its weights
            log.warning("out-of-distribution score not available: %s", e)
            return None

    def predict_batch(self, x, batch_size: int = EXACT_CHUNK) -> np.ndarray:
        """Exact calibrated probabilities (B, C) float64 for preprocessed inputs (B, 3, S, S)."""
        return softmax64(self.logits_batch(x, batch_size), self.temperature)

    def logits_batch(self, x, batch_size: int = EXACT_CHUNK) -> np.ndarray:
        """Exact raw logits (B, C) float32 (what the trainer's calibration fits the temperature on)."""
        t = self._as_batch(x)
        out = []
        with self.lock:
            for i in range(0, t.shape[0], max(1, int(batch_size))):
                chunk = t[i : i + batch_size]

                out.append(self._guarded(lambda dev, chunk=chunk: self._exact_logits(dev, chunk)))
        logits = torch.cat(out) if out else torch.zeros((0, len(self.classes)))
        self._check_finite(logits)
        return logits.numpy()

    # --- fast path ---------------------------------------------------------------------------------
    def fast_uses_bf16(self, device=None) -> bool:
        """Whether the fast path would use reduced precision on ``device`` (before or after its check)."""
        dev = torch.device(device) if device is not None else self.device
        if self._reduced_ok is False:
            return False
        if dev.type == "cuda":
            return True
        if dev.type == "cpu":
            return cpu_supports_bf16()
        return False

    def prepare_fast(self, bf16: Optional[bool] = None) -> str:
        """Build the fast copy now (the viewer builds it in the background with :meth:`warm_fast`, so the
        first explanation does not pay for it); returns a description of what the fast path does."""
        with self.lock:
            return self._guarded(lambda dev: self._fast_runner(dev, bf16)[1])

    def warm_fast(self) -> str:
        """:meth:`prepare_fast` for a background thread: the copy is made under the predictor's lock (a
        fraction of a second), but traced and frozen outside it (1-8 s by network on a 2-core CPU), so a
        reading of another film is not kept waiting meanwhile. Installed only if nothing changed in the
        meantime (device, the bf16 verdict, a copy built by an explanation first)."""
        with self.lock:
            dev = self.device
            use_bf16 = self.fast_uses_bf16(dev)
            if self._fast_built_for(dev, use_bf16):
                return self._fast[3]
            fast, how = self._fast_copy(dev, use_bf16)
        built = self._fast_finish(fast, dev, use_bf16, how)
        with self.lock:
            if self._fast is None and self.device == dev and self.fast_uses_bf16(dev) == use_bf16:
                self._fast = built
            return built[3]

    def _fast_runner(self, dev: torch.device, bf16: Optional[bool]):
        use_bf16 = self.fast_uses_bf16(dev) if bf16 is None else bool(bf16) and self._reduced_ok is not False
        if not self._fast_built_for(dev, use_bf16):
            spare = self._fast_spare
            if spare is not None and spare[0] == dev and spare[1] == use_bf16:
                self._fast_spare, self._fast = self._fast, spare
            else:
                fast, how = self._fast_copy(dev, use_bf16)
                self._fast_spare, self._fast = self._fast, self._fast_finish(fast, dev, use_bf16, how)
        return self._fast[2], self._fast[3]

    def _fast_built_for(self, dev: torch.device, use_bf16: bool) -> bool:
        """Whether the fast copy held is the one for this device and precision."""
        return self._fast is not None and self._fast[0] == dev and self._fast[1] == use_bf16

    def _fast_copy(self, dev: torch.device, use_bf16: bool):
        """The private copy of the network (reads ``self.model``: under the lock) and its description."""
        fast = copy.deepcopy(self.model).eval()
        for p in fast.parameters():
            p.requires_grad_(False)
        fast.records_attention = False  # nobody reads the attention of perturbed copies
        folded = fold_batchnorm(fast, self.model, self.spec.input_size) if use_bf16 else 0
        fast = fast.to(dev, memory_format=torch.channels_last)
        how = "channels-last" + (f", {folded} batch norms folded in fp32" if folded else "")
        if use_bf16:
            amp_dtype = torch.bfloat16
            if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
                amp_dtype = torch.float16
            names = getattr(self.model, "reduced_precision_fp32", ()) if FP32_INPUT_SIDE else ()
            kept = keep_in_fp32(fast, names, dev.type)
            how += f", {kept} input-side modules in fp32" if kept else ""
            fast = ReducedPrecisionTrunk(fast, dev.type, amp_dtype).eval()
        return fast, how

    def _fast_finish(self, fast, dev: torch.device, use_bf16: bool, how: str) -> tuple:
        """Trace and freeze the copy where that pays (touches only the copy: no lock needed) ->
        the ``self._fast`` tuple."""
        runner, traced = fast, None
        if dev.type == "cpu" and TRACE_FAST_CPU:
            traced = self._trace_and_freeze(fast, dev)
        if traced is not None:
            runner = traced
            how += ", traced and frozen" + ("" if use_bf16 else " (batch norm folded)")
        else:
            how += ", eager"
        if isinstance(fast, ReducedPrecisionTrunk):
            how += f", {str(fast.dtype).replace('torch.', '')} autocast (head in fp32)"

        def run(chunk: torch.Tensor) -> torch.Tensor:
            xb = self._to_device(chunk, dev).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return runner(xb).float().cpu()

        return dev, use_bf16, run, how

    def _trace_and_freeze(self, fast, dev):
        """TorchScript-freeze the copy (in fp32 this also folds batch norm and fuses conv+add+relu; under
        autocast it removes the per-op Python and dispatch overhead); checked against the eager copy on a
        different batch size, so a network whose trace captured a fixed shape or a Python branch is simply
        run eagerly instead. The check is as strict for a bf16 copy as for fp32 on purpose: DPN-SE's frozen
        bf16 graph rounds differently (logits 1.1% away from its eager bf16 copy), and accepting it made the
        exact-path check refuse bf16 altogether (fast path 1.23x eager in fp32, against 2.86x for the eager
        bf16 copy)."""
        s = self.spec.input_size
        g = torch.Generator().manual_seed(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.inference_mode(False), torch.no_grad():
                    ex = torch.randn(2, 3, s, s, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
                    traced = torch.jit.freeze(torch.jit.trace(fast, ex, check_trace=False))
                    probe = torch.randn(3, 3, s, s, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
                    ref = fast(probe).float()
                    got = traced(probe).float()
        except Exception as e:  # scripting limits of some networks: eager is still correct
            log.info("fast path: tracing %s failed (%s); using eager", self.model_name, _short(e))
            return None
        if not _same_function(ref, got):
            log.info("fast path: traced %s disagrees with eager; using eager", self.model_name)
            return None
        return traced

    def fast_predict_batch(self, x, batch_size: Optional[int] = None, bf16: Optional[bool] = None) -> np.ndarray:
        """Calibrated probabilities (B, C) float64 by the fast path, within :data:`FAST_TOLERANCE` of
        :meth:`predict_batch`. ``bf16`` None: reduced precision where the hardware supports it natively;
        True asks for it anyway, False never. Reduced precision is checked on the first real inputs (see
        :meth:`_check_reduced`) and again by each :meth:`verify_fast`; where it exceeds the tolerance the
        fp32 copy serves until a later check passes."""
        t = self._as_batch(x)
        out = []
        with self.lock:
            for_gpu = self.device.type != "cpu"
            n = int(batch_size or (FAST_CHUNK_GPU if for_gpu else FAST_CHUNK_CPU))
            for i in range(0, t.shape[0], max(1, n)):
                chunk = t[i : i + n]
                out.append(self._guarded(lambda dev, chunk=chunk: self._fast_chunk(dev, bf16, chunk)))
        return self._calibrated(torch.cat(out) if out else torch.zeros((0, len(self.classes))))

    def _calibrated(self, logits: torch.Tensor) -> np.ndarray:
        """Refuse non-finite outputs, then temperature-calibrated probabilities (B, C) float64."""
        self._check_finite(logits)
        return softmax64(logits.numpy(), self.temperature)

    def _fast_chunk(self, dev: torch.device, bf16: Optional[bool], chunk: torch.Tensor) -> torch.Tensor:
        run, _ = self._fast_runner(dev, bf16)
        logits = run(chunk)
        if self._fast[1] and self._reduced_ok is None:
            if not self._check_reduced(dev, chunk, logits):
                run, _ = self._fast_runner(dev, bf16)  # rebuilt in fp32
                logits = run(chunk)
        return logits

    def verify_fast(self, x, with_probs: bool = False):
        """Check reduced precision against the exact path on these inputs now, afresh, and use fp32 until
        the next check if it fails (see :meth:`_check_reduced`). :func:`cxrviewer.explain.explain_lime`
        calls it with every film's unperturbed image before sampling (one exact forward against a hundred or
        more fast ones): the check on one film cannot speak for a film whose features bf16 rounds differently, in
        either direction. Before its input side was kept in fp32 (``CXRModel.reduced_precision_fp32``), the
        bundled adult model's bf16 failed on three of the benchmark's ten films; when the first failure
        made fp32 stick, seven films ran in fp32 instead of three (its LIME 6.4x lime's default instead of
        9.1x; sixteenth session, docs/benchmarks.md).
        -> (the largest probability difference, or None when the fast path runs in fp32 anyway; the exact
        calibrated probabilities of ``x``, or None): the check's own exact forward, so an explainer gets the
        class and the probability the reader is shown without a forward of its own. ``with_probs`` asks for
        them even where the fast path runs in fp32 (one exact forward more)."""
        t = self._as_batch(x)
        with self.lock:
            if self._reduced_ok is False:
                self._reduced_ok = None  # this film's own verdict
            error, exact = self._guarded(lambda dev: self._verify_fast(dev, t, with_probs))
        return error, (self._calibrated(exact) if exact is not None else None)

    def _verify_fast(self, dev: torch.device, t: torch.Tensor, with_probs: bool):
        run, _ = self._fast_runner(dev, None)
        reduced = bool(self._fast[1])
        exact = self._exact_logits(dev, t) if reduced or with_probs else None
        if reduced:
            self._check_reduced(dev, t, run(t), exact)
        return (self.fast_reduced_error if reduced else None), exact

    def _exact_logits(self, dev: torch.device, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(self._exact_input(t, dev)).float().cpu()

    def _check_reduced(self, dev: torch.device, chunk: torch.Tensor, logits: torch.Tensor,
                       exact: Optional[torch.Tensor] = None) -> bool:
        """Compare reduced-precision results with the exact path on (up to) four of the inputs actually
        being explained. How much bf16 rounding moves a probability depends on the network and on how
        much its features vary between films, which no fixed rule can know; measuring it on the real
        inputs makes the tolerance a guarantee. Half the tolerance is required, since only a sample is
        checked; where it fails, the fp32 fast copy (still channels-last, traced) serves and the reduced
        one is kept aside for the next check."""
        k = min(4, chunk.shape[0])
        exact = self._exact_logits(dev, chunk[:k]) if exact is None else exact[:k]
        diff = float(np.abs(softmax64(exact.numpy(), self.temperature)
                            - softmax64(logits[:k].numpy(), self.temperature)).max())
        self._reduced_ok = diff <= FAST_TOLERANCE / 2
        self.fast_reduced_error = diff
        if not self._reduced_ok:
            log.info("fast path: reduced precision moved %s's probabilities by %.3g (> %.3g); using fp32",
                     self.model_name, diff, FAST_TOLERANCE / 2)
        return self._reduced_ok

    def __repr__(self) -> str:
        return f"Predictor({self.model_name!r}, device={self.device})"


TRACE_FAST_CPU = True  # False runs the CPU fast copy eagerly (for A/B measurements and tests)
FP32_INPUT_SIDE = True  # False rounds a model's reduced_precision_fp32 modules too (for A/B measurements)


class ReducedPrecisionTrunk(torch.nn.Module):
    """The fast copy in reduced precision as one module, so it can be traced like the fp32 one: the
    convolutional trunk (the cost) under autocast, the classifier head in fp32 (a few multiply-adds whose
    rounding would otherwise go straight into the logits)."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            pooled = self.model.forward_features(x)
        return self.model.forward_head(pooled.float())


class FullPrecision(torch.nn.Module):
    """One submodule of the reduced-precision copy run in fp32 inside its autocast (see
    ``CXRModel.reduced_precision_fp32``)."""

    def __init__(self, inner: torch.nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = inner, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, enabled=False):
            return self.inner(x.float())


def keep_in_fp32(model: torch.nn.Module, names, device_type: str) -> int:
    """Wrap the submodules ``names`` of ``model`` (a private copy) in :class:`FullPrecision`; names whose
    module is absent (MobileNetV2's ``stem_se`` in the plain baseline) are skipped. -> how many were
    wrapped. A name that is not a submodule path at all is a model's mistake and raises."""
    wrapped = 0
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if leaf not in parent._modules and not hasattr(parent, leaf):
            raise AttributeError(f"{type(model).__name__}.reduced_precision_fp32 names {name!r}, which it has not")
        inner = parent._modules.get(leaf)
        if inner is not None:
            parent._modules[leaf] = FullPrecision(inner, device_type)
            wrapped += 1
    return wrapped


def _same_function(ref: torch.Tensor, got: torch.Tensor) -> bool:
    """Whether a rewritten copy of the network (traced, folded) computes what the network does: the same
    shape and logits equal up to fp32 reassociation, relative to their size."""
    return got.shape == ref.shape and float((ref - got).abs().max()) <= 1e-3 * (1.0 + float(ref.abs().max()))


def fold_batchnorm(model: torch.nn.Module, reference: torch.nn.Module, size: int) -> int:
    """Fold, in fp32, each eval-mode BatchNorm2d that directly follows a Conv2d into that convolution, and
    return how many. For the bf16 path, whose batch norms TorchScript's freezing does not fold under
    autocast: there an unfolded batch norm costs almost as much as its convolution (it is memory-bound),
    and folding before any bf16 rounding keeps the folded weights exact. Pairs are found in
    ``nn.Sequential`` containers (torchvision) and as ``convN``/``bnN`` attributes (timm's ResNet blocks);
    the result is then compared with ``reference`` on a random batch and the model restored if they
    differ (a pair that was not really in sequence), so a wrong guess costs speed, never correctness."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def foldable(conv, bn) -> bool:
        return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
                and conv.out_channels == bn.num_features)

    pairs = []
    for parent in model.modules():
        names = list(parent._modules)
        if isinstance(parent, nn.Sequential):
            pairs += [(parent, a, b) for a, b in zip(names, names[1:])
                      if foldable(parent._modules[a], parent._modules[b])]
        else:
            pairs += [(parent, f"conv{i}", f"bn{i}") for i in ("", 1, 2, 3)
                      if foldable(parent._modules.get(f"conv{i}"), parent._modules.get(f"bn{i}"))]
    if not pairs:
        return 0
    saved = [(parent, a, b, parent._modules[a], parent._modules[b]) for parent, a, b in pairs]
    for parent, a, b in pairs:
        parent._modules[a] = fuse_conv_bn_eval(parent._modules[a], parent._modules[b])
        parent._modules[b] = nn.Identity()
    dev = next(reference.parameters()).device  # the copy is still where the reference is
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        if _same_function(reference(probe).float(), model(probe).float()):
            return len(pairs)
    log.info("fast path: batch-norm folding changed the output; kept unfolded")
    for parent, a, b, conv, bn in saved:
        parent._modules[a], parent._modules[b] = conv, bn
    return 0


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:160]
