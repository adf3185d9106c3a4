"""Pretrained backbones: local files map (with clear reports), wrong files are refused, the hub falls back
to random weights offline with a warning and no exception, the offline ImageNet MobileNetV2 maps onto
MobileNet-Lung's backbone with no missing key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cxrviewer.models import create_model
from cxrviewer.models import pretrained as pt
from cxrviewer.models.pretrained import PretrainedError, PretrainedWarning

OFFLINE_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / pt.OFFLINE_MOBILENETV2_NAME
needs_shared = pytest.mark.skipif(not OFFLINE_FILE.is_file(), reason="../shared/weights absent")


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture
def offline(monkeypatch):
    """No network and no hub cache, whatever the machine running the tests has."""
    monkeypatch.setenv("CXRVIEWER_OFFLINE", "1")

    def not_cached(name, **kw):
        raise OSError(f"{name} not in cache")

    monkeypatch.setattr(pt, "_hf_cache_only_create", not_cached)


@needs_shared
@pytest.mark.parametrize("name", ["mobilenet_lung", "mobilenetv2"])
def test_offline_mobilenetv2_file_maps_onto_backbone(name, monkeypatch):
    from safetensors.torch import load_file

    model = create_model(name, num_classes=3, pretrained=str(OFFLINE_FILE))
    rep = model.pretrained_report
    assert rep.missing == [] and rep.unexpected == [] and not rep.random_init
    assert rep.ignored == ["classifier.1.bias", "classifier.1.weight"]
    assert rep.loaded == len(model.backbone.state_dict())
    sd = load_file(str(OFFLINE_FILE))
    torch.testing.assert_close(model.backbone.features[0][0].weight, sd["features.0.0.weight"])
    torch.testing.assert_close(model.backbone.features[18][1].bias, sd["features.18.1.bias"])
    assert model.classifier.out_features == 3  # the 1000-class head is not used
    # the named offline source finds the same file through the environment variable
    monkeypatch.setenv(pt.OFFLINE_MOBILENETV2_ENV, str(OFFLINE_FILE))
    m2 = create_model(name, num_classes=3, pretrained="imagenet-offline")
    torch.testing.assert_close(m2.backbone.features[5].conv[1][0].weight, sd["features.5.conv.1.0.weight"])
    assert m2.pretrained_report.missing == []


@needs_shared
def test_offline_mobilenetv2_wrapper_equals_torchvision_with_the_file():
    """Our trunk + the file's own 1000-class head computes exactly what torchvision's mobilenet_v2 does
    with the file loaded strictly: the mapping loses nothing and reorders nothing."""
    from safetensors.torch import load_file
    from torchvision.models import mobilenet_v2

    sd = load_file(str(OFFLINE_FILE))
    ref = mobilenet_v2(weights=None)
    ref.load_state_dict(sd, strict=True)
    model = create_model("mobilenetv2", num_classes=1000, pretrained=str(OFFLINE_FILE))
    with torch.no_grad():
        model.classifier.weight.copy_(sd["classifier.1.weight"])
        model.classifier.bias.copy_(sd["classifier.1.bias"])
    model.eval(), ref.eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_timm_named_mobilenetv2_maps_to_torchvision(tmp_path):
    import timm

    torch.manual_seed(0)
    src = timm.create_model("mobilenetv2_100", num_classes=1000).state_dict()
    path = _save(src, tmp_path / "timm_mnv2.safetensors")
    model = create_model("mobilenet_lung", num_classes=3, pretrained=path)
    rep = model.pretrained_report
    assert rep.missing == [] and rep.unexpected == []
    torch.testing.assert_close(model.backbone.features[0][0].weight, src["conv_stem.weight"])
    torch.testing.assert_close(model.backbone.features[18][0].weight, src["conv_head.weight"])


def test_local_timm_file_loads_and_reports(tmp_path):
    import timm

    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=1000).state_dict()
    src["extra.weight"] = torch.zeros(3)
    path = _save(src, tmp_path / "r18.safetensors")
    with pytest.warns(PretrainedWarning, match="UNEXPECTED"):
        model = create_model("resnet18", num_classes=2, pretrained=str(path))
    rep = model.pretrained_report
    assert rep.unexpected == ["extra.weight"] and rep.missing == []
    assert set(rep.ignored) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(model.backbone.conv1.weight, src["conv1.weight"])
    # a whole model's state_dict (backbone.* keys) is accepted too
    whole = _save(model.state_dict(), tmp_path / "whole.safetensors")
    m2 = create_model("resnet18", num_classes=2, pretrained=whole)
    torch.testing.assert_close(m2.backbone.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)


def test_missing_keys_are_reported(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=0).state_dict()
    del src["layer4.1.conv2.weight"]
    with pytest.warns(PretrainedWarning, match="MISSING"):
        model = create_model("resnet18", num_classes=2, pretrained=src)
    assert model.pretrained_report.missing == ["layer4.1.conv2.weight"]


def test_dpn_se_file_reports_se_as_new(tmp_path):
    import timm

    from cxrviewer.models.dpn_se import DPNSE

    src = timm.create_model("dpn68", num_classes=10).state_dict()
    model = DPNSE(num_classes=2, pretrained=src, variant="dpn68")
    rep = model.pretrained_report
    assert rep.missing == [] and rep.unexpected == []
    assert rep.new and all(".se." in k for k in rep.new)
    torch.testing.assert_close(model.backbone.features.conv1_1.conv.weight, src["features.conv1_1.conv.weight"])


def test_mismatched_weights_are_refused(tmp_path):
    import timm

    r18 = _save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(PretrainedError, match="do not match this network's shapes"):
        create_model("resnet50", num_classes=2, pretrained=r18)
    with pytest.raises(PretrainedError, match="no tensor name matches"):
        create_model("mobilenetv2", num_classes=2, pretrained=r18)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(PretrainedError, match="not a readable safetensors"):
        create_model("resnet18", num_classes=2, pretrained=junk)
    with pytest.raises(PretrainedError, match="not found"):
        create_model("resnet18", num_classes=2, pretrained=tmp_path / "absent.safetensors")
    with pytest.raises(PretrainedError, match="unsupported weights format"):
        pt.read_state_dict(_save({"a": torch.zeros(1)}, tmp_path / "x.safetensors").rename(tmp_path / "x.pkl"))


def test_pth_only_with_weights_only(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    with pytest.raises(PretrainedError, match="refused"):
        pt.read_state_dict(bad)
    good = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert list(pt.read_state_dict(good)) == ["w"]


@pytest.mark.parametrize("name", ["resnet18", "da_covidnet", "squeezenet"])
def test_hub_offline_falls_back_with_warning(name, offline):
    t0 = time.monotonic()
    with pytest.warns(PretrainedWarning, match="RANDOM initialisation"):
        model = create_model(name, num_classes=2, pretrained=True)
    assert time.monotonic() - t0 < 20  # builds, no network wait
    assert model.pretrained_report.random_init
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_imagenet_offline_on_other_backbones_warns(offline):
    with pytest.warns(PretrainedWarning, match="MobileNetV2 only"):
        model = create_model("resnet18", num_classes=2, pretrained="imagenet-offline")
    assert model.pretrained_report.random_init


@needs_shared
def test_pretrained_true_offline_uses_shared_mobilenetv2(offline):
    with pytest.warns(PretrainedWarning, match="offline ImageNet MobileNetV2"):
        model = create_model("mobilenet_lung", num_classes=3, pretrained=True)
    assert model.pretrained_report.loaded > 300 and model.pretrained_report.missing == []


def test_is_online_probe_is_fast_and_respects_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pt.is_online() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("CXRVIEWER_OFFLINE", raising=False)
    pt._ONLINE_CACHE.pop("unreachable.invalid", None)
    t0 = time.monotonic()
    assert pt.is_online("unreachable.invalid", timeout=0.5) is False
    assert time.monotonic() - t0 < 2.0


def test_bad_pretrained_value_is_refused():
    with pytest.raises(PretrainedError, match="pretrained must be"):
        create_model("resnet18", num_classes=2, pretrained=3.5)
