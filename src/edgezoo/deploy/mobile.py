"""What LiteRT, ExecuTorch and Core ML exports share: the mobile deploy form, the graph rewrites, input metadata.

Every phone runtime here starts from a ``torch.export`` graph of the BN-folded model (:func:`fuse`). Left as they
are, a few aten ops in edgezoo's graphs fall outside what XNNPACK (the CPU backend of ExecuTorch and LiteRT)
accepts, and each one splits the model into another delegated partition with a slow portable kernel between:

* ``layer_norm`` and every ``mean`` that is not a 4-D spatial mean with ``keepdim`` (XNNPACK's mean is a global
  average pool): rewritten as views around a 4-D spatial mean, which is the same sum in the same order;
* ``scaled_dot_product_attention``: its generic decomposition guards fully masked rows with
  ``any``/``logical_not``/``where``/``full_like``; without a mask none can occur, so it becomes
  ``softmax(q k^T * scale) v`` with the scale applied as a tensor multiply;
* ``addcmul`` (ChannelAffine, channel LayerNorm affine): Core ML has no such op; ``a + b * c``;
* ``pow(x, 2)`` as ``x * x`` and the L2 norm of XCA's ``F.normalize`` through the mean above;
* Mobile MQA's single K/V head broadcast over the query heads (``unsqueeze``/``expand``) is replaced by folding
  the heads into the query rows (``mobile_form()`` of :class:`~edgezoo.layers.mobile_mqa.MobileMQA`); for LiteRT
  (:func:`litert_form`) the heads are the matmul batch instead, against per-head copies of K and V;
* for LiteRT int8, h-swish and h-sigmoid become ``mul``/``add``/``relu6`` (:func:`int8_activations`): the
  delegate has no int8 ``HARD_SWISH``;
* EdgeNeXt's Fourier position encoding, a function of the grid size only, is evaluated once for the export size
  and stored as a buffer (:func:`freeze_fixed_size`), so ``arange``/``sin``/``cos``/``floor_divide`` leave the
  graph.

The rewrites are exact reformulations: :func:`mobile_program` outputs equal the eager model's to float rounding,
which the per-runtime exports check on the artifact anyway.
"""
from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .export import INPUT_NAME, MOBILE_FORMATS, OUTPUT_NAME, _quiet
from .fuse import fuse

SUFFIX = {"tflite": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}
# import name -> what provides it; the extra that installs every one of them
_RUNTIME_MODULES = {
    "tflite": ("litert_torch", "ai_edge_litert"),
    "executorch": ("executorch.exir", "executorch.runtime"),
    "coreml": ("coremltools",),
}
MOBILE_EXTRA = "mobile"
METADATA_KEY = "edgezoo"

aten = torch.ops.aten


def runtime_missing(format: str) -> str | None:
    """Why ``format`` cannot be exported here (the missing module and how to install it), or ``None``."""
    import logging
    import warnings

    # The toolchains' imports log deprecation notices (torchao registers pytree constants); a user needs none.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module in _RUNTIME_MODULES[format]:
                try:
                    importlib.import_module(module)
                except ImportError:
                    return (f"{module} is needed for --format {format}; install it with: "
                            f"pip install 'edgezoo[{MOBILE_EXTRA}]'")
    finally:
        pytree_log.setLevel(level)
    return None


def require_runtime(format: str) -> None:
    """Raise ``ImportError`` with the install command when ``format``'s toolchain is absent."""
    if format not in MOBILE_FORMATS:
        raise ValueError(f"format must be one of {list(MOBILE_FORMATS)}, got {format!r}")
    why = runtime_missing(format)
    if why:
        raise ImportError(why)


# --- metadata ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """How an app must feed the artifact: NCHW float32 RGB scaled to [0, 1], then ``(x - mean) / std``."""

    shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"
    classes: tuple[str, ...] | None = None
    model: str | None = None

    def as_dict(self) -> dict[str, str]:
        meta = {
            "model": self.model or "",
            "input_name": INPUT_NAME,
            "input_layout": self.layout,
            "input_shape": "x".join(str(d) for d in self.shape),
            "input_dtype": "float32",
            "input_resolution": f"{self.shape[-2]}x{self.shape[-1]}",
            "input_preprocessing": "RGB scaled to [0, 1], then (x - mean) / std per channel",
            "input_mean": json.dumps([round(float(m), 6) for m in self.mean]),
            "input_std": json.dumps([round(float(s), 6) for s in self.std]),
            "output_name": OUTPUT_NAME,
            "output": "logits (apply softmax for probabilities)",
        }
        if self.classes:
            meta["classes"] = json.dumps(list(self.classes))
        return meta


def input_spec(model: nn.Module, example: Tensor, *, mean=None, std=None, classes=None, name=None) -> InputSpec:
    """The :class:`InputSpec` of ``model`` at ``example``'s shape; mean/std default to its ``default_cfg``."""
    cfg = getattr(model, "default_cfg", None) or {}
    mean = tuple(mean if mean is not None else cfg.get("mean", (0.0, 0.0, 0.0)))
    std = tuple(std if std is not None else cfg.get("std", (1.0, 1.0, 1.0)))
    name = name or cfg.get("architecture") or getattr(model, "model_name", None)
    return InputSpec(tuple(example.shape), mean, std, classes=tuple(classes) if classes else None, model=name)


# --- the mobile deploy form ----------------------------------------------------------------------------------------
def freeze_fixed_size(model: nn.Module, example: Tensor) -> list[str]:
    """Replace every module with a ``fixed_size_form(*args)`` by that form for the arguments it gets at ``example``.

    Such modules compute from shapes only (EdgeNeXt's position encoding); at a fixed export size their output is a
    constant. Returns the names of the modules replaced.
    """
    seen: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if callable(getattr(mod, "fixed_size_form", None)):
            hooks.append(mod.register_forward_pre_hook(lambda m, args, n=name: seen.setdefault(n, args)))
    if not hooks:
        return []
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name, args in seen.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).fixed_size_form(*args))
    return list(seen)


def _apply_mobile_forms(module: nn.Module, done: list[str], prefix: str = "") -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        form = getattr(child, "mobile_form", None)
        if callable(form):
            setattr(module, child_name, form().eval())
            done.append(name)
        else:
            _apply_mobile_forms(child, done, name)


def mobile_form(model: nn.Module, example: Tensor) -> nn.Module:
    """BN-folded inference copy of ``model`` (:func:`fuse`) for phone runtimes at ``example``'s size.

    On top of :func:`fuse`'s inference forms, modules offering ``mobile_form()`` are replaced by it (Mobile MQA
    with its heads folded, which needs no broadcast) and shape-only modules are frozen (:func:`freeze_fixed_size`).
    """
    folded = fuse(model)
    _apply_mobile_forms(folded, [])
    freeze_fixed_size(folded, example)
    return folded


def without_weight_slicing(form: nn.Module) -> nn.Module:
    """Turn off ViT's class-token-only last block in ``form`` (in place), for int8.

    That block multiplies row slices of the fused qkv weight; quantized, the slice sits between the weight's
    dequantize and its matmul, so the dequantize cannot fold into XNNPACK's int8 kernel (ExecuTorch then fails
    with a missing ``dequantize_per_channel`` out-variant). The full block has no slices.
    """
    for m in form.modules():
        if getattr(m, "class_token_last_block", False):
            m.class_token_last_block = False
    return form


class _Int8HardSwish(nn.Module):
    """``hardswish(x) = (x / 6) * relu6(x + 3)`` written as separate ``mul``/``add``/``relu6`` calls, for int8.

    XNNPACK's LiteRT delegate has no int8 ``HARD_SWISH``: each one left the int8 graph for LiteRT's own kernel
    and split it into another partition. Written with ``torch.add``/``torch.mul`` the PT2E quantizer annotates
    every step (it matches ops by their source function, so an aten decomposition would stay float), and the
    order ``(x / 6) * relu6(x + 3)`` keeps LiteRT's converter from pattern-matching it back into ``HARD_SWISH``
    (it fuses ``x * relu6(x + 3) / 6``). The constants are (1, 1, 1, 1) buffers: the converter's NHWC layout pass
    refuses a quantized 0-d constant.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("three", torch.full((1, 1, 1, 1), 3.0))
        self.register_buffer("sixth", torch.full((1, 1, 1, 1), 1.0 / 6.0))

    def forward(self, x: Tensor) -> Tensor:
        return torch.mul(torch.mul(x, self.sixth), F.relu6(torch.add(x, self.three)))


class _Int8HardSigmoid(_Int8HardSwish):
    """``hardsigmoid(x) = relu6(x + 3) / 6`` with int8-annotatable ops (see :class:`_Int8HardSwish`)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.mul(F.relu6(torch.add(x, self.three)), self.sixth)


class _Int8SigmoidGELU(nn.Module):
    """``gelu(x) ≈ x * sigmoid(1.702 x)`` (Hendrycks & Gimpel's sigmoid approximation) as int8-delegable ops.

    XNNPACK's LiteRT delegate has no int8 ``GELU`` either, and the converter fuses a float GELU between a
    dequantize and a quantize back into an int8 one, so EdgeNeXt's 12 GELUs split its int8 graph into 13
    partitions. ``MUL`` and ``LOGISTIC`` are delegated in int8 (as in MobileViT's SiLU), so this form keeps one
    partition. It is an approximation (|error| < 0.021): used only for int8 artifacts, whose quantization error is
    larger; on the digits EdgeNeXt-XXS run the fp32 top-1 with it is unchanged (99.11 %).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k", torch.full((1,), 1.702))

    def forward(self, x: Tensor) -> Tensor:
        return torch.mul(x, torch.sigmoid(torch.mul(x, self.k.reshape([1] * x.dim()))))


def litert_form(form: nn.Module) -> nn.Module:
    """Switch the modules of a mobile ``form`` that have a LiteRT variant to it (in place); returns ``form``.

    Today that is Mobile MQA's ``heads_as_batch``: LiteRT's converter makes a batch-1 matmul of two activations a
    ``FULLY_CONNECTED`` that XNNPACK's LiteRT delegate refuses, so the heads become the matmul batch there.
    """
    for m in form.modules():
        if hasattr(m, "heads_as_batch"):
            m.heads_as_batch = True
    return form


def int8_activations(form: nn.Module) -> list[str]:
    """Replace ``nn.Hardswish``/``nn.Hardsigmoid``/``nn.GELU`` in ``form`` (in place) by int8-delegable compositions.

    For LiteRT int8 only: XNNPACK's fp32 kernels take ``HARD_SWISH``/``GELU`` whole (one op is faster than three),
    and ExecuTorch's XNNPACK quantizer already keeps them in one partition. GELU's form is an approximation (see
    :class:`_Int8SigmoidGELU`). Returns the names of the modules replaced.
    """
    done: list[str] = []
    for name, mod in list(form.named_modules()):
        if isinstance(mod, nn.Hardswish):
            new: nn.Module = _Int8HardSwish()
        elif isinstance(mod, nn.Hardsigmoid):
            new = _Int8HardSigmoid()
        elif isinstance(mod, nn.GELU):
            new = _Int8SigmoidGELU()
        else:
            continue
        parent, _, child = name.rpartition(".")
        owner = form.get_submodule(parent) if parent else form
        setattr(owner, child, new)
        done.append(name)
    return done


# --- graph rewrites ------------------------------------------------------------------------------------------------
def _mean_dim(x: Tensor, dim=None, keepdim: bool = False, *, dtype=None):
    rank = x.dim()
    if dtype is not None or rank == 0:
        return NotImplemented
    dims = sorted({d % rank for d in dim}) if dim else list(range(rank))
    if rank == 4 and dims == [2, 3]:
        if keepdim:
            return NotImplemented  # XNNPACK's global average pool
        return x.mean((2, 3), keepdim=True).reshape(x.shape[0], x.shape[1])
    kept = [d for d in range(rank) if d not in dims]
    order = kept + dims
    y = x if order == list(range(rank)) else x.permute(order)
    n_kept = math.prod(x.shape[d] for d in kept)
    n_red = math.prod(x.shape[d] for d in dims)
    y = y.reshape(1, n_kept, n_red, 1).mean((2, 3), keepdim=True)
    shape = [1 if d in dims else x.shape[d] for d in range(rank)] if keepdim else [x.shape[d] for d in kept]
    return y.reshape(shape)


def _layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5, cudnn_enable: bool = True):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    centred = x - x.mean(dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _native_layer_norm(x: Tensor, normalized_shape, weight, bias, eps: float):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    rstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    out = centred * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        return NotImplemented
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    # q * s with a Python float exports as mul.Tensor with a lifted constant, which XNNPACK takes (mul.Scalar not).
    scores = torch.matmul(q * s, k.transpose(-2, -1))
    return torch.matmul(scores.softmax(-1), v)


def _matmul(a: Tensor, b: Tensor):
    # aten's matmul broadcasts batch dims with expand (not delegated); equal batch dims need a plain bmm.
    if a.dim() < 3 or a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2]:
        return NotImplemented
    batch = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*batch, *out.shape[-2:])


def _expand(x: Tensor, size, *, implicit: bool = False):
    target = [x.shape[i - (len(size) - x.dim())] if s == -1 else s for i, s in enumerate(size)]
    if list(x.shape) == target:  # e.g. a class token expanded to batch 1: nothing to do
        return x.view(target)
    return NotImplemented


def _pieces(x: Tensor, sizes, dim: int) -> list[Tensor]:
    dim = dim % x.dim()
    out, start = [], 0
    for size in sizes:
        out.append(x.narrow(dim, start, size))  # slice_copy, which XNNPACK takes (split_with_sizes not)
        start += size
    return out


def _split_with_sizes(x: Tensor, split_sizes, dim: int = 0):
    return _pieces(x, list(split_sizes), dim)


def _split(x: Tensor, split_size, dim: int = 0):
    length = x.shape[dim]
    sizes = [min(split_size, length - s) for s in range(0, length, split_size)]
    return _pieces(x, sizes, dim)


def _select(x: Tensor, dim: int, index: int):
    dim = dim % x.dim()
    index = index % x.shape[dim]
    return x.narrow(dim, index, 1).reshape([s for i, s in enumerate(x.shape) if i != dim])


def _unbind(x: Tensor, dim: int = 0):
    dim = dim % x.dim()
    shape = [s for i, s in enumerate(x.shape) if i != dim]
    # narrow + reshape (slice_copy, view_copy) instead of select/squeeze, which XNNPACK does not take
    return [piece.reshape(shape) for piece in _pieces(x, [1] * x.shape[dim], dim)]


def _addcmul(x, t1, t2, *, value=1):
    prod = t1 * t2
    return x + (prod if value == 1 else prod * value)


def _pow_scalar(x, exponent):
    if exponent == 2:
        return x * x
    return NotImplemented


def _vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if ord != 2 or dtype is not None or dim is None:
        return NotImplemented
    dims = [dim] if isinstance(dim, int) else list(dim)
    n = math.prod(x.shape[d] for d in dims)
    return torch.sqrt((x * x).mean(dims, keepdim=keepdim) * float(n))


def mobile_decompositions() -> dict[Callable, Callable]:
    """The rewrites above as a ``run_decompositions`` table (a decomposition may decline with ``NotImplemented``)."""
    return {
        aten.mean.dim: _mean_dim,
        aten.layer_norm.default: _layer_norm,
        aten.native_layer_norm.default: _native_layer_norm,
        aten.scaled_dot_product_attention.default: _sdpa,
        aten.matmul.default: _matmul,
        aten.expand.default: _expand,
        aten.split_with_sizes.default: _split_with_sizes,
        aten.split.Tensor: _split,
        aten.unbind.int: _unbind,
        aten.select.int: _select,
        aten.addcmul.default: _addcmul,
        aten.pow.Tensor_Scalar: _pow_scalar,
        aten.linalg_vector_norm.default: _vector_norm,
    }


def mobile_program(model: nn.Module, example: Tensor, *, rewrite: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` at ``example``'s shape, with the mobile rewrites applied when ``rewrite``."""
    model = model.eval()
    with _quiet(), torch.no_grad():
        ep = torch.export.export(model, (example,))
        if rewrite:
            ep = ep.run_decompositions(mobile_decompositions())
    return ep


def graph_ops(ep: torch.export.ExportedProgram) -> dict[str, int]:
    """How often each op occurs in ``ep``'s graph (for reports and tests)."""
    counts: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function":
            key = getattr(node.target, "__name__", str(node.target))
            counts[key] = counts.get(key, 0) + 1
    return counts
