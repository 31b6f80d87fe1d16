"""Precision as a deployment decision: int8 and bf16 engines behind an accuracy guard.

In fp32 :func:`~edgezoo.deploy.optimize.optimize` can at best match the engines a user could call by hand; the
speed an edge CPU really offers comes from lower precision. Lower precision also costs accuracy, and how much
depends on the model, the calibration data and the engine, so nothing here is assumed: every candidate is built,
its held-out top-1 is measured on labelled images (``val``), candidates losing more than ``max_drop`` points
against the fp32 model are discarded (with the reason recorded), and the fastest survivor is kept.

int8 candidates (post-training static quantization, Jacob et al. 2018; weights per output channel, activations
per tensor, ranges from ``calib``):

* ``int8/openvino-nncf`` — OpenVINO's own flow: NNCF inserts FakeQuantize nodes where OpenVINO's low-precision
  transformations fuse them (attention and MLP models get ``model_type=TRANSFORMER``, which quantizes the MatMuls
  and keeps Softmax / LayerNorm / GELU in float) and corrects biases shifted by rounding; on the graph read from
  the ONNX export it leaves depthwise convolutions in float (MobileNetV3: 43 of 54 layers in int8). A second
  candidate, ``int8/openvino-nncf-converted``, runs NNCF on ``openvino.convert_model``'s graph of the same folded
  module, where it quantizes every layer (MobileNetV2-1.0: 53/53 instead of 36/53, 1.55 vs 2.30 ms) — at some
  cost in accuracy on small models, which the guard weighs;
* ``int8/onnxruntime-qdq`` and ``int8/openvino-qdq`` — ONNX Runtime's static QDQ model (LayerNorm kept in float,
  see :mod:`edgezoo.deploy.quantize`), run by ONNX Runtime and by OpenVINO. OpenVINO reads every export with
  h-swish / h-sigmoid written out (:func:`~edgezoo.deploy.fuse.openvino_forms`), which it fuses into the
  convolutions: MobileNetV3's QDQ model then runs all 54 layers in int8 with 2 reorders instead of 58.
* ``int8/pt2e`` (only when asked for, like ``compile``: it compiles for tens of seconds) — PyTorch's pt2e flow
  with ``X86InductorQuantizer``, lowered by Inductor to oneDNN int8 kernels, for the eager/compiled path.

bf16 candidates, only where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in its flags; elsewhere bf16
is emulated and slower, so it is refused with that reason instead of silently measured):
``bf16/openvino`` (``INFERENCE_PRECISION_HINT=bf16``) and ``bf16/eager`` (``torch.autocast`` bf16 on CPU).

The fp32 engine :func:`optimize` picks is always measured alongside as the reference, and is what
``precision="auto"`` keeps when no lower-precision candidate survives the guard.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..devices import cpu_flags
from .export import onnx_bytes, require
from .fuse import fuse, openvino_forms
from .quantize import _ov_request_runner, _per_image

PRECISIONS = ("fp32", "bf16", "int8", "auto")
INT8_ENGINES = ("openvino-nncf", "onnxruntime-qdq", "openvino-qdq", "pt2e")
AUTO_INT8_ENGINES = ("openvino-nncf", "onnxruntime-qdq", "openvino-qdq")  # pt2e compiles for long: opt-in
BF16_ENGINES = ("openvino", "eager")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
MIN_CALIBRATION_IMAGES = 16  # fewer gives activation ranges from a handful of images: meaningless
MAX_CALIBRATION_IMAGES = 300
DEFAULT_MAX_DROP = 0.5
BF16_FLOAT_SUFFIX = "+bf16"  # an int8 OpenVINO model whose float layers run in bf16 (INFERENCE_PRECISION_HINT)
PINNED_SUFFIX = "/pinned"  # a candidate run by OpenVINO with ENABLE_CPU_PINNING (e.g. "int8/openvino-nncf/pinned")
SLOW_FACTOR = 10.0  # candidates this many times slower than fp32 in a first timing are dropped before the guard
Runner = Callable[[Tensor], Tensor]


# --- the CPU (flags read by edgezoo.devices.cpu_flags) ----------------------------------------------------------------
def bf16_support(flags: set[str] | None = None) -> tuple[bool, str]:
    """``(native, why)``: whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    have = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    if have:
        return True, "native bf16: " + ", ".join(have)
    if not flags:
        return False, "cannot read this CPU's feature flags (/proc/cpuinfo), so native bf16 is unknown"
    return False, "this CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated in fp32 and be slower"


def has_vnni(flags: set[str] | None = None) -> bool:
    """Whether u8×s8 dot products accumulate in 32 bits (AVX512-VNNI / AVX-VNNI / AMX-INT8): no 7-bit weights needed."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


# --- results -----------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One engine that was tried: what it measured and what became of it."""

    name: str  # e.g. "int8/openvino-nncf", "bf16/openvino", "fp32/openvino/pinned"
    precision: str
    backend: str  # the runtime: eager, compile, onnxruntime, openvino
    latency_ms: float | None = None
    top1: float | None = None
    agreement: float | None = None  # percent of held-out images with the fp32 model's top-1 class
    int8_layers: str = ""  # OpenVINO engines: how many conv / FC / MatMul layers execute in int8 (see below)
    status: str = "pending"  # chosen | kept | discarded | failed | skipped
    reason: str = ""


@dataclass
class PrecisionEngine:
    """Callable engine returned by :func:`optimize_precision` (and ``optimize(..., precision=...)``).

    ``backend`` / ``precision`` / ``variant`` name what runs; ``timings_ms`` and ``accuracy`` hold the median
    latency and held-out top-1 of every candidate measured (``accuracy`` is empty without ``val``);
    ``candidates`` has every candidate with its status and the reason it was discarded or skipped; ``reason``
    says why this one was chosen. Fixed-shape engines run a batch one image at a time.
    """

    backend: str
    precision: str
    variant: str
    timings_ms: dict[str, float]
    accuracy: dict[str, float]
    fp32_top1: float | None
    max_drop: float | None
    candidates: list[Candidate]
    reason: str
    input_shape: tuple[int, ...]
    threads: int
    # OpenVINO winners: the compile settings measured ({"INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING"}); else {}
    openvino_config: dict[str, Any] = field(default_factory=dict)
    _runner: Runner = field(repr=False, default=None)
    _artifacts: dict[str, bytes] = field(repr=False, default_factory=dict)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(f"this engine was built for (B, {', '.join(map(str, self.input_shape[1:]))}) inputs, "
                             f"got {tuple(x.shape)}")
        return self._runner(x)

    def report(self) -> dict[str, Any]:
        """Everything measured, as plain JSON-able data (what ``save`` writes to ``report.json``)."""
        return {
            "chosen": self.variant, "backend": self.backend, "precision": self.precision, "reason": self.reason,
            "input_shape": list(self.input_shape), "threads": self.threads, "max_drop": self.max_drop,
            "fp32_top1": self.fp32_top1, "candidates": [asdict(c) for c in self.candidates],
            "artifacts": sorted(self._artifacts), "cpu_bf16": bf16_support()[1], "cpu_vnni": has_vnni(),
            # the OpenVINO compile settings the winner was measured with: compile the artifact the same way
            "openvino_config": self.openvino_config,
        }

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write the deployable artifact(s) of the chosen engine and ``report.json`` into ``out_dir``.

        int8 from NNCF: ``model_int8.xml`` + ``.bin`` (OpenVINO IR); int8 QDQ: ``model_int8.onnx``; fp32 and bf16:
        ``model.onnx`` (bf16 is a runtime setting: load it with ``INFERENCE_PRECISION_HINT=bf16`` or autocast).
        """
        from ..checkpoint import atomic_write_bytes

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self._artifacts.items():
            atomic_write_bytes(out / name, data)
            written.append(out / name)
        atomic_write_bytes(out / "report.json", (json.dumps(self.report(), indent=2) + "\n").encode())
        written.append(out / "report.json")
        return written


def load_optimized(path: str | os.PathLike, *, threads: int | None = None) -> PrecisionEngine:
    """The engine that :meth:`PrecisionEngine.save` (``edgezoo optimize --out DIR``) wrote, ready to run.

    The artifact is compiled the way ``optimize`` measured it: ONNX Runtime with the same session options, OpenVINO
    with the recorded ``openvino_config`` (thread pinning, inference precision). Without that, an OpenVINO int8
    winner measured pinned or with bf16 float layers would run as another engine than the one that was chosen.
    ``threads`` defaults to the count it was optimized with. The report's measurements come back unchanged
    (``timings_ms``, ``accuracy``, ``candidates``); a PyTorch (eager / compile) winner has no file artifact and is
    refused with what to do instead.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    folder = Path(path)
    report_file = folder / "report.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"path {str(folder)!r} is not a folder written by `edgezoo optimize --out`")
    if not report_file.is_file():
        raise FileNotFoundError(f"{str(report_file)!r} is missing: path must be a folder written by "
                                "`edgezoo optimize --out` (or PrecisionEngine.save)")
    try:
        rep = json.loads(report_file.read_text())
        backend, precision, variant = str(rep["backend"]), str(rep["precision"]), str(rep["chosen"])
        input_shape = tuple(int(v) for v in rep["input_shape"])
        names = [str(a) for a in rep["artifacts"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{str(report_file)!r} is not an `edgezoo optimize` report ({type(exc).__name__}: {exc})") \
            from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(folder)!r} lacks {', '.join(missing)} named in its report.json")
    threads = int(threads or rep.get("threads") or torch.get_num_threads())
    files = {n: (folder / n).read_bytes() for n in names}
    onnx_name = next((n for n in ("model_int8.onnx", "model.onnx") if n in files), None)
    # the same runners optimize_precision builds its candidates with (any ONNX model runs through _ort_int8)
    if backend == "onnxruntime" and onnx_name is not None:
        from .quantize import _ort_int8

        runner = _ort_int8(files[onnx_name], threads)
    elif backend == "openvino" and ("model_int8.xml" in files or onnx_name is not None):
        ov = require("openvino")
        model_file = "model_int8.xml" if "model_int8.xml" in files else onnx_name
        cfg = rep.get("openvino_config") or {}
        runner = _ov_runner(ov.Core().read_model(str(folder / model_file)), threads,
                            pinned=bool(cfg.get("ENABLE_CPU_PINNING", False)),
                            precision_hint=str(cfg.get("INFERENCE_PRECISION_HINT", "f32")))
    else:
        raise ValueError(f"{str(folder)!r}: the chosen engine {variant!r} runs in {backend!r}, which has no file "
                         "artifact to load; build it with edgezoo.create_model(...) and edgezoo.deploy.optimize, "
                         "or rerun `edgezoo optimize` with --precision int8 / fp32")
    fields = set(Candidate.__dataclass_fields__)
    candidates = [Candidate(**{k: v for k, v in c.items() if k in fields}) for c in rep.get("candidates", [])]
    return PrecisionEngine(
        backend=backend, precision=precision, variant=variant,
        timings_ms={c.name: c.latency_ms for c in candidates if c.latency_ms is not None},
        accuracy={c.name: c.top1 for c in candidates if c.top1 is not None}, fp32_top1=rep.get("fp32_top1"),
        max_drop=rep.get("max_drop"), candidates=candidates, reason=str(rep.get("reason", "")),
        input_shape=input_shape, threads=threads, openvino_config=dict(rep.get("openvino_config") or {}),
        _runner=runner, _artifacts=files,
    )


# --- data: calibration images and labelled held-out images --------------------------------------------------------
def _as_images(data: Any, what: str) -> Tensor:
    """A ``(N, C, H, W)`` float tensor from a tensor, a ``(images, labels)`` pair or an iterable of batches."""
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"{what} must be (N, C, H, W) images, got a tensor of shape {tuple(data.shape)}")
        return data.detach().float()
    if isinstance(data, (str, bytes)):
        raise ValueError(f"{what} must be 'digits', a (N, C, H, W) tensor or a DataLoader of images, got {data!r}")
    if not isinstance(data, Iterable):
        raise TypeError(f"{what} must be 'digits', a (N, C, H, W) tensor or a DataLoader, got {type(data).__name__}")
    chunks = []
    for item in data:
        if item is None:  # a batch of unreadable files
            continue
        t = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{what} batches must be (B, C, H, W) tensors or (images, labels) pairs, "
                             f"got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
        chunks.append(t.detach().float())
    if not chunks:
        raise ValueError(f"{what} is empty: give at least {MIN_CALIBRATION_IMAGES} images")
    shapes = {tuple(c.shape[1:]) for c in chunks}
    if len(shapes) > 1:
        raise ValueError(f"{what} images must all have one shape, got {sorted(shapes)}")
    return torch.cat(chunks)


def _check_shape(images: Tensor, example: Tensor, what: str) -> None:
    if tuple(images.shape[1:]) != tuple(example.shape[1:]):
        c, h, w = images.shape[1:]
        ec, eh, ew = example.shape[1:]
        raise ValueError(f"{what} images are {c}x{h}x{w} (channels x height x width) but the model's example input "
                         f"is {ec}x{eh}x{ew}; preprocess them like the model's inputs")


def calibration_images(calib: Any, example: Tensor, *, model: nn.Module | None = None,
                       meta: Mapping[str, Any] | None = None, limit: int = MAX_CALIBRATION_IMAGES) -> Tensor:
    """Calibration images as one tensor, checked against ``example``'s shape and a minimum count.

    ``calib="digits"`` gives the digits *training* split with the run's own evaluation preprocessing (``meta``:
    a checkpoint's metadata; else the model's ``default_cfg`` at ``example``'s size), so calibration never sees
    the held-out images the guard measures on.
    """
    if isinstance(calib, str) and calib == "digits":
        from ..train.evaluate import run_eval_loader

        loader, _, _ = run_eval_loader("digits", meta=dict(meta) if meta else None, model=model,
                                       img_size=int(example.shape[-1]), split="train", limit=limit, batch_size=256)
        images = _as_images(loader, "calib")
    elif calib is None:
        raise ValueError("calib is required for int8: give 'digits', a (N, C, H, W) tensor or a DataLoader of "
                         f"at least {MIN_CALIBRATION_IMAGES} preprocessed images")
    else:
        images = _as_images(calib, "calib")
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"calib has {len(images)} image(s); give at least {MIN_CALIBRATION_IMAGES} "
                         "(activation ranges from fewer are not representative)")
    _check_shape(images, example, "calib")
    return images[:limit].contiguous()


def validation_set(val: Any, example: Tensor, *, model: nn.Module | None = None,
                   meta: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """Labelled held-out images ``(x, y)``: ``"digits"`` (its validation split, the run's preprocessing), an
    ``(images, labels)`` pair of tensors, or a DataLoader of such pairs."""
    if isinstance(val, str) and val == "digits":
        from ..train.evaluate import run_eval_loader

        val, _, _ = run_eval_loader("digits", meta=dict(meta) if meta else None, model=model,
                                    img_size=int(example.shape[-1]), batch_size=256)
    if isinstance(val, (tuple, list)) and len(val) == 2 and all(isinstance(v, Tensor) for v in val):
        x, y = val[0].detach().float(), val[1].detach().long()
    elif isinstance(val, Iterable) and not isinstance(val, (str, bytes, Tensor)):
        xs, ys = [], []
        for item in val:
            if item is None:
                continue
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError("val batches must be (images, labels) pairs")
            xs.append(item[0].detach().float())
            ys.append(torch.as_tensor(item[1]).long())
        if not xs:
            raise ValueError("val is empty: the accuracy guard needs labelled held-out images")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ValueError(f"val must be 'digits', an (images, labels) pair of tensors or a DataLoader of them, "
                         f"got {type(val).__name__}")
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"val must hold N images (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    _check_shape(x, example, "val")
    return x, y


# --- engines -------------------------------------------------------------------------------------------------------
def _ov_read(onnx: bytes):
    ov = require("openvino")
    with tempfile.TemporaryDirectory(prefix="edgezoo-ov-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as fh:
            fh.write(onnx)
        return ov.Core().read_model(path)


def int8_layers(compiled: Any) -> str:
    """What OpenVINO actually runs in int8: ``"42/53 conv/FC/MatMul in int8, 38 precision reorders"``.

    Read from the compiled model's runtime graph. Layers left in float between int8 ones (an h-swish or SE that
    splits the chain) show up as fewer int8 layers and more reorders (conversions between f32 and u8/i8).
    """
    heavy = int8 = reorders = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        try:
            kind, prec = rt["layerType"].astype(str), rt["runtimePrecision"].astype(str)
        except (KeyError, AttributeError, RuntimeError):
            continue
        if kind in ("Convolution", "FullyConnected", "MatMul", "Deconvolution"):
            heavy += 1
            int8 += prec in ("i8", "u8")
        elif kind == "Reorder":
            reorders += 1
    return f"{int8}/{heavy} conv/FC/MatMul in int8, {reorders} reorders"


def _ov_runner(ov_model_or_onnx: Any, threads: int, *, pinned: bool = False, precision_hint: str = "f32") -> Runner:
    from .optimize import openvino_compile

    compiled = openvino_compile(ov_model_or_onnx, threads, pinned, {"INFERENCE_PRECISION_HINT": precision_hint})
    run = _per_image(_ov_request_runner(compiled.create_infer_request()))
    run.isolate = {"kind": "openvino", "model": ov_model_or_onnx, "pinned": pinned,  # type: ignore[attr-defined]
                   "hint": precision_hint}  # what optimize.time_in_processes rebuilds in a worker
    try:
        run.int8_layers = int8_layers(compiled)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a diagnostic only
        run.int8_layers = ""  # type: ignore[attr-defined]
    return run


def _ov_ir_bytes(ov_model: Any) -> dict[str, bytes]:
    ov = require("openvino")
    with tempfile.TemporaryDirectory(prefix="edgezoo-ir-") as tmp:
        xml = os.path.join(tmp, "model_int8.xml")
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        with open(xml, "rb") as fx, open(xml[:-4] + ".bin", "rb") as fb:
            return {"model_int8.xml": fx.read(), "model_int8.bin": fb.read()}


def is_transformer_like(model: nn.Module) -> bool:
    """Token mixers (attention, LayerNorm-based MLP blocks): NNCF's TRANSFORMER patterns keep their Softmax,
    LayerNorm and GELU in float and quantize the MatMuls."""
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) or "attention" in type(m).__name__.lower():
            return True
    return False


def _ov_from_torch(module: nn.Module, example: Tensor) -> Any | None:
    """OpenVINO's own conversion of the PyTorch module (``openvino.convert_model``), or None where it fails.

    NNCF places its quantizers by matching patterns in the OpenVINO graph, and the graph read from an ONNX export
    is not the one it knows best: on MobileNetV2-1.0 at 224 px NNCF left all 17 depthwise convolutions of the
    ONNX-read graph in float (36/53 layers int8, 19 reorders, 2.30 ms) but quantized every layer of the converted
    one (53/53, 2 reorders, 1.55 ms), the placement it gets on timm's model. Quantizing every layer costs accuracy
    on some models (a 3-layer digits CNN: 93 % top-1 agreement with fp32 instead of ≥ 99 %), so this graph makes
    a second NNCF candidate next to the ONNX one rather than replacing it, and the accuracy guard decides.
    """
    try:
        ov = require("openvino")
        with torch.no_grad():
            return ov.convert_model(module, example_input=example)
    except Exception:  # noqa: BLE001 - the ONNX path still works; a conversion failure is not the user's problem
        return None


def _nncf_int8(onnx: Any, samples: Tensor, method: str, transformer: bool) -> Any:
    """NNCF post-training int8 of an OpenVINO model (or of an ONNX export given as bytes)."""
    nncf = require("nncf", "precision")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
                  "entropy": RangeEstimatorParametersSet.HISTOGRAM}
    data = nncf.Dataset([samples[i : i + 1].numpy() for i in range(len(samples))])
    import contextlib
    import io
    import logging

    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # its progress bars and INFO lines are not the user's business
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(
                _ov_read(onnx) if isinstance(onnx, bytes) else onnx, data, preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
                target_device=nncf.TargetDevice.CPU, subset_size=len(samples),
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=estimators[method]),
            )
    finally:
        nncf_log.setLevel(level)


def _pt2e_int8(folded: nn.Module, example: Tensor, samples: Tensor) -> Runner:
    """PyTorch pt2e static int8 with the x86 Inductor quantizer, compiled by Inductor (oneDNN int8 kernels)."""
    import torch._inductor.config as inductor_config

    try:  # the pt2e flow moved from torch.ao to torchao in recent PyTorch releases
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    except ImportError:
        try:
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
            import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq
        except ImportError:
            raise ImportError("int8/pt2e needs PyTorch's pt2e quantization, which this torch no longer ships: "
                              "pip install torchao") from None

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    graph = torch.export.export(folded, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(samples)):
            prepared(samples[i : i + 1])
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True
    compiled = torch.compile(converted, dynamic=False)

    def one(x: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(x)

    one(example)  # compile now

    def run(x: Tensor) -> Tensor:
        return torch.cat([one(x[i : i + 1]) for i in range(x.shape[0])])

    return run


def _eager_bf16(folded: nn.Module, channels_last: bool) -> Runner:
    model = folded.to(memory_format=torch.channels_last) if channels_last else folded

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return model(x).float()

    return run


# --- the decision ------------------------------------------------------------------------------------------------
def _top1_and_preds(run: Runner, x: Tensor, y: Tensor, batch: int = 64) -> tuple[float, Tensor]:
    with torch.inference_mode():
        preds = torch.cat([run(b).argmax(1) for b in x.split(batch)])
    return 100.0 * float((preds == y).float().mean()), preds


def optimize_precision(
    model: nn.Module,
    example_input: Tensor,
    precision: str = "auto",
    *,
    calib: Any = None,
    val: Any = None,
    max_drop: float | None = DEFAULT_MAX_DROP,
    meta: Mapping[str, Any] | None = None,
    int8_engines: Sequence[str] | None = None,
    bf16_engines: Sequence[str] | None = None,
    method: str = "minmax",
    threads: int | None = None,
    repeats: int = 15,
    block: int = 5,
    isolate: bool = True,
) -> PrecisionEngine:
    """The fastest engine for ``model`` at ``precision`` whose held-out top-1 is within ``max_drop`` points of fp32.

    ``precision``: ``"fp32"``, ``"int8"``, ``"bf16"`` or ``"auto"`` (all of them; fp32 stays when nothing lower
    survives). ``calib`` (int8): ``"digits"``, a ``(N, C, H, W)`` tensor or a DataLoader of images preprocessed
    like the model's inputs, at least :data:`MIN_CALIBRATION_IMAGES`. ``val``: labelled held-out images
    (``"digits"``, ``(x, y)`` or a DataLoader); defaults to ``"digits"`` when ``calib="digits"``. ``max_drop=None``
    turns the guard off explicitly (timing studies on untrained weights); otherwise ``val`` is required.
    ``meta``: a checkpoint's training metadata, so ``"digits"`` uses exactly that run's preprocessing.
    ``int8_engines``: subset of :data:`INT8_ENGINES` (default :data:`AUTO_INT8_ENGINES`); ``bf16_engines``:
    subset of :data:`BF16_ENGINES` (default all; empty: none). ``method``: activation
    range estimation (min-max, percentile, entropy/histogram) for both quantizers. ``isolate``: rank the
    survivors with every ONNX Runtime / OpenVINO engine in a process of its own (see
    :func:`~edgezoo.deploy.optimize.time_in_processes`), as they would run when deployed.
    """
    from .optimize import optimize, pinned_twin, time_in_processes, time_interleaved
    from .quantize import _qdq_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        raise ValueError(f"example_input must be a (B, C, H, W) tensor, got {getattr(example_input, 'shape', example_input)!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not math.isfinite(max_drop) or max_drop < 0):
        raise ValueError(f"max_drop must be a number of top-1 points >= 0 (or None: no guard), got {max_drop!r}")
    engines = list(int8_engines) if int8_engines is not None else list(AUTO_INT8_ENGINES)
    bad = [e for e in engines if e not in INT8_ENGINES]
    if bad or not engines:
        raise ValueError(f"int8_engines must be a non-empty subset of {list(INT8_ENGINES)}, got {int8_engines!r}")
    bf16_list = list(bf16_engines) if bf16_engines is not None else list(BF16_ENGINES)
    if any(e not in BF16_ENGINES for e in bf16_list) or (precision == "bf16" and not bf16_list):
        raise ValueError(f"bf16_engines must be a subset of {list(BF16_ENGINES)}, got {bf16_engines!r}")
    example = example_input.detach().float()[:1].contiguous()
    if val is None and isinstance(calib, str) and calib == "digits":
        val = "digits"
    if val is None and max_drop is not None and precision != "fp32":
        raise ValueError("val is required to guard accuracy: give 'digits', (images, labels) or a DataLoader, "
                         "or max_drop=None to skip the guard (timing only)")
    want_int8 = precision in ("int8", "auto")
    want_bf16 = precision in ("bf16", "auto") and bool(bf16_list)
    native_bf16, bf16_why = bf16_support()
    if precision == "bf16" and not native_bf16:
        raise RuntimeError(f"precision='bf16' refused: {bf16_why}")
    model = model.eval()
    calib_x = calibration_images(calib, example, model=model, meta=meta) if want_int8 else None
    val_xy = validation_set(val, example, model=model, meta=meta) if val is not None else None
    threads = int(threads or torch.get_num_threads())

    # fp32: the engine optimize() picks (the reference, and auto's fallback)
    fp32 = optimize(model, example, threads=threads, repeats=repeats, block=block, isolate=isolate)
    folded = fuse(model)
    onnx = onnx_bytes(folded, example)
    # OpenVINO engines read the export with h-swish / h-sigmoid written out (fuse.openvino_forms): it fuses those
    # into the convolutions, so MobileNetV3's int8 chain is not cut at every activation and SE gate
    ov_form = openvino_forms(folded)
    onnx_ov = onnx if ov_form is folded else onnx_bytes(ov_form, example)
    candidates: list[Candidate] = []
    runners: dict[str, Runner] = {}
    artifacts: dict[str, dict[str, bytes]] = {}
    fp32_name = f"fp32/{fp32.variant}"
    candidates.append(Candidate(fp32_name, "fp32", fp32.backend))

    def fp32_runner(x: Tensor) -> Tensor:  # fp32's engines are built for the example's batch of 1
        return fp32(x) if x.shape[0] == 1 else torch.cat([fp32(x[i : i + 1]) for i in range(x.shape[0])])

    runners[fp32_name] = fp32_runner
    built = next(iter(fp32._runners.values()), None)
    if getattr(built, "isolate", None) is not None:
        runners[fp32_name].isolate = built.isolate  # type: ignore[attr-defined]
    # the graph the fp32 engine compiled: OpenVINO's has h-swish / h-sigmoid written out (see below)
    artifacts[fp32_name] = {"model.onnx": onnx_ov if fp32.backend == "openvino" else onnx}

    def attempt(name: str, prec: str, backend: str, build: Callable[[], tuple[Runner, dict[str, bytes]]]) -> None:
        cand = Candidate(name, prec, backend)
        candidates.append(cand)
        try:
            runner, files = build()
        except ImportError as exc:
            cand.status, cand.reason = "skipped", str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - an engine that cannot build this graph is a finding, not a crash
            cand.status, cand.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            return
        runners[name], artifacts[name] = runner, files
        if prec == "int8":
            cand.int8_layers = getattr(runner, "int8_layers", "")

    if want_int8:
        samples = [calib_x[i : i + 1].numpy() for i in range(len(calib_x))]
        transformer = is_transformer_like(model)
        qdq_cache: dict[bytes, bytes] = {}

        def qdq(graph: bytes) -> bytes:
            if graph not in qdq_cache:
                qdq_cache[graph] = _qdq_model(graph, samples, method, per_channel=True, reduce_range=not has_vnni())
            return qdq_cache[graph]

        for eng in engines:
            if eng == "openvino-nncf":
                quantized: dict[str, tuple[Any, dict[str, bytes]]] = {}  # per graph: NNCF's model and its IR

                def build_nncf(name: str, graph: Any, hint: str = "f32"):
                    if name not in quantized:  # the +bf16 candidate reuses the model (only the hint differs)
                        q = _nncf_int8(graph, calib_x, method, transformer)
                        quantized[name] = q, _ov_ir_bytes(q)
                    q, ir = quantized[name]
                    return _ov_runner(q, threads, precision_hint=hint), ir

                graphs = [("int8/openvino-nncf", onnx_ov)]
                converted = _ov_from_torch(ov_form, example)  # NNCF places more int8 layers in this graph
                if converted is not None:
                    graphs.append(("int8/openvino-nncf-converted", converted))
                for name, graph in graphs:
                    attempt(name, "int8", "openvino", lambda n=name, g=graph: build_nncf(n, g))
                    # NNCF keeps some layers in float (MobileNetV3's depthwise convs); OpenVINO's own default on a
                    # bf16 CPU runs those in bf16, which made NNCF's model 1.12x faster than with f32 float layers
                    # (MobileNetV3-large, 224 px). Its accuracy is measured like any candidate's.
                    if native_bf16 and name in runners:
                        attempt(name + BF16_FLOAT_SUFFIX, "int8", "openvino",
                                lambda n=name, g=graph: build_nncf(n, g, "bf16"))
            elif eng == "onnxruntime-qdq":
                def build_ort():
                    from .quantize import _ort_int8
                    m = qdq(onnx)
                    return _ort_int8(m, threads), {"model_int8.onnx": m}
                attempt("int8/onnxruntime-qdq", "int8", "onnxruntime", build_ort)
            elif eng == "openvino-qdq":
                def build_ovq():
                    m = qdq(onnx_ov)
                    return _ov_runner(_ov_read(m), threads), {"model_int8.onnx": m}
                attempt("int8/openvino-qdq", "int8", "openvino", build_ovq)
            elif eng == "pt2e":
                attempt("int8/pt2e", "int8", "compile", lambda: (_pt2e_int8(fuse(model, deploy_forms=False), example,
                                                                            calib_x), {"model.onnx": onnx}))
    if want_bf16:
        if not native_bf16:
            candidates.append(Candidate("bf16", "bf16", "-", status="skipped", reason=bf16_why))
        else:
            if "openvino" in bf16_list:
                attempt("bf16/openvino", "bf16", "openvino",
                        lambda: (_ov_runner(_ov_read(onnx_ov), threads, precision_hint="bf16"), {"model.onnx": onnx_ov}))
            if "eager" in bf16_list:
                convs = any(isinstance(m, nn.Conv2d) for m in folded.modules())
                attempt("bf16/eager", "bf16", "eager", lambda: (_eager_bf16(fuse(model, deploy_forms=False), convs),
                                                                {"model.onnx": onnx}))

    by_name = {c.name: c for c in candidates}
    # a quick look first: a candidate several times slower than fp32 (e.g. bf16 kernels missing for depthwise
    # convs) cannot win, and measuring its accuracy would cost minutes
    import time

    quick: dict[str, float] = {}
    with torch.inference_mode():
        for name, run in runners.items():  # one warm call, then the best of two: enough to spot 10x outliers
            run(example)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                run(example)
                times.append((time.perf_counter() - t0) * 1e3)
            quick[name] = min(times)
    for name in list(runners):
        if by_name[name].precision != "fp32" and quick[name] > SLOW_FACTOR * quick[fp32_name]:
            by_name[name].status = "discarded"
            by_name[name].reason = (f"{quick[name]:.3f} ms in a first timing, over {SLOW_FACTOR:g}x fp32's "
                                    f"{quick[fp32_name]:.3f} ms: cannot win")
            by_name[name].latency_ms = quick[name]
            del runners[name]

    # the guard: held-out top-1 of every candidate against the fp32 model's
    fp32_top1 = None
    if val_xy is not None:
        x, y = val_xy
        fp32_top1, ref_preds = _top1_and_preds(model, x, y)
        for name, run in list(runners.items()):
            cand = by_name[name]
            cand.top1, preds = _top1_and_preds(run, x, y)
            cand.agreement = 100.0 * float((preds == ref_preds).float().mean())
            drop = fp32_top1 - cand.top1
            if cand.precision != "fp32" and max_drop is not None and drop > max_drop:
                cand.status = "discarded"
                cand.reason = f"top-1 {cand.top1:.2f}% is {drop:.2f} points below fp32's {fp32_top1:.2f}% (max_drop {max_drop:g})"
                del runners[name]
    elif max_drop is None:
        for name in runners:
            if by_name[name].precision != "fp32":
                by_name[name].reason = "accuracy not checked (max_drop=None)"

    # OpenVINO with its threads pinned to cores, as a timing-only twin of every lower-precision OpenVINO survivor
    # (optimize.pinned_twin: same compiled graph, so same accuracy; optimize() does the same for fp32).
    if isolate:
        for name in list(runners):
            twin = pinned_twin(runners[name])
            if by_name[name].precision == "fp32" or twin is None:
                continue
            twin_name = name + PINNED_SUFFIX
            src = by_name[name]
            cand = Candidate(twin_name, src.precision, src.backend, top1=src.top1, agreement=src.agreement,
                             int8_layers=src.int8_layers)
            candidates.append(cand)
            by_name[twin_name], runners[twin_name], artifacts[twin_name] = cand, twin, artifacts[name]

    # time the survivors together with the fp32 reference: each graph engine in its own process (as deployed;
    # in one process the engines' thread pools distort each other), else interleaved in this one
    calls = {k: (lambda r=r: r(example)) for k, r in runners.items()}
    with torch.inference_mode():
        separate = None
        if len(calls) > 1 and isolate and any(getattr(r, "isolate", None) is not None for r in runners.values()):
            separate = time_in_processes(runners, example, threads=threads, repeats=repeats, block=block)
        if separate is not None:
            timings = separate
        elif len(calls) > 1:
            # no worker could start: a pinned twin would only re-time its unpinned original here
            for name in [k for k, r in runners.items() if getattr(r, "twin_of", None) is not None]:
                del runners[name], calls[name]
                by_name[name].status, by_name[name].reason = "skipped", "pinning is only measured in worker processes"
            timings = time_interleaved(calls, repeats=repeats, block=block)
        else:  # only the fp32 reference is left: optimize() timed it already
            only = next(iter(calls))
            timings = {only: fp32.timings_ms.get(fp32.variant, quick[only])}
    for name, ms in timings.items():
        by_name[name].latency_ms = ms
    allowed = {"fp32": ("fp32",), "int8": ("int8",), "bf16": ("bf16",), "auto": ("fp32", "int8", "bf16")}[precision]
    eligible = [k for k in runners if by_name[k].precision in allowed]
    if not eligible:
        why = "; ".join(f"{c.name}: {c.reason}" for c in candidates if c.precision == precision and c.reason)
        raise RuntimeError(f"no {precision} candidate survived ({why or 'none could be built'}); "
                           "use precision='auto' to fall back to fp32, a larger max_drop, or QAT")
    best = min(eligible, key=lambda k: timings.get(k, math.inf))
    for k in runners:
        if by_name[k].status == "pending":
            by_name[k].status = "kept" if k in eligible else "reference"
    by_name[best].status = "chosen"
    chosen = by_name[best]
    lower = [c for c in candidates if c.precision != "fp32"]
    if chosen.precision == "fp32" and precision == "auto":
        if not lower or all(c.status in ("discarded", "failed", "skipped") for c in lower):
            reason = "kept fp32: no lower-precision candidate survived (" + "; ".join(
                f"{c.name}: {c.reason}" for c in lower) + ")"
        else:
            reason = f"kept fp32: it measured fastest ({timings[best]:.3f} ms)"
    else:
        ref = timings.get(fp32_name)
        speed = f", {ref / timings[best]:.2f}x fp32's {ref:.3f} ms" if ref and best != fp32_name else ""
        acc = (f"; top-1 {chosen.top1:.2f}% vs fp32 {fp32_top1:.2f}%" if chosen.top1 is not None and fp32_top1 is not None
               else "")
        reason = f"fastest {'surviving ' if precision != 'fp32' else ''}candidate: {timings[best]:.3f} ms{speed}{acc}"
    engine_backend = fp32.backend if best == fp32_name else chosen.backend
    desc = getattr(runners[best], "isolate", None) or {}
    hint = desc.get("hint") or "f32"  # optimize()'s fp32 OpenVINO engines carry no hint: they run f32
    ov_config = ({"INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": bool(desc.get("pinned"))}
                 if desc.get("kind") == "openvino" else {})
    if best.endswith(PINNED_SUFFIX) and best != fp32_name:  # the winner is a timing twin: build it for real
        runners[best] = _ov_runner(desc["model"], threads, pinned=True, precision_hint=hint)
    return PrecisionEngine(
        backend=engine_backend, precision=chosen.precision, variant=best,
        timings_ms={k: round(v, 4) for k, v in timings.items()},
        accuracy={c.name: c.top1 for c in candidates if c.top1 is not None}, fp32_top1=fp32_top1,
        max_drop=max_drop, candidates=candidates, reason=reason, input_shape=tuple(example.shape), threads=threads,
        openvino_config=ov_config, _runner=runners[best], _artifacts=artifacts[best],
    )
