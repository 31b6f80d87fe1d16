"""int8 post-training static quantization through ONNX Runtime's quantizer (QDQ format).

Static PTQ (Jacob et al., 2018; Krishnamoorthi, 2018) maps weights per output channel and activations per tensor
to 8 bits, with activation ranges measured on a few hundred calibration images. We use ONNX Runtime's maintained
quantizer: it works on the exported graph, so MobileNetV3's h-swish / h-sigmoid and squeeze-excite need no
PyTorch-side rewrites (the elementwise ops stay in float between Quantize/DequantizeLinear pairs), and the QDQ
model runs on ONNX Runtime or OpenVINO, whichever is faster here (``backend="auto"`` measures).

Why not PT2E or NNCF: NNCF is not a dependency; PT2E's x86 quantizer lowers through Inductor, which needs a
C++ toolchain at run time and tens of seconds of compilation per model and shape.

BatchNorm is folded before export so the quantized weights are the ones the hardware multiplies.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .export import onnx_bytes, ort_session, require
from .fuse import fuse
from .optimize import time_interleaved

QUANT_BACKENDS = ("auto", "onnxruntime", "openvino")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
FLOAT_OPS = ("LayerNormalization", "InstanceNormalization")  # ONNX ops ORT could quantize that we keep in float


@dataclass
class QuantizedModel:
    """A callable int8 engine: ``logits = qmodel(images)``; ``onnx`` is the QDQ ONNX model (bytes)."""

    backend: str
    onnx: bytes = field(repr=False)
    input_shape: tuple[int, ...]
    timings_ms: dict[str, float]
    _runner: object = field(repr=False, default=None)
    _runners_by_shape: dict = field(repr=False, default_factory=dict)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        return self._runner(x)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the QDQ ONNX model (runs on ONNX Runtime, OpenVINO, TensorRT …)."""
        from ..checkpoint import atomic_write_bytes

        atomic_write_bytes(path, self.onnx)
        return Path(path)


def _batches(calibration: Tensor | Iterable[Tensor], batch_size: int) -> list[np.ndarray]:
    if isinstance(calibration, Tensor):
        if calibration.dim() != 4:
            raise ValueError(f"calibration must be (N, C, H, W) images, got shape {tuple(calibration.shape)}")
        chunks = list(calibration.split(batch_size))
    else:
        chunks = []
        for item in calibration:
            t = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise ValueError("calibration batches must be (B, C, H, W) tensors or (images, labels) pairs")
            chunks.append(t)
    if not chunks:
        raise ValueError("calibration data is empty; give at least one batch of images")
    # The exported graph has a fixed batch of 1 (the latency case), so feed images one at a time.
    return [img[None].float().numpy() for chunk in chunks for img in chunk]


def _qdq_model(fp32_onnx: bytes, samples: list[np.ndarray], method: str, per_channel: bool,
               reduce_range: bool = True) -> bytes:
    q = require("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self):
            arr = next(self._it, None)
            return None if arr is None else {"input": arr}

    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "percentile": q.CalibrationMethod.Percentile,
        "entropy": q.CalibrationMethod.Entropy,
    }
    # LayerNorm stays in float: it is numerically sensitive (a per-token division by a small std), and ORT
    # would quantize its rank-1 scale "per channel along axis 1", which does not exist, fall back to per-tensor
    # and log "Axis 1 is out-of-range" once per LayerNorm. Its int8 neighbours (MatMul/Gemm/Conv) still are.
    from onnxruntime.quantization.registry import QDQRegistry

    ops = [op for op in QDQRegistry if op not in FLOAT_OPS]
    with tempfile.TemporaryDirectory(prefix="edgezoo-int8-") as tmp:
        src, pre, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as fh:
            fh.write(fp32_onnx)
        try:  # shape inference + graph cleanup the quantizer recommends; optional
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - fall back to the raw export, which quantizes as well
            pre = src
        q.quantize_static(
            pre,
            dst,
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=methods[method],
            op_types_to_quantize=ops,
            # u8 activations × s8 weights overflow the 16-bit accumulators of AVX2 without VNNI unless weights
            # use 7 bits; ORT's own recommendation for such CPUs (VNNI CPUs accumulate in 32 bits: full 8 bits).
            reduce_range=reduce_range,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        with open(dst, "rb") as fh:
            return fh.read()


def _per_image(run_one: Callable[[np.ndarray], np.ndarray]) -> Callable[[Tensor], Tensor]:
    """A batch runner over an engine compiled for batch 1 (``run_one``: one image's array in, its output out)."""

    def run(x: Tensor) -> Tensor:
        if x.shape[0] == 1:  # the deployed case: no slicing or concatenation (~20 us per call at 0.15 ms)
            return torch.from_numpy(run_one(x.detach().contiguous().numpy()))
        outs = [run_one(x[i : i + 1].detach().contiguous().numpy()) for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs))

    return run


def _ov_request_runner(request: Any) -> Callable[[np.ndarray], np.ndarray]:
    """One image through an OpenVINO infer request (output copied: the request reuses its buffer)."""

    def one(arr: np.ndarray) -> np.ndarray:
        request.infer({0: arr}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return one


def _ort_int8(model_bytes: bytes, threads: int):
    sess = ort_session(model_bytes, threads=threads)
    name = sess.get_inputs()[0].name
    run = _per_image(lambda arr: sess.run(None, {name: arr})[0])
    run.isolate = {"kind": "onnxruntime", "model": model_bytes}  # type: ignore[attr-defined] # optimize.time_in_processes
    return run


def _openvino_int8(model_bytes: bytes, threads: int):
    ov = require("openvino")
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="edgezoo-ov-int8-") as tmp:
        path = os.path.join(tmp, "int8.onnx")
        with open(path, "wb") as fh:
            fh.write(model_bytes)
        compiled = core.compile_model(
            core.read_model(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads)}
        )
    return _per_image(_ov_request_runner(compiled.create_infer_request()))


def quantize_int8(
    model: nn.Module,
    calibration: Tensor | Iterable[Tensor],
    *,
    backend: str = "auto",
    method: str = "minmax",
    per_channel: bool = True,
    max_calibration_images: int = 256,
    threads: int | None = None,
) -> QuantizedModel:
    """Post-training static int8 quantization of ``model`` calibrated on ``calibration`` images.

    ``calibration`` is a ``(N, C, H, W)`` tensor or an iterable of batches (or ``(images, labels)`` pairs, e.g. a
    DataLoader), preprocessed exactly like inference inputs; its first ``max_calibration_images`` images are used.
    The engine runs batch-1 graphs at the calibration images' resolution. ``backend="auto"`` times ONNX Runtime
    and OpenVINO on the QDQ model and keeps the faster one.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend not in QUANT_BACKENDS:
        raise ValueError(f"backend must be one of {list(QUANT_BACKENDS)}, got {backend!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if isinstance(max_calibration_images, bool) or not isinstance(max_calibration_images, int) or max_calibration_images < 1:
        raise ValueError(f"max_calibration_images must be an int >= 1, got {max_calibration_images!r}")
    samples = _batches(calibration, 64)[:max_calibration_images]
    shape = samples[0].shape
    if any(s.shape != shape for s in samples):
        raise ValueError("calibration images must all have the same shape")
    threads = int(threads or torch.get_num_threads())
    folded = fuse(model)
    example = torch.from_numpy(samples[0])
    qdq = _qdq_model(onnx_bytes(folded, example), samples, method, per_channel)

    builders = {"onnxruntime": _ort_int8, "openvino": _openvino_int8}
    wanted = list(builders) if backend == "auto" else [backend]
    runners = {}
    for name in wanted:
        try:
            runners[name] = builders[name](qdq, threads)
        except ImportError:
            if backend != "auto":
                raise
    if not runners:
        raise ImportError("int8 needs onnxruntime or openvino; install them with: pip install 'edgezoo[export]'")
    timings = time_interleaved({k: (lambda r=r: r(example)) for k, r in runners.items()}, repeats=9, block=5) if len(runners) > 1 else {}
    best = min(timings, key=timings.get) if timings else next(iter(runners))
    return QuantizedModel(backend=best, onnx=qdq, input_shape=tuple(shape), timings_ms=timings, _runner=runners[best])


# --- calibration / evaluation data: the digits bundled with scikit-learn ------------------------------------------
def digits_tensors(img_size: int = 32, *, in_chans: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 handwritten digits (1,797 images) upsampled to ``img_size``, split 80/20.

    Returns ``(train_x, train_y, test_x, test_y)`` with images normalized to zero mean / unit std — a real,
    offline dataset small enough to train, calibrate and measure int8 accuracy on a laptop CPU.
    """
    from sklearn.datasets import load_digits

    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f"img_size must be an int >= 8, got {img_size!r}")
    data = load_digits()
    x = torch.from_numpy(data.images).float()[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, in_chans, 1, 1)
    y = torch.from_numpy(data.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def train_on_digits(
    model: nn.Module, train_x: Tensor, train_y: Tensor, *, epochs: int = 4, batch_size: int = 64, lr: float = 3e-3, seed: int = 0
) -> nn.Module:
    """A minimal AdamW loop (no augmentation) to give a model real, non-random weights for quantization studies."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(train_y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train_y), generator=gen)
        for idx in perm.split(batch_size):
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def loader_top1(fn, loader: Iterable) -> float:
    """Top-1 accuracy (percent) of callable ``fn`` over ``(images, labels)`` batches (e.g. a DataLoader)."""
    correct = total = 0
    with torch.inference_mode():
        for batch in loader:
            if batch is None:  # a batch whose images could not be read
                continue
            x, y = batch
            correct += int((fn(x).argmax(1) == y).sum())
            total += len(y)
    if total == 0:
        raise ValueError("the evaluation data is empty")
    return 100.0 * correct / total


def top1(fn, x: Tensor, y: Tensor, batch_size: int = 64) -> float:
    """Top-1 accuracy (percent) of callable ``fn`` on ``(x, y)``."""
    with torch.inference_mode():
        preds = torch.cat([fn(b).argmax(1) for b in x.split(batch_size)])
    return float((preds == y).float().mean() * 100)
