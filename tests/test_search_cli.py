"""`edgezoo search` end to end on digits with a tiny space, supernet resumption, and the CLI's one-line errors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgezoo
from edgezoo.cli import main
from edgezoo.search.space import FusedStageSpace, SearchSpace, UIBStageSpace

TINY = SearchSpace(
    name="tiny-cli", version=1, resolutions=(16, 24), stem_chs=8,
    fused=FusedStageSpace(widths=(8,), expand_ratios=(2.0,)),
    stages=(
        UIBStageSpace(widths=(8, 16), depths=(1, 2), start_dw_kernels=(None, 3), mid_dw_kernels=(None, 3),
                      expand_ratios=(2.0, 4.0)),
        UIBStageSpace(widths=(16,), depths=(1, 2), start_dw_kernels=(None, 3), mid_dw_kernels=(3,),
                      expand_ratios=(2.0,)),
    ),
    last_chs=(32,), head_chs=32,
)


def _edgezoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgezoo", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("search")
    space = TINY.save(tmp / "space.yaml")
    out = tmp / "run"
    rc = main(["search", "--space", str(space), "--hardware", "phone_cpu", "--target-ms", "0.004", "--out",
               str(out), "--supernet-epochs", "1", "--retrain-epochs", "1", "--budget", "6", "--no-progress",
               "--json"])
    assert rc == 0
    return out


def test_search_writes_a_plain_model_and_its_report(run_dir: Path) -> None:
    for name in ("arch.yaml", "best.safetensors", "report.json", "pareto.png", "search.json"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["hardware"] == "phone_cpu" and report["target_ms"] == 0.004
    assert 0 < report["predicted_latency_ms"] <= 0.004
    assert 0.0 <= report["top1"] <= 100.0
    spec = edgezoo.models.arch_spec.load_arch_spec(run_dir / "arch.yaml")
    assert spec["space"]["hash"] == TINY.hash and spec["latency"]["predicted_ms"] == report["predicted_latency_ms"]
    model = edgezoo.create_model(str(run_dir / "arch.yaml"), checkpoint=run_dir / "best.safetensors").eval()
    assert model.num_classes == 10 and model.default_cfg["input_size"][1] == spec["img_size"]
    # eval works on the run like on any training run, and reproduces the reported top-1
    res = _edgezoo("eval", "--checkpoint", run_dir, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["top1"] == pytest.approx(report["top1"], abs=1e-3)
    # the spec path works where a model name does
    for args in (("info", run_dir / "arch.yaml", "--json"), ("roofline", run_dir / "arch.yaml", "--json")):
        res = _edgezoo(*args)
        assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_train_arch_and_export_accept_the_spec(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "retrain"
    res = _edgezoo("train", "--arch", run_dir / "arch.yaml", "--epochs", "1", "--out", out, "--no-progress", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["img_size"] == json.loads(
        (run_dir / "report.json").read_text())["img_size"]
    res = _edgezoo("export", run_dir / "arch.yaml", "--format", "onnx", "--checkpoint", out, "--out",
                   tmp_path / "m.onnx")
    assert res.returncode == 0, res.stderr


def test_cli_errors_are_one_line_and_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    def check(argv: list[str], *needles: str) -> None:
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        for n in needles:
            assert n in err, err

    space = tmp_path / "space.yaml"
    TINY.save(space)
    base = ["search", "--space", space, "--out", tmp_path / "r", "--no-progress"]
    check(base + ["--hardware", "toaster", "--target-ms", "1"], "unknown hardware 'toaster'")
    check(base + ["--hardware", "phone_cpu", "--target-ms", "0.0000001"], "below the fastest", "smallest subnet")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    check(["info", empty], "is empty")
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: edgezoo-arch/1\nkind: mobilenetv4\nimg_size: 32\nconfig: [1\n")
    check(["info", bad], "not valid YAML")
    # resuming a run with another version of its space
    v2 = tmp_path / "space_v2.yaml"
    dataclasses.replace(TINY, version=2).save(v2)
    check(["search", "--space", v2, "--hardware", "phone_cpu", "--target-ms", "0.004", "--out", run_dir, "--resume",
           "--no-progress"], "version 1", "version 2")
    # reusing a supernet: a folder without one, one of another space, and a teacher for a supernet not trained
    check(base + ["--hardware", "phone_cpu", "--target-ms", "0.004", "--supernet", tmp_path],
          "holds no trained supernet", "supernet.safetensors")
    check(["search", "--space", v2, "--hardware", "phone_cpu", "--target-ms", "0.004", "--out", tmp_path / "r2",
           "--supernet", run_dir, "--no-progress"], "another search space", "version 2")
    check(base + ["--hardware", "phone_cpu", "--target-ms", "0.004", "--supernet", run_dir, "--teacher-checkpoint",
                  run_dir], "not both")
    # weights that do not belong to the spec
    from edgezoo.models.arch_spec import make_arch_spec, save_arch_spec
    from edgezoo.models.mobilenet_v4 import CONV_SMALL

    other = save_arch_spec(make_arch_spec(CONV_SMALL, name="cs", img_size=32), tmp_path / "other.yaml")
    check(["export", other, "--format", "onnx", "--checkpoint", run_dir, "--out", tmp_path / "x.onnx"],
          "does not match")


def test_search_reuses_another_runs_supernet(run_dir: Path, tmp_path: Path, capsys) -> None:
    space = TINY.save(tmp_path / "space.yaml")
    out = tmp_path / "reuse"
    argv = ["search", "--space", str(space), "--hardware", "phone_cpu", "--target-ms", "0.004", "--out", str(out),
            "--retrain-epochs", "1", "--budget", "6", "--no-progress", "--json"]
    assert main([*argv, "--supernet", str(run_dir)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    first = json.loads((run_dir / "report.json").read_text())
    assert report["supernet"]["from"] == str(run_dir.resolve()) and report["supernet"]["epochs"] == 1
    assert not (out / "supernet.safetensors").exists() and not (out / "supernet_state.pt").exists()
    # the same supernet, search split and seeded search: the same architecture with the same search-split scores
    assert report["arch"] == first["arch"]
    assert report["search_top1"] == first["search_top1"] and report["search_loss"] == first["search_loss"]
    # a reusing run resumes only as it was started
    assert main([*argv, "--supernet", str(run_dir), "--resume"]) == 0
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume it as it was started" in err, err


def test_supernet_resume_gives_the_same_weights(tmp_path: Path) -> None:
    from edgezoo.search.supernet_train import SearchData, SupernetConfig, read_supernet_run, train_supernet

    space = dataclasses.replace(TINY, resolutions=(16,))
    cfg = SupernetConfig(out=str(tmp_path / "a"), epochs=2, progress=False, calib_images=32)
    data = SearchData(cfg, space)
    ref, _, _ = train_supernet(cfg, space, data=data)
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train_supernet(cfg_b, space, data=data, stop_after_epoch=1)
    # a killed supernet cannot be reused by another search (edgezoo search --supernet) until it is finished
    with pytest.raises(ValueError, match="holds no trained supernet"):
        read_supernet_run(cfg_b.out, space)
    resumed, _, summary = train_supernet(cfg_b, space, resume=True, data=data)
    saved_cfg, saved = read_supernet_run(cfg_b.out, space)
    assert saved_cfg == dataclasses.replace(cfg_b, out=saved_cfg.out) and saved["history"] == summary["history"]
    with pytest.raises(ValueError, match="another search space"):
        read_supernet_run(cfg_b.out, dataclasses.replace(space, version=2))
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="already holds a supernet run"):
        train_supernet(cfg_b, space, data=data)


def test_block_roofline_predictor_equals_the_whole_model_roofline() -> None:
    import random

    from edgezoo.analysis import get_hardware, profile, roofline
    from edgezoo.models.arch_spec import build_arch, make_arch_spec
    from edgezoo.search.pipeline import make_latency_predictor
    from edgezoo.search.space import DIGITS_HYBRID_SPACE

    pred = make_latency_predictor("phone_cpu", "roofline", num_classes=10)
    rng = random.Random(0)
    for _ in range(3):
        s = DIGITS_HYBRID_SPACE.sample(rng)
        cfg = DIGITS_HYBRID_SPACE.to_config(s)
        with torch.device("meta"):
            model = build_arch(make_arch_spec(cfg, name="x", img_size=s.resolution), num_classes=10)
        whole = roofline(profile(model, (1, 3, s.resolution, s.resolution)), get_hardware("phone_cpu")).latency_ms
        assert pred.predict_ms(cfg, s.resolution) == pytest.approx(whole, rel=1e-9)


def test_supernet_learns_from_a_trained_teacher(run_dir: Path, tmp_path: Path) -> None:
    from edgezoo.search.supernet_train import SearchData, SupernetConfig, train_supernet

    space = dataclasses.replace(TINY, resolutions=(16,))
    cfg = SupernetConfig(out=str(tmp_path / "t"), epochs=1, progress=False, calib_images=32,
                         teacher_checkpoint=str(run_dir))
    net, _, summary = train_supernet(cfg, space, data=SearchData(cfg, space))
    assert summary["history"][0]["train_loss"] > 0 and "largest_top1" in summary["history"][0]


def test_search_reranks_its_best_few_after_a_short_fine_tune(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    rows = report["rerank"]
    assert 1 <= len(rows) <= 4 and (run_dir / "rerank.json").is_file()
    assert len({r["arch"] for r in rows}) == len(rows)  # distinct architectures
    assert all(0.0 <= r["finetuned_top1"] <= 100.0 and r["latency_ms"] <= 0.004 for r in rows)
    # the winner is the best re-ranked architecture, and the spec / weights are that one
    win = max(rows, key=lambda r: r["reward"])
    assert report["arch"] == win["arch"] and report["subnet"] == win["subnet"]


def test_rerank_choice_resume_and_off(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from edgezoo.search import supernet_train
    from edgezoo.search.pipeline import run_search
    from edgezoo.search.space import get_space

    space = get_space(TINY.save(tmp_path / "space.yaml"))
    calls: list[str] = []

    def fake(net, data, subnet, *, steps, seed=0, **kw):
        calls.append(subnet.describe())
        # the later a candidate came in the search's ranking, the better its fine-tuned score
        return {"top1": 50.0 + len(calls), "loss": 1.0}

    monkeypatch.setattr(supernet_train, "finetune_and_evaluate", fake)
    kw = dict(hardware="phone_cpu", target_ms=0.004, space=space, supernet_from=run_dir, retrain_epochs=1,
              budget=6, progress=False, log=lambda m: None)
    rep = run_search(out=tmp_path / "a", rerank=3, rerank_steps=5, **kw)
    assert len(calls) == len(rep["rerank"]) >= 2
    assert rep["arch"] == rep["rerank"][-1]["arch"] == calls[-1]  # the last one scored best
    assert rep["rerank"][0]["inherited_reward"] >= rep["rerank"][-1]["inherited_reward"]
    calls.clear()  # a resumed run reads its re-ranking back instead of fine-tuning again
    again = run_search(out=tmp_path / "a", rerank=3, rerank_steps=5, resume=True, **kw)
    assert calls == [] and again["arch"] == rep["arch"]
    off = run_search(out=tmp_path / "b", rerank=0, **kw)  # off: the search's own pick, as before re-ranking existed
    assert calls == [] and off["rerank"] == [] and off["arch"] == rep["rerank"][0]["arch"]
    with pytest.raises(ValueError, match="rerank_steps must be a non-negative integer, got -1"):
        run_search(out=tmp_path / "c", rerank=2, rerank_steps=-1, **kw)


def test_finetune_and_evaluate_is_deterministic_and_leaves_the_supernet(run_dir: Path) -> None:
    from edgezoo.search.supernet_train import (SearchData, evaluate_subnet, finetune_and_evaluate, load_supernet,
                                               read_supernet_run)

    space = TINY
    cfg, _ = read_supernet_run(run_dir, space)
    data = SearchData(cfg, space)
    net = load_supernet(run_dir, space, 10, kernel_transform=cfg.kernel_transform)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sub = space.smallest()
    assert finetune_and_evaluate(net, data, sub, steps=0) == pytest.approx(evaluate_subnet(net, data, sub))
    a = finetune_and_evaluate(net, data, sub, steps=3, seed=1)
    b = finetune_and_evaluate(net, data, sub, steps=3, seed=1)
    assert a == b
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        finetune_and_evaluate(net, data, sub, steps=-2)


def test_tables_keep_the_fused_expansion_of_architecture_strings(run_dir: Path, capsys) -> None:
    """rich would read "[e2]" as a style tag and print "F16x1" for "F16x1[e2]": two subnets, one string."""
    from edgezoo.cli.search import _print_tables

    report = json.loads((run_dir / "report.json").read_text())
    report["arch"] = "r16 | F8x1[e2] | L32"
    report["pareto"] = [{"arch": "r16 | F8x1[e4] | L32", "latency_ms": 0.001, "search_top1": 50.0}]
    capsys.readouterr()
    _print_tables(report, str(run_dir))
    out = capsys.readouterr().out
    assert "F8x1[e2]" in out and "F8x1[e4]" in out
