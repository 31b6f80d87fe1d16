"""EdgeNeXt XX-S / X-S / S / B against timm (perturbed weights), plus unit tests of XCA and the position encoding."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import edgezoo
from edgezoo.checkpoint import save_safetensors
from edgezoo.layers.xca import CrossCovarianceAttention
from edgezoo.models.edgenext import VARIANTS, FourierPositionEncoding, SDTAEncoder
from oracle import assert_close, count_params, pair_from_timm, perturb_, timm_model

NAMES = ["edgenext_xx_small", "edgenext_x_small", "edgenext_small", "edgenext_base"]
# shared/reference/timm_table.md (timm 1.0.31)
TIMM_PARAMS = {
    "edgenext_xx_small": 1_327_216,
    "edgenext_x_small": 2_336_804,
    "edgenext_small": 5_586_832,
    "edgenext_base": 18_511_292,
}
TIMM_CHANNELS = {
    "edgenext_xx_small": [24, 48, 88, 168],
    "edgenext_x_small": [32, 64, 100, 192],
    "edgenext_small": [48, 96, 160, 304],
    "edgenext_base": [80, 160, 288, 584],
}


def test_registered_names():
    assert edgezoo.list_models("edgenext*") == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_timm(name):
    with torch.device("meta"):
        ours = edgezoo.create_model(name)
        ref = timm_model(name)
    assert count_params(ours) == count_params(ref) == TIMM_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_matches_timm(name):
    with torch.device("meta"):
        ref = timm_model(name)
    ours = edgezoo.create_model(name).default_cfg
    theirs = ref.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "pool_size", "test_input_size", "test_crop_pct"):
        mine, ref_value = ours[key], theirs[key]
        if isinstance(ref_value, (list, tuple)):
            mine, ref_value = tuple(mine), tuple(ref_value)
        assert mine == ref_value, key
    assert ours["classifier"] == "head.fc"


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_timm(name):
    ref, ours = pair_from_timm(name, seed=1)
    # 256×256 is the training size; 97×131 is odd in both dimensions (floor division at every stride) and gives a
    # grid whose position encoding was never seen at 256.
    for hw in [(256, 256), (97, 131)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            assert_close(ours(x), ref(x), what=f"{name} logits at {hw}")
            assert_close(
                ours.forward_head(ours.forward_features(x), pre_logits=True),
                ref.forward_head(ref.forward_features(x), pre_logits=True),
                what=f"{name} pre-logits at {hw}",
            )


@pytest.mark.parametrize("name", NAMES)
def test_features_only_matches_timm(name, tmp_path):
    ref = perturb_(timm_model(name), seed=2).eval()
    path = tmp_path / "timm_weights.safetensors"
    save_safetensors(ref.state_dict(), path)  # timm keys: detected and converted by create_model
    ours = edgezoo.create_model(name, features_only=True, checkpoint=path).eval()
    assert [f["num_chs"] for f in ours.feature_info] == TIMM_CHANNELS[name]
    assert [f["reduction"] for f in ours.feature_info] == [4, 8, 16, 32]
    assert not any(k.startswith("head.") for k in ours.state_dict())
    x = torch.randn(1, 3, 71, 96)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
        maps = ours(x)
    assert len(maps) == 4
    for level, (a, b) in enumerate(zip(maps, expected)):
        assert_close(a, b, what=f"{name} feature level {level}")

    sub = edgezoo.create_model(name, features_only=True, out_indices=(1, -2), checkpoint=path).eval()
    assert [f["num_chs"] for f in sub.feature_info] == TIMM_CHANNELS[name][1:3]
    with torch.no_grad():
        maps = sub(x)
    assert [m.shape[1] for m in maps] == TIMM_CHANNELS[name][1:3]
    assert_close(maps[0], expected[1])
    assert_close(maps[1], expected[2])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_with_drop_path(name):
    model = edgezoo.create_model(name, num_classes=3, drop_path_rate=0.2).train()
    out = model(torch.randn(2, 3, 64, 96))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:10]


@pytest.mark.parametrize("name", ["edgenext_xx_small", "edgenext_small"])
def test_drop_path_schedule_matches_timm(name):
    ours = edgezoo.create_model(name, drop_path_rate=0.3)
    ref = timm_model(name, drop_path_rate=0.3)

    def rates(model):
        return [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]

    assert rates(ours) == pytest.approx(rates(ref))
    assert rates(ours)[-1] == pytest.approx(0.3) and rates(ours)[0] == 0.0


def test_variant_table_matches_paper_layout():
    for name, v in VARIANTS.items():
        assert [s.kernel_size for s in v.stages] == [3, 5, 7, 9], name
        assert [s.sdta_blocks for s in v.stages] == [0, 1, 1, 1], name
        assert [s.scales for s in v.stages] == [2, 2, 3, 4], name
        assert [s.pos_embed for s in v.stages] == [False, True, False, False], name
        assert [s.dim for s in v.stages] == TIMM_CHANNELS[name]


# ---------------------------------------------------------------------------------------------------------------
# Unit tests of the SDTA parts against direct formulas
# ---------------------------------------------------------------------------------------------------------------
def _xca_by_formula(attn: CrossCovarianceAttention, x: torch.Tensor) -> torch.Tensor:
    """XCA written out head by head: A_h = softmax(τ_h · q̂_hᵀ k̂_h) over channels, out_h = v_h A_hᵀ."""
    batch, tokens, dim = x.shape
    d = attn.head_dim
    q, k, v = attn.qkv(x).split(dim, dim=-1)  # each (B, N, C)
    heads = []
    for h in range(attn.num_heads):
        cols = slice(h * d, (h + 1) * d)
        qh, kh, vh = q[..., cols], k[..., cols], v[..., cols]  # (B, N, d)
        qh = qh / qh.norm(dim=1, keepdim=True).clamp_min(1e-12)  # unit norm over tokens, per channel
        kh = kh / kh.norm(dim=1, keepdim=True).clamp_min(1e-12)
        logits = torch.einsum("bni,bnj->bij", qh, kh) * attn.temperature[h, 0, 0]  # (B, d, d) channel×channel
        weights = logits.softmax(dim=-1)
        heads.append(torch.einsum("bij,bnj->bni", weights, vh))  # (B, N, d)
    return attn.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("dim,heads,tokens", [(48, 4, 37), (36, 3, 5)])
def test_xca_matches_explicit_formula(dim, heads, tokens):
    attn = CrossCovarianceAttention(dim, num_heads=heads).eval()
    with torch.no_grad():
        attn.temperature.copy_(torch.rand(heads, 1, 1) * 3 + 0.2)  # distinct per head
        x = torch.randn(2, tokens, dim)
        assert_close(attn(x), _xca_by_formula(attn, x), tol=1e-5, what="XCA")
        # attention is across channels: permuting the tokens permutes the output the same way
        perm = torch.randperm(tokens)
        assert_close(attn(x[:, perm]), attn(x)[:, perm], tol=1e-5, what="XCA token equivariance")


def test_xca_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_heads"):
        CrossCovarianceAttention(30, num_heads=4)


def test_position_encoding_matches_formula():
    enc = FourierPositionEncoding(dim=8, hidden_dim=4)
    with torch.no_grad():
        enc.proj.weight.copy_(torch.eye(8).reshape(8, 8, 1, 1))  # identity projection exposes the sinusoids
        enc.proj.bias.zero_()
        out = enc(3, 5)[0]  # (8, 3, 5)
    assert out.shape == (8, 3, 5)
    for i in range(3):
        for j in range(5):
            y, x = (i + 1) / 3 * 2 * math.pi, (j + 1) / 5 * 2 * math.pi
            lam = [1.0, 10000.0 ** 0.5]
            expected = [math.sin(y / lam[0]), math.cos(y / lam[0]), math.sin(y / lam[1]), math.cos(y / lam[1]),
                        math.sin(x / lam[0]), math.cos(x / lam[0]), math.sin(x / lam[1]), math.cos(x / lam[1])]
            assert torch.allclose(out[:, i, j], torch.tensor(expected), atol=1e-5), (i, j)


def test_sdta_split_sizes():
    block = SDTAEncoder(dim=88, scales=3, heads=4, pos_embed=False, expand_ratio=4, layer_scale_init=1e-6, drop_path=0.0)
    assert block.split_sizes == [30, 30, 28]
    assert len(block.scale_convs) == 2


# ---------------------------------------------------------------------------------------------------------------
# Errors and conversion
# ---------------------------------------------------------------------------------------------------------------
def test_too_small_input_is_a_clear_error():
    model = edgezoo.create_model("edgenext_xx_small").eval()
    with pytest.raises(ValueError, match="H, W >= 32"):
        model(torch.randn(1, 3, 31, 64))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 33)).shape == (1, 1000)


def test_bad_overrides():
    with pytest.raises(TypeError, match="no_such_option"):
        edgezoo.create_model("edgenext_small", no_such_option=1)
    with pytest.raises(ValueError, match="drop_rate"):
        edgezoo.create_model("edgenext_small", drop_rate=2.0)
    with pytest.raises(ValueError, match="img_size"):
        edgezoo.create_model("edgenext_small", img_size=16)
    assert edgezoo.create_model("edgenext_xx_small", img_size=(224, 192)).default_cfg["input_size"] == (3, 224, 192)


def test_converter_rejects_foreign_keys():
    sd = timm_model("edgenext_xx_small").state_dict()
    sd["stages.1.blocks.1.unknown.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown"):
        edgezoo.convert_state_dict("edgenext_xx_small", sd, source="timm")
    with pytest.raises(ValueError, match="torchvision"):
        edgezoo.convert_state_dict("edgenext_xx_small", {}, source="torchvision")


def test_converted_keys_equal_model_keys_for_all_variants():
    for name in NAMES:
        with torch.device("meta"):
            ref, ours = timm_model(name), edgezoo.create_model(name)
        converted = edgezoo.convert_state_dict(name, ref.state_dict(), source="timm")
        assert set(converted) == set(ours.state_dict()), name
        assert all(converted[k].shape == v.shape for k, v in ours.state_dict().items()), name


def test_eval_is_deterministic_and_batch_independent():
    model = edgezoo.create_model("edgenext_x_small", drop_path_rate=0.1).eval()
    x = torch.randn(3, 3, 64, 80)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert_close(single, full, tol=1e-5)
    assert F.softmax(full, -1).sum(-1).allclose(torch.ones(3))


@pytest.mark.parametrize("name", ["edgenext_xx_small", "edgenext_small"])
def test_deploy_form_is_channels_first_and_equal(name):
    """fuse() swaps every block for its NCHW inference form (affines and layer scales folded into 1×1 convs)."""
    from edgezoo.deploy import fuse
    from edgezoo.layers import LayerNorm2d
    from edgezoo.models.edgenext import ConvEncoder

    model = edgezoo.create_model(name, num_classes=7).eval()
    perturb_(model)
    fused, report = fuse(model, return_report=True)
    assert len(report.rewritten) == sum(isinstance(m, (ConvEncoder, SDTAEncoder)) for m in model.modules()) + 4
    assert not any(isinstance(m, (ConvEncoder, SDTAEncoder, LayerNorm2d, torch.nn.LayerNorm)) for m in fused.stages.modules())
    for size in (64, 96):  # another grid size re-derives the position encoding
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert_close(fused(x), model(x), tol=1e-5)
