"""Quantization-aware fine-tuning (QAT) of a trained run: for when post-training int8 loses too much.

Fake quantization (Jacob et al. 2018; Krishnamoorthi 2018): every convolution and linear layer sees its input
rounded to uint8 (per tensor, affine, range from an exponential moving average of the batch min/max) and its
weights rounded to int8 (per output channel, symmetric), in the forward pass; the backward pass passes gradients
straight through the rounding. A few epochs at a small learning rate let the weights adapt to the grid.

BatchNorm is folded *before* QAT (``fuse(..., deploy_forms=False)``), so the weights that are fake-quantized are
the ones the int8 engine multiplies (quantizing pre-fold weights and folding afterwards would move them off the
grid). Everything else (activations such as h-swish, softmax, LayerNorm, GELU) stays float, as in edgezoo's PTQ.

The result exports to ONNX as a QDQ model (QuantizeLinear/DequantizeLinear pairs with the learned ranges) that
ONNX Runtime or OpenVINO run in int8, and is checked against the fake-quant PyTorch model on held-out images.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QAT_PARITY_TOL = 1e-3  # of the output scale: the exported QDQ graph evaluated literally vs the fake-quant model


class ActFakeQuant(nn.Module):
    """uint8 per-tensor affine fake quantization with a moving-average min/max range (frozen in eval)."""

    def __init__(self, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def qparams(self) -> tuple[float, int]:
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)  # zero must be exactly representable
        scale = max((hi - lo) / 255.0, 1e-8)
        return scale, int(min(max(round(-lo / scale), 0), 255))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.seen):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
            else:
                self.lo.lerp_(lo, self.momentum)
                self.hi.lerp_(hi, self.momentum)
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


def _weight_fake_quant(w: Tensor, scale: Tensor) -> Tensor:
    zero = torch.zeros(scale.shape, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)


class _QATLayer(nn.Module):
    """Input and weight fake quantization around a Conv2d or Linear; the weight scale is a buffer, so the export
    holds constants (quantized once), not a per-call ReduceMax."""

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.layer = layer
        self.act = ActFakeQuant()
        self.register_buffer("w_scale", self._scale())

    def _scale(self) -> Tensor:
        w = self.layer.weight.detach()
        return (w.abs().flatten(1).amax(1).clamp_min(1e-8) / 127.0).float()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.w_scale.copy_(self._scale())
        w = _weight_fake_quant(self.layer.weight, self.w_scale)
        x = self.act(x)
        if isinstance(self.layer, nn.Conv2d):
            c = self.layer
            if c.padding_mode != "zeros":
                raise ValueError(f"QAT supports zero-padded convolutions, got padding_mode={c.padding_mode!r}")
            return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return F.linear(x, w, self.layer.bias)


def prepare_qat(model: nn.Module) -> nn.Module:
    """A BN-folded copy of ``model`` with every Conv2d / Linear wrapped in input + weight fake quantization."""
    from ..deploy.fuse import fuse

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = fuse(model, deploy_forms=False)
    for p in folded.parameters():
        p.requires_grad_(True)

    def swap(parent: nn.Module) -> int:
        n = 0
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)) and type(child) in (nn.Conv2d, nn.Linear):
                setattr(parent, name, _QATLayer(child))
                n += 1
            else:
                n += swap(child)
        return n

    if swap(folded) == 0:
        raise ValueError("model has no Conv2d or Linear layers to quantize")
    return folded


def _top1(fn, loader) -> tuple[float, Tensor]:
    preds, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, y = batch
            preds.append(fn(x).argmax(1))
            labels.append(y)
    p, y = torch.cat(preds), torch.cat(labels)
    return 100.0 * float((p == y).float().mean()), p


def qat_finetune(checkpoint: str | os.PathLike, *, out: str | os.PathLike | None = None, data: str = "digits",
                 epochs: int = 2, lr: float = 1e-4, batch_size: int = 64, seed: int = 0,
                 train_limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Fine-tune a run with fake quantization, export the int8 QDQ ONNX model and check it; returns a report.

    Trains on ``data``'s training split with the run's own evaluation preprocessing (no augmentation: this is a
    short adaptation to the int8 grid, not training), measures held-out top-1 of the fp32 model, of the
    fake-quant model and of the exported int8 model on ONNX Runtime, and checks the export against the
    fake-quant model (outputs within :data:`QAT_PARITY_TOL` of the output scale). Writes ``model_int8.onnx`` and
    ``qat_report.json`` into ``out`` (default ``RUN/qat``).
    """
    from ..checkpoint import atomic_write_bytes
    from ..deploy.export import onnx_bytes, ort_session, rel_diff
    from .checkpoints import load_trained_model
    from .evaluate import run_eval_loader

    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr must be a number in (0, 1), got {lr!r}")
    model, meta = load_trained_model(checkpoint)
    run_dir = Path(meta["path"]).parent
    out_dir = Path(out) if out is not None else run_dir / "qat"
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out {str(out_dir)!r} exists and is not a directory")
    train_loader, prep, _ = run_eval_loader(data, meta=meta, split="train", limit=train_limit, batch_size=batch_size)
    val_loader, _, _ = run_eval_loader(data, meta=meta, batch_size=128)
    torch.manual_seed(seed)
    shuffled = torch.utils.data.DataLoader(train_loader.dataset, batch_size=batch_size, shuffle=True,
                                           generator=torch.Generator().manual_seed(seed), drop_last=False)
    fp32_top1, _ = _top1(model.eval(), val_loader)
    qmodel = prepare_qat(model)
    opt = torch.optim.AdamW([p for p in qmodel.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    steps = epochs * len(shuffled)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    start = time.time()
    history = []
    for epoch in range(epochs):
        qmodel.train()
        total = 0.0
        for x, y in shuffled:
            loss = F.cross_entropy(qmodel(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
        qmodel.eval()
        acc, _ = _top1(qmodel, val_loader)
        history.append({"epoch": epoch + 1, "loss": total / len(shuffled.dataset), "fake_quant_top1": acc})
        if progress:
            print(f"qat epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}  fake-quant val top-1 {acc:.2f}%",
                  flush=True)
    qmodel.eval()
    fq_top1, fq_preds = _top1(qmodel, val_loader)
    size = prep["img_size"]
    example = torch.zeros(1, prep["in_chans"], size, size)
    onnx = onnx_bytes(qmodel, example)
    sess = ort_session(onnx)

    def ort_run(x: Tensor) -> Tensor:
        return torch.cat([torch.from_numpy(sess.run(None, {"input": x[i : i + 1].numpy()})[0]) for i in range(len(x))])

    int8_top1, int8_preds = _top1(ort_run, val_loader)
    # Parity of the export itself: ONNX Runtime with graph optimizations off evaluates the QDQ graph literally
    # (DequantizeLinear(QuantizeLinear(x)) in float), which is what the fake-quant model computes. The int8
    # kernels (on by default) then differ by integer bias and requantization rounding: that is reported as
    # top-1 agreement, not as parity.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    literal = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    x0 = next(iter(val_loader))[0][:16]
    with torch.inference_mode():
        ref = qmodel(x0)
        diff = rel_diff(torch.cat([torch.from_numpy(literal.run(None, {"input": x0[i : i + 1].numpy()})[0])
                                   for i in range(len(x0))]), ref)
        kernel_diff = rel_diff(ort_run(x0), ref)
    agreement = 100.0 * float((int8_preds == fq_preds).float().mean())
    import onnx as onnx_lib

    graph = onnx_lib.load_from_string(onnx).graph
    n_q = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    report = {
        "checkpoint": meta["path"], "model": meta["model"], "data": data, "epochs": epochs, "lr": lr,
        "fp32_top1": fp32_top1, "fake_quant_top1": fq_top1, "int8_onnxruntime_top1": int8_top1,
        "int8_vs_fake_quant_agreement": agreement, "parity_rel_diff": diff, "parity_tol": QAT_PARITY_TOL,
        "parity": "OK" if diff <= QAT_PARITY_TOL else "MISMATCH", "int8_kernels_rel_diff": kernel_diff,
        "quantize_linear_nodes": n_q,
        "history": history, "seconds": round(time.time() - start, 1),
    }
    atomic_write_bytes(out_dir / "model_int8.onnx", onnx)
    atomic_write_bytes(out_dir / "qat_report.json", (json.dumps(report, indent=2) + "\n").encode())
    report["out"] = str(out_dir)
    return report
