"""Precision as a deployment decision: the run's own preprocessing for calibration/evaluation, int8 / bf16
candidates behind an accuracy guard, calibration errors, QAT, and the CLI.

One tiny digits run (mobilenetv1_025 at 32 px, 3 short epochs: ~56 % top-1, far from both chance and 100 %, so a
preprocessing mismatch shows) is trained once per module and shared.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnxruntime", reason="int8 tests need onnxruntime (pip install 'edgezoo[export]')")

MODEL = "mobilenetv1_025"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def edgezoo_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgezoo", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = edgezoo_cli("train", "--model", MODEL, "--img-size", "32", "--epochs", "3", "--train-subset", "640",
                    "--val-subset", "200", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.01", "--no-ema",
                    "--warmup-epochs", "0", "--randaugment-ops", "0", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_quantize_fp32_accuracy_equals_eval(run_dir, tmp_path):
    """Issue 15.1: quantize --calib digits must see the images `eval` sees (the run's mean/std/size/crop)."""
    ev = edgezoo_cli("eval", "--checkpoint", str(run_dir), "--json", "--confusion-png", str(tmp_path / "c.png"))
    assert ev.returncode == 0, ev.stderr
    import json

    top1 = json.loads(ev.stdout)["top1"]
    assert 20 < top1 < 99  # a real, imperfect model: a preprocessing mismatch would move it
    q = edgezoo_cli("quantize", MODEL, "--checkpoint", str(run_dir), "--calib", "digits", "--out",
                    str(tmp_path / "m.onnx"))
    assert q.returncode == 0, q.stderr
    m = re.search(r"fp32 ([0-9.]+)%\s+int8 ([0-9.]+)%", q.stdout)
    assert m, q.stdout
    assert m.group(1) == f"{top1:.2f}"
    assert abs(float(m.group(2)) - top1) < 5  # int8 of a correctly calibrated model stays close
    assert "out-of-range" not in q.stderr  # ORT's per-channel LayerNorm warnings are gone


def test_run_eval_loader_uses_run_preprocessing(run_dir):
    from edgezoo.train import read_metadata, run_eval_loader

    meta = read_metadata(run_dir)
    loader, prep, _ = run_eval_loader("digits", meta=meta, limit=20)
    x, y = next(iter(loader))
    assert x.shape == (20, 3, 32, 32) and prep["mean"] == tuple(meta["mean"])
    # the background (0 ink) maps to (0 - mean) / std of the run, not to -1
    assert torch.allclose(x[:, :, 0, 0], torch.tensor([(-m / s) for m, s in zip(meta["mean"], meta["std"])]).expand(20, 3),
                          atol=1e-5)
    calib, _, _ = run_eval_loader("digits", meta=meta, split="train", limit=8)
    assert next(iter(calib))[0].shape == (8, 3, 32, 32)
