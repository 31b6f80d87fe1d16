"""MobileNet V1–V3 against their oracles: timm (perturbed weights → convert → same outputs) and torchvision."""
from __future__ import annotations

import pytest
import torch

import edgezoo
from edgezoo.registry import get_entry
from oracle import assert_close, count_params, pair_from_timm, perturb_, rel_diff, timm_model

FAMILIES = ("mobilenetv1", "mobilenetv2", "mobilenetv3")
NAMES = [n for n in edgezoo.list_models() if get_entry(n).family in FAMILIES]

# Variants timm does not register: the oracle is timm's V1 generator called with the paper's width multiplier.
V1_EXTRA_ALPHA = {"mobilenetv1_025": 0.25, "mobilenetv1_050": 0.50, "mobilenetv1_075": 0.75}
# The MobileNetV1 paper's Table 6 widths, as the TF reference (and timm's generator) round them.
V1_PAPER_PARAMS = {
    "mobilenetv1_025": 470_072,
    "mobilenetv1_050": 1_331_592,
    "mobilenetv1_075": 2_585_560,
    "mobilenetv1_100": 4_231_976,
    "mobilenetv1_125": 6_270_840,
}
# shared/reference/timm_table.md
TIMM_PARAMS = {
    "mobilenetv2_035": 1_677_128,
    "mobilenetv2_050": 1_968_680,
    "mobilenetv2_075": 2_636_424,
    "mobilenetv2_100": 3_504_872,
    "mobilenetv2_140": 6_108_776,
    "mobilenetv3_small_050": 1_593_224,
    "mobilenetv3_small_075": 2_041_872,
    "mobilenetv3_small_100": 2_542_856,
    "mobilenetv3_large_075": 3_993_528,
    "mobilenetv3_large_100": 5_483_032,
}
ODD_SIZE = (97, 81)  # odd H ≠ W: every stride-2 layer sees an odd input somewhere


def timm_reference(name: str, **kwargs) -> torch.nn.Module:
    if name in V1_EXTRA_ALPHA:
        from timm.models.efficientnet import _gen_mobilenet_v1

        return _gen_mobilenet_v1("mobilenetv1_100", V1_EXTRA_ALPHA[name], pretrained=False, **kwargs)
    return timm_model(name, **kwargs)


def pair(name: str, seed: int = 0, **ez_kwargs):
    """(perturbed timm reference, edgezoo model with converted weights), both in eval mode."""
    if name not in V1_EXTRA_ALPHA:
        return pair_from_timm(name, seed, **ez_kwargs)
    ref = perturb_(timm_reference(name), seed).eval()
    ours = edgezoo.create_model(name, **ez_kwargs).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"))
    return ref, ours


def test_all_variants_registered():
    expected = set(V1_PAPER_PARAMS) | set(TIMM_PARAMS)
    assert set(NAMES) == expected
    for name in NAMES:
        assert get_entry(name).family == "mobilenetv" + name[len("mobilenetv")]


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_reference(name)
    expected = V1_PAPER_PARAMS.get(name) or TIMM_PARAMS[name]
    assert count_params(ours) == expected
    assert count_params(ref) == expected


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_timm(name):
    ref, ours = pair(name)
    default = get_entry(name).default_cfg["input_size"][1:]
    with torch.no_grad():
        for size, batch in ((default, 1), (ODD_SIZE, 2)):
            x = torch.randn(batch, 3, *size)
            expected = ref(x)
            assert_close(ours(x), expected, 1e-4, what=f"{name} logits at {size}")
            # the trunk alone too (timm's forward_features ends at conv_head for V1/V2, at the last stage for V3)
            feats = ours.forward_features(x)
            assert_close(feats, ref.forward_features(x), 1e-4, what=f"{name} forward_features at {size}")
            # different inputs must give clearly different outputs, or the comparison above proves nothing
            assert rel_diff(ours(torch.randn_like(x)), expected) > 1e-3


@pytest.mark.parametrize(
    "name", ["mobilenetv2_035", "mobilenetv3_small_050", "mobilenetv3_large_100", "mobilenetv1_025"],
)
def test_a_wrong_weight_is_detected(name):
    """Negative control: moving one deep BN statistic must break the match."""
    ref, ours = pair(name)
    key = [k for k in ours.state_dict() if k.endswith("running_mean")][-3]
    with torch.no_grad():
        ours.state_dict()[key].add_(0.1)
        x = torch.randn(1, 3, *ODD_SIZE)
        assert rel_diff(ours(x), ref(x)) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_features_only_matches_timm(name):
    ref = perturb_(timm_reference(name, features_only=True)).eval()
    ours = edgezoo.create_model(name, features_only=True).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"))
    assert [f["num_chs"] for f in ours.feature_info] == ref.feature_info.channels()
    assert [f["reduction"] for f in ours.feature_info] == ref.feature_info.reduction()
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        maps, expected = ours(x), ref(x)
    assert len(maps) == len(expected) == 5
    for level, (a, b) in enumerate(zip(maps, expected)):
        assert_close(a, b, 1e-4, what=f"{name} feature level {level}")


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "mobilenetv2_050", "mobilenetv1_025"])
def test_features_only_subset_matches_timm(name):
    ref = perturb_(timm_reference(name, features_only=True, out_indices=(0, 3))).eval()
    ours = edgezoo.create_model(name, features_only=True, out_indices=(0, -2)).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps, expected = ours(x), ref(x)
    assert len(maps) == 2
    for a, b in zip(maps, expected):
        assert_close(a, b, 1e-4, what=f"{name} feature subset")


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_modules_resolve(name):
    model = edgezoo.create_model(name)
    ref = timm_reference(name)
    assert [f["num_chs"] for f in model.feature_info] == [f["num_chs"] for f in ref.feature_info]
    for f in model.feature_info:
        model.get_submodule(f["module"])


# --- width multiplier -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("base", "alpha", "same_as"),
    [
        ("mobilenetv1_100", 0.5, "mobilenetv1_050"),
        ("mobilenetv2_100", 0.35, "mobilenetv2_035"),
        ("mobilenetv2_035", 1.4, "mobilenetv2_140"),
        ("mobilenetv3_large_100", 0.75, "mobilenetv3_large_075"),
        ("mobilenetv3_small_100", 0.5, "mobilenetv3_small_050"),
    ],
)
def test_width_mult_override_reproduces_named_variant(base, alpha, same_as):
    a = edgezoo.create_model(base, width_mult=alpha)
    b = edgezoo.create_model(same_as)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize(
    ("name", "generator", "alpha"),
    [
        ("mobilenetv1_100", "timm.models.efficientnet._gen_mobilenet_v1", 0.6),
        ("mobilenetv2_100", "timm.models.efficientnet._gen_mobilenet_v2", 1.3),
        ("mobilenetv2_100", "timm.models.efficientnet._gen_mobilenet_v2", 0.2),
        ("mobilenetv3_large_100", "timm.models.mobilenetv3._gen_mobilenet_v3", 0.6),
        ("mobilenetv3_small_100", "timm.models.mobilenetv3._gen_mobilenet_v3", 1.1),
    ],
)
def test_width_mult_rounding_matches_timm_generator(name, generator, alpha):
    import importlib

    module, fn = generator.rsplit(".", 1)
    ref = perturb_(getattr(importlib.import_module(module), fn)(name, alpha, pretrained=False)).eval()
    ours = edgezoo.create_model(name, width_mult=alpha).eval()
    assert count_params(ours) == count_params(ref)
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"))
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        assert_close(ours(x), ref(x), 1e-4, what=f"{name} at width {alpha}")


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_small_100"])
@pytest.mark.parametrize(
    ("bad", "error"), [(0, ValueError), (-0.5, ValueError), ("wide", TypeError), (True, TypeError)]
)
def test_width_mult_errors(name, bad, error):
    with pytest.raises(error, match="width_mult"):
        edgezoo.create_model(name, width_mult=bad)


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100"])
def test_other_override_errors(name):
    with pytest.raises(TypeError, match="depth_mult"):
        edgezoo.create_model(name, depth_mult=1.2)
    with pytest.raises(ValueError, match="bn_eps"):
        edgezoo.create_model(name, bn_eps=0.0)
    with pytest.raises(ValueError, match="drop_rate"):
        edgezoo.create_model(name, drop_rate=1.0)


def test_resolution_multiplier_is_the_input_size():
    """ρ of the paper: the same weights at 224, 192, 160, 128 and non-square sizes; maps shrink by 32."""
    model = edgezoo.create_model("mobilenetv1_050", img_size=160, features_only=True).eval()
    assert model.default_cfg["input_size"] == (3, 160, 160)
    with torch.no_grad():
        for h, w in ((224, 224), (192, 192), (160, 128), (129, 95)):
            deepest = model(torch.randn(1, 3, h, w))[-1]
            assert deepest.shape[-2:] == (-(-h // 32), -(-w // 32))


# --- torchvision --------------------------------------------------------------------------------------------------

TORCHVISION = [
    ("mobilenet_v2", {}, "mobilenetv2_100", 1e-5),
    ("mobilenet_v2", {"width_mult": 0.35}, "mobilenetv2_035", 1e-5),  # same rounding as timm's at every width
    ("mobilenet_v3_large", {}, "mobilenetv3_large_100", 1e-3),
    ("mobilenet_v3_small", {}, "mobilenetv3_small_100", 1e-3),
]


@pytest.mark.parametrize(("tv_name", "tv_kwargs", "name", "bn_eps"), TORCHVISION)
def test_torchvision_conversion(tv_name, tv_kwargs, name, bn_eps):
    import torchvision

    ref = perturb_(getattr(torchvision.models, tv_name)(weights=None, **tv_kwargs)).eval()
    ours = edgezoo.create_model(name, bn_eps=bn_eps).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="torchvision"))
    with torch.no_grad():
        for size in ((224, 224), ODD_SIZE):
            x = torch.randn(1, 3, *size)
            assert_close(ours(x), ref(x), 1e-4, what=f"{name} from torchvision {tv_name} at {size}")
            # torchvision's `features` ends where edgezoo's forward_features does (V2: after the 1280 conv)
            assert_close(ours.forward_features(x), ref.features(x), 1e-4, what=f"{name} feature map at {size}")


def test_torchvision_v3_needs_its_bn_eps():
    """torchvision's V3 BN eps is 1e-3; trained weights have small running variances (the stem's is scaled down
    here), where building with timm's 1e-5 visibly changes the outputs and ``bn_eps=1e-3`` reproduces them."""
    import torchvision

    ref = perturb_(torchvision.models.mobilenet_v3_small(weights=None)).eval()
    with torch.no_grad():
        ref.state_dict()["features.0.1.running_var"].mul_(1e-3)
    sd = edgezoo.convert_state_dict("mobilenetv3_small_100", ref.state_dict(), source="torchvision")
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        expected, expected_maps = ref(x), ref.features(x)
        wrong_eps = edgezoo.create_model("mobilenetv3_small_100").eval()
        wrong_eps.load_state_dict(sd)
        assert rel_diff(wrong_eps.forward_features(x), expected_maps) > 1e-3
        right_eps = edgezoo.create_model("mobilenetv3_small_100", bn_eps=1e-3).eval()
        right_eps.load_state_dict(sd)
        assert_close(right_eps.forward_features(x), expected_maps, 1e-4, what="torchvision V3 feature map")
        assert_close(right_eps(x), expected, 1e-4, what="torchvision V3 logits with bn_eps=1e-3")


def test_torchvision_converter_rejects_other_keys():
    timm_sd = timm_model("mobilenetv2_035").state_dict()
    with pytest.raises(ValueError, match="torchvision"):
        edgezoo.convert_state_dict("mobilenetv2_035", timm_sd, source="torchvision")
    with pytest.raises(ValueError, match="no 'torchvision' converter"):
        edgezoo.convert_state_dict("mobilenetv1_100", {}, source="torchvision")
