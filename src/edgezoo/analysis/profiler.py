"""Per-layer cost profile: parameters, MACs, weight and activation bytes of every op a forward pass runs.

The MobileNet papers reason about cost in two currencies: multiply-accumulates (what compute units do) and bytes
moved (what the memory system does). MobileNetV1 (Howard et al., 2017, §3.1) counts MACs of standard vs
depthwise-separable convolutions; MobileNetV4 (Qin et al., 2024, §3) adds bytes, because on accelerators with a
high ridge point the cheap-in-MACs depthwise layers become memory-bound. :func:`profile` measures both per layer,
so :mod:`edgezoo.analysis.roofline` can turn them into latency.

How it works: a forward pass runs under a ``TorchDispatchMode`` that sees every ATen op (so functional calls such
as ``F.scaled_dot_product_attention`` or ``x @ w`` are counted, not only ``nn.Module`` leaves), while module
pre/post hooks keep a stack of the modules being executed. Ops are attributed as follows:

* inside a **leaf module** (no children: ``Conv2d``, ``BatchNorm2d``, ``Linear``, activations, ...) all ops form
  one layer; its activation traffic is the module's input plus output (the ideal of a fused kernel);
* inside ``F.scaled_dot_product_attention`` all ops form one ``attention`` layer, whatever backend runs it (the
  math decomposition on ``meta``, a fused kernel on CPU/GPU); its traffic is q, k, v and the output, as with a
  fused (flash) kernel that never materialises the score matrix;
* any other op (functional code in a non-leaf module: residual adds, reshapes that copy, token concatenation) is a
  layer of its own named ``module.path:op``; pure views move no data and are not listed.

By default the pass runs on the ``meta`` device (shapes only, no arithmetic), so even ViT-L profiles in well under
a second; weights are swapped for meta tensors with ``torch.func.functional_call`` and the model is not modified.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Layer kinds, in the order of precedence used when a leaf module runs several ops (a Linear runs a transpose view
# and an addmm: it is a "linear").
KINDS = ("conv", "dwconv", "gconv", "linear", "matmul", "attention", "norm", "pool", "copy", "elementwise")

_CONV_OPS = {aten.convolution, aten._convolution, aten.cudnn_convolution, aten._slow_conv2d_forward,
             aten.mkldnn_convolution, aten.convolution_overrideable}
_MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
_SDPA_OPS = {aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
             aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
             aten._scaled_dot_product_fused_attention_overrideable}
_NORM_OPS = {aten.native_batch_norm, aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
             aten.native_layer_norm, aten.native_group_norm, aten.batch_norm, aten.layer_norm, aten.group_norm,
             aten.rms_norm, aten._fused_rms_norm}
_POOL_OPS = {aten.avg_pool2d, aten.max_pool2d, aten.max_pool2d_with_indices, aten.adaptive_avg_pool2d,
             aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d, aten.mean, aten.sum, aten.amax}
_COPY_OPS = {aten.clone, aten.cat, aten.copy_, aten._to_copy, aten.constant_pad_nd, aten.stack, aten.repeat,
             aten.index_select, aten.im2col, aten.col2im, aten.upsample_bilinear2d, aten.upsample_nearest2d,
             aten.reflection_pad2d, aten.replication_pad2d, aten.roll, aten.contiguous}
# Ops that only build a new view of existing memory (or ask a question about it): no data moves.
_VIEW_OPS = {aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.permute, aten.expand,
             aten.unsqueeze, aten.squeeze, aten.slice, aten.select, aten.split, aten.split_with_sizes, aten.unbind,
             aten.chunk, aten.alias, aten.detach, aten.as_strided, aten.flatten, aten.unflatten, aten.narrow,
             aten.lift_fresh, aten.view_as, aten.expand_as, aten.diagonal, aten.unfold}
_IGNORED_OPS = {aten.size, aten.sym_size, aten.stride, aten.sym_stride, aten.numel, aten.sym_numel, aten.dim,
                aten.is_contiguous, aten.sym_is_contiguous, aten.storage_offset, aten.sym_storage_offset,
                aten.empty, aten.empty_like, aten.empty_strided, aten.zeros, aten.ones, aten.full, aten.arange,
                aten.randn, aten.rand, aten.scalar_tensor, aten._local_scalar_dense, aten.is_same_size,
                aten.is_non_overlapping_and_dense, aten.is_strides_like_format}


@dataclass(frozen=True)
class ConvGeometry:
    """What a convolution layer was: enough to redo the MobileNetV1 cost arithmetic on it."""

    in_chs: int
    out_chs: int
    kernel: tuple[int, ...]
    groups: int
    in_hw: tuple[int, ...]
    out_hw: tuple[int, ...]

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_chs

    @property
    def is_pointwise(self) -> bool:
        return self.groups == 1 and all(k == 1 for k in self.kernel)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer (a leaf module call, an attention call, or a functional op).

    ``macs`` counts multiply-accumulates of convolutions, matrix products and attention (bias adds and
    elementwise work excluded, as ``torch.utils.flop_counter`` does); ``elementwise`` counts output elements of
    all other arithmetic (norms, activations, adds, pooling), the work a vector unit does. Bytes assume each
    input and output crosses memory once, at the profiled dtype.
    """

    name: str
    type: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    elementwise: int
    ops: int
    conv: ConvGeometry | None = None

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """MACs per byte moved: the quantity compared against a device's ridge point."""
        return self.macs / self.bytes if self.bytes else math.inf if self.macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape)
        d["arithmetic_intensity"] = self.arithmetic_intensity if math.isfinite(self.arithmetic_intensity) else None
        return d


@dataclass(frozen=True)
class Profile:
    """Per-layer costs of one forward pass plus totals. ``params`` counts each parameter once (shared weights
    read twice count twice in ``weight_bytes``, which is traffic, not storage)."""

    layers: tuple[LayerCost, ...]
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    params: int
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers)

    @property
    def activation_bytes(self) -> int:
        return sum(layer.activation_bytes for layer in self.layers)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    @property
    def elementwise(self) -> int:
        return sum(layer.elementwise for layer in self.layers)

    @property
    def arithmetic_intensity(self) -> float:
        return self.macs / self.bytes if self.bytes else 0.0

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Totals per layer kind (``conv``, ``dwconv``, ``linear``, ``attention``, ``norm``, ...)."""
        out: dict[str, dict[str, int]] = {}
        for layer in self.layers:
            row = out.setdefault(layer.kind, dict(layers=0, macs=0, bytes=0, elementwise=0))
            row["layers"] += 1
            row["macs"] += layer.macs
            row["bytes"] += layer.bytes
            row["elementwise"] += layer.elementwise
        return out

    def top(self, n: int = 10, *, key: str = "macs") -> list[LayerCost]:
        """The ``n`` costliest layers by ``key`` (``"macs"``, ``"bytes"``, ``"params"``, ...)."""
        return sorted(self.layers, key=lambda layer: getattr(layer, key), reverse=True)[:n]

    def to_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model_name,
            input_shape=list(self.input_shape),
            dtype=str(self.dtype).removeprefix("torch."),
            params=self.params,
            macs=self.macs,
            weight_bytes=self.weight_bytes,
            activation_bytes=self.activation_bytes,
            elementwise=self.elementwise,
            layers=[layer.to_dict() for layer in self.layers],
        )


# ----------------------------------------------------------------------------------------------------------------
# MAC formulas (multiply-accumulates; a FLOP counter reports twice these)


def _conv_macs(args: Sequence[Any], out: Tensor) -> int:
    weight = args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    per_output = math.prod(weight.shape[1:])  # (C_in / groups) · kernel elements
    if transposed:
        x = args[0]
        return int(x.numel() * weight.shape[1] * math.prod(weight.shape[2:]))
    return int(out.numel() * per_output)


def _matmul_macs(func: Any, args: Sequence[Any]) -> int:
    if func in (aten.mm, aten.bmm):
        a, b = args[0], args[1]
    else:  # addmm / baddbmm: (bias, a, b)
        a, b = args[1], args[2]
    return int(a.numel() * b.shape[-1])


def sdpa_macs(q: Tensor, k: Tensor, v: Tensor) -> int:
    """MACs of softmax(q kᵀ) v: ``B·H·Lq·Lk·(D_qk + D_v)`` (the two matrix products; softmax is elementwise)."""
    batch_heads = math.prod(q.shape[:-2])
    return int(batch_heads * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1]))


# ----------------------------------------------------------------------------------------------------------------
# Recording


class _Frame:
    """An open scope that aggregates ops: a leaf module call or an attention call."""

    __slots__ = ("name", "type", "kind_hint", "module", "inputs", "macs", "elementwise", "weights", "ops", "kinds",
                 "conv", "forced_macs")

    def __init__(self, name: str, type_: str, module: nn.Module | None, inputs: Sequence[Any],
                 kind_hint: str | None = None, forced_macs: int | None = None) -> None:
        self.name = name
        self.type = type_
        self.module = module
        self.inputs = inputs
        self.kind_hint = kind_hint
        self.forced_macs = forced_macs
        self.macs = 0
        self.elementwise = 0
        self.weights: dict[int, int] = {}  # storage id -> numel
        self.ops = 0
        self.kinds: set[str] = set()
        self.conv: ConvGeometry | None = None


def _tensors(obj: Any) -> list[Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, Tensor)]


def _storage_key(t: Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


class _Recorder(TorchDispatchMode):
    def __init__(self, profiler: "_Profiler") -> None:
        super().__init__()
        self.p = profiler

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001  (torch's protocol)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.p.record(func, args, kwargs, out)
        return out


class _AttentionScope(TorchFunctionMode):
    """Turns each ``F.scaled_dot_product_attention`` call into one ``attention`` layer, whatever its backend."""

    def __init__(self, profiler: "_Profiler") -> None:
        super().__init__()
        self.p = profiler

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3] if len(args) >= 3 else (kwargs.get("query"), kwargs.get("key"), kwargs.get("value"))
            parent = self.p.module_path()
            frame = _Frame(f"{parent}:scaled_dot_product_attention" if parent else "scaled_dot_product_attention",
                           "scaled_dot_product_attention", None, [q, k, v], kind_hint="attention",
                           forced_macs=sdpa_macs(q, k, v))
            self.p.stack.append(frame)
            try:
                out = func(*args, **kwargs)
            finally:
                self.p.stack.pop()
            self.p.close(frame, out)
            return out
        return func(*args, **kwargs)


class _Profiler:
    def __init__(self, itemsize: int, weight_storages: dict[int, int], param_storages: set[int]) -> None:
        self.itemsize = itemsize
        self.weight_storages = weight_storages  # storage id -> numel of the parameter/buffer
        self.param_storages = param_storages  # the subset that holds parameters (not buffers)
        self.stack: list[_Frame | str] = []  # str entries: non-leaf module paths
        self.layers: list[LayerCost] = []

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def module_path(self) -> str:
        if not self.stack:
            return ""
        top = self.stack[-1]
        return top if isinstance(top, str) else top.name

    def nbytes(self, t: Tensor) -> int:
        size = self.itemsize if t.is_floating_point() else t.element_size()
        return int(t.numel() * size)

    def is_weight(self, t: Tensor) -> int | None:
        key = _storage_key(t)
        return key if key in self.weight_storages else None

    # -- op recording --------------------------------------------------------------------------------------------
    def record(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
        packet = func._overloadpacket
        if packet in _IGNORED_OPS:
            return
        frame = self.stack[-1] if self.stack and isinstance(self.stack[-1], _Frame) else None
        standalone = frame is None
        if standalone:
            if packet in _VIEW_OPS:
                return  # metadata only
            frame = _Frame(f"{self.module_path()}:{packet.__name__}".lstrip(":"), packet.__name__, None,
                           [a for a in _tensors((args, kwargs))])
        frame.ops += 1
        for t in _tensors((args, kwargs)):
            key = self.is_weight(t)
            if key is not None:
                frame.weights[key] = self.weight_storages[key]
        outs = _tensors(out)
        if packet in _CONV_OPS:
            frame.macs += _conv_macs(args, outs[0])
            x, w = args[0], args[1]
            groups = int(args[8]) if len(args) > 8 else 1
            geo = ConvGeometry(in_chs=int(x.shape[1]), out_chs=int(w.shape[0]), kernel=tuple(w.shape[2:]),
                               groups=groups, in_hw=tuple(x.shape[2:]), out_hw=tuple(outs[0].shape[2:]))
            frame.conv = geo
            frame.kinds.add("dwconv" if geo.is_depthwise else "gconv" if groups > 1 else "conv")
        elif packet in _MATMUL_OPS:
            frame.macs += _matmul_macs(packet, args)
            frame.kinds.add("linear" if any(self.is_weight(t) is not None for t in _tensors(args)) else "matmul")
        elif packet in _SDPA_OPS:
            if frame.forced_macs is None:
                frame.macs += sdpa_macs(args[0], args[1], args[2])
            frame.kinds.add("attention")
        elif packet in _NORM_OPS:
            frame.elementwise += outs[0].numel() if outs else 0
            frame.kinds.add("norm")
        elif packet in _POOL_OPS:
            frame.elementwise += sum(t.numel() for t in _tensors(args)[:1])
            frame.kinds.add("pool")
        elif packet in _COPY_OPS:
            frame.kinds.add("copy")
        elif packet in _VIEW_OPS:
            pass
        else:
            frame.elementwise += sum(t.numel() for t in outs)
            frame.kinds.add("elementwise")
        if standalone:
            self.close(frame, out)

    def close(self, frame: _Frame, out: Any) -> None:
        """Turn a finished frame into a :class:`LayerCost` (frames that ran no op, e.g. ``Identity``, vanish)."""
        if frame.ops == 0 and frame.forced_macs is None:
            return
        outs = _tensors(out)
        inputs = [t for t in _tensors(frame.inputs) if self.is_weight(t) is None]
        activation = sum(self.nbytes(t) for t in inputs) + sum(self.nbytes(t) for t in outs)
        if frame.kind_hint:
            kind = frame.kind_hint
        else:
            kind = next((k for k in KINDS if k in frame.kinds), "elementwise")
        numel_w = sum(frame.weights.values())
        own_params = (sum(p.numel() for p in frame.module.parameters(recurse=False))
                      if frame.module is not None else None)
        params = own_params if own_params is not None else sum(
            n for key, n in frame.weights.items() if key in self.param_storages)
        macs = frame.forced_macs if frame.forced_macs is not None else frame.macs
        self.layers.append(LayerCost(
            name=frame.name,
            type=frame.type,
            kind=kind,
            output_shape=tuple(outs[0].shape) if outs else (),
            params=int(params),
            macs=int(macs),
            weight_bytes=int(numel_w * self.itemsize),
            activation_bytes=int(activation),
            elementwise=int(frame.elementwise),
            ops=frame.ops,
            conv=frame.conv,
        ))

    # -- module hooks --------------------------------------------------------------------------------------------
    def pre_hook(self, name: str, leaf: bool) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            if leaf and not any(isinstance(e, _Frame) for e in self.stack):
                self.stack.append(_Frame(name, type(module).__name__, module, inputs))
            else:
                self.stack.append(name)

        return hook

    def post_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            entry = self.stack.pop()
            if isinstance(entry, _Frame) and entry.module is module:
                self.close(entry, output)

        return hook


def _resolve_shape(input_shape: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of ints such as (1, 3, 224, 224), got {input_shape!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive ints such as (1, 3, 224, 224), got {input_shape!r}")
    return shape


def profile(
    model: nn.Module,
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    *,
    device: str | torch.device = "meta",
    name: str = "",
) -> Profile:
    """Profile one forward pass of ``model`` on an input of ``input_shape``, batch included (``(1, 3, 224, 224)``).

    ``dtype`` sets the bytes per element of weights and activations (e.g. ``torch.int8`` for an int8 deployment,
    ``torch.float16`` for a GPU); the pass itself runs in float32 on ``device`` (``"meta"``: shapes only, fast).
    The model is run in eval mode (BatchNorm uses running statistics, dropout is off) and is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    shape = _resolve_shape(input_shape)
    itemsize = dtype.itemsize
    device = torch.device(device)

    # Stand-in weights on the profiling device (the model's own tensors are untouched).
    state: dict[str, Tensor] = {}
    for key, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t.device == device:
            state[key] = t
        else:
            float_dtype = torch.float32 if t.is_floating_point() else t.dtype
            state[key] = torch.empty(t.shape, dtype=float_dtype, device=device)
    param_keys = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    weight_storages: dict[int, int] = {}
    param_storages: set[int] = set()
    for key, t in state.items():
        s = _storage_key(t)
        if s is not None:
            weight_storages[s] = t.numel()
            if key in param_keys:
                param_storages.add(s)

    prof = _Profiler(itemsize, weight_storages, param_storages)
    handles = []
    for mod_name, module in model.named_modules():
        leaf = next(iter(module.children()), None) is None
        handles.append(module.register_forward_pre_hook(prof.pre_hook(mod_name, leaf)))
        handles.append(module.register_forward_hook(prof.post_hook(mod_name)))
    was_training = model.training
    model.eval()
    x = torch.zeros(shape, device=device) if device.type != "meta" else torch.empty(shape, device=device)
    try:
        with torch.no_grad(), _AttentionScope(prof), _Recorder(prof):
            torch.func.functional_call(model, state, (x,), tie_weights=True, strict=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Profile(layers=tuple(prof.layers), input_shape=shape, dtype=dtype, params=params, model_name=name)
