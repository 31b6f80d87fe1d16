"""Training behaviour a new user must not be surprised by (issue 15, items 2 and 4).

- ``--resume`` of a run stopped before its first checkpoint continues *that* run (its ``config.yaml``), a missing
  run is refused, a finished one says so;
- ``best.safetensors`` / ``report.json`` hold whichever of the EMA and the raw weights is better on validation;
- ``--teacher`` without weights is refused unless asked for explicitly.

Runs are in-process (no interpreter start-up), one epoch on a digits subset: ViT-Ti at the digits preset (16 px,
2×2 patches of 8 px) is the quickest registered model that learns well above chance in one epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgezoo.checkpoint import read_safetensors_metadata
from edgezoo.cli import main as cli_main
from edgezoo.train import build_config, evaluate_checkpoint, train
from edgezoo.train import engine

QUICK = "mobilenetv1_025"  # quickest to build; used where the run's accuracy does not matter
LEARNER = "vit_tiny_patch16_224"  # learns digits well above chance in one epoch (digits preset: 16 px)
TINY = ["--img-size", "32", "--train-subset", "64", "--val-subset", "32", "--batch-size", "32"]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli_main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------ resume
def test_resume_after_interrupt_in_first_epoch_uses_the_runs_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "R"

    def ctrl_c(*args, **kwargs):  # the first evaluation ends epoch 1: no state.pt has been written yet
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(engine, "evaluate_model", ctrl_c)
        code, _, err = _cli(["train", "--model", QUICK, "--epochs", "2", *TINY, "--lr", "0.05", "--no-ema",
                             "--no-progress", "--out", str(out)], capsys)
    assert code == 130 and "interrupted" in err
    assert (out / "config.yaml").is_file() and not (out / "state.pt").exists()
    saved_yaml = (out / "config.yaml").read_text()

    # a flag that contradicts the saved recipe is refused, as for a run with a checkpoint
    code, _, err = _cli(["train", "--resume", "--out", str(out), "--model", "mobilenetv2_100"], capsys)
    assert code == 2 and "differs from the run being resumed" in _one_line(err)

    code, stdout, err = _cli(["train", "--resume", "--out", str(out), "--no-progress", "--json"], capsys)
    assert code == 0, err[-2000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    # everything came from config.yaml, not from the defaults (mobilenetv3_small_050, 15 epochs, 64 px, lr 0.2)
    assert report["model"] == QUICK and report["epochs"] == 2 and report["img_size"] == 32
    assert report["train_images"] == 64 and report["val_images"] == 32 and report["weights"] == "raw"
    assert (out / "config.yaml").read_text() == saved_yaml  # never overwritten
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["lr"] == 0.05 and state["config"]["ema"] is False

    # resuming a finished run says so, with its result, and changes nothing
    before = (out / "best.safetensors").read_bytes()
    code, stdout, err = _cli(["train", "--resume", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err[-2000:]
    assert f"already finished: best top-1 {report['best_top1']:.2f}% (epoch {report['best_epoch']}, raw weights)" \
        in stdout
    assert (out / "best.safetensors").read_bytes() == before


def test_resume_of_nothing_is_refused(tmp_path, capsys):
    missing = tmp_path / "never_started"
    code, _, err = _cli(["train", "--resume", "--out", str(missing)], capsys)
    line = _one_line(err)
    assert code == 2 and "nothing to resume" in line and "does not exist" in line and "edgezoo train" in line
    assert not missing.exists()  # not silently started as a new run
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(["train", "--resume", "--out", str(empty)], capsys)
    assert code == 2 and "nothing to resume" in _one_line(err)
    assert list(empty.iterdir()) == []


# ------------------------------------------------------------------------------------------- EMA vs raw
def _learner_run(out: Path, **extra) -> dict:
    cfg = build_config({"model": LEARNER, "epochs": 1, "train_subset": 512, "batch_size": 32, "out": str(out),
                        **extra})
    return train(cfg)


def _assert_best_holds(out: Path, report: dict, which: str) -> None:
    state = torch.load(out / "state.pt", weights_only=True)
    want = state["model"] if which == "raw" else state["ema"]["module"]
    best = load_file(str(out / "best.safetensors"))
    assert best.keys() == want.keys()
    for k in best:
        assert torch.equal(best[k], want[k]), k
    assert read_safetensors_metadata(out / "best.safetensors")["weights"] == which
    assert report["weights"] == which == json.loads((out / "report.json").read_text())["weights"]
    assert (out / "metrics.csv").read_text().splitlines()[1].endswith(f",{which}")
    # report.json's best top-1 is the score of the weights actually saved (full digits val split: 450 images)
    assert evaluate_checkpoint(out, "digits")["top1"] == pytest.approx(report["best_top1"], abs=1e-3)


def test_best_keeps_raw_weights_when_the_ema_is_worse(tmp_path, monkeypatch, capsys):
    real_update = engine.WeightEma.update

    def broken_ema(self, model):  # an EMA that lags hopelessly: all-zero weights predict one class
        real_update(self, model)
        with torch.no_grad():
            for p in self.module.parameters():
                p.zero_()

    monkeypatch.setattr(engine.WeightEma, "update", broken_ema)
    out = tmp_path / "raw_wins"
    report = _learner_run(out, progress=True)
    assert report["raw_top1_at_best"] > report["ema_top1_at_best"] + 10, report
    assert report["best_top1"] == report["raw_top1_at_best"]
    _assert_best_holds(out, report, "raw")
    summary = capsys.readouterr().out
    assert "keeping raw" in summary and "raw weights (raw" in summary and "> EMA" in summary


def test_best_keeps_ema_weights_when_the_raw_ones_are_worse(tmp_path, monkeypatch):
    def ruin_raw_after_epoch(model):  # runs after the last step, before evaluation: the EMA was taken before
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return True

    monkeypatch.setattr(engine, "_finite_params", ruin_raw_after_epoch)
    out = tmp_path / "ema_wins"
    report = _learner_run(out, progress=False)
    assert report["ema_top1_at_best"] > report["raw_top1_at_best"] + 10, report
    assert report["best_top1"] == report["ema_top1_at_best"]
    _assert_best_holds(out, report, "ema")


def test_pick_weights_prefers_ema_on_ties():
    assert engine._pick_weights({"top1": 50.0}, {"top1": 50.0}) == "ema"
    assert engine._pick_weights({"top1": 50.1}, {"top1": 50.0}) == "raw"
    assert engine._pick_weights({"top1": 10.0}, None) == "raw"


# --------------------------------------------------------------------------------------------- teacher
def test_teacher_without_weights_is_refused_unless_asked(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"teacher='mobilenetv1_025' needs teacher_checkpoint.*teacher_random_init"):
        build_config({"teacher": QUICK})
    with pytest.raises(ValueError, match="contradicts teacher_checkpoint"):
        build_config({"teacher": QUICK, "teacher_checkpoint": "x.safetensors", "teacher_random_init": True})
    with pytest.raises(ValueError, match="teacher_random_init=True was given without teacher"):
        build_config({"teacher_random_init": True})

    out = tmp_path / "kd"
    code, _, err = _cli(["train", "--model", QUICK, "--teacher", QUICK, *TINY, "--epochs", "1", "--no-progress",
                         "--out", str(out)], capsys)
    line = _one_line(err)
    assert code == 2 and "--teacher-checkpoint" in line and "--teacher-random-init" in line
    assert not out.exists()

    code, _, err = _cli(["train", "--model", QUICK, "--teacher", QUICK, "--teacher-random-init", *TINY,
                         "--epochs", "1", "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err[-2000:]
    assert "teacher_random_init: true" in (out / "config.yaml").read_text()


def test_runs_saved_before_teacher_random_init_still_resume():
    from edgezoo.train.config import config_from_dict

    old = build_config({"teacher": QUICK, "teacher_random_init": True}).to_dict()
    del old["teacher_random_init"]  # as written by an older edgezoo
    assert config_from_dict(old).teacher_random_init is True
