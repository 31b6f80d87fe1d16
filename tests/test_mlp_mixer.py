"""MLP-Mixer against the timm oracle: parameters, outputs (perturbed weights), the fixed patch grid, small images
with a small patch, checkpoints, features, errors and gradients.

Most checks use mixer_s32; bigger variants are compared at a reduced but valid resolution, the L models (~207M
parameters, dominated by building and perturbing them) are marked slow.
"""
from __future__ import annotations

import pytest
import torch

import edgezoo
from edgezoo.checkpoint import save_safetensors
from oracle import assert_close, count_params, pair_from_timm, perturb_, timm_model

# shared/reference/timm_table.md (timm 1.0.31)
REFERENCE_PARAMS = {
    "mixer_s32_224": 19_104_624,
    "mixer_s16_224": 18_528_264,
    "mixer_b32_224": 60_293_428,
    "mixer_b16_224": 59_880_472,
    "mixer_l32_224": 206_939_264,
    "mixer_l16_224": 208_196_168,
}
SMALL = "mixer_s32_224"
# timm's constructor arguments for an S/32-shaped Mixer with another patch size (its registered mixer_* functions
# fix patch_size, so the oracle is built from the class directly).
TIMM_S_ARGS = dict(num_blocks=8, embed_dim=512)


def _compare(ref: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, what: str) -> float:
    with torch.no_grad():
        return assert_close(ours(x), ref(x), what=what)


def _timm_mixer(**kwargs) -> torch.nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return perturb_(MlpMixer(**TIMM_S_ARGS, **kwargs)).eval()


def test_all_variants_registered():
    assert edgezoo.list_models("mixer_*") == sorted(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_count(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_model(name)
    assert count_params(ours) == REFERENCE_PARAMS[name] == count_params(ref)


@pytest.mark.parametrize(
    "name, img_size",
    [
        ("mixer_s32_224", 224),
        ("mixer_s16_224", 224),
        ("mixer_b32_224", 224),
        ("mixer_b16_224", 64),  # a 4×4 grid: token MLPs shrink, channel MLPs are the full-size ones
    ],
)
def test_variants_match_timm(name, img_size):
    ref, ours = pair_from_timm(name, timm_kwargs=dict(img_size=img_size), img_size=img_size)
    x = torch.randn(2, 3, img_size, img_size)
    _compare(ref, ours, x, f"{name}@{img_size}")
    with torch.no_grad():
        assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                     ref.forward_head(ref.forward_features(x), pre_logits=True), what="pre-logits")


@pytest.mark.slow
@pytest.mark.parametrize("name, img_size", [("mixer_l32_224", 64), ("mixer_l16_224", 224)])
def test_large_variants_match_timm(name, img_size):
    ref, ours = pair_from_timm(name, timm_kwargs=dict(img_size=img_size), img_size=img_size)
    _compare(ref, ours, torch.randn(1, 3, img_size, img_size), f"{name}@{img_size}")


def test_small_images_with_patch_4_match_timm():
    ref = _timm_mixer(img_size=32, patch_size=4)
    ours = edgezoo.create_model(SMALL, img_size=32, patch_size=4).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(SMALL, ref.state_dict()))
    assert ours.blocks[0].token_mlp.fc1.in_features == 64  # 8×8 patches
    assert ours.feature_info[0]["reduction"] == 4
    _compare(ref, ours, torch.randn(2, 3, 32, 32), "mixer_s32 at 32x32, patch 4")


def test_non_square_img_size_matches_timm():
    ref = _timm_mixer(img_size=(64, 96), patch_size=32)
    ours = edgezoo.create_model(SMALL, img_size=(64, 96)).eval()
    ours.load_state_dict(edgezoo.convert_state_dict(SMALL, ref.state_dict()))
    assert ours.default_cfg["input_size"] == (3, 64, 96)
    _compare(ref, ours, torch.randn(1, 3, 64, 96), "mixer_s32 at 64x96")


@pytest.mark.parametrize("size", [(160, 160), (224, 256), (230, 224)])
def test_input_size_must_match_the_grid(size):
    model = edgezoo.create_model(SMALL).eval()
    with pytest.raises(ValueError, match=rf"input size {size[0]}x{size[1]}.*img_size 224x224"):
        model(torch.randn(1, 3, *size))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(img_size=100), ValueError, "img_size 100x100 must be a multiple of patch_size 32"),
        (dict(img_size=16), ValueError, "img_size 16x16"),
        (dict(patch_size=-4), ValueError, "patch_size"),
        (dict(patch_size=4.0), TypeError, "patch_size"),
        (dict(global_pool="avg"), TypeError, "global_pool"),  # not an option of this family
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        edgezoo.create_model(SMALL, **kwargs)


def test_converter_names():
    sd = timm_model(SMALL).state_dict()
    out = edgezoo.convert_state_dict(SMALL, sd)
    assert "blocks.3.token_mlp.fc1.weight" in out and "blocks.3.channel_norm.bias" in out
    assert set(out) == set(edgezoo.create_model(SMALL).state_dict())
    with pytest.raises(KeyError, match="not a timm MLP-Mixer"):
        edgezoo.convert_state_dict(SMALL, {"conv.weight": torch.zeros(1)})


def test_checkpoint_loading_timm_and_own_keys(tmp_path):
    ref, ours = pair_from_timm(SMALL)
    x = torch.randn(1, 3, 224, 224)
    timm_path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), timm_path)
    _compare(ref, edgezoo.create_model(SMALL, checkpoint=timm_path).eval(), x, "loaded from timm .pth")
    own_path = tmp_path / "own.safetensors"
    save_safetensors(ours.state_dict(), own_path)
    _compare(ref, edgezoo.create_model(SMALL, checkpoint=own_path).eval(), x, "loaded from edgezoo safetensors")
    # A checkpoint for another grid does not fit: the loader names the token-MLP shape mismatch.
    with pytest.raises(ValueError, match="token_mlp.fc1.weight"):
        edgezoo.create_model(SMALL, img_size=32, patch_size=4, checkpoint=own_path)


def test_forward_intermediates_match_timm():
    ref, ours = pair_from_timm(SMALL)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, indices=[1, 7], intermediates_only=True)
        got = ours.forward_intermediates(x, [1, 7])
    assert [g.shape for g in got] == [torch.Size([1, 512, 7, 7])] * 2
    for g, e in zip(got, expected):
        assert_close(g, e, what="intermediate map")


def test_features_only():
    ref = timm_model(SMALL, features_only=True)
    model = edgezoo.create_model(SMALL, features_only=True).eval()
    assert [f["num_chs"] for f in model.feature_info] == ref.feature_info.channels()
    assert [f["reduction"] for f in model.feature_info] == ref.feature_info.reduction()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [m.shape for m in maps] == [torch.Size([1, 512, 7, 7])] * 3
    assert not any(k.startswith(("head.", "norm.")) for k in model.state_dict())


def test_default_cfg():
    cfg = edgezoo.create_model(SMALL).default_cfg
    ref_cfg = timm_model(SMALL).pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier"):
        assert cfg[key] == (tuple(ref_cfg[key]) if isinstance(ref_cfg[key], (tuple, list)) else ref_cfg[key]), key
    assert cfg["fixed_input_size"] is True


def test_every_parameter_gets_gradient():
    model = perturb_(edgezoo.create_model(SMALL, img_size=32, patch_size=4, num_classes=5, drop_path_rate=0.1)).train()
    assert all(b.drop_path.drop_prob == 0.1 for b in model.blocks)  # one rate for every block, as timm
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not bad, bad


def test_reset_classifier():
    model = edgezoo.create_model(SMALL, img_size=32, patch_size=4).eval()
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="token")


def test_layer_norm_eps_is_the_reference_one():
    norms = [m for m in edgezoo.create_model(SMALL).modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 8 + 1 and all(m.eps == 1e-6 for m in norms)
