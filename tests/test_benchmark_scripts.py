"""The harnesses in ``benchmarks/`` are what BENCHMARKS.md's numbers come from; keep them importable and runnable.

No timing is asserted (speed lives in BENCHMARKS.md): each script is imported, and the cheap ones run end to end
on a small model with one timing round, so an API change in ``edgezoo`` that breaks a harness fails here.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH_DIR.glob("*.py"))
HAS_OV = importlib.util.find_spec("openvino") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def _load(name: str):
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))  # the scripts import each other as siblings
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_has_main(name):
    module = _load(name)
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
    assert module.__doc__ and "benchmarks/" in module.__doc__, f"benchmarks/{name}.py must document its command"


@pytest.mark.skipif(not (HAS_OV and HAS_ORT), reason="needs onnxruntime and openvino")
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_profile_engine_runs(engine, capsys):
    module = _load("profile_engine")
    assert module.main(["mobilenetv3_small_050", "--engine", engine, "--threads", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv3_small_050" in out and "| op type |" in out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OV, reason="needs openvino")
def test_bench_deploy_forms_compares_equal_outputs():
    module = _load("bench_deploy_forms")
    row = module.compare("edgenext_xx_small", threads=1, repeats=1, block=1)
    assert row["rel_diff"] <= 1e-4
    assert set(row["ms"]) == {"openvino_forms", "openvino_fold_only", "eager_forms", "eager_fold_only"}


def test_latency_predictor_harness_runs(tmp_path, monkeypatch):
    """One random config at 64 px and one zoo model, measured in eager PyTorch: the harness's whole path."""
    module = _load("latency_predictor")
    monkeypatch.setattr(module, "RESOLUTIONS", (64,))
    res = module.run(1, 1, ["mobilenetv2_035"], "eager", 0, tmp_path / "table.json",
                     calibrate_on=(("mobilenetv3_small_050", 64), ("mobilenetv1_025", 64)))
    assert res["models"] == 2 and res["random_configs"] == 1 and res["zoo_models"] == 1
    assert all(r["measured_ms"] > 0 and r["table_ms"] > 0 and r["corrected_ms"] > 0 for r in res["rows"])
    assert res["calibration_models"] == ["mobilenetv3_small_050@64", "mobilenetv1_025@64"] and res["correction"]
    assert all(r["table_raw_ms"] > 0 and r["features"]["unit"] >= 1 for r in res["rows"])
    assert 0.0 <= res["table_within_10pct"] <= 1.0
