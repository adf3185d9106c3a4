"""The model zoo: every architecture builds and runs at 224, keeps the CXRModel contract, and the
attention models are the ones models.md describes (zero-initialised scales, SE/ECA behaviour, map sizes).

CPU only and kept short: each network is built once per module (cache below) and run once at 224 on
two films; single-film runs use a smaller input where the architecture allows it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cxrviewer.models import CXRModel, create_model, list_models, model_info

ATTENTION = {"cs_convnext", "da_covidnet", "dpn_se", "mobilenet_lung", "fusion_tl"}
BASELINES = {"convnext_tiny", "resnet18", "resnet50", "densenet121", "mobilenetv2", "dpn68", "dpn92",
             "squeezenet", "vgg11"}
# name -> expected attention map (h, w) at 224 input, None for no spatial attention
MAP_SIZE = {"cs_convnext": (14, 14), "da_covidnet": (14, 14), "dpn_se": (7, 7), "mobilenet_lung": (112, 112),
            "fusion_tl": None}
WITH_MAP = sorted(n for n, size in MAP_SIZE.items() if size)  # the attention models that draw a map
POOLED = {"cs_convnext": 768, "da_covidnet": 512, "dpn_se": 2688, "mobilenet_lung": 1280, "fusion_tl": 3072,
          "convnext_tiny": 768, "resnet18": 512, "resnet50": 2048, "densenet121": 1024, "mobilenetv2": 1280,
          "dpn68": 832, "dpn92": 2688, "squeezenet": 512, "vgg11": 4096}
# single-film input side: 224 for the light networks (MobileNet-Lung's 112×112 map is checked there),
# 64 for the heavy ones (the two-film run at 224 above already covers that size).
SINGLE_SIDE = {"mobilenet_lung": 224, "mobilenetv2": 224, "squeezenet": 224, "resnet18": 224}

_CACHE: dict = {}


def _model(name: str, **kw) -> CXRModel:
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = create_model(name, num_classes=3, **kw).eval()
    return _CACHE[key]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_free_cache(one_thread):
    yield
    _CACHE.clear()


def test_registry_lists_everything_with_descriptions():
    infos = {m.name: m for m in list_models()}
    assert ATTENTION | BASELINES <= set(infos)
    for name, info in infos.items():
        assert info.description and "\n" not in info.description, name
    assert {n for n, i in infos.items() if i.attention} == ATTENTION
    assert {infos[n].paper for n in ATTENTION} == {"000", "001", "002", "003", "004"}
    with pytest.raises(KeyError, match="unknown architecture"):
        model_info("no_such_net")


@pytest.mark.parametrize("name", sorted(ATTENTION | BASELINES))
def test_forward_at_224_shapes_features_attention_gradcam(name):
    model = _model(name)
    assert isinstance(model, CXRModel)
    assert model.arch_name == name and model.num_classes == 3
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    captured = {}
    handle = model.gradcam_layer().register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.no_grad():
            logits, pooled = model.forward_with_features(x)
    finally:
        handle.remove()
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert pooled.shape == (2, POOLED[name])
    # forward_head of the pooled features is exactly what forward_with_features returned
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(pooled), logits)
    # Grad-CAM's layer gives a spatial map during the forward
    out = captured["out"]
    assert out.dim() == 4 and out.shape[0] == 2 and out.shape[-1] >= 7
    amap = model.attention_map()
    expected = MAP_SIZE.get(name)
    if expected is None:
        assert amap is None
        if name in BASELINES:
            assert model.attention_description == "" and not model.has_attention
    else:
        assert amap.shape == (2, *expected)
        assert amap.dtype == torch.float32 and not amap.requires_grad
        assert (amap >= 0).all() and torch.isfinite(amap).all()
        assert model.has_attention and len(model.attention_description) > 20
    # the viewer opens on the model's attention only where it is a deep, class-level map
    opens_on_attention = {"cs_convnext", "da_covidnet", "dpn_se"}
    assert model.first_heatmap == ("attention" if name in opens_on_attention else "gradcam")
    # what the bf16 fast copy keeps in fp32 names modules the network has (the plain MobileNetV2 has no stem SE)
    from cxrviewer.inference import keep_in_fp32

    kept = {"mobilenet_lung": 3, "mobilenetv2": 2, "da_covidnet": 1}.get(name, 0)
    assert keep_in_fp32(copy.deepcopy(model), model.reduced_precision_fp32, "cpu") == kept  # _model's is shared


@pytest.mark.parametrize("name", sorted(ATTENTION | BASELINES))
def test_single_film_forward_matches_forward_with_features(name):
    model = _model(name)
    side = SINGLE_SIDE.get(name, 64)
    torch.manual_seed(2)
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        logits = model(x)
        logits2, pooled = model.forward_with_features(x)
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits, logits2)
    assert pooled.shape == (1, POOLED[name])
    amap = model.attention_map()
    if MAP_SIZE.get(name) is not None:
        assert amap.shape[0] == 1 and amap.dim() == 3 and (amap >= 0).all()
        if side == 224:
            assert tuple(amap.shape[1:]) == MAP_SIZE[name]


def test_fusion_tl_selectors_and_weights():
    from cxrviewer.models.blocks import ECABlock, SEBlock
    from cxrviewer.models.fusion_tl import TokenSelfAttention, build_selector

    model = _model("fusion_tl")
    assert isinstance(model.selector, SEBlock) and model.selector.fc1.out_features == 3072 // 16
    assert [model.proj[n].in_features for n in ("resnet152", "densenet121", "resnet18")] == [2048, 1024, 512]
    assert all(p.out_features == 1024 for p in model.proj.values())
    assert model.classifier.in_features == 3072
    assert len(model.gradcam_layers()) == 3 and model.gradcam_layer() is model.extractors["resnet152"].layer4
    feats = torch.randn(2, 3072)
    for kind, cls in (("se", SEBlock), ("eca", ECABlock), ("mhsa", TokenSelfAttention)):
        sel = build_selector(kind)
        assert isinstance(sel, cls)
        with torch.no_grad():
            out = sel(feats)
            logits = model.forward_head(out)
        assert out.shape == (2, 3072) and logits.shape == (2, 3)
        w = sel.last_weights if kind == "mhsa" else sel.last_scale
        if kind == "mhsa":
            assert w.shape == (2, 3, 3)
            torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
        else:
            assert w.shape == (2, 3072) and ((w > 0) & (w < 1)).all()
    assert build_selector("eca").k == 7
    with pytest.raises(ValueError, match="attention must be one of"):
        create_model("fusion_tl", num_classes=2, attention="cbam")


def test_fusion_tl_variant_argument_builds_and_is_recorded():
    model = _model("fusion_tl", attention="mhsa")
    assert model.arch_args == {"attention": "mhsa"} and model.selector_kind == "mhsa"
    with torch.no_grad():
        logits, pooled = model.forward_with_features(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 3) and pooled.shape == (1, 3072)
    assert model.selector_weights().shape == (1, 3, 3) and model.attention_map() is None


# --- attention blocks --------------------------------------------------------------------------------
def test_se_block_reweights_channels():
    from cxrviewer.models.blocks import SEBlock

    se = SEBlock(32, reduction=16)
    assert se.fc1.out_features == 2
    with torch.no_grad():
        se.fc2.weight.zero_()
        se.fc2.bias.copy_(torch.linspace(-4, 4, 32))
    x = torch.rand(2, 32, 8, 8) + 0.1
    y = se(x)
    gate = torch.sigmoid(torch.linspace(-4, 4, 32))
    torch.testing.assert_close(y, x * gate[None, :, None, None])
    # a learned gate depends on the input: two inputs with different channel means get different gates
    se2 = SEBlock(16, reduction=4)
    a, b = torch.zeros(1, 16, 4, 4), torch.ones(1, 16, 4, 4) * 3
    assert not torch.allclose(se2.gate(a), se2.gate(b))
    # vector input (Fusion-TL): the vector is its own squeeze
    v = torch.randn(3, 32)
    torch.testing.assert_close(se(v), v * gate)


@pytest.mark.parametrize("channels,k", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7), (3072, 7),
                                        (16, 3), (8, 3)])
def test_eca_kernel_size_formula(channels, k):
    from cxrviewer.models.blocks import ECABlock, eca_kernel_size

    assert eca_kernel_size(channels) == k
    block = ECABlock(channels)
    assert block.conv.kernel_size == (k,) and block.conv.padding == (k // 2,)
    x = torch.randn(2, channels)
    assert block(x).shape == (2, channels)
    with pytest.raises(ValueError, match="odd"):
        ECABlock(channels, k=4)


def test_position_attention_received_is_column_mean():
    from cxrviewer.models.blocks import PositionSelfAttention

    torch.manual_seed(0)
    att = PositionSelfAttention(16, 2, 8, 16, kv_pool=2)
    x = torch.randn(2, 16, 12, 10)
    out = att(x)
    assert out.shape == x.shape
    q = att.g(x).flatten(2)
    k = torch.nn.functional.max_pool2d(att.f(x), 2).flatten(2)
    a = torch.bmm(q.transpose(1, 2), k).softmax(-1)  # (B, 120, 30)
    expected = (a.sum(1) / a.shape[1] * a.shape[2]).reshape(2, 6, 5)
    torch.testing.assert_close(att.last_received, expected, rtol=1e-4, atol=1e-5)
    # mean over key positions is 1 (each query distributes a total weight of 1)
    torch.testing.assert_close(att.last_received.mean(dim=(1, 2)), torch.ones(2))


def test_learnable_scales_start_at_zero_and_then_matter():
    from cxrviewer.models.blocks import ChannelAttentionModule, CSBlock, PositionAttentionModule

    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    cs = CSBlock(32)
    pam, cam = PositionAttentionModule(32), ChannelAttentionModule()
    assert cs.gamma.item() == 0 and pam.alpha.item() == 0 and cam.beta.item() == 0
    for block in (cs, pam, cam):
        torch.testing.assert_close(block(x), x)  # zero scale: identity
    with torch.no_grad():
        cs.gamma.fill_(0.5)
        pam.alpha.fill_(0.5)
        cam.beta.fill_(0.5)
    for block in (cs, pam, cam):
        assert (block(x) - x).abs().max() > 1e-3  # non-zero scale: the attention contributes
    for name in ("cs_convnext", "da_covidnet"):
        for p in _model(name).attention_scales():
            assert p.requires_grad and p.item() == 0.0


def test_cs_convnext_with_zero_scale_is_convnext_path():
    model = _model("cs_convnext")
    x = torch.randn(1, 3, 64, 64)
    bb = model.backbone
    with torch.no_grad():
        plain = bb.forward_head(bb.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.forward_features(x), plain)
    assert [b.spatial.kv_pool for b in model.cs_blocks] == [2, 1, 1]
    assert [b.spatial.f.out_channels for b in model.cs_blocks] == [12, 24, 48]  # C/8
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [512, 256, 3]
    maps = model.attention_maps()
    assert len(maps) == 3 and torch.equal(maps[-1], model.attention_map())


def test_da_covidnet_structure_and_zero_scale():
    model = _model("da_covidnet")
    layer4 = model.backbone.layer4
    assert layer4[-1].conv2.dilation == (2, 2) and layer4[0].conv2.stride == (1, 1)
    y = torch.randn(1, 512, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.attention(y), 2 * y)  # PAM(y) + CAM(y) with α = β = 0
    assert model.attention.pam.attn.f.out_channels == 64 and model.attention.pam.attn.h.out_channels == 512


def test_dpn_se_gates_every_dual_path_block():
    from timm.models.dpn import DualPathBlock

    from cxrviewer.models.dpn_se import SEDualPathBlock

    model = _model("dpn_se")
    blocks = [m for m in model.modules() if isinstance(m, DualPathBlock)]
    assert len(blocks) == 30 and all(isinstance(b, SEDualPathBlock) for b in blocks)
    for b in blocks:
        assert b.se.channels == b.num_1x1_c + b.inc and b.se.reduction == 16
    # the SE gate really sits on the path: closing one block's gate changes the output
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        blk = blocks[-1]
        old = blk.se.fc2.bias.clone()
        blk.se.fc2.bias.fill_(-50.0)  # gate ≈ 0: only the residual/dense paths pass
        after = model(x)
        blk.se.fc2.bias.copy_(old)
    assert (before - after).abs().max() > 1e-4


def test_mobilenet_lung_se_after_stem():
    model = _model("mobilenet_lung")
    assert model.stem_se.channels == 32 and model.backbone.features[0][0].out_channels == 32
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 3
    assert _model("mobilenetv2").stem_se is None


def test_a_copy_that_does_not_record_attention_computes_the_same_logits():
    """The fast copy LIME scores perturbed films with skips the attention map, and nothing else."""
    for name in WITH_MAP:
        model = _model(name)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            assert model.attention_map() is not None
            model.records_attention = False
            try:
                got = model(x)
                assert model.attention_map() is None  # a map from an earlier film is not left behind
                # nor does any self-attention block spend a reduction over its affinity on one
                assert all(m.last_received is None for m in model.modules() if hasattr(m, "records"))
            finally:
                model.records_attention = True
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_channels_last_and_bf16_autocast():
    for name in WITH_MAP:
        model = _model(name)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            model.to(memory_format=torch.channels_last)
            try:
                xcl = x.contiguous(memory_format=torch.channels_last)
                cl = model(xcl)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    bf = model(xcl)
                amap = model.attention_map()
            finally:
                model.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(cl, ref, rtol=1e-3, atol=1e-3)
        assert torch.isfinite(bf.float()).all() and bf.shape == ref.shape
        assert amap.dtype == torch.float32 and (amap >= 0).all()


@pytest.mark.parametrize("name", sorted(ATTENTION | BASELINES))
def test_gradcam_layer_takes_full_backward_hooks(name):
    """Grad-CAM hooks the layer's output activation and its gradient; a module that edits its input in
    place (an inplace ReLU) would break PyTorch's full backward hooks, so every model's choice is checked
    with them."""
    model = _model(name)
    layer = model.gradcam_layer()
    assert any(layer is m for m in model.modules())
    got = {}
    h1 = layer.register_forward_hook(lambda m, i, o: got.__setitem__("act", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: got.__setitem__("grad", go[0]))
    try:
        x = torch.randn(1, 3, 64, 64, requires_grad=True)  # as Grad-CAM tools do
        model.zero_grad(set_to_none=True)
        model(x)[0, 1].backward()
    finally:
        h1.remove()
        h2.remove()
        model.zero_grad(set_to_none=True)
    assert got["act"].dim() == 4 and got["grad"].shape == got["act"].shape
    assert got["grad"].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ATTENTION | BASELINES))
def test_exact_path_is_plain_eager_in_the_models_memory_format(name):
    """The Predictor runs a network channels-last when the model asks for it (every architecture but the
    ConvNeXt ones, which gain nothing: see ``CXRModel.exact_channels_last``), for speed; the probabilities
    and the attention map it displays stay those of plain NCHW eager fp32, to rounding."""
    import copy

    import numpy as np

    from cxrviewer.checkpoint import card_defaults
    from cxrviewer.inference import Predictor
    from cxrviewer.preprocess import fit_to_square

    plain = _model(name)
    pred = Predictor(copy.deepcopy(plain), card_defaults(plain, ["a", "b", "c"], name=name), "cpu")
    nhwc = name not in ("cs_convnext", "convnext_tiny")
    assert pred.model.exact_channels_last is nhwc
    conv = next(m for m in pred.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = torch.softmax(plain(x), dim=1).numpy()
        ref_map = plain.attention_map()
    np.testing.assert_allclose(pred.predict_batch(x), ref, atol=1e-5)
    one = pred.predict_input(x[1], fit_to_square(np.zeros((224, 224), np.uint8), 224, "squash")[1])
    np.testing.assert_allclose(one.probs, ref[1], atol=1e-5)
    if ref_map is not None:
        np.testing.assert_allclose(one.attention, ref_map[1].reshape(one.attention.shape).numpy(), rtol=1e-4, atol=1e-5)
