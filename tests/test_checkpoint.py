"""The checkpoint format: round trips, atomic saves, and every refusal with its message."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from cxrviewer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    card_defaults,
    import_torch_weights,
    load_checkpoint,
    read_card,
    save_checkpoint,
    validate_card,
)
from cxrviewer.preprocess import PREPROCESS_VERSION, PreprocessSpec

from inference_helpers import (
    CLASSES3,
    TINY,
    chest_like,
    make_checkpoint,
    make_model,
    realistic_mobilenet_lung,
    write_raw,
)


def _tiny_card(**kw):
    m = make_model()
    card = card_defaults(m, CLASSES3, name="tiny")
    card.update(kw)
    return m, card


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# --- round trips ----------------------------------------------------------------------------------


def test_round_trip_tiny_keeps_card_and_weights(tmp_path):
    m = make_model(seed=3)
    card = card_defaults(m, CLASSES3, PreprocessSpec(resize="letterbox"), name="tiny-3", display_name="Tiny 3",
                         temperature=1.7, training={"epochs": 4, "metrics": {"auc": float("nan"), "acc": np.float32(0.5)}},
                         card={"description": "test"}, default=True)
    p = save_checkpoint(tmp_path / "t.safetensors", m, card)
    rc = read_card(p)
    assert rc["name"] == "tiny-3" and rc["display_name"] == "Tiny 3" and rc["default"] is True
    assert rc["classes"] == CLASSES3 and rc["arch"] == TINY and rc["format_version"] == FORMAT_VERSION
    assert rc["preprocess"]["resize"] == "letterbox" and rc["preprocess"]["version"] == PREPROCESS_VERSION
    assert rc["temperature"] == pytest.approx(1.7)
    assert rc["training"]["metrics"] == {"auc": None, "acc": 0.5}  # NaN stored as null: strict JSON
    m2, card2 = load_checkpoint(p)
    assert card2 == rc and not m2.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_round_trip_mobilenet_lung_predicts_identically(tmp_path):
    from cxrviewer.inference import Predictor
    from cxrviewer.preprocess import preprocess_gray

    classes = ["Normal", "Lung Opacity", "Viral Pneumonia"]
    m = realistic_mobilenet_lung(classes, seed=1)
    card = card_defaults(m, classes, name="ml", temperature=1.3)
    p = save_checkpoint(tmp_path / "ml.safetensors", m, card)
    x = np.stack([preprocess_gray(chest_like(seed=s), PreprocessSpec())[0] for s in range(2)])
    before = Predictor(m, card, "cpu").predict_batch(x)
    after = Predictor.from_checkpoint(p, "cpu").predict_batch(x)
    assert np.array_equal(before, after)
    assert np.ptp(before[:, 0]) > 0.05  # input-dependent, not a degenerate constant output


def test_save_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    p = make_checkpoint(tmp_path / "a.safetensors", seed=0)
    original = p.read_bytes()
    m, card = _tiny_card()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(p, make_model(seed=5), card)
    assert p.read_bytes() == original  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]  # no temp file left
    monkeypatch.undo()
    save_checkpoint(p, make_model(seed=5), card)
    assert p.read_bytes() != original and sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    if os.name == "posix":  # readable like any new file (umask), not private like a bare mkstemp file
        mask = os.umask(0o022)
        try:
            save_checkpoint(p, make_model(seed=5), card)
        finally:
            os.umask(mask)
        assert p.stat().st_mode & 0o777 == 0o644


def test_save_refuses_inconsistent_card(tmp_path):
    m, card = _tiny_card()
    with pytest.raises(CheckpointError, match="4 classes but the model's head has 3"):
        save_checkpoint(tmp_path / "x.safetensors", m, {**card, "classes": ["a", "b", "c", "d"]})
    with pytest.raises(CheckpointError, match="the model is"):
        save_checkpoint(tmp_path / "x.safetensors", m, {**card, "arch": "resnet18"})
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "x.pt", m, card)
    assert not list(tmp_path.iterdir())


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pickle_suffix_refused(tmp_path, suffix):
    p = tmp_path / f"weights{suffix}"
    torch.save(make_model().state_dict(), p)
    with pytest.raises(CheckpointError, match="pickle") as ei:
        load_checkpoint(p)
    assert "import_torch_weights" in str(ei.value) and p.name in str(ei.value)
    with pytest.raises(CheckpointError, match="pickle"):
        read_card(p)


def test_pickle_renamed_to_safetensors_is_refused_without_unpickling(tmp_path):
    p = tmp_path / "sneaky.safetensors"
    torch.save(make_model().state_dict(), p)
    with pytest.raises(CheckpointError, match="pickled PyTorch file"):
        load_checkpoint(p)
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="pickled PyTorch file"):
        read_card(p)


@pytest.mark.parametrize("content", [b"", b"hello", b"just a text file, not a model at all\n" * 3,
                                     struct.pack("<Q", 40) + b"[1, 2, 3]" + b" " * 31])
def test_not_safetensors(tmp_path, content):
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(p)


def test_safetensors_without_card_is_not_ours(tmp_path):
    p = write_raw(tmp_path / "plain.safetensors", _state(make_model()))
    with pytest.raises(CheckpointError, match="not a CXR Viewer checkpoint"):
        read_card(p)
    p = write_raw(tmp_path / "other.safetensors", _state(make_model()), extra_meta={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a CXR Viewer checkpoint"):
        load_checkpoint(p)


def test_card_not_json(tmp_path):
    p = write_raw(tmp_path / "x.safetensors", _state(make_model()), card="{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(p)


def test_truncated_weights_and_header(tmp_path):
    p = make_checkpoint(tmp_path / "t.safetensors")
    data = p.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="truncated"):
        read_card(cut)  # the header check covers the tensors' byte ranges too
    cut.write_bytes(data[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        read_card(cut)


def test_newer_format_refused(tmp_path):
    m, card = _tiny_card(format_version=FORMAT_VERSION + 1)
    p = write_raw(tmp_path / "new.safetensors", _state(m), card)
    with pytest.raises(CheckpointError, match="newer than this CXR Viewer reads"):
        read_card(p)


def test_unknown_arch_refused(tmp_path):
    m, card = _tiny_card(arch="resnet9000")
    p = write_raw(tmp_path / "u.safetensors", _state(m), card)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9000'"):
        load_checkpoint(p)


def test_preprocess_version_mismatch_refused(tmp_path):
    m, card = _tiny_card()
    card["preprocess"]["version"] = PREPROCESS_VERSION + 1
    p = write_raw(tmp_path / "pv.safetensors", _state(m), card)
    with pytest.raises(CheckpointError, match="preprocessing version"):
        read_card(p)


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    m, card = _tiny_card()
    st = _state(m)
    missing = dict(st)
    missing.pop("gate.weight")
    with pytest.raises(CheckpointError, match=r"do not match .*1 missing \(e\.g\. gate\.weight\)"):
        load_checkpoint(write_raw(tmp_path / "m.safetensors", missing, card))
    extra = {**st, "bonus.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. bonus\.weight\)"):
        load_checkpoint(write_raw(tmp_path / "e.safetensors", extra, card))
    shaped = {**st, "stem.0.weight": torch.zeros(8, 3, 5, 5)}
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. stem\.0\.weight: \(8, 3, 5, 5\)"):
        load_checkpoint(write_raw(tmp_path / "s.safetensors", shaped, card))


def test_weights_of_another_architecture(tmp_path):
    m = make_model("resnet18", CLASSES3)
    _, card = _tiny_card()
    with pytest.raises(CheckpointError, match="do not match architecture 'tiny_test_cnn'"):
        load_checkpoint(write_raw(tmp_path / "r.safetensors", _state(m), card))


def test_card_lying_about_classes(tmp_path):
    m, card = _tiny_card()
    card["classes"] = ["Normal", "Pneumonia", "COVID-19", "Tuberculosis"]
    p = write_raw(tmp_path / "lie.safetensors", _state(m), card)
    read_card(p)  # the header alone is self-consistent...
    with pytest.raises(CheckpointError, match="lists 4 classes but the weights' classifier has 3 outputs"):
        load_checkpoint(p)  # ...but not with the weights


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["Normal", "Normal", "Pneumonia"]}, "unique"),
        ({"classes": ["Normal", ""]}, "non-empty string"),
        ({"classes": ["Normal"]}, "at least two"),
        ({"classes": "Normal,Pneumonia"}, "list"),
        ({"temperature": 0}, "positive number"),
        ({"temperature": "1"}, "positive number"),
        ({"format_version": "1"}, "positive integer"),
        ({"name": ""}, "non-empty string"),
        ({"arch_args": []}, "must be an object"),
        ({"training": "yesterday"}, "must be an object"),
        ({"preprocess": {"input_size": 224, "resize": "squash", "mean": [0.5] * 3, "std": [0.5] * 3}}, "version"),
        ({"default": "yes"}, "true or false"),
        ({"lime": "slic"}, "'lime' must be an object"),
        ({"lime": {"segmentation": "watershed"}}, "lime.segmentation"),
        ({"lime": {"n_segments": 1}}, "lime.n_segments"),
        ({"lime": {"n_segments": True}}, "lime.n_segments"),
        ({"lime": {"n_segments": "50"}}, "lime.n_segments"),
    ],
)
def test_card_field_validation(change, message):
    _, card = _tiny_card(**change)
    with pytest.raises(CheckpointError, match=message):
        validate_card(card)


@pytest.mark.parametrize(
    "pre, message",
    [({"input_size": 0}, "input_size"), ({"resize": "stretch"}, "resize"), ({"mean": [0.5, 0.5]}, "mean"),
     ({"std": [0.2, 0.0, 0.2]}, "positive")],
)
def test_preprocess_field_validation(pre, message):
    _, card = _tiny_card()
    card["preprocess"].update(pre)
    with pytest.raises(CheckpointError, match=message):
        validate_card(card)


def test_nan_weights_refused(tmp_path):
    m, card = _tiny_card()
    st = _state(m)
    st["head.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(write_raw(tmp_path / "nan.safetensors", st, card))


def test_half_precision_weights_are_upcast(tmp_path):
    m, card = _tiny_card()
    st = {k: (v.half() if v.is_floating_point() else v) for k, v in _state(m).items()}
    m2, _ = load_checkpoint(write_raw(tmp_path / "h.safetensors", st, card))
    assert m2.head.weight.dtype == torch.float32
    assert torch.allclose(m2.head.weight, m.head.weight, atol=1e-3)


# --- importing .pth -------------------------------------------------------------------------------


def test_import_torch_weights_round_trip(tmp_path):
    m = make_model(seed=7)
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}, "epoch": 3}, pth)
    out = import_torch_weights(pth, TINY, CLASSES3, tmp_path / "imported.safetensors", display_name="Imported")
    m2, card = load_checkpoint(out)
    assert card["display_name"] == "Imported" and card["training"]["imported_from"] == "w.pth"
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])


_PWNED = []


def _pwn():
    _PWNED.append(True)
    return {}


class _Evil:
    def __reduce__(self):
        return (_pwn, ())


def test_import_refuses_code_in_pickle(tmp_path):
    pth = tmp_path / "evil.pth"
    with open(pth, "wb") as fh:
        pickle.dump(_Evil(), fh, protocol=2)
    with pytest.raises(CheckpointError, match="cannot|not a plain"):
        import_torch_weights(pth, TINY, CLASSES3, tmp_path / "out.safetensors")
    assert _PWNED == [] and not (tmp_path / "out.safetensors").exists()


def test_import_refuses_mismatched_weights(tmp_path):
    pth = tmp_path / "r18.pth"
    torch.save(make_model("resnet18", CLASSES3).state_dict(), pth)
    with pytest.raises(CheckpointError, match="do not match"):
        import_torch_weights(pth, TINY, CLASSES3, tmp_path / "out.safetensors")
    torch.save([1, 2, 3], pth)
    with pytest.raises(CheckpointError, match="state dict"):
        import_torch_weights(pth, TINY, CLASSES3, tmp_path / "out.safetensors")


def test_card_is_in_the_safetensors_header(tmp_path):
    """The documented layout (docs/architecture.md): other tools can read the card with safetensors alone."""
    from safetensors import safe_open

    p = make_checkpoint(tmp_path / "t.safetensors", name="tiny-x")
    with safe_open(str(p), framework="pt") as f:
        card = json.loads(f.metadata()["cxrviewer"])
    assert card["name"] == "tiny-x" and card["classes"] == CLASSES3


@pytest.mark.parametrize("prefix", [b"\x80", b"PK"])
def test_valid_checkpoint_whose_header_length_looks_like_a_pickle(tmp_path, prefix):
    """The first bytes of a safetensors file are its header length; a valid file can start with the
    pickle (0x80) or zip ("PK") magic and must still load."""
    m = make_model()
    p = tmp_path / "m.safetensors"

    def save(k):
        save_checkpoint(p, m, card_defaults(m, CLASSES3, name="pad", card={"description": "x" * k}))
        return struct.unpack("<Q", p.read_bytes()[:8])[0]

    n0 = save(0)
    modulus = 256 if len(prefix) == 1 else 65536
    target = int.from_bytes(prefix, "little")
    base = (target - n0) % modulus
    for k in range(max(0, base - 16), base + 16):
        if save(k) % modulus == target:
            break
    assert p.read_bytes()[: len(prefix)] == prefix
    m2, card = load_checkpoint(p)
    assert card["name"] == "pad" and torch.equal(m2.head.weight, m.head.weight)
