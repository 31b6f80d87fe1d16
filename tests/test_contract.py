"""Contract tests over every registered model: the timm-compatible surface every family must offer."""
from __future__ import annotations

import pytest
import torch

import edgezoo
from edgezoo.registry import get_entry
from oracle import count_params, timm_model

ALL = edgezoo.list_models()
# Families whose token mixing is tied to the input grid need their own size handling (tested in their files).
FIXED_GRID = {"mlp_mixer"}
TOKEN_MODELS = {"vit", "mlp_mixer"}


def small_size(name: str) -> int:
    """A small input that still exercises every stage (stride-32 convnets need ≥ 64 px to keep 2×2 maps)."""
    family = get_entry(name).family
    if family in FIXED_GRID or family == "vit":
        return get_entry(name).default_cfg["input_size"][1]
    return 64


def test_registry_nonempty_and_sorted():
    assert ALL == sorted(ALL)
    assert edgezoo.list_models("mobilenetv2_*") == [n for n in ALL if n.startswith("mobilenetv2_")]


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="mobilenetv2_100"):
        edgezoo.create_model("mobilenetv2_10")


@pytest.mark.parametrize("name", ALL)
def test_param_count_equals_timm(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
    try:
        with torch.device("meta"):
            ref = timm_model(name)
    except RuntimeError:  # variants that timm does not have (e.g. mobilenetv1_025) are pinned in family tests
        pytest.skip(f"timm has no {name}")
    assert count_params(ours) == count_params(ref)


@pytest.mark.parametrize("name", ALL)
def test_contract_surface(name):
    model = edgezoo.create_model(name, num_classes=7).eval()
    cfg = model.default_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "first_conv", "classifier"):
        assert key in cfg, key
    model.get_submodule(cfg["first_conv"])
    assert isinstance(model.get_submodule(cfg["classifier"]), torch.nn.Linear)
    assert model.num_features > 0
    for f in model.feature_info:
        assert set(f) >= {"num_chs", "reduction", "module"}
        model.get_submodule(f["module"])
    s = small_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.num_features)
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5, rtol=1e-5)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_num_classes_zero_gives_pooled_features(name):
    model = edgezoo.create_model(name, num_classes=0).eval()
    s = small_size(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, s, s))
    assert out.shape == (1, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_in_chans(name):
    model = edgezoo.create_model(name, in_chans=1, num_classes=4).eval()
    s = small_size(name)
    with torch.no_grad():
        assert model(torch.randn(1, 1, s, s)).shape == (1, 4)


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_gradient(name):
    model = edgezoo.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    s = small_size(name)
    out = model(torch.randn(2, 3, s, s))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no/invalid gradient for {missing[:10]}"


@pytest.mark.parametrize("name", [n for n in ALL if get_entry(n).family not in TOKEN_MODELS])
def test_features_only_matches_feature_info(name):
    full = edgezoo.create_model(name)
    info = full.feature_info
    model = edgezoo.create_model(name, features_only=True).eval()
    s = 96
    with torch.no_grad():
        maps = model(torch.randn(1, 3, s, s))
    assert len(maps) == len(info)
    for m, f in zip(maps, info):
        assert m.shape[1] == f["num_chs"]
        assert m.shape[-1] == -(-s // f["reduction"]), (m.shape, f)
    # no head weights are kept
    assert set(model.state_dict()) < set(full.state_dict())
    sub = edgezoo.create_model(name, features_only=True, out_indices=(1, -1))
    assert [f["num_chs"] for f in sub.feature_info] == [info[1]["num_chs"], info[-1]["num_chs"]]


@pytest.mark.parametrize("name", ALL)
def test_features_only_channels_match_timm(name):
    if get_entry(name).family in TOKEN_MODELS:
        pytest.skip("token models: features_only is not part of their contract")
    try:
        ref = timm_model(name, features_only=True)
    except RuntimeError:
        pytest.skip(f"timm has no {name}")
    ours = edgezoo.create_model(name, features_only=True)
    assert [f["num_chs"] for f in ours.feature_info] == ref.feature_info.channels()
    assert [f["reduction"] for f in ours.feature_info] == ref.feature_info.reduction()


@pytest.mark.parametrize("name", ALL)
def test_features_only_param_count_equals_timm(name):
    """A backbone cut at an early level holds the same parameters as timm's (layers past it are dropped)."""
    levels = len(edgezoo.create_model(name, features_only=True, out_indices=None).full_feature_info)
    shallow = (0, 1) if levels > 2 else (0,)
    try:
        with torch.device("meta"):
            ref = timm_model(name, features_only=True, out_indices=shallow)
    except RuntimeError:
        pytest.skip(f"timm has no {name}")
    with torch.device("meta"):
        ours = edgezoo.create_model(name, features_only=True, out_indices=shallow)
    assert count_params(ours) == count_params(ref)


@pytest.mark.parametrize("bad", [dict(num_classes=-1), dict(in_chans=0), dict(drop_path_rate=1.5), dict(img_size=0)])
def test_bad_common_arguments(bad):
    name = ALL[0]
    with pytest.raises(ValueError, match=next(iter(bad))):
        edgezoo.create_model(name, **bad)


def test_unknown_override_rejected():
    with pytest.raises(TypeError, match="no_such_option"):
        edgezoo.create_model(ALL[0], no_such_option=3)
