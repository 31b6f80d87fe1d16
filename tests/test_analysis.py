"""Cost profile, separable-conv arithmetic, roofline model, hardware presets/calibration, plots and CLI (issue 4)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import edgezoo
from edgezoo.analysis import (
    PRESETS,
    Hardware,
    get_hardware,
    load_host,
    plot_pareto,
    plot_ridge_sweep,
    profile,
    profile_model,
    ridge_sweep,
    roofline,
    save_host,
    separable_conv_cost,
    separable_ratio,
    separable_savings,
    standard_conv_cost,
)
from edgezoo.analysis import hardware as hardware_mod
from edgezoo.cli import main as cli_main
from edgezoo.layers import Attention
from edgezoo.registry import get_entry

ALL = edgezoo.list_models()
FP32 = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def only(p, kind):
    layers = [layer for layer in p.layers if layer.kind == kind]
    assert len(layers) == 1, [(layer.name, layer.kind) for layer in p.layers]
    return layers[0]


# ----------------------------------------------------------------------------------------------------------------
# exact counts on hand-computable layers


def test_standard_conv_counts():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    p = profile(conv, (1, 8, 10, 10))
    layer = only(p, "conv")
    assert layer.macs == 16 * 10 * 10 * 8 * 3 * 3
    assert layer.params == 8 * 16 * 9 + 16
    assert layer.weight_bytes == (8 * 16 * 9 + 16) * FP32
    assert layer.activation_bytes == (8 + 16) * 10 * 10 * FP32
    assert layer.output_shape == (1, 16, 10, 10)
    assert layer.arithmetic_intensity == pytest.approx(layer.macs / (layer.weight_bytes + layer.activation_bytes))
    assert (p.params, p.macs) == (layer.params, layer.macs)


def test_strided_grouped_and_depthwise_conv_counts():
    dw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False)
    layer = only(profile(dw, (1, 8, 16, 16)), "dwconv")
    assert layer.macs == 8 * 8 * 8 * 5 * 5  # out channels · out pixels · (in/groups = 1) · k²
    assert layer.conv.is_depthwise and layer.conv.out_hw == (8, 8)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False)
    layer = only(profile(grouped, (2, 8, 6, 6)), "gconv")
    assert layer.macs == 2 * 16 * 36 * (8 // 2) * 9
    assert layer.activation_bytes == 2 * (8 + 16) * 36 * FP32


def test_separable_pair_counts_and_ratio():
    m, n, k, size = 32, 64, 3, 14
    sep = nn.Sequential(nn.Conv2d(m, m, k, padding=1, groups=m, bias=False), nn.Conv2d(m, n, 1, bias=False))
    std = nn.Conv2d(m, n, k, padding=1, bias=False)
    p_sep = profile(sep, (1, m, size, size))
    p_std = profile(std, (1, m, size, size))
    expected = separable_conv_cost(kernel=k, in_chs=m, out_chs=n, out_size=size)
    assert (p_sep.params, p_sep.macs) == (expected.params, expected.macs)
    assert p_sep.macs == k * k * m * size**2 + m * n * size**2
    assert p_std.macs == standard_conv_cost(kernel=k, in_chs=m, out_chs=n, out_size=size).macs
    assert p_sep.macs / p_std.macs == pytest.approx(1 / n + 1 / k**2)
    assert p_sep.params / p_std.params == pytest.approx(separable_ratio(kernel=k, out_chs=n))
    savings = separable_savings(p_sep)
    assert len(savings.pairs) == 1
    assert savings.standard_macs == p_std.macs and savings.ratio == pytest.approx(1 / n + 1 / k**2)


@pytest.mark.parametrize("k,n", [(3, 32), (3, 1024), (5, 96), (7, 16)])
def test_separable_ratio_formula(k, n):
    std = standard_conv_cost(kernel=k, in_chs=24, out_chs=n, out_size=7)
    sep = separable_conv_cost(kernel=k, in_chs=24, out_chs=n, out_size=7)
    assert sep.macs / std.macs == pytest.approx(separable_ratio(kernel=k, out_chs=n))
    assert sep.params / std.params == pytest.approx(1 / n + 1 / k**2)


@pytest.mark.parametrize("bad", [dict(kernel=0), dict(out_chs=-1), dict(kernel=2.5)])
def test_separable_ratio_rejects_bad_values(bad):
    args = dict(kernel=3, out_chs=8) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        separable_ratio(**args)


def test_linear_counts_with_token_dims():
    lin = nn.Linear(32, 10)
    layer = only(profile(lin, (4, 7, 32)), "linear")
    assert layer.macs == 4 * 7 * 32 * 10
    assert layer.params == 330 and layer.weight_bytes == 330 * FP32
    assert layer.activation_bytes == 4 * 7 * (32 + 10) * FP32


def test_attention_counts():
    dim, heads, tokens = 32, 4, 16
    attn = Attention(dim, num_heads=heads)
    p = profile(attn, (2, tokens, dim))
    sdpa = only(p, "attention")
    head_dim = dim // heads
    assert sdpa.macs == 2 * heads * tokens * tokens * (head_dim + head_dim)  # q·kᵀ and attn·v
    assert sdpa.activation_bytes == 4 * 2 * tokens * dim * FP32  # q, k, v in and the output, never the scores
    assert sdpa.params == 0 and sdpa.weight_bytes == 0
    linears = [layer for layer in p.layers if layer.kind == "linear"]
    assert sum(layer.macs for layer in linears) == 2 * tokens * dim * (3 * dim + dim)
    assert p.macs == sdpa.macs + sum(layer.macs for layer in linears)
    assert p.params == sum(q.numel() for q in attn.parameters())


class _Functional(nn.Module):
    """Functional ops on parameters outside leaf modules: matmul, position-embedding add, token concat."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8))
        self.pos = nn.Parameter(torch.zeros(1, 5, 8))
        self.act = nn.GELU()

    def forward(self, x):
        x = x @ self.w  # (B, 5, 16) @ (16, 8)
        x = self.act(x + self.pos)
        return torch.cat([x, x], dim=1).transpose(1, 2) @ x.new_ones(10, 3)


def test_functional_ops_are_counted_and_attributed():
    p = profile(_Functional(), (2, 5, 16))
    assert p.macs == 2 * 5 * 16 * 8 + 2 * 8 * 10 * 3
    kinds = {layer.kind for layer in p.layers}
    assert {"linear", "matmul", "elementwise", "copy"} <= kinds
    add = next(layer for layer in p.layers if layer.name == ":add" or layer.name.endswith("add"))
    assert add.params == 5 * 8 and add.weight_bytes == 5 * 8 * FP32
    gelu = next(layer for layer in p.layers if layer.name == "act")
    assert gelu.macs == 0 and gelu.elementwise == 2 * 5 * 8  # elementwise work reported separately
    assert p.elementwise >= gelu.elementwise


def test_norms_are_elementwise_work_and_weights_include_buffers():
    bn = nn.BatchNorm2d(6)
    layer = only(profile(bn, (1, 6, 4, 4)), "norm")
    assert layer.macs == 0 and layer.elementwise == 6 * 16
    assert layer.weight_bytes == 4 * 6 * FP32  # weight, bias, running mean and var are all read
    assert layer.params == 12


def test_dtype_scales_bytes_and_model_is_untouched():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p32 = profile(model, (1, 3, 8, 8))
    p16 = profile(model, (1, 3, 8, 8), dtype=torch.float16)
    p8 = profile(model, (1, 3, 8, 8), dtype=torch.int8)
    assert p16.bytes * 2 == p32.bytes and p8.bytes * 4 == p32.bytes
    assert p16.macs == p32.macs
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_profile_on_cpu_matches_meta():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8))
    a = profile(model, (1, 3, 12, 12))
    b = profile(model, (1, 3, 12, 12), device="cpu")
    assert [(x.name, x.macs, x.bytes) for x in a.layers] == [(x.name, x.macs, x.bytes) for x in b.layers]


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), "abc", (1, -3, 4, 4)])
def test_profile_rejects_bad_shapes(shape):
    with pytest.raises((ValueError, TypeError), match="input_shape"):
        profile(nn.ReLU(), shape)


def test_profile_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        profile("mobilenetv2_100", (1, 3, 8, 8))


# ----------------------------------------------------------------------------------------------------------------
# the whole zoo: MAC totals agree with torch's counter


def _profile_size(name: str) -> tuple[int, int, int]:
    family = get_entry(name).family
    if family in ("mlp_mixer", "vit"):  # fixed token grid / position embedding: use the model's own size
        return tuple(get_entry(name).default_cfg["input_size"])
    return (3, 64, 64)


@pytest.mark.parametrize("name", ALL)
def test_totals_agree_with_torch_flop_counter(name):
    shape = _profile_size(name)
    with torch.device("meta"):
        model = edgezoo.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter:  # torch's counter watches the very ops the profiler records (one meta pass for both)
        p = profile(model, (1, *shape))
    reference = counter.get_total_flops() / 2
    assert reference > 0
    assert abs(p.macs - reference) <= 0.01 * reference, (p.macs, reference)
    assert p.params == sum(q.numel() for q in model.parameters())
    assert p.weight_bytes >= FP32 * p.params * 0.99  # every weight is read at least once
    assert all(layer.activation_bytes >= 0 and layer.macs >= 0 for layer in p.layers)


def test_width_and_resolution_scale_macs_quadratically():
    name = "mobilenetv1_100"
    if name not in ALL:
        pytest.skip(f"{name} not registered")
    full = profile_model(name).macs
    smaller = profile_model(name, img_size=192).macs  # every stride-32 map stays whole: 7×7 -> 6×6
    half_width = profile_model(name, width_mult=0.5).macs
    assert smaller / full == pytest.approx((192 / 224) ** 2, rel=0.01)  # ρ² (only the classifier does not scale)
    assert half_width / full == pytest.approx(0.25, rel=0.15)  # α² (the stem's 3 input channels do not scale)
    savings = separable_savings(profile_model(name))
    assert len(savings.pairs) == 13  # MobileNetV1's 13 depthwise-separable blocks
    assert 0.11 < savings.ratio < 0.13  # ≈ 1/N + 1/9 with N in 64…1024


# ----------------------------------------------------------------------------------------------------------------
# roofline math


def _toy_profile():
    # layer 1: 3x3 conv, high intensity (compute-bound at RP 1); layer 2: ReLU, 0 MACs (memory-bound)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU())
    return profile(model, (1, 16, 8, 8))


def test_roofline_compute_and_memory_bound():
    p = _toy_profile()
    conv, relu = p.layers
    hw = Hardware("toy", 1e9, 1e9)  # ridge point 1 MAC/B
    r = roofline(p, hw)
    t_conv, t_relu = r.layers
    assert conv.macs == 16 * 64 * 16 * 9 and conv.arithmetic_intensity > 1
    assert t_conv.bound == "compute" and t_conv.time_s == pytest.approx(conv.macs / 1e9)
    assert t_relu.bound == "memory" and t_relu.time_s == pytest.approx(relu.bytes / 1e9)
    assert r.latency_s == pytest.approx(conv.macs / 1e9 + relu.bytes / 1e9)
    assert r.latency_ms == pytest.approx(1e3 * r.latency_s)
    # same peak, far less bandwidth: the conv turns memory-bound too
    slow = roofline(p, hw.with_ridge_point(1e4))
    assert slow.layers[0].bound == "memory"
    assert slow.latency_s == pytest.approx((conv.bytes + relu.bytes) * 1e4 / 1e9)
    assert 0 < r.compute_bound_fraction < 1 and slow.compute_bound_fraction == 0


def test_roofline_calibrated_terms():
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.Conv2d(32, 32, 1))
    p = profile(model, (1, 32, 16, 16))
    dw, pw = p.layers
    base = Hardware("toy", 1e9, 1e12)  # bandwidth nearly free: everything compute-bound
    hw = Hardware("toy", 1e9, 1e12, layer_overhead_s=1e-5, depthwise_efficiency=0.25)
    expected = dw.macs / (0.25 * 1e9) + pw.macs / 1e9 + 2 * 1e-5
    assert roofline(p, hw).latency_s == pytest.approx(expected)
    assert roofline(p, base).latency_s == pytest.approx((dw.macs + pw.macs) / 1e9)
    # no overlap: a layer's compute and memory time add up instead of the shorter hiding behind the longer
    serial = Hardware("toy", 1e9, 1e9, memory_overlap=0.0)
    assert roofline(p, serial).latency_s == pytest.approx((dw.macs + dw.bytes + pw.macs + pw.bytes) / 1e9)
    half = roofline(p, Hardware("toy", 1e9, 1e9, memory_overlap=0.5)).layers[1]
    assert half.time_s == pytest.approx(max(pw.macs, pw.bytes) / 1e9 + 0.5 * min(pw.macs, pw.bytes) / 1e9)


def test_ridge_sweep():
    p = _toy_profile()
    rps = [0, 1, 10, 100, 500]
    sweep = ridge_sweep({"toy": p}, peak_macs_per_s=1e9, ridge_points=rps)["toy"]
    assert sweep[0] == pytest.approx(p.macs / 1e9)  # RP 0: memory is free
    assert all(a <= b for a, b in zip(sweep, sweep[1:]))
    assert sweep[-1] == pytest.approx(p.bytes * 500 / 1e9)  # everything memory-bound
    for rp, t in zip(rps[1:], sweep[1:]):
        assert t == pytest.approx(roofline(p, Hardware("t", 1e9, 1e9).with_ridge_point(rp)).latency_s)
    with pytest.raises(ValueError, match="ridge_points"):
        ridge_sweep({"toy": p}, peak_macs_per_s=1e9, ridge_points=[-1])


# ----------------------------------------------------------------------------------------------------------------
# hardware


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(peak_macs_per_s=0, bytes_per_s=1e9), "peak_macs_per_s"),
        (dict(peak_macs_per_s=-1e9, bytes_per_s=1e9), "peak_macs_per_s"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=0.0), "bytes_per_s"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=math.nan), "bytes_per_s"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=1e9, depthwise_efficiency=0), "depthwise_efficiency"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=1e9, layer_overhead_s=-1), "layer_overhead_s"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=1e9, memory_overlap=1.5), "memory_overlap"),
        (dict(peak_macs_per_s=1e9, bytes_per_s=1e9, dtype="float64"), "dtype"),
    ],
)
def test_hardware_rejects_bad_values(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        Hardware("bad", **kwargs)


def test_presets_and_unknown_preset():
    assert {"phone_cpu", "phone_gpu", "edgetpu", "desktop_cpu", "a100", "h100"} <= set(PRESETS)
    for hw in PRESETS.values():
        assert hw.source and hw.ridge_point > 0
    # accelerators have far higher ridge points than a phone CPU (the MobileNetV4 argument)
    assert PRESETS["phone_cpu"].ridge_point < 5 < PRESETS["edgetpu"].ridge_point
    assert get_hardware("a100") is PRESETS["a100"]
    with pytest.raises(ValueError, match="unknown hardware preset 'tpu9'.*phone_cpu"):
        get_hardware("tpu9")


def test_host_calibration_is_stored_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZOO_CACHE_DIR", str(tmp_path / "cache"))
    assert load_host() is None
    calls = []
    fake = Hardware("host", 2e10, 1e10, layer_overhead_s=5e-6, depthwise_efficiency=0.3, threads=1)
    monkeypatch.setattr(hardware_mod, "calibrate", lambda **kw: calls.append(kw) or fake)
    assert get_hardware("host") == fake  # first use calibrates …
    assert (tmp_path / "cache" / "hardware_host.json").is_file()
    assert get_hardware("host") == fake and len(calls) == 1  # … then reuses the stored file
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_calibrate_quick_measures_positive_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZOO_CACHE_DIR", str(tmp_path))
    hw = hardware_mod.calibrate(quick=True, threads=1)
    assert hw.peak_macs_per_s > 1e8 and hw.bytes_per_s > 1e8
    assert hw.layer_overhead_s > 0 and 0 < hw.depthwise_efficiency <= 1 and hw.threads == 1
    assert 0 <= hw.memory_overlap <= 1
    save_host(hw)
    assert load_host() == hw


# ----------------------------------------------------------------------------------------------------------------
# plots


def test_plots_written(tmp_path):
    p = _toy_profile()
    rps = list(range(0, 501, 50))
    sweep = ridge_sweep({"a": p, "b": p}, peak_macs_per_s=1e9, ridge_points=rps)
    out = plot_ridge_sweep(sweep, rps, tmp_path / "sweep.png", peak_macs_per_s=1e9)
    assert out.read_bytes().startswith(PNG_MAGIC)
    points = [dict(name="a", latency_ms=1.0, macs=1e8, top1=70.0), dict(name="b", latency_ms=2.0, macs=3e8, top1=75.0),
              dict(name="c", latency_ms=1.5, macs=2e8, top1=None)]
    assert plot_pareto(points, tmp_path / "sub" / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert plot_pareto(points, tmp_path / "macs.png", y="macs").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="plot path"):
        plot_pareto(points, tmp_path / "pareto.txt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write plot"):
        plot_pareto(points, blocker / "p.png")


# ----------------------------------------------------------------------------------------------------------------
# CLI

CONVNET = next((n for n in ("mobilenetv2_100", "mobilenetv1_100") if n in ALL), ALL[0] if ALL else None)
needs_models = pytest.mark.skipif(CONVNET is None, reason="no model registered")


@needs_models
def test_cli_info_json(capsys):
    assert cli_main(["info", CONVNET, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = profile_model(CONVNET)
    assert out["params"] == ref.params and out["macs"] == ref.macs
    assert out["weight_bytes"] == ref.weight_bytes and out["activation_bytes"] == ref.activation_bytes
    assert len(out["top_layers"]) == 10
    assert cli_main(["info", CONVNET, "--json", "--img-size", "112"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] < ref.macs / 3


@needs_models
def test_cli_info_table(capsys):
    assert cli_main(["info", CONVNET]) == 0
    out = capsys.readouterr().out
    assert "costliest layers" in out and "MACs" in out


@needs_models
def test_cli_roofline_json(capsys, tmp_path):
    names = ALL[:1] + [CONVNET] if ALL[0] != CONVNET else [CONVNET]
    assert cli_main(["roofline", *names, "--hardware", "edgetpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    latencies = [m["latency_ms"] for m in out["models"]]
    assert latencies == sorted(latencies)  # fastest first
    assert {m["name"] for m in out["models"]} == set(names)
    ref = roofline(profile_model(CONVNET, dtype=torch.int8), PRESETS["edgetpu"]).latency_ms
    assert next(m for m in out["models"] if m["name"] == CONVNET)["latency_ms"] == pytest.approx(ref)
    plot = tmp_path / "sweep.png"
    assert cli_main(["roofline", CONVNET, "--sweep", "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["sweep"]["ridge_points"]) == len(out["sweep"]["latency_ms"][CONVNET])
    assert plot.read_bytes().startswith(PNG_MAGIC)
    pareto = tmp_path / "pareto.png"
    assert cli_main(["roofline", CONVNET, "--plot", str(pareto)]) == 0
    assert pareto.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["info", "mobilenetv2_10"], "unknown model name"),
        (["roofline", "no_such_model"], "unknown model name"),
        (["roofline", "CONVNET", "--hardware", "tpu9"], "tpu9"),
        (["info", "CONVNET", "--img-size", "-3"], "img-size"),
        (["roofline", "CONVNET", "--ridge-point", "abc"], "ridge-point"),
        (["roofline", "CONVNET", "--plot", "/proc/nope/sweep.png"], "cannot write plot"),
        (["roofline", "CONVNET", "--plot", "sweep.txt"], "--plot"),
        (["roofline", "zzz*"], "no model matches"),
    ],
)
@needs_models
def test_cli_errors_are_one_line_exit_2(argv, needle, capsys):
    argv = [CONVNET if a == "CONVNET" else a for a in argv]
    with pytest.raises(SystemExit) as exc_info:
        raise SystemExit(cli_main(argv))
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_cli_calibrate_quick(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZOO_CACHE_DIR", str(tmp_path))
    assert cli_main(["calibrate", "--quick", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"]["name"] == "host" and out["hardware"]["peak_macs_per_s"] > 0
    assert load_host() is not None
