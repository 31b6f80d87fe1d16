"""Core ML (``.mlpackage``, ML program) export through coremltools' ``torch.export`` path.

The ExportedProgram is the mobile form of :mod:`edgezoo.deploy.mobile` (no ``addcmul``, which Core ML lacks; no
attention mask ops). Core ML runs on Apple systems only, so on Linux the artifact is checked structurally:
input and output names, shapes and types, the MIL op list (conversion fails on any op Core ML lacks, so a
converted model has none), the weight size — and, when coremltools can run predictions on this machine (macOS),
parity against eager PyTorch as well.

Compute precision is float16 (Core ML's default for ML programs, what the Neural Engine runs); the input and
output stay float32. The input description is stored in the package's user-defined metadata (``edgezoo.*`` keys)
and the input/output descriptions an app sees in Xcode.

``int8``: weights quantized to int8 (per-channel symmetric, coremltools' ``linear_quantize_weights``),
activations kept in float16 — activation quantization in coremltools calibrates by running the model, which
needs Core ML itself.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .export import INPUT_NAME, OUTPUT_NAME, _quiet
from .mobile import METADATA_KEY, mobile_program


@dataclass
class CoreMLCheck:
    """What the structural check of an ``.mlpackage`` found."""

    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    ops: dict[str, int] = field(repr=False)
    size_bytes: int = 0
    rel_diff: float | None = None  # set only where Core ML can run (macOS)

    def summary(self) -> str:
        io = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in {**self.inputs, **self.outputs}.items())
        return f"{io}; {sum(self.ops.values())} MIL ops of {len(self.ops)} kinds; {self.size_bytes / 1e6:.1f} MB"


def convert(model: nn.Module, example: Tensor, *, metadata: dict[str, str] | None = None, int8: bool = False):
    """A coremltools ``MLModel`` (ML program, fp16 compute) of ``model``'s mobile form at ``example``'s shape."""
    import coremltools as ct

    with _quiet(), torch.no_grad():
        ep = mobile_program(model, example)
        mlmodel = ct.convert(
            ep,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,
        )
        if int8:
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
            mlmodel = linear_quantize_weights(mlmodel, config)
    for key, value in (metadata or {}).items():
        mlmodel.user_defined_metadata[f"{METADATA_KEY}.{key}"] = str(value)
    if metadata:
        mlmodel.input_description[INPUT_NAME] = (
            f"{metadata.get('input_layout', 'NCHW')} float32 {metadata.get('input_shape', '')}: "
            f"{metadata.get('input_preprocessing', '')}, mean {metadata.get('input_mean')}, std {metadata.get('input_std')}"
        )
        mlmodel.output_description[OUTPUT_NAME] = metadata.get("output", "logits")
        if metadata.get("model"):
            mlmodel.short_description = f"edgezoo {metadata['model']}"
    return mlmodel


def save(mlmodel, path: str | os.PathLike) -> Path:
    """Write the package directory atomically: saved next to ``path`` under a temporary name, then renamed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    try:
        staged = tmp / path.name
        mlmodel.save(str(staged))
        old = None
        if path.exists():
            old = tmp / "previous"
            os.replace(path, old)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``edgezoo.*`` user-defined metadata of a saved ``.mlpackage`` (keys without the prefix)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    prefix = f"{METADATA_KEY}."
    return {k[len(prefix):]: v for k, v in spec.description.metadata.userDefined.items() if k.startswith(prefix)}


def _shape(feature) -> list[int]:
    return [int(d) for d in feature.type.multiArrayType.shape]


def check(path: str | os.PathLike, example: Tensor | None = None, expected: Tensor | None = None) -> CoreMLCheck:
    """Structural check of a saved package, plus parity against ``expected`` where Core ML can predict (macOS)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    ops: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    result = CoreMLCheck(
        inputs={f.name: _shape(f) for f in spec.description.input},
        outputs={f.name: _shape(f) for f in spec.description.output},
        ops=ops,
        size_bytes=size,
    )
    if sys.platform == "darwin" and example is not None and expected is not None:
        from .export import rel_diff

        model = ct.models.MLModel(str(path))
        got = model.predict({INPUT_NAME: example.numpy()})[OUTPUT_NAME]
        result.rel_diff = rel_diff(torch.as_tensor(got), expected)
    return result
