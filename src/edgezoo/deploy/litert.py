"""LiteRT (``.tflite``) export through ``litert-torch``, run and checked by the LiteRT interpreter (XNNPACK).

The converter gets the mobile form's graph (:mod:`edgezoo.deploy.mobile`) in its LiteRT variant
(:func:`~edgezoo.deploy.mobile.litert_form`: Mobile MQA's heads as the matmul batch, so no matmul becomes a
``FULLY_CONNECTED`` on activations), so every family reaches XNNPACK in one partition. The interpreter applies
its default XNNPACK delegate; which nodes it claimed is read back from the interpreter (every ``DELEGATE`` node
replaces the original nodes between its inputs and outputs), giving the partition count and the op kinds left to
LiteRT's own kernels.

Input layout stays NCHW, as in PyTorch (the converter inserts the transposes XNNPACK needs inside the delegate).
The input description (:class:`~edgezoo.deploy.mobile.InputSpec`) is stored as a TFLite ``metadata`` entry named
``edgezoo`` holding UTF-8 JSON (read it with :func:`read_metadata`).

int8: static PT2E quantization with litert-torch's quantizer (symmetric, per-channel weights), calibrated on
real images; h-swish/h-sigmoid are written as int8 ``mul``/``add``/``relu6`` first
(:func:`~edgezoo.deploy.mobile.int8_activations`), since XNNPACK's delegate has no int8 ``HARD_SWISH``. The
converter makes the whole graph int8, input and output included: the metadata's ``input_dtype`` gives the
input's scale and zero point, and :func:`runner` quantizes/dequantizes with them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .export import _quiet
from .mobile import METADATA_KEY, int8_activations, litert_form, mobile_program, without_weight_slicing


@dataclass
class LiteRTArtifact:
    """A converted model: ``data`` (the flatbuffer), XNNPACK ``partitions`` and the ``outside`` op counts."""

    data: bytes = field(repr=False)
    partitions: int
    outside: dict[str, int]


def _model_bytes(converted) -> bytes:
    content = converted.model_content
    return bytes(content() if callable(content) else content)


def add_metadata(data: bytes, metadata: dict[str, str], name: str = METADATA_KEY) -> bytes:
    """``data`` (a ``.tflite`` flatbuffer) with a metadata entry ``name`` holding ``metadata`` as JSON."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())] + [entry]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(data: bytes, name: str = METADATA_KEY) -> dict[str, str] | None:
    """The JSON metadata entry ``name`` of a ``.tflite`` flatbuffer, or ``None``."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    return None


def _quantized(model: nn.Module, example: Tensor, calibration: Tensor):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    model = litert_form(copy.deepcopy(model))
    int8_activations(without_weight_slicing(model))
    graph = mobile_program(model, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    for img in calibration.split(1):
        prepared(img)
    return _inference(convert_pt2e(prepared, fold_quantize=False)), QuantConfig(pt2e_quantizer=quantizer)


def _inference(graph: nn.Module) -> nn.Module:
    """Mark an exported graph module as inference (its graph has no train-time ops; the flag is what litert checks;
    ``.eval()`` is refused on exported modules)."""
    for m in graph.modules():
        m.training = False
    return graph


def delegation(interpreter) -> tuple[int, dict[str, int]]:
    """(XNNPACK partitions, op kinds left outside them) of an allocated interpreter."""
    ops = interpreter._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    originals = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o["index"] for o in originals for t in o["outputs"]}
    by_index = {o["index"]: o for o in originals}
    claimed: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node in claimed:
                continue
            claimed.add(node)
            stack.extend(int(t) for t in by_index[node]["inputs"] if int(t) >= 0 and int(t) not in boundary)
    outside: dict[str, int] = {}
    for o in originals:
        if o["index"] not in claimed:
            outside[o["op_name"]] = outside.get(o["op_name"], 0) + 1
    return len(delegates), outside


def interpreter(data: bytes, threads: int | None = None):
    """An allocated LiteRT interpreter (default XNNPACK delegate) for the flatbuffer ``data``."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=int(threads or torch.get_num_threads()))
    interp.allocate_tensors()
    return interp


def runner(data: bytes, threads: int | None = None):
    """A callable running the ``.tflite`` model on (B, C, H, W) float tensors of its exported shape."""
    interp = interpreter(data, threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # A fully int8 model takes and returns int8 tensors: quantize/dequantize with the model's own parameters.
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    in_type = inp["dtype"]

    def run(x: Tensor) -> Tensor:
        arr = x.detach().float().contiguous().numpy()
        if in_type != np.float32:
            info = np.iinfo(in_type)
            arr = np.clip(np.round(arr / in_scale + in_zero), info.min, info.max).astype(in_type)
        interp.set_tensor(inp["index"], arr)
        interp.invoke()
        y = interp.get_tensor(out["index"]).copy()
        if y.dtype != np.float32:
            y = (y.astype(np.float32) - out_zero) * out_scale
        return torch.from_numpy(y)

    return run


def invoker(data: bytes, x: Tensor, threads: int | None = None):
    """A callable that runs the model once on ``x``, prepared in the model's own input type: what an app that feeds
    the model directly pays per inference (for timing). :func:`runner` also quantizes a float input for an int8
    model in NumPy, which at 64 px costs as long as the model itself and would hide int8's speed."""
    interp = interpreter(data, threads)
    inp = interp.get_input_details()[0]
    arr = x.detach().float().contiguous().numpy()
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        arr = np.clip(np.round(arr / scale + zero), info.min, info.max).astype(inp["dtype"])
    index = inp["index"]

    def call() -> None:
        interp.set_tensor(index, arr)
        interp.invoke()

    return call


def io_types(data: bytes) -> str:
    """``"float32"`` or e.g. ``"int8 (scale 0.0187, zero point -3)"``: what the model's input takes."""
    inp = interpreter(data, 1).get_input_details()[0]
    if inp["dtype"] == np.float32:
        return "float32"
    scale, zero = inp["quantization"]
    return f"{np.dtype(inp['dtype']).name} (x_q = round(x / {scale:.6g}) + {zero}); output likewise quantized"


def convert(
    model: nn.Module,
    example: Tensor,
    *,
    metadata: dict[str, str] | None = None,
    calibration: Tensor | None = None,
) -> LiteRTArtifact:
    """Convert ``model`` (its mobile form) at ``example``'s shape to a LiteRT flatbuffer (int8 with ``calibration``)."""
    import litert_torch

    with _quiet(), torch.no_grad():
        if calibration is not None:
            graph, quant_config = _quantized(model, example, calibration)
            converted = litert_torch.convert(graph, (example,), quant_config=quant_config)
        else:
            form = litert_form(copy.deepcopy(model))
            converted = litert_torch.convert(_inference(mobile_program(form, example).module()), (example,))
    return _artifact(_model_bytes(converted), metadata)


def convert_default(module: nn.Module, example: Tensor) -> LiteRTArtifact:
    """litert-torch's default flow on any module, untouched (the benchmark's reference for timm's models)."""
    import litert_torch

    with _quiet(), torch.no_grad():
        return _artifact(_model_bytes(litert_torch.convert(module.eval(), (example,))), None)


def _artifact(data: bytes, metadata: dict[str, str] | None) -> LiteRTArtifact:
    if metadata:
        metadata = {**metadata, "input_dtype": io_types(data)}
        data = add_metadata(data, metadata)
    partitions, outside = delegation(interpreter(data, 1))
    return LiteRTArtifact(data, partitions, outside)
