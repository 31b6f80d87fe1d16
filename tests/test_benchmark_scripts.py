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


def test_search_quality_targets_random_archs_plan_and_summary():
    from edgezoo.models.mobilenet_v4 import CONV_SMALL
    from edgezoo.search.pipeline import make_latency_predictor, scale_config
    from edgezoo.search.space import DIGITS_SPACE

    module = _load("search_quality")
    base, target = module.target_for(0.75, "phone_cpu", 0.05)
    assert base == pytest.approx(make_latency_predictor("phone_cpu").predict_ms(scale_config(CONV_SMALL, 0.75), 64))
    assert target == pytest.approx(base * 1.05, abs=1e-6)
    archs = module.random_subnets(DIGITS_SPACE, 4, target, "phone_cpu", seed=3)
    assert len({s.key() for s, _ in archs}) == 4 and all(ms <= target for _, ms in archs)
    with pytest.raises(ValueError, match="random subnets met"):
        module.random_subnets(DIGITS_SPACE, 2, 1e-6, "phone_cpu", seed=3)
    jobs = module.plan([0.5, 1.0], seeds=2, n_random=2, random_seeds=1)
    assert jobs[:4] == [("found", 0.5, 0, 0), ("baseline", 0.5, 0, 0), ("found", 1.0, 0, 0), ("baseline", 1.0, 0, 0)]
    # found + baseline x seeds x widths, random x widths, then the best random architecture's other seeds
    assert len(jobs) == 2 * 2 * 2 + 2 * 2 + 2 and jobs[-3][0] == "random"
    assert jobs[-2:] == [("random_best", 0.5, -1, 1), ("random_best", 1.0, -1, 1)]

    def run(top1):
        return {"top1": top1, "loss": 0.1}

    results = {"targets": {"0.5": {
        "target_ms": 0.2, "baseline_ms": 0.19,
        "found": {"arch": "f", "latency_ms": 0.18, "runs": {"0": run(96.0), "1": run(98.0)}},
        "baseline": {"arch": "b", "latency_ms": 0.19, "runs": {"0": run(95.0)}},
        "random": [{"arch": "r0", "latency_ms": 0.1, "runs": {"0": run(90.0)}},
                   {"arch": "r1", "latency_ms": 0.15, "runs": {"0": run(97.5)}},
                   {"arch": "r2", "latency_ms": 0.17, "runs": {}}]}}}
    (row,) = module.summarize(results)
    assert row["found"]["mean_top1"] == 97.0 and row["found"]["std_top1"] == pytest.approx(2 ** 0.5)
    assert row["baseline"]["n"] == 1 and row["baseline"]["std_top1"] is None
    assert row["random"]["n"] == 2 and row["random"]["best_top1"] == 97.5 and row["random"]["best_arch"] == "r1"
    # the best is picked only once every random architecture has its seed 0; then its other seeds are reported apart
    t = results["targets"]["0.5"]
    assert module.best_random_index(t) is None and "best_fresh_top1" not in row["random"]
    t["random"][2]["runs"]["0"] = run(93.0)
    t["random"][1]["runs"]["1"] = run(96.0)
    assert module.best_random_index(t) == 1
    (row,) = module.summarize(results)
    assert row["random"]["best_top1"] == 97.5 and row["random"]["best_fresh_top1"] == 96.0
    assert row["random"]["mean_top1"] == pytest.approx((90.0 + 97.5 + 93.0) / 3)  # seed-0 numbers only


def test_search_proxy_ground_truth_is_the_mean_over_seeds():
    module = _load("search_proxy")
    a = {"retrained_runs": {"0": {"top1": 90.0, "loss": 0.3}, "1": {"top1": 94.0, "loss": 0.1}}}
    module._mean_over_seeds(a)
    assert a["retrained_top1"] == 92.0 and a["retrained_loss"] == pytest.approx(0.2) and a["retrained_seeds"] == 2


def test_bench_precision_summary_rates_the_shipped_artifacts_against_the_peers():
    bp = _load("bench_precision")
    infos = {"edgezoo-int8": {"ms": 2.6, "img_size": 224, "variant": "int8/openvino-qdq", "guard": "passed"},
             "edgezoo-int8(artifact)": {"ms": 2.2, "variant": "int8/openvino-qdq/pinned"},
             "edgezoo-fp32(artifact)": {"ms": 3.3}, "nncf-ov(timm)": {"ms": 2.4}, "nncf-ov-pinned(timm)": {"ms": 2.0},
             "fp32-ort(timm)": {"ms": 3.0}, "fp32-ov-pinned(timm)": {"ms": 3.5}}
    row = bp.summarize("mobilenetv3_large_100", "mobilenetv3", infos)
    assert row["int8_vs_best_int8_peer"] == pytest.approx(2.6 / 2.0)
    assert row["int8_artifact_vs_best_int8_peer"] == pytest.approx(2.2 / 2.0)
    assert row["fp32_artifact_vs_best_fp32_peer"] == pytest.approx(3.3 / 3.0)
    md = bp.markdown([row])
    assert "| mobilenetv3_large_100 (224) | 2.200 (int8/openvino-qdq/pinned) | 1.10× | 3.300 | 1.10× |" in md
