"""MobileNetV4: parity with timm (perturbed weights), feature maps, drop path, and the UIB / Mobile MQA layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.layers.mobile_mqa import MobileMQA, MobileMQABlock
from edgezoo.layers.uib import FusedInvertedBottleneck, UniversalInvertedBottleneck
from edgezoo.models.mobilenet_v4 import CONV_SMALL, MobileNetV4, MQASpec, UIBSpec, build_block
from oracle import assert_close, count_params, pair_from_timm, perturb_, rel_diff, timm_model

VARIANTS = edgezoo.list_models("mobilenetv4_*")
# (params at 1000 classes, default input) from shared/reference/timm_table.md
REFERENCE = {
    "mobilenetv4_conv_small": (3_774_024, 224),
    "mobilenetv4_conv_medium": (9_715_512, 256),
    "mobilenetv4_conv_large": (32_590_864, 384),
    "mobilenetv4_hybrid_medium": (11_074_648, 256),
    "mobilenetv4_hybrid_large": (37_764_624, 384),
}
# Inputs for the parity check: the default size, except 192 for the two large models (their 384 check is slow).
PARITY_SIZE = {name: 192 if name.endswith("large") else size for name, (_, size) in REFERENCE.items()}
ODD_SIZE = (161, 97)

_PAIRS: dict[str, tuple[nn.Module, nn.Module]] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_pairs():
    yield
    _PAIRS.clear()


def pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(perturbed timm model, edgezoo model with converted weights), built once per module run."""
    if name not in _PAIRS:
        _PAIRS[name] = pair_from_timm(name)
    return _PAIRS[name]


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_all_variants_registered():
    assert VARIANTS == sorted(REFERENCE)


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count_and_default_cfg(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_model(name)
    params, size = REFERENCE[name]
    assert count_params(ours) == count_params(ref) == params
    cfg = ours.default_cfg
    assert cfg["input_size"] == (3, size, size)
    for key in ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "interpolation", "mean", "std", "pool_size"):
        assert _plain(cfg[key]) == _plain(ref.pretrained_cfg[key]), key
    assert cfg["classifier"] == "classifier"
    assert isinstance(ours.get_submodule(cfg["first_conv"]), nn.Conv2d)


@pytest.mark.parametrize("name", VARIANTS)
def test_matches_timm_default_size(name):
    ref, ours = pair(name)
    size = PARITY_SIZE[name]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert_close(ours(x), ref(x), tol=1e-4, what=f"{name} logits at {size}")


@pytest.mark.slow
def test_matches_timm_hybrid_large_at_384():
    name = "mobilenetv4_hybrid_large"
    ref, ours = pair(name)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert_close(ours(x), ref(x), tol=1e-4, what=f"{name} logits at 384")


@pytest.mark.parametrize("name", VARIANTS)
def test_matches_timm_odd_size(name):
    ref, ours = pair(name)
    x = torch.randn(2, 3, *ODD_SIZE)
    with torch.no_grad():
        assert_close(ours(x), ref(x), tol=1e-4, what=f"{name} logits at {ODD_SIZE}")
        assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                     ref.forward_head(ref.forward_features(x), pre_logits=True), what="pre-logits")


def test_parity_check_can_fail():
    """A single wrong tensor must be visible at the tolerance used above."""
    ref, ours = pair("mobilenetv4_hybrid_medium")
    broken = edgezoo.create_model("mobilenetv4_hybrid_medium").eval()
    sd = ours.state_dict()
    sd["blocks.2.4.attn.value_proj.weight"] = sd["blocks.2.4.attn.value_proj.weight"].flip(0)
    broken.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_diff(broken(x), ref(x)) > 1e-3


@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_maps_match_timm(name):
    ref, _ = pair(name)
    sd = ref.state_dict()
    # built on the meta device and filled with the perturbed weights: no time spent on random init
    with torch.device("meta"):
        ref_feats = timm_model(name, features_only=True)
        ours = edgezoo.create_model(name, features_only=True)
    ref_keys, our_keys = set(ref_feats.state_dict()), set(ours.state_dict())
    ref_feats.load_state_dict({k: v for k, v in sd.items() if k in ref_keys}, assign=True)
    converted = edgezoo.convert_state_dict(name, sd)
    ours.load_state_dict({k: v for k, v in converted.items() if k in our_keys}, assign=True)
    ref_feats.eval()
    ours.eval()
    x = torch.randn(1, 3, 97, 65)
    with torch.no_grad():
        mine, theirs = ours(x), ref_feats(x)
    assert len(mine) == len(theirs) == 5
    for level, (a, b) in enumerate(zip(mine, theirs)):
        assert_close(a, b, what=f"{name} feature level {level}")
    assert [f["num_chs"] for f in ours.feature_info] == ref_feats.feature_info.channels()
    assert [f["reduction"] for f in ours.feature_info] == ref_feats.feature_info.reduction()
    # timm's module names for the stage outputs (the stem is our ``conv_stem``, timm's ``bn1``)
    assert [f["module"] for f in ours.feature_info][1:] == ref_feats.feature_info.module_name()[1:]


def test_forward_intermediates_stops_early():
    model = edgezoo.create_model("mobilenetv4_conv_small").eval()
    calls = []
    for i, stage in enumerate(model.blocks):
        stage.register_forward_hook(lambda *_, i=i: calls.append(i))
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 65, 33), [0, 2])
    assert [m.shape[1] for m in maps] == [32, 64]
    assert calls == [0, 1]


@pytest.mark.parametrize("name", VARIANTS)
def test_drop_path_training_reaches_every_parameter(name):
    rate = 0.2
    model = edgezoo.create_model(name, num_classes=10, drop_path_rate=rate).train()
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) < rate  # linear over blocks, 0 for the first, below the max for the last
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:10]


def test_layer_scale_only_in_hybrids():
    def has_gamma(name: str) -> bool:
        with torch.device("meta"):
            return any(k.endswith("layer_scale.gamma") for k in edgezoo.create_model(name).state_dict())

    assert has_gamma("mobilenetv4_hybrid_medium") and not has_gamma("mobilenetv4_conv_medium")
    model = edgezoo.create_model("mobilenetv4_hybrid_large")
    gammas = [p for n, p in model.named_parameters() if n.endswith("layer_scale.gamma")]
    assert all(torch.all(g == 1e-5) for g in gammas)
    assert isinstance(model.conv_stem.act, nn.GELU)


def test_runs_at_minimum_size_32():
    for name in ("mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"):
        model = edgezoo.create_model(name).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 33)).shape == (1, 1000)


def test_checkpoint_in_timm_keys_is_detected(tmp_path):
    from safetensors.torch import save_file

    ref, _ = pair("mobilenetv4_conv_small")
    path = tmp_path / "mnv4_timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = edgezoo.create_model("mobilenetv4_conv_small", checkpoint=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(x), ref(x))


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="width"):
        edgezoo.create_model("mobilenetv4_conv_small", width=2)


# --- layers -----------------------------------------------------------------------------------------------------
UIB_FORMS = {  # form -> (start_dw_kernel, mid_dw_kernel)
    "ExtraDW": (3, 5),
    "IB": (None, 3),
    "ConvNext": (5, None),
    "FFN": (None, None),
}


@pytest.mark.parametrize("form", list(UIB_FORMS))
@pytest.mark.parametrize("stride", [1, 2])
def test_uib_forms_match_timm_block(form, stride):
    from timm.models._efficientnet_blocks import UniversalInvertedResidual

    start, mid = UIB_FORMS[form]
    assert UIBSpec(out_chs=16, start_dw_kernel=start, mid_dw_kernel=mid, expand_ratio=4.0).form == form
    if form == "FFN" and stride == 2:
        with pytest.raises(ValueError, match="stride"):
            UniversalInvertedBottleneck(16, 24, start_dw_kernel=start, mid_dw_kernel=mid, expand_ratio=4.0, stride=2)
        return
    out_chs = 16 if stride == 1 else 24
    ours = UniversalInvertedBottleneck(16, out_chs, start_dw_kernel=start, mid_dw_kernel=mid, expand_ratio=4.0,
                                       stride=stride, layer_scale_init=1e-5).eval()
    ref = UniversalInvertedResidual(16, out_chs, dw_kernel_size_start=start or 0, dw_kernel_size_mid=mid or 0,
                                    stride=stride, exp_ratio=4.0, layer_scale_init_value=1e-5)
    perturb_(ref).eval()
    ours.load_state_dict(ref.state_dict())  # same key names by design
    assert isinstance(ours.dw_start, nn.Identity) == (start is None)
    assert isinstance(ours.dw_mid, nn.Identity) == (mid is None)
    assert ours.has_skip == (stride == 1)
    x = torch.randn(2, 16, 13, 9)  # odd spatial size
    with torch.no_grad():
        y = ours(x)
        assert_close(y, ref(x), what=f"UIB {form} stride {stride}")
    assert y.shape == (2, out_chs, -(-13 // stride), -(-9 // stride))


def test_uib_stride_placement():
    extra = UniversalInvertedBottleneck(8, 8, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=2.0, stride=2)
    assert extra.dw_start.conv.stride == (1, 1) and extra.dw_mid.conv.stride == (2, 2)
    convnext = UniversalInvertedBottleneck(8, 8, start_dw_kernel=3, mid_dw_kernel=None, expand_ratio=2.0, stride=2)
    assert convnext.dw_start.conv.stride == (2, 2)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(start_dw_kernel=4, mid_dw_kernel=3), "start_dw_kernel"),
        (dict(start_dw_kernel=None, mid_dw_kernel=0), "mid_dw_kernel"),
        (dict(start_dw_kernel=3, mid_dw_kernel=3, stride=3), "stride"),
        (dict(start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=0), "expand_ratio"),
    ],
)
def test_uib_rejects_bad_arguments(kwargs, arg):
    kwargs = {"expand_ratio": 2.0, **kwargs}
    with pytest.raises(ValueError, match=arg):
        UniversalInvertedBottleneck(8, 8, **kwargs)


def test_fused_ib_matches_timm_edge_residual():
    from timm.models._efficientnet_blocks import EdgeResidual

    ref = perturb_(EdgeResidual(24, 24, exp_kernel_size=3, exp_ratio=4.0)).eval()
    ours = FusedInvertedBottleneck(24, 24, kernel_size=3, expand_ratio=4.0).eval()
    sd = edgezoo.convert_state_dict("mobilenetv4_conv_medium", {f"blocks.0.0.{k}": v for k, v in ref.state_dict().items()})
    ours.load_state_dict({k.removeprefix("blocks.0.0."): v for k, v in sd.items()})
    x = torch.randn(2, 24, 11, 7)
    with torch.no_grad():
        assert_close(ours(x), ref(x), what="fused IB")


def _mqa_pair(query_stride: int, kv_stride: int) -> tuple[nn.Module, MobileMQA]:
    from timm.layers.attention2d import MultiQueryAttention2d

    ref = perturb_(MultiQueryAttention2d(32, num_heads=4, key_dim=16, value_dim=16, query_strides=query_stride,
                                         kv_stride=kv_stride)).eval()
    ours = MobileMQA(32, num_heads=4, key_dim=16, query_stride=query_stride, kv_stride=kv_stride).eval()
    sd = edgezoo.convert_state_dict("mobilenetv4_hybrid_medium", {f"blocks.0.0.attn.{k}": v for k, v in ref.state_dict().items()})
    ours.load_state_dict({k.removeprefix("blocks.0.0.attn."): v for k, v in sd.items()})
    return ref, ours


@pytest.mark.parametrize("query_stride, kv_stride", [(1, 1), (1, 2), (2, 2)])
def test_mobile_mqa_matches_timm(query_stride, kv_stride):
    ref, ours = _mqa_pair(query_stride, kv_stride)
    x = torch.randn(2, 32, 10, 6)  # timm's query down-sampling needs even maps
    with torch.no_grad():
        assert_close(ours(x), ref(x), what=f"MQA q{query_stride} kv{kv_stride}")


@pytest.mark.parametrize("query_stride, kv_stride", [(1, 1), (1, 2), (2, 2), (2, 1)])
@pytest.mark.parametrize("hw", [(7, 5), (1, 1), (9, 4)])
def test_mobile_mqa_shapes_on_odd_maps(query_stride, kv_stride, hw):
    attn = MobileMQA(32, out_dim=40, num_heads=4, key_dim=8, value_dim=12, query_stride=query_stride, kv_stride=kv_stride)
    assert attn(torch.randn(2, 32, *hw)).shape == (2, 40, *hw)
    if kv_stride > 1:  # K/V come from a ceil(H/2)×ceil(W/2) map with a single shared head
        assert attn.key_down.conv.groups == 32 and attn.key_proj.out_channels == 8


def test_mobile_mqa_single_kv_head_is_shared():
    """Permuting query heads (and the matching output columns) must not change the result: K/V are shared."""
    attn = MobileMQA(16, num_heads=2, key_dim=4, kv_stride=2).eval()
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        y = attn(x)
        attn.query_proj.weight.copy_(attn.query_proj.weight.view(2, 4, 16, 1, 1).flip(0).reshape(8, 16, 1, 1))
        attn.out_proj.weight.copy_(attn.out_proj.weight.view(16, 2, 4, 1, 1).flip(1).reshape(16, 8, 1, 1))
        assert_close(attn(x), y, tol=1e-5)


def test_mobile_mqa_block_residual_and_layer_scale():
    block = MobileMQABlock(16, 16, num_heads=2, key_dim=8, kv_stride=2, layer_scale_init=1e-5).eval()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        assert rel_diff(block(x), x) < 1e-3  # starts close to identity
    with pytest.raises(ValueError, match="num_heads"):
        MobileMQA(16, num_heads=0, key_dim=8)


def test_variant_table_is_typed():
    stage_forms = [getattr(s, "form", type(s).__name__) for s in CONV_SMALL.stages[2]]
    assert stage_forms == ["ExtraDW", "IB", "ConvNext"]
    with pytest.raises(AttributeError):
        CONV_SMALL.stages[2][0].out_chs = 3  # frozen
    hybrid = edgezoo.create_model("mobilenetv4_hybrid_medium")
    assert isinstance(hybrid, MobileNetV4)
    assert sum(isinstance(m, MobileMQABlock) for m in hybrid.modules()) == 8
    assert MQASpec(out_chs=160, num_heads=4, head_dim=64, kv_stride=2).stride == 1


def test_build_block_is_the_models_block():
    """The public block builder makes exactly the module MobileNetV4 holds at that position (same weights fit)."""
    model = MobileNetV4(config=CONV_SMALL, default_cfg={}, num_classes=10).eval()
    chs = CONV_SMALL.stem_chs
    for stage_idx, stage in enumerate(CONV_SMALL.stages):
        i = 0
        for spec in stage:
            for repeat in range(spec.repeats):
                built = build_block(spec, chs, stride=spec.stride if repeat == 0 else None if spec.repeats == 1 else 1)
                ref = model.blocks[stage_idx][i]
                assert type(built) is type(ref)
                built.load_state_dict(ref.state_dict())  # strict: same structure, same shapes
                x = torch.randn(1, chs, 16, 16)
                with torch.no_grad():
                    assert torch.equal(built.eval()(x), ref(x))
                chs, i = spec.out_chs, i + 1
    with pytest.raises(ValueError, match="in_chs must be a positive int"):
        build_block(CONV_SMALL.stages[1][0], 0)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        build_block(CONV_SMALL.stages[1][0], 32, stride=0)
