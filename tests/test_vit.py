"""ViT against the timm oracle: parameters, outputs (perturbed weights), any-resolution inference, checkpoint
resizing, features, errors and gradients.

Most checks use vit_tiny; bigger variants are compared at a reduced but valid resolution (their weights are the same
shapes apart from the position embedding), and ViT-L at 224 is marked slow.
"""
from __future__ import annotations

import pytest
import torch

import edgezoo
from edgezoo.checkpoint import save_safetensors
from oracle import assert_close, count_params, pair_from_timm, perturb_, timm_model

# shared/reference/timm_table.md (timm 1.0.31)
REFERENCE_PARAMS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_224": 304_326_632,
}
TINY = "vit_tiny_patch16_224"


def _compare(ref: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, what: str) -> float:
    with torch.no_grad():
        return assert_close(ours(x), ref(x), what=what)


def test_all_variants_registered():
    assert edgezoo.list_models("vit_*") == sorted(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_count(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_model(name)
    assert count_params(ours) == REFERENCE_PARAMS[name] == count_params(ref)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_tiny_matches_timm_at_224(global_pool):
    ref, ours = pair_from_timm(TINY, timm_kwargs=dict(global_pool=global_pool), global_pool=global_pool)
    x = torch.randn(2, 3, 224, 224)
    _compare(ref, ours, x, f"{TINY} global_pool={global_pool}")
    with torch.no_grad():
        assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                     ref.forward_head(ref.forward_features(x), pre_logits=True), what="pre-logits")


@pytest.mark.parametrize(
    "name, img_size",
    [
        ("vit_small_patch16_224", 224),
        ("vit_base_patch32_224", 224),
        ("vit_base_patch16_224", 64),  # same weights as at 224 except the (4×4-grid) position embedding
    ],
)
def test_variants_match_timm(name, img_size):
    ref, ours = pair_from_timm(name, timm_kwargs=dict(img_size=img_size), img_size=img_size)
    _compare(ref, ours, torch.randn(1, 3, img_size, img_size), f"{name}@{img_size}")


@pytest.mark.slow
def test_large_matches_timm():
    """ViT-L (304M parameters): building and perturbing it dominates, so one pair serves both sizes."""
    ref, ours = pair_from_timm("vit_large_patch16_224", timm_kwargs=dict(dynamic_img_size=True))
    _compare(ref, ours, torch.randn(1, 3, 32, 32), "vit_large_patch16_224@32")
    _compare(ref, ours, torch.randn(1, 3, 224, 224), "vit_large_patch16_224@224")


@pytest.mark.parametrize("size", [(160, 240), (64, 48), (224, 224), (112, 448)])
def test_any_multiple_of_patch_matches_timm_dynamic_img_size(size):
    """Position embedding resized on the fly, like timm's ``dynamic_img_size=True`` (112×448 has 196 tokens too)."""
    ref, ours = pair_from_timm(TINY, timm_kwargs=dict(dynamic_img_size=True))
    _compare(ref, ours, torch.randn(1, 3, *size), f"{TINY} at {size}")


def test_patch_size_override_small_images():
    ref, ours = pair_from_timm(TINY, timm_kwargs=dict(img_size=32, patch_size=4), img_size=32, patch_size=4)
    assert ours.feature_info[0]["reduction"] == 4
    _compare(ref, ours, torch.randn(2, 3, 32, 32), "patch 4 on 32x32")


def _timm_checkpoint(tmp_path, name=TINY):
    ref = perturb_(timm_model(name)).eval()
    path = tmp_path / "timm_224.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.mark.parametrize("img_size", [384, (160, 240)])
def test_checkpoint_at_224_resized_like_timm(tmp_path, img_size):
    import timm
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref224, path = _timm_checkpoint(tmp_path)
    ours = edgezoo.create_model(TINY, img_size=img_size, checkpoint=path).eval()
    ref = timm.create_model(TINY, pretrained=False, img_size=img_size).eval()
    ref.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), ref))

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    grid = (h // 16, w // 16)
    expected = resample_abs_pos_embed(ref224.pos_embed.detach(), new_size=grid, old_size=(14, 14), num_prefix_tokens=1)
    assert_close(ours.pos_embed.detach(), expected, tol=1e-6, what="resampled pos_embed")
    assert ours.default_cfg["input_size"] == (3, h, w)
    _compare(ref, ours, torch.randn(1, 3, h, w), f"{TINY} {img_size} from a 224 checkpoint")


@pytest.mark.parametrize("patch_size", [8, 32])
def test_checkpoint_of_another_patch_size_resized_like_timm(tmp_path, patch_size):
    """A /16 checkpoint loads into a /8 or /32 model: kernel by pseudo-inverse resize, pos_embed to the new grid."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    _, path = _timm_checkpoint(tmp_path)
    ours = edgezoo.create_model(TINY, patch_size=patch_size, checkpoint=path).eval()
    ref = timm.create_model(TINY, pretrained=False, patch_size=patch_size).eval()
    ref.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), ref))
    assert_close(ours.patch_embed.proj.weight.detach(), ref.patch_embed.proj.weight.detach(), tol=1e-5,
                 what=f"patch kernel resized 16 -> {patch_size}")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_close(ours(x), ref(x), tol=1e-4, what=f"{TINY} /{patch_size} from a /16 checkpoint")


def test_patch_kernel_resize_preserves_tokens_when_upsampling():
    from edgezoo.layers.patch_embed import resample_patch_kernel

    w = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x.float(), size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    new = resample_patch_kernel(w, (8, 8))
    assert torch.allclose(up.double().flatten(1) @ new.flatten(1).T, x.flatten(1) @ w.flatten(1).T, atol=1e-4)
    with pytest.raises(ValueError, match="weight"):
        resample_patch_kernel(torch.randn(3, 4, 4), (8, 8))


def test_checkpoint_in_edgezoo_keys_and_safetensors(tmp_path):
    ref, ours = pair_from_timm(TINY)
    path = tmp_path / "vit.safetensors"
    save_safetensors(ours.state_dict(), path)
    loaded = edgezoo.create_model(TINY, checkpoint=path).eval()
    _compare(ref, loaded, torch.randn(1, 3, 224, 224), "reloaded from safetensors")


def test_checkpoint_with_non_square_grid_is_refused(tmp_path):
    sd = edgezoo.create_model(TINY, img_size=(160, 240)).state_dict()  # 10×15 = 150 positions
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="150 patch positions"):
        edgezoo.create_model(TINY, checkpoint=path)
    # ... but it loads into a model with the same grid.
    edgezoo.create_model(TINY, img_size=(160, 240), checkpoint=path)


def test_converter():
    sd = perturb_(timm_model(TINY)).state_dict()
    sd["pre_logits.fc.weight"] = torch.zeros(3, 3)
    out = edgezoo.convert_state_dict(TINY, sd)
    assert "pre_logits.fc.weight" not in out
    assert set(out) == set(edgezoo.create_model(TINY).state_dict())
    with pytest.raises(KeyError, match="not a timm ViT"):
        edgezoo.convert_state_dict(TINY, {"conv.weight": torch.zeros(1)})


def test_forward_intermediates_match_timm():
    ref, ours = pair_from_timm(TINY, timm_kwargs=dict(dynamic_img_size=True))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, indices=[0, 5, 11], intermediates_only=True)
        got = ours.forward_intermediates(x, [0, 5, 11])
    assert len(got) == 3
    for g, e in zip(got, expected):
        assert g.shape == (1, 192, 6, 8)
        assert_close(g, e, what="intermediate map")


def test_features_only():
    ref = timm_model(TINY, features_only=True)
    model = edgezoo.create_model(TINY, features_only=True).eval()
    assert [f["num_chs"] for f in model.feature_info] == ref.feature_info.channels()
    assert [f["reduction"] for f in model.feature_info] == ref.feature_info.reduction()
    assert [f["module"] for f in model.feature_info] == ["blocks.9", "blocks.10", "blocks.11"]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 96))
    assert [m.shape for m in maps] == [torch.Size([1, 192, 4, 6])] * 3
    assert not any(k.startswith(("head.", "norm.")) for k in model.state_dict())
    sub = edgezoo.create_model(TINY, features_only=True, out_indices=(2, -1))
    assert [f["module"] for f in sub.feature_info] == ["blocks.2", "blocks.11"]
    with pytest.raises(ValueError, match="out_indices"):
        edgezoo.create_model(TINY, features_only=True, out_indices=(12,))


def test_shallow_features_only_loads_a_full_checkpoint(tmp_path):
    """Blocks past the deepest requested level are dropped, and a full checkpoint's weights for them are ignored."""
    ref, path = _timm_checkpoint(tmp_path)
    model = edgezoo.create_model(TINY, features_only=True, out_indices=(1, 3), checkpoint=path).eval()
    assert len(model.blocks) == 4 and not any(k.startswith("blocks.4.") for k in model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        for a, b in zip(model(x), want, strict=True):
            assert_close(a, b, what="shallow ViT features from a full checkpoint")


def test_default_cfg():
    cfg = edgezoo.create_model(TINY).default_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    ref_cfg = timm_model(TINY).pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier"):
        assert cfg[key] == (tuple(ref_cfg[key]) if isinstance(ref_cfg[key], (tuple, list)) else ref_cfg[key]), key


def test_drop_path_schedule_is_linear():
    model = edgezoo.create_model(TINY, drop_path_rate=0.2)
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert model.blocks[6].drop_path.drop_prob == pytest.approx(0.2 * 6 / 11)


def test_every_parameter_gets_gradient():
    model = perturb_(edgezoo.create_model(TINY, img_size=32, patch_size=4, num_classes=5, drop_path_rate=0.1)).train()
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not bad, bad


@pytest.mark.parametrize("size", [(230, 224), (224, 8)])
def test_input_not_multiple_of_patch(size):
    model = edgezoo.create_model(TINY).eval()
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*patch size 16"):
        model(torch.randn(1, 3, *size))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(img_size=100), ValueError, "img_size 100x100 must be a multiple of patch_size 16"),
        (dict(patch_size=0), ValueError, "patch_size"),
        (dict(patch_size="16"), TypeError, "patch_size"),
        (dict(global_pool="max"), ValueError, "global_pool must be one of"),
        (dict(class_token=False), TypeError, "class_token"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        edgezoo.create_model(TINY, **kwargs)


def test_reset_classifier_global_pool():
    model = edgezoo.create_model(TINY).eval()
    model.reset_classifier(4, global_pool="avg")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 4)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(4, global_pool="max")


@pytest.mark.parametrize("size", [(160, 240), (448, 448), (32, 32)])
def test_embedded_tokens_match_timm_exactly(size):
    """Tokens after class token + resized position embedding, before any block (catches resampling details that
    the classifier output would dilute: interpolation mode, antialiasing, prefix handling)."""
    ref, ours = pair_from_timm(TINY, timm_kwargs=dict(dynamic_img_size=True))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = ref._pos_embed(ref.patch_embed(x))
        got, grid = ours._embed(x)
    assert grid == (size[0] // 16, size[1] // 16)
    assert_close(got, expected, tol=1e-6, what="embedded tokens")


def test_layer_norm_eps_is_the_reference_one():
    norms = [m for m in edgezoo.create_model(TINY, global_pool="avg").modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1 and all(m.eps == 1e-6 for m in norms)


@pytest.mark.parametrize("size", [(224, 224), (96, 160)])
def test_fused_class_token_last_block_matches_timm(size):
    """fuse() runs the last block for the class token only; logits still equal timm's, features stay complete."""
    from edgezoo.deploy import fuse

    ref, ours = pair_from_timm(TINY)
    fused, report = fuse(ours, return_report=True)
    assert fused.class_token_last_block and not ours.class_token_last_block
    assert any("class token only" in r for r in report.rewritten)
    assert set(fused.state_dict()) == set(ours.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_close(fused(x), ours(x) if size != (224, 224) else ref(x), what="fused logits")
        assert fused.forward_features(x).shape == ours.forward_features(x).shape
    # Average pooling reads every token: the full last block must run again.
    fused.reset_classifier(5, global_pool="avg")
    with torch.no_grad():
        expected = fused.forward_head(fused.forward_features(x))
        assert_close(fused(x), expected, what="avg-pool logits after reset_classifier")
    # Nothing to skip when the model pools by average from the start.
    _, avg_report = fuse(edgezoo.create_model(TINY, global_pool="avg", num_classes=3), return_report=True)
    assert not any("class token only" in r for r in avg_report.rewritten)
