"""Hostile input: fuzzed films and model files only ever give a result or the documented error.

The fuzzers live in ``bench/fuzz_loader.py`` and ``bench/fuzz_checkpoint.py`` (10,000 and 2,000 cases there);
here the same machinery runs a few hundred deterministic cases, checks that the harness really catches each
kind of failure, and pins every bug the fuzzers found with an explicit input (docs/robustness.md).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import fuzz_checkpoint as fc  # noqa: E402
import fuzz_loader as fl  # noqa: E402
from dicom_factory import JPEGLSLossless, RLELossless, compress, make_dataset, write  # noqa: E402
from inference_helpers import CLASSES3, TINY, make_checkpoint  # noqa: E402

from cxrviewer.checkpoint import CheckpointError, import_torch_weights, load_checkpoint, read_card  # noqa: E402
from cxrviewer.film import FilmError, load_film  # noqa: E402

FILM_RUN_SEED = 20240601
CHECKPOINT_RUN_SEED = 20240602


@pytest.fixture(scope="module")
def film_target():
    # the bomb cases at the sizes of bench/fuzz_loader.py take seconds each: smaller ones here
    return fl.FilmTarget(fl.build_film_seeds(), fl.make_bombs(kinds=((8, 0), (8, 6)), deflate_mb=16, side=1024))


@pytest.fixture(scope="module")
def checkpoint_target(tmp_path_factory):
    return fc.CheckpointTarget(tmp_path_factory.mktemp("checkpoint-seeds"), tmp_path_factory.mktemp("marker"))


# --- the fuzz runs ---------------------------------------------------------------------------------


def test_film_loader_fuzz(film_target, tmp_path):
    report = fl.run_fuzz(film_target, seed=FILM_RUN_SEED, indices=range(200), jobs=2, workdir=tmp_path)
    assert len(report.results) == 200
    assert not report.failures, fl.format_failures(report)
    outcomes = {r.outcome for r in report.results}
    assert {"film", "FilmError"} <= outcomes  # the mutations reach both ends, not only the first check
    assert len({r.seed for r in report.results}) >= 30


def test_checkpoint_loader_fuzz(checkpoint_target, tmp_path):
    report = fl.run_fuzz(checkpoint_target, seed=CHECKPOINT_RUN_SEED, indices=range(120), jobs=2, workdir=tmp_path)
    assert not report.failures, fl.format_failures(report)
    outcomes = {r.outcome for r in report.results}
    assert {"loaded", "refused"} <= outcomes
    assert not checkpoint_target.marker.exists()


def test_cases_are_deterministic(film_target, checkpoint_target):
    for target in (film_target, checkpoint_target):
        for i in (0, 7, 123):
            a = target.make_case(i, fl.case_rng(5, i))
            b = target.make_case(i, fl.case_rng(5, i))
            assert (a.seed, a.mutation, a.data, a.suffix) == (b.seed, b.mutation, b.data, b.suffix)


class _Probe:
    """A target whose cases each misbehave in one way, to prove the harness notices every kind of failure."""

    name = "probe"
    outcomes = ("ok", "refused")
    error_outcomes = ("refused",)
    behaviours = ("ok", "refused", "raise", "hang", "memory", "modify", "die")

    def make_case(self, index, rng):
        return fl.Case(self.behaviours[index], self.behaviours[index], b"x" * 64, ".bin")

    def child_setup(self, workdir):
        pass

    def execute(self, path, case, workdir):
        how = case.seed
        if how == "raise":
            raise ValueError("boom")
        if how == "hang":
            time.sleep(60)
        if how == "memory":
            assert len(bytearray(b"\x01") * (300 << 20))  # written, so it is resident
        if how == "modify":
            with open(path, "ab") as fh:
                fh.write(b"!")
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return ("refused", False, "no") if how == "refused" else ("ok", False, "")

    def check_after(self, case, workdir):
        return None


def test_harness_catches_every_kind_of_failure(tmp_path):
    report = fl.run_fuzz(_Probe(), seed=0, indices=range(len(_Probe.behaviours)), jobs=2, timeout=1.5, mem_mb=150,
                         workdir=tmp_path)
    got = {r.seed: (r.outcome, r.failure) for r in report.results}
    assert got == {
        "ok": ("ok", False),
        "refused": ("refused", False),
        "raise": ("crash", True),
        "hang": ("hang", True),
        "memory": ("memory", True),
        "modify": ("modified", True),
        "die": ("crash", True),
    }, got
    assert "SIGKILL" in next(r.detail for r in report.results if r.seed == "die")


# --- the pickle payload ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_live_but_never_executed(checkpoint_target, tmp_path):
    marker = checkpoint_target.marker
    # positive control: unpickled the unsafe way, the payload does create its marker file
    pickle.loads(checkpoint_target.pickles["pickle_p2"]).close()
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "imported.safetensors"
    for name, data in checkpoint_target.pickles.items():
        for suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".safetensors", "", ".PT"):
            p = tmp_path / f"{name}{suffix}"
            p.write_bytes(data)
            for fn in (read_card, load_checkpoint):
                with pytest.raises(CheckpointError):
                    fn(p)
            if name != "torch_zip_state_dict" or suffix == ".safetensors":  # that one is a clean state dict
                with pytest.raises(CheckpointError):
                    import_torch_weights(p, TINY, CLASSES3, out)
            assert not marker.exists(), f"{p.name}: the pickle payload ran"
            assert p.read_bytes() == data
    assert not out.exists()


# --- film loader bugs the fuzzer found -------------------------------------------------------------


def _rle_frame_of(ds) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, 0, number_of_frames=1)


def test_rle_decoder_panic_is_a_film_error(tmp_path):
    """pylibjpeg-rle (Rust) panics on some corrupt runs; pyo3's PanicException is a BaseException, which
    the loader's ``except Exception`` used to let through to the caller."""
    from pydicom.encaps import encapsulate

    ds = compress(make_dataset(), RLELossless)
    frame = bytearray(_rle_frame_of(ds))
    frame[64] ^= 0x04  # the first run header of segment 1: the run now overflows the frame
    ds.PixelData = encapsulate([bytes(frame)])
    path = write(ds, tmp_path / "panic.dcm")
    with pytest.raises(FilmError, match="cannot decode the RLE Lossless pixel data") as ei:
        load_film(path)
    assert ei.value.path == path


def test_any_decoder_base_exception_becomes_a_film_error(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panic(self, *a, **k):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(Decoder, "as_array", panic)
    path = write(compress(make_dataset(), RLELossless), tmp_path / "p.dcm")
    with pytest.raises(FilmError, match="index out of bounds"):
        load_film(path)

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Decoder, "as_array", interrupt)
    with pytest.raises(KeyboardInterrupt):  # a user's Ctrl+C is not swallowed
        load_film(path)


def test_jpeg_ls_without_end_marker_is_not_given_to_charls(tmp_path, monkeypatch):
    """CharLS spins for about 14 s on the 711×576 sample cut in half (no EOI marker) before failing, and
    the loader used to try it twice: about 30 s to open a cut-off file."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import Decoder

    calls = []
    original = Decoder.as_array

    def spy(self, *a, decoding_plugin="", **k):
        calls.append(decoding_plugin)
        return original(self, *a, decoding_plugin=decoding_plugin, **k)

    monkeypatch.setattr(Decoder, "as_array", spy)
    sample = REPO / "resources" / "samples" / "kermany_normal_IM-0117-0001.dcm"
    load_film(sample)
    assert calls[0] == "pyjpegls"  # an intact file still gets the fast decoder first
    ds = pydicom.dcmread(sample)
    frame = _rle_frame_of(ds)
    for pad in (b"\xff", b"\xff\xff\x00"):  # fill bytes after the end marker (as in the RG2 hip sample)
        calls.clear()
        ds.PixelData = encapsulate([frame + pad])
        padded = tmp_path / "padded.dcm"
        ds.save_as(padded)
        load_film(padded)
        assert calls == ["pyjpegls"]
    calls.clear()
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    cut = tmp_path / "cut.dcm"
    ds.save_as(cut)
    t0 = time.perf_counter()
    try:
        load_film(cut)
    except FilmError:
        pass
    assert "pyjpegls" not in calls and calls
    assert time.perf_counter() - t0 < 10


def test_jpeg_ls_without_end_marker_and_no_other_decoder(tmp_path, monkeypatch):
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import Decoder

    ds = compress(make_dataset(), JPEGLSLossless)
    frame = _rle_frame_of(ds)
    ds.PixelData = encapsulate([frame[:-2] + b"\x00\x00"])
    path = write(ds, tmp_path / "cut.dcm")
    monkeypatch.setattr(Decoder, "available_plugins", property(lambda self: ("pyjpegls",)))
    with pytest.raises(FilmError, match="no end marker"):
        load_film(path)


def _rle_zero_film(tmp_path, side: int, bits: int, spp: int):
    from pydicom.encaps import encapsulate

    ds = make_dataset(bits_allocated=8, bits_stored=8)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = bits, bits, bits - 1, spp
    if spp == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 1
    seg = fl.rle_zero_segment(side * side)
    ds.PixelData = encapsulate([fl.rle_frame([seg] * (spp * bits // 8))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return write(ds, tmp_path / f"rle_{side}_{spp}x{bits}.dcm")


def test_decoded_frame_size_is_bounded_like_the_pixel_count(tmp_path):
    """A 60 MP frame of 3 × 32-bit samples passed the pixel limit and took ~1.9 GB resident to open from an
    11 MB RLE file; the decoded frame now gets the same budget as the float32 film (4 bytes a pixel)."""
    big = _rle_zero_film(tmp_path, 7745, 32, 3)
    assert big.stat().st_size < 12_000_000
    t0 = time.perf_counter()
    with pytest.raises(FilmError, match=r"3 samples of 32 bits is 720 MB decoded, above the limit of 240 MB"):
        load_film(big)
    assert time.perf_counter() - t0 < 5  # refused from the header, nothing decoded
    small = _rle_zero_film(tmp_path, 100, 8, 3)  # 30 kB decoded: within 4 bytes × 10,000 pixels
    assert load_film(small, max_pixels=10_000).shape == (100, 100)
    wide = _rle_zero_film(tmp_path, 100, 16, 3)  # 60 kB decoded: over
    with pytest.raises(FilmError, match="60000 bytes decoded, above the limit of 40000 bytes"):
        load_film(wide, max_pixels=10_000)
    assert load_film(wide, max_pixels=15_000).shape == (100, 100)


def test_deflated_dataset_is_refused_before_it_is_inflated(tmp_path):
    """pydicom inflates a Deflated Explicit VR dataset whole before anything is checked: a 2 MB file took
    20 s and 4 GB resident (and a valid deflated film was refused anyway, as "pixel data too short",
    because the size checks compare offsets in the inflated data with the file's size)."""
    from dicom_factory import ExplicitVRLittleEndian

    ds = make_dataset()
    seed = fl._dicom_seed("u16", fl.encode_dicom(ds), ".dcm")
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(fl.deflate_bomb(seed, fl.make_bombs(kinds=(), deflate_mb=64))[0])
    assert bomb.stat().st_size < 1_000_000
    t0 = time.perf_counter()
    with pytest.raises(FilmError, match=r"unsupported transfer syntax 1.2.840.10008.1.2.1.99 \(Deflated Explicit VR"):
        load_film(bomb)
    assert time.perf_counter() - t0 < 2
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    with pytest.raises(FilmError, match="Deflated Explicit VR Little Endian"):
        load_film(tmp_path / "deflated.dcm")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the same dataset, not deflated, opens
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    assert load_film(tmp_path / "plain.dcm").shape == (40, 32)


# --- checkpoint loader bugs the fuzzer found -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    p = make_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
    return fc.st_split(p.read_bytes())


def _with_card_text(parts, edit) -> bytes:
    h, _text, blob = parts
    h = copy.deepcopy(h)
    h["__metadata__"]["cxrviewer"] = edit(h["__metadata__"]["cxrviewer"])
    return fc.st_join(json.dumps(h), blob)


def _with_card(parts, **changes) -> bytes:
    def edit(text):
        card = json.loads(text)
        card.update(changes)
        return json.dumps(card)

    return _with_card_text(parts, edit)


def _refused(tmp_path, data: bytes, match: str, name="m.safetensors"):
    p = tmp_path / name
    p.write_bytes(data)
    for fn in (read_card, load_checkpoint):
        with pytest.raises(CheckpointError, match=match):
            fn(p)


@pytest.mark.parametrize("depth, match", [(500, "nested too deeply"), (100000, "not valid JSON")])
def test_card_nested_too_deep(tmp_path, tiny_parts, depth, match):
    """JSON nesting past the recursion limit raised RecursionError (from json, or from validate_card's
    deepcopy at a few hundred levels, which json still parses)."""
    data = _with_card_text(tiny_parts, lambda t: t[:-1] + ', "training": ' + "[" * depth + "]" * depth + "}")
    _refused(tmp_path, data, match)


def test_card_with_an_integer_of_5001_digits(tmp_path, tiny_parts):
    """Python refuses to convert integers over 4,300 digits with ValueError, which json.loads raises as is."""
    data = _with_card_text(tiny_parts, lambda t: t[:-1] + ', "temperature": 1' + "0" * 5000 + "}")
    _refused(tmp_path, data, "not valid JSON")


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "1e999", "1" + "0" * 5000, "[" * 5000 + "]" * 5000])
def test_header_numbers_python_cannot_take(tmp_path, tiny_parts, literal):
    """int(Infinity) raised OverflowError; huge integers and deep nesting escaped the header parser."""
    h, _text, blob = tiny_parts
    h = copy.deepcopy(h)
    h["head.bias"]["data_offsets"] = ["@@", h["head.bias"]["data_offsets"][1]]
    data = fc.st_join(json.dumps(h).replace('"@@"', literal), blob)
    _refused(tmp_path, data, "damaged")


@pytest.mark.parametrize("arch, args", [
    (TINY, {"width": -1}),  # RuntimeError: negative dimension
    (TINY, {"width": 2 ** 62}),  # RuntimeError: storage size overflow
    (TINY, {"width": 3.5}),  # ValueError from Conv2d
    ("mobilenet_lung", {"se_reduction": 0}),  # ZeroDivisionError
    ("cs_convnext", {"kv_pool": "evil"}),  # ValueError
])
def test_hostile_arch_args_are_refused(tmp_path, tiny_parts, arch, args):
    data = _with_card(tiny_parts, arch=arch, arch_args=args)
    p = tmp_path / "m.safetensors"
    p.write_bytes(data)
    read_card(p)  # the card itself is well formed
    with pytest.raises(CheckpointError, match="rejects the card's arch_args"):
        load_checkpoint(p)


def test_import_of_a_file_named_safetensors(tmp_path):
    """torch.load hands ``*.safetensors`` to safetensors, whose SafetensorError escaped import_torch_weights."""
    import torch

    from inference_helpers import make_model

    p = tmp_path / "weights.safetensors"
    torch.save(make_model().state_dict(), p)
    with pytest.raises(CheckpointError, match="not a plain PyTorch weights file"):
        import_torch_weights(p, TINY, CLASSES3, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_negative_batchnorm_variance_is_refused(tmp_path):
    """A flipped sign bit in a BatchNorm running variance loaded fine and made every prediction NaN."""
    from inference_helpers import make_model, write_raw

    from cxrviewer.checkpoint import card_defaults

    m = make_model()
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    state["stem.1.running_var"][0] = -state["stem.1.running_var"][0]
    p = write_raw(tmp_path / "negvar.safetensors", state, card_defaults(m, CLASSES3, name="negvar"))
    read_card(p)
    with pytest.raises(CheckpointError, match=r"negative variances \(stem.1.running_var\)"):
        load_checkpoint(p)
