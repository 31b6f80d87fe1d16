"""Deployment: BN folding, the fastest inference engine per model, export with parity checks, int8 quantization.

ONNX Runtime and OpenVINO are optional (``pip install 'edgezoo[export]'``) and imported only when used; so are the
phone runtimes (``pip install 'edgezoo[mobile]'``): ``export_model(format="tflite"|"executorch"|"coreml")``, see
:mod:`edgezoo.deploy.mobile_export` and the per-runtime modules ``litert``, ``executorch``, ``coreml``.
"""
from .export import FORMATS, ExportResult, export_model
from .fuse import ChannelAffine, FuseReport, fold_bn, fuse, remaining_batchnorms
from .optimize import BACKENDS, OptimizedModel, available_backends, optimize
from .precision import PRECISIONS, PrecisionEngine, load_optimized, optimize_precision
from .quantize import QuantizedModel, digits_tensors, quantize_int8

__all__ = [
    "BACKENDS",
    "FORMATS",
    "ChannelAffine",
    "ExportResult",
    "FuseReport",
    "OptimizedModel",
    "PRECISIONS",
    "PrecisionEngine",
    "QuantizedModel",
    "available_backends",
    "digits_tensors",
    "export_model",
    "fold_bn",
    "fuse",
    "load_optimized",
    "optimize",
    "optimize_precision",
    "quantize_int8",
    "remaining_batchnorms",
]
