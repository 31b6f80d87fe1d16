"""Deployment: BN folding, export parity, optimize() engines, int8 on digits, and the CLI's error handling.

Every equality test uses perturbed weights (``oracle.perturb_``): default inits (BN at identity, zero biases,
tiny layer scales) would hide a wrong fold. Models over 20M parameters run only in the slow set (one small variant of every family stays in the fast set).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.deploy import (
    ChannelAffine,
    export_model,
    fuse,
    optimize,
    quantize_int8,
    remaining_batchnorms,
)
from edgezoo.deploy.quantize import digits_tensors, top1, train_on_digits
from edgezoo.registry import get_entry
from oracle import perturb_, rel_diff

ALL = edgezoo.list_models()
TOKEN_FAMILIES = {"vit", "mlp_mixer"}
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
SMALL_SIZE = 64


def _params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in edgezoo.create_model(name).parameters())


_BIG = {n for n in ALL if _params(n) > 20_000_000}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n for n in ALL]


def small_model(name: str, **kwargs) -> nn.Module:
    """The model at a 64 px input (token models are built for that grid), perturbed, in eval mode."""
    if get_entry(name).family in TOKEN_FAMILIES:
        kwargs.setdefault("img_size", SMALL_SIZE)
    return perturb_(edgezoo.create_model(name, **kwargs)).eval()


def _x(batch: int = 1, size: int = SMALL_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# --- fuse ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_fuse_equal_and_no_batchnorm_left(name):
    model = small_model(name)
    fused, report = fuse(model, return_report=True)
    assert remaining_batchnorms(fused) == []
    had_bn = bool(remaining_batchnorms(model))
    assert bool(report.folded or report.affine) == had_bn
    x = _x(2)
    with torch.no_grad():
        d = rel_diff(fused(x), model(x))
    assert d <= 1e-4, f"{name}: fused differs by {d:.3g} of the output scale"
    assert remaining_batchnorms(model) or not had_bn, "fuse must not modify its input"


def test_fuse_convnormact_leaves_no_affine():
    """Plain convnets fold every BN into a conv: nothing is left as a separate per-channel op."""
    _, report = fuse(small_model("mobilenetv2_035"), return_report=True)
    assert report.folded and not report.affine


def test_fuse_generic_modules():
    """Sequential conv→BN and linear→BN pairs fold; a BN after a non-foldable op becomes ChannelAffine."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.BatchNorm2d(8),  # follows a ReLU: cannot fold, must still vanish
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.BatchNorm1d(5),
    )
    perturb_(net).eval()
    fused, report = fuse(net, return_report=True)
    assert remaining_batchnorms(fused) == []
    assert report.folded == ["0", "6"] and report.affine == ["3"]
    assert isinstance(fused[3], ChannelAffine)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert rel_diff(fused(x), net(x)) <= 1e-5


def test_fuse_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        fuse("mobilenetv2_100")


# --- export --------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_parity(name, tmp_path):
    model = small_model(name)
    result = export_model(model, tmp_path / f"{name}.onnx", format="onnx", example_input=_x())
    assert result.checked_with == "onnxruntime"
    assert result.rel_diff <= 1e-4, f"{name}: ONNX Runtime differs by {result.rel_diff:.3g}"


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("mobilenetv3_small_050", "torchscript"),
        ("mobilenetv3_small_050", "exported-program"),
        ("mobilenetv3_small_050", "onnx"),
        ("mobilevit_xxs", "torchscript"),
        ("mobilevit_xxs", "onnx"),
        pytest.param("mobilevit_xxs", "exported-program", marks=pytest.mark.slow),
    ],
)
def test_export_formats_dynamic_batch(name, fmt, tmp_path):
    if fmt == "onnx" and not HAS_ORT:
        pytest.skip("onnxruntime not installed")
    if name not in ALL:
        pytest.skip(f"{name} not registered yet")
    model = fuse(small_model(name))
    result = export_model(model, tmp_path / "m.bin", format=fmt, example_input=_x(), dynamic_batch=True)
    assert result.rel_diff <= 1e-4


def test_export_bad_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model(nn.Conv2d(3, 3, 1), tmp_path / "m", format="tfjs", example_input=_x())


# --- optimize ------------------------------------------------------------------------------------------------------
OPT_MODEL = "mobilenetv3_small_050"  # h-swish, h-sigmoid and SE in one small model
_BACKENDS = [
    "eager",
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
    pytest.param("compile", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("backend", _BACKENDS)
def test_optimize_backend_matches_eager(backend):
    model = small_model(OPT_MODEL)
    x = _x()
    engine = optimize(model, x, backend=backend, repeats=3)
    assert engine.backend == backend
    with torch.no_grad():
        assert rel_diff(engine(x), model(x)) <= 1e-3
        x2 = _x(batch=2, size=96)  # a new shape builds a new engine
        assert rel_diff(engine(x2), model(x2)) <= 1e-3


@pytest.mark.parametrize("name", ["mobilevit_xxs", "vit_tiny_patch16_224", "edgenext_xx_small"])
def test_optimize_auto_picks_a_measured_backend(name):
    if name not in ALL:
        pytest.skip(f"{name} not registered yet")
    model = small_model(name)
    x = _x()
    engine = optimize(model, x, repeats=3)
    assert engine.variant.split("/")[0] == engine.backend
    assert engine.variant in engine.timings_ms or len(engine.timings_ms) == 0
    if engine.timings_ms:
        assert engine.timings_ms[engine.variant] == min(engine.timings_ms.values())
    with torch.no_grad():
        assert rel_diff(engine(x), model(x)) <= 1e-3


@pytest.mark.parametrize("preferred", ["forms/nchw", "fold_only/nchw", "fold_only/nhwc"])
def test_optimize_eager_measures_fold_only_against_inference_forms(monkeypatch, preferred):
    """fuse()'s inference forms target graph engines; the eager candidate must also try the fold-only copy."""
    if "edgenext_xx_small" not in ALL:
        pytest.skip("edgenext_xx_small not registered yet")
    opt_mod = importlib.import_module("edgezoo.deploy.optimize")  # the module; the package exports the function

    seen = {}

    def fake_timer(runners, **kwargs):
        seen.update(runners)
        for run in runners.values():
            run()
        return {k: (0.0 if k == preferred else 1.0) for k in runners}

    monkeypatch.setattr(opt_mod, "time_interleaved", fake_timer)
    model = small_model("edgenext_xx_small")
    x = _x()
    engine = optimize(model, x, backend="eager", repeats=3)
    assert set(seen) == {"forms/nchw", "forms/nhwc", "fold_only/nchw", "fold_only/nhwc"}
    rewritten = any(type(m).__name__.endswith("NCHW") for m in engine._model.modules())
    assert rewritten == preferred.startswith("forms/")
    assert engine._channels_last == preferred.endswith("nhwc")
    assert remaining_batchnorms(engine._model) == []
    with torch.no_grad():
        assert rel_diff(engine(x), model(x)) <= 1e-3


def test_optimize_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        optimize(nn.Conv2d(3, 3, 1), _x(), backend="tensorrt")


def test_time_interleaved_counts_calls_and_takes_medians():
    from edgezoo.deploy.optimize import time_interleaved

    calls = {"a": 0, "b": 0}

    def bump(key):
        calls[key] += 1

    t = time_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, warmup=2, repeats=3, block=4)
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
    with pytest.raises(ValueError, match="block"):
        time_interleaved({"a": lambda: None}, block=0)


# --- int8 ----------------------------------------------------------------------------------------------------------
INT8_MAX_DROP = 2.0  # top-1 points on the digits test split


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_int8_accuracy_on_digits():
    """A MobileNetV3 (SE + h-swish) trained briefly on digits loses at most 2 points of top-1 in int8."""
    train_x, train_y, test_x, test_y = digits_tensors(32)
    torch.manual_seed(0)
    model = edgezoo.create_model("mobilenetv3_small_050", num_classes=10)
    train_on_digits(model, train_x, train_y, epochs=3)
    fp32 = fuse(model)
    acc_fp32 = top1(fp32, test_x, test_y)
    assert acc_fp32 >= 80.0, f"training did not work (fp32 top-1 {acc_fp32:.1f}%)"
    q = quantize_int8(model, train_x[:128], backend="onnxruntime")
    acc_int8 = top1(q, test_x, test_y)
    assert acc_fp32 - acc_int8 <= INT8_MAX_DROP, f"int8 {acc_int8:.1f}% vs fp32 {acc_fp32:.1f}%"
    # and it really is quantized: the graph holds int8 weights
    import onnx

    graph = onnx.load_from_string(q.onnx).graph
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)


def test_int8_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        quantize_int8(nn.Conv2d(3, 3, 1), _x(), backend="tflite")
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(nn.Conv2d(3, 3, 1), [])


# --- CLI -----------------------------------------------------------------------------------------------------------
def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors exit from inside main
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err, *words):
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_cli_export_onnx_prints_parity(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc, stdout, _ = _run(["export", "mobilenetv1_025", "--format", "onnx", "--out", str(out), "--img-size", "64", "--fuse"], capsys)
    assert rc == 0 and out.is_file()
    assert "parity" in stdout and "OK" in stdout


def test_cli_unknown_format(tmp_path, capsys):
    rc, _, err = _run(["export", "mobilenetv1_025", "--format", "tfjs", "--out", str(tmp_path / "m")], capsys)
    _one_line_error(rc, err, "tfjs")


def test_cli_unknown_backend(capsys):
    rc, _, err = _run(["bench", "mobilenetv1_025", "--backend", "tensorrt"], capsys)
    _one_line_error(rc, err, "tensorrt")


def test_cli_unknown_model(tmp_path, capsys):
    rc, _, err = _run(["export", "mobilenetv2_10", "--format", "onnx", "--out", str(tmp_path / "m.onnx")], capsys)
    _one_line_error(rc, err, "mobilenetv2_10")


def test_cli_unwritable_path(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):  # running as root: permissions do not bind, use a path under a file
            target = tmp_path / "a_file"
            target.write_text("x")
            path = str(target / "m.onnx")
        else:
            path = str(locked / "m.onnx")
        rc, _, err = _run(["export", "mobilenetv1_025", "--format", "onnx", "--out", path], capsys)
        _one_line_error(rc, err, "--out")
    finally:
        locked.chmod(0o700)


def test_cli_checkpoint_mismatch(tmp_path, capsys):
    from edgezoo.checkpoint import save_safetensors

    ckpt = tmp_path / "v2.safetensors"
    save_safetensors(edgezoo.create_model("mobilenetv2_035").state_dict(), ckpt)
    rc, _, err = _run(["export", "mobilenetv1_025", "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                       "--checkpoint", str(ckpt)], capsys)
    _one_line_error(rc, err, "checkpoint")
    rc, _, err = _run(["export", "mobilenetv1_025", "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                       "--checkpoint", str(tmp_path / "missing.safetensors")], capsys)
    _one_line_error(rc, err, "missing.safetensors")


def test_cli_bad_batch_list(capsys):
    rc, _, err = _run(["bench", "mobilenetv1_025", "--batch", "1,x"], capsys)
    _one_line_error(rc, err, "1,x")


def test_cli_bench_json_and_plot(tmp_path, capsys):
    import json

    plot = tmp_path / "pareto.png"
    rc, out, _ = _run(["bench", "mobilenetv1_025", "mobilenetv2_035", "--img-size", "64", "--batch", "1,2",
                       "--backend", "fused", "--warmup", "1", "--repeats", "2", "--json", "--plot", str(plot)], capsys)
    assert rc == 0
    data = json.loads(out)
    assert "threads" in data["device"]
    rows = data["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("mobilenetv1_025", 1), ("mobilenetv1_025", 2),
                                                        ("mobilenetv2_035", 1), ("mobilenetv2_035", 2)]
    for r in rows:
        assert r["median_ms"] > 0 and r["throughput"] > 0 and r["ratio_vs_eager"] > 0
    assert plot.is_file() and plot.stat().st_size > 1000


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_cli_bench_compare_timm(capsys):
    rc, out, _ = _run(["bench", "mobilenetv2_035", "--img-size", "64", "--warmup", "1", "--repeats", "2",
                       "--compare", "timm", "--json"], capsys)
    import json

    assert rc == 0
    row = json.loads(out)["rows"][0]
    assert row["timm_ms"] > 0 and row["ratio_vs_timm"] > 0


def test_bench_twin_computes_the_same_function():
    """--compare timm copies edgezoo's weights into timm's model, so the two are the same network."""
    pytest.importorskip("timm")
    from edgezoo.bench import timm_twin

    model = small_model("mobilenetv2_035")
    ref = timm_twin("mobilenetv2_035", model, SMALL_SIZE)
    x = _x()
    with torch.no_grad():
        assert rel_diff(model(x), ref(x)) <= 1e-4


def test_cli_os_errors_are_one_line(monkeypatch, capsys):
    """A read-only or full disk is reported as one line with the path, exit 2, never a traceback."""
    import errno

    import edgezoo.cli.deploy as cli_deploy
    from edgezoo.cli import main

    def fail(args):
        raise OSError(errno.EROFS, "Read-only file system", "/ro/model.onnx")

    monkeypatch.setattr(cli_deploy, "cmd_export", fail)
    code = main(["export", "mobilenetv1_025", "--format", "onnx", "--out", "/ro/model.onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0] and "/ro/model.onnx" in err[0]
