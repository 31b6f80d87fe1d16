"""Export to ONNX, TorchScript or a ``torch.export`` ExportedProgram, with a parity check on the exported artifact.

An export is only useful if the exported graph computes what the PyTorch model computes, so every export here is
re-loaded and run on the example input by the runtime that will execute it (ONNX Runtime for ONNX,
``torch.jit.load`` for TorchScript, ``torch.export.load`` for an ExportedProgram) and compared to eager PyTorch.

ONNX uses the TorchScript-based exporter at opset 17 by default: it exports every edgezoo model (h-swish, SE,
XCA, Mobile MQA, MobileViT's unfold/fold) in about a second, where the dynamo exporter takes ~10 s per model;
``dynamo=True`` selects the latter. Both keep ``F.scaled_dot_product_attention`` as plain MatMul/Softmax nodes,
which ONNX Runtime and OpenVINO fuse again.
"""
from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

FORMATS = ("onnx", "torchscript", "exported-program", "tflite", "executorch", "coreml")
# The phone runtimes' formats: handled by edgezoo.deploy.mobile_export (needs pip install 'edgezoo[mobile]').
MOBILE_FORMATS = ("tflite", "executorch", "coreml")
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require(module: str, extra: str = "export"):
    """Import an optional dependency or explain how to get it (``pip install 'edgezoo[export]'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for this; install it with: pip install 'edgezoo[{extra}]'"
        ) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Exporters warn about tracing details that do not concern a user exporting a static-shape model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class ExportResult:
    """Where the artifact went and how far its outputs are from eager PyTorch (max |diff| / max |eager|)."""

    path: Path
    format: str
    rel_diff: float | None
    checked_with: str | None
    details: dict = field(default_factory=dict)  # per-format findings (phone formats: partitions, int8, structure)


def rel_diff(a: Tensor, b: Tensor) -> float:
    """``max |a - b| / max |b|`` — the error relative to the output scale."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def onnx_bytes(
    model: nn.Module,
    example_input: Tensor,
    *,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> bytes:
    """Serialize ``model`` (in eval mode) to an ONNX model proto, input ``input``, output ``logits``."""
    require("onnx")
    model = model.eval()
    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            prog = torch.onnx.export(
                model, (example_input,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes, opset_version=max(opset, 18), verbose=False,
            )
            prog.optimize()
            return prog.model_proto.SerializeToString()
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(
            model, (example_input,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
        )
    return buf.getvalue()


def ort_session(model_bytes_or_path: bytes | str | os.PathLike, *, threads: int | None = None,
                spinning: bool = True):
    """An ONNX Runtime CPU session with all graph optimizations, sequential execution, ``threads`` intra-op
    (``spinning=False``: no spin-wait after calls, for measurements; see ``engine_worker.ort_session_options``)."""
    ort = require("onnxruntime")
    from .engine_worker import ort_session_options  # one definition, shared with the timing workers

    opts = ort_session_options(ort, threads or torch.get_num_threads(), spinning=spinning)
    src = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise IsADirectoryError(f"output path {str(path)!r} is a directory; give a file path")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionError(f"cannot create the folder for {str(path)!r}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str,
    example_input: Tensor,
    dynamic_batch: bool = False,
    check: bool = True,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    int8: bool = False,
    calibration: Tensor | None = None,
) -> ExportResult:
    """Write ``model`` to ``path`` as ``format`` (one of :data:`FORMATS`) and check the artifact's outputs.

    ``dynamic_batch`` makes the batch dimension symbolic (ONNX and ExportedProgram; a traced TorchScript graph
    runs at any batch anyway). The parity check runs the reloaded artifact on ``example_input`` (and on a batch
    of 2 when ``dynamic_batch``) and reports the max difference relative to the eager output scale.

    ``tflite``, ``executorch`` and ``coreml`` go to :func:`edgezoo.deploy.mobile_export.export_mobile` (batch-1
    fixed-shape artifacts; ``int8`` with ``calibration`` images), see there.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if format in MOBILE_FORMATS:
        if dynamic_batch:
            raise ValueError(f"dynamic_batch is not supported for format {format!r}: phone artifacts have a fixed batch of 1")
        from .mobile_export import export_mobile

        return export_mobile(model, path, format=format, example_input=example_input, int8=int8,
                             calibration=calibration, check=check)
    if int8:
        raise ValueError(f"int8 export is offered for {list(MOBILE_FORMATS)}, not {format!r}; see edgezoo.deploy.quantize_int8")
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        raise ValueError(f"example_input must be a (B, C, H, W) tensor, got {getattr(example_input, 'shape', example_input)!r}")
    path = Path(path)
    _check_writable(path)
    from ..checkpoint import atomic_write_bytes

    model = model.eval()
    # Tracing at batch 1 would let the exporters specialize the batch to the constant 1; trace at batch 2.
    trace_input = torch.cat([example_input, example_input]) if dynamic_batch and example_input.shape[0] == 1 else example_input
    inputs = [example_input]
    if dynamic_batch and format != "torchscript":
        inputs.append(torch.cat([example_input, torch.randn_like(example_input)]))
    with torch.no_grad():
        expected = [model(x) for x in inputs]

    if format == "onnx":
        data = onnx_bytes(model, trace_input, dynamic_batch=dynamic_batch, opset=opset, dynamo=dynamo)
        atomic_write_bytes(path, data)
        if not check:
            return ExportResult(path, format, None, None)
        sess = ort_session(path)
        got = [torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]) for x in inputs]
        checker = "onnxruntime"
    elif format == "torchscript":
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (example_input,), check_trace=False)
            traced = torch.jit.freeze(traced)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
        atomic_write_bytes(path, buf.getvalue())
        if not check:
            return ExportResult(path, format, None, None)
        with _quiet(), torch.no_grad():
            loaded = torch.jit.load(str(path))
            got = [loaded(x) for x in inputs]
        checker = "torch.jit.load"
    else:
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        with _quiet(), torch.no_grad():
            prog = torch.export.export(model, (trace_input,), dynamic_shapes=shapes)
            buf = io.BytesIO()
            torch.export.save(prog, buf)
        atomic_write_bytes(path, buf.getvalue())
        if not check:
            return ExportResult(path, format, None, None)
        with _quiet(), torch.no_grad():
            loaded = torch.export.load(str(path)).module()
            got = [loaded(x) for x in inputs]
        checker = "torch.export.load"
    diff = max(rel_diff(g, e) for g, e in zip(got, expected))
    return ExportResult(path, format, diff, checker)
