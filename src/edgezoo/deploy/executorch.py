"""ExecuTorch (``.pte``) export, lowered to XNNPACK, with int8 through the XNNPACK PT2E quantizer.

The graph is the mobile form of :mod:`edgezoo.deploy.mobile` (every op XNNPACK takes), lowered with
``to_edge_transform_and_lower`` and the XNNPACK partitioner; what is left outside a delegate runs on ExecuTorch's
portable kernels, so the number of delegated partitions and the op kinds outside them are reported with each
export. The program is reloaded by the ExecuTorch runtime and run on the example input for the parity check.

Metadata: a ``.pte`` has no free-form key/value section, but a program may carry constant methods; the input
description (:class:`~edgezoo.deploy.mobile.InputSpec`) is stored as method ``edgezoo_metadata`` returning the
UTF-8 bytes of a JSON object as a ``uint8`` tensor (read it with :func:`read_metadata`).

int8: static PT2E quantization with XNNPACK's quantizer (per-channel symmetric weights, per-tensor activations),
calibrated on real images (see :func:`edgezoo.deploy.mobile_export.calibration_images`); the quantize/dequantize
pairs fold into XNNPACK's int8 kernels. Models with LayerNorm get int8 convolutions and linear layers only
(:func:`_quantize`): per-tensor int8 on normalization steps and the residual stream is too coarse.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .export import _quiet
from .mobile import mobile_program, without_weight_slicing

METADATA_METHOD = "edgezoo_metadata"


@dataclass
class ExecuTorchArtifact:
    """A lowered program: ``data`` (the ``.pte`` bytes), XNNPACK ``partitions``, the op counts ``outside`` them
    on activations, and ``constant_ops``: portable ops on constants only (e.g. copies of lifted scalars)."""

    data: bytes = field(repr=False)
    partitions: int
    outside: dict[str, int]
    constant_ops: dict[str, int] = field(default_factory=dict)


def has_token_norm(model: nn.Module) -> bool:
    """Whether ``model`` normalizes with LayerNorm (transformer blocks, channel LayerNorm), not only BatchNorm."""
    return any(isinstance(m, nn.LayerNorm) or type(m).__name__ in ("ChannelNorm2d", "_ChannelLayerNorm2d")
               for m in model.modules())


def _weighted_op(node: torch.fx.Node) -> bool:
    # The quantizer asks about every node of a pattern, weights and biases (placeholders, attributes) included:
    # refusing those left every conv of EdgeNeXt/MobileViT float (EdgeNeXt's int8 .pte was fp32-sized).
    return node.op != "call_function" or node.target in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)


def _quantize(model: nn.Module, example: Tensor, calibration: Tensor) -> nn.Module:
    """PT2E int8 of ``model``'s mobile form, calibrated on ``calibration``.

    For models with LayerNorm only convolutions and linear layers are quantized (int8 weights, int8 inputs); the
    rest stays float. XNNPACK's quantizer would also make every ``add``/``mul`` int8 with one per-tensor scale —
    including the steps of the decomposed LayerNorm (squares, ``rsqrt`` products) and the residual stream with its
    outlier channels: ViT-Ti/16 (random weights, 2 blocks, digits images) was 0.24 of the output scale away from
    fp32 that way, 0.19 with the LayerNorm steps alone kept float, 0.045 with only conv/linear quantized.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if has_token_norm(model):
        quantizer.set_filter_function(_weighted_op)
    with _quiet(), torch.no_grad():
        graph = mobile_program(without_weight_slicing(model), example).module()
        prepared = prepare_pt2e(graph, quantizer)
        for img in calibration.split(1):
            prepared(img)
        return convert_pt2e(prepared)


def lower(
    model: nn.Module,
    example: Tensor,
    *,
    metadata: dict[str, str] | None = None,
    calibration: Tensor | None = None,
) -> ExecuTorchArtifact:
    """Lower ``model`` (its mobile form) at ``example``'s shape to an XNNPACK-delegated ExecuTorch program.

    With ``calibration`` images the program is int8 (static PT2E), else fp32.
    """
    with _quiet(), torch.no_grad():
        if calibration is not None:
            # No constant folding here: it would turn the int8 weights' dequantize nodes into float32 weights.
            ep = torch.export.export(_quantize(model, example, calibration), (example,))
        else:
            # Fold what depends on weights only (e.g. ViT's class-token block slices the fused qkv weight), so
            # XNNPACK sees static weights.
            from executorch.exir.passes.constant_prop_pass import constant_prop_pass

            ep = _own_storage(constant_prop_pass(mobile_program(model, example)))
    return lower_program(ep, metadata=metadata)


def _own_storage(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Give every folded constant its own storage.

    Folding ``w[dim:]`` leaves a view into the fused weight (a storage offset); serialized as is, the program
    would read the rows from the start of the storage — ViT's class-token block then used the query rows as keys.
    """
    for store in (ep.constants, ep.state_dict):
        for key, value in list(store.items()):
            if isinstance(value, Tensor) and (value.storage_offset() != 0 or not value.is_contiguous()
                                              or value.untyped_storage().nbytes() != value.numel() * value.element_size()):
                fresh = value.detach().clone(memory_format=torch.contiguous_format)
                store[key] = nn.Parameter(fresh, requires_grad=False) if isinstance(value, nn.Parameter) else fresh
    return ep


def lower_program(ep: torch.export.ExportedProgram, *, metadata: dict[str, str] | None = None) -> ExecuTorchArtifact:
    """ExecuTorch's default flow on any ExportedProgram: ``to_edge_transform_and_lower`` with XNNPACK, then
    ``to_executorch`` (what :func:`lower` runs on the mobile form; the benchmark runs it on timm's models too)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _quiet(), torch.no_grad():
        constants = None
        if metadata:
            blob = json.dumps(metadata, sort_keys=True).encode()
            constants = {METADATA_METHOD: torch.frombuffer(bytearray(blob), dtype=torch.uint8)}
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], constant_methods=constants)
        partitions, outside, constant = 0, {}, {}
        program = edge.exported_program()
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op != "call_function":
                continue
            name = getattr(node.target, "__name__", str(node.target))
            if name == "executorch_call_delegate":
                partitions += 1
            elif name != "getitem":
                # Ops on constants only (dtype/dim-order copies of lifted scalars) feed a delegate without
                # splitting the graph; they are listed apart from ops on activations.
                on_constants = all(a.op == "placeholder" and a.name not in user_inputs for a in node.all_input_nodes)
                bucket = constant if on_constants and node.all_input_nodes else outside
                bucket[name] = bucket.get(name, 0) + 1
        data = edge.to_executorch().buffer
    return ExecuTorchArtifact(bytes(data), partitions, outside, constant)


def set_threads(threads: int) -> None:
    """Size ExecuTorch's (process-wide) XNNPACK thread pool."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(int(threads))


def runner(data: bytes, threads: int | None = None):
    """A callable running the ``.pte`` program ``data`` on (B, C, H, W) float tensors of its exported shape."""
    from executorch.runtime import Runtime

    if threads:
        set_threads(threads)
    program = Runtime.get().load_program(data)
    method = program.load_method("forward")
    keep = (data, program)  # the runtime reads the program from these bytes: they must outlive the method

    def run(x: Tensor) -> Tensor:
        assert keep
        return method.execute([x.detach().float().contiguous()])[0]

    return run


def read_metadata(data: bytes) -> dict[str, str] | None:
    """The :data:`METADATA_METHOD` JSON stored in a ``.pte`` program, or ``None`` when it has none."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(data)
    if METADATA_METHOD not in program.method_names:
        return None
    blob = program.load_method(METADATA_METHOD).execute([])[0].clone()
    return json.loads(bytes(blob.to(torch.uint8).tolist()).decode())
