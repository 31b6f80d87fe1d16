"""MobileViT XXS / XS / S against the timm oracle: sizes, outputs at any resolution, features, training, converters."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.layers import ConvNormAct, DropPath
from edgezoo.models.mobilevit import fold_patches, unfold_patches
from oracle import assert_close, count_params, pair_from_timm, perturb_, timm_model

VARIANTS = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]

# shared/reference/timm_table.md (timm 1.0.31)
REFERENCE = {
    "mobilevit_xxs": dict(params=1_272_024, chs=[16, 24, 48, 64, 320]),
    "mobilevit_xs": dict(params=2_317_848, chs=[32, 48, 64, 80, 384]),
    "mobilevit_s": dict(params=5_578_632, chs=[32, 64, 96, 128, 640]),
}
REDUCTIONS = [2, 4, 8, 16, 32]

# 256: the training size (every map divisible by the 2×2 patch); 224: the 7×7 last map must be resized to 8×8;
# 200×296 and 97×131: odd maps in several stages, different along H and W.
SIZES = [(256, 256), (224, 224), (200, 296), (97, 131)]


@functools.lru_cache(maxsize=None)
def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    return pair_from_timm(name, seed=1)


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count_equals_timm(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_model(name)
    assert count_params(ours) == count_params(ref) == REFERENCE[name]["params"]


@pytest.mark.parametrize("name", VARIANTS)
def test_default_cfg_like_timm(name):
    ours = edgezoo.create_model(name).default_cfg
    ref = timm_model(name).pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "pool_size"):
        assert ours[key] == ref[key], key
    assert ours["input_size"] == (3, 256, 256) and ours["mean"] == (0.0, 0.0, 0.0) and ours["std"] == (1.0, 1.0, 1.0)
    assert ours["min_input_size"] == (3, 32, 32)
    assert edgezoo.create_model(name, img_size=(200, 296)).default_cfg["input_size"] == (3, 200, 296)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", VARIANTS)
def test_outputs_match_timm(name, size):
    ref, ours = _pair(name)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_close(ours(x), ref(x), tol=1e-4, what=f"{name} logits at {size}")
        assert_close(ours.forward_features(x), ref.forward_features(x), tol=1e-4, what=f"{name} features at {size}")


@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_matches_timm(name):
    # perturb timm's own features_only wrapper: its keys ("stages_2.1…") go through the converter too
    ref = perturb_(timm_model(name, features_only=True), seed=2).eval()
    ours = edgezoo.create_model(name, features_only=True).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"), strict=True)
    assert [f["num_chs"] for f in ours.feature_info] == ref.feature_info.channels() == REFERENCE[name]["chs"]
    assert [f["reduction"] for f in ours.feature_info] == ref.feature_info.reduction() == REDUCTIONS
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert len(got) == len(want) == 5
    for level, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, what=f"{name} feature level {level}")


def test_out_indices_match_timm():
    name = "mobilevit_xxs"
    ref = perturb_(timm_model(name, features_only=True, out_indices=(1, 3)), seed=3).eval()
    ours = edgezoo.create_model(name, features_only=True, out_indices=(1, -2)).eval()
    # both drop the layers after the deepest wanted level: the pruned state dicts correspond key for key
    ours.load_state_dict(edgezoo.convert_state_dict(name, ref.state_dict(), source="timm"), strict=True)
    assert not any(k.startswith(("stages.4.", "final_conv.")) for k in ours.state_dict())
    assert [f["num_chs"] for f in ours.feature_info] == ref.feature_info.channels() == [24, 64]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x), strict=True):
            assert_close(a, b)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_parameter_with_drop_path(name):
    model = edgezoo.create_model(name, num_classes=10, drop_path_rate=0.2, drop_rate=0.1).train()
    assert any(isinstance(m, DropPath) for m in model.modules())
    out = model(torch.randn(2, 3, 67, 45))
    out.logsumexp(dim=1).mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"no/invalid gradient for {bad[:10]}"


def test_drop_path_schedule_matches_timm():
    """Residual branches get timm's per-block linearly increasing rates (MobileViT blocks: their stage slot's rate)."""
    name = "mobilevit_xs"
    ours = edgezoo.create_model(name, drop_path_rate=0.3)
    ref = timm_model(name, drop_path_rate=0.3)
    ref_rates = {}
    for stage_idx, stage in enumerate(ref.stages):
        for block_idx, block in enumerate(stage):
            dps = [m.drop_prob for m in block.modules() if type(m).__name__ == "DropPath"]
            if dps and getattr(block, "shortcut", True) is not None:  # see the note in mobilevit.py's report
                ref_rates[(stage_idx, block_idx)] = sorted(set(dps))
    our_rates = {}
    for stage_idx, stage in enumerate(ours.stages):
        for block_idx, block in enumerate(stage):
            dps = [m.drop_prob for m in block.modules() if isinstance(m, DropPath)]
            if dps:
                our_rates[(stage_idx, block_idx)] = sorted(set(dps))
    assert our_rates.keys() == ref_rates.keys()
    for key in ref_rates:
        assert our_rates[key] == pytest.approx(ref_rates[key]), key


@pytest.mark.parametrize("size", [(31, 64), (64, 16), (1, 1)])
def test_too_small_input_raises(size):
    model = edgezoo.create_model("mobilevit_xxs").eval()
    with pytest.raises(ValueError, match=r">= 32.*got \d+×\d+"):
        model(torch.randn(1, 3, *size))
    feats = edgezoo.create_model("mobilevit_xxs", features_only=True).eval()
    with pytest.raises(ValueError, match=">= 32"):
        feats(torch.randn(1, 3, *size))


def test_minimum_size_runs():
    model = edgezoo.create_model("mobilevit_xxs", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 33)).shape == (1, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="img_size"):
        edgezoo.create_model("mobilevit_xxs", img_size=16)
    with pytest.raises(ValueError, match="drop_rate"):
        edgezoo.create_model("mobilevit_xxs", drop_rate=1.5)
    with pytest.raises(TypeError, match="patch_sise"):
        edgezoo.create_model("mobilevit_xxs", patch_sise=4)
    with pytest.raises(ValueError, match="global_pool"):
        edgezoo.create_model("mobilevit_xxs").reset_classifier(5, global_pool="max")


def test_unfold_fold_layout_and_inverse():
    batch, chans, grid, patch = 2, 3, (3, 5), (2, 2)
    x = torch.arange(batch * chans * 6 * 10, dtype=torch.float32).reshape(batch, chans, 6, 10)
    tokens = unfold_patches(x, patch)
    assert tokens.shape == (batch * 4, 15, chans)
    # sequence b·P + i·pw + j holds pixel (i, j) of every patch, patches row-major
    b, i, j, gh, gw, c = 1, 1, 0, 2, 3, 2
    assert tokens[b * 4 + i * 2 + j, gh * 5 + gw, c] == x[b, c, gh * 2 + i, gw * 2 + j]
    assert torch.equal(fold_patches(tokens, batch=batch, grid=grid, patch_size=patch), x)


def test_every_batchnorm_is_in_a_conv_norm_act():
    model = edgezoo.create_model("mobilevit_xxs")
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            assert isinstance(parent, ConvNormAct) and parent.bn is module, name


def test_converter_rejects_foreign_keys():
    sd = timm_model("mobilevit_xxs").state_dict()
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.weight"):
        edgezoo.convert_state_dict("mobilevit_xxs", sd, source="timm")


def test_checkpoint_in_timm_keys_loads(tmp_path):
    from safetensors.torch import save_file

    name = "mobilevit_xxs"
    ref, _ = _pair(name)
    path = tmp_path / "timm_mobilevit_xxs.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = edgezoo.create_model(name, checkpoint=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_close(ours(x), ref(x))
    # and edgezoo's own keys load back into a features-only model
    own = tmp_path / "own.safetensors"
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(own))
    feats = edgezoo.create_model(name, features_only=True, checkpoint=own).eval()
    with torch.no_grad():
        assert_close(feats(x)[-1], ours.forward_features(x))
