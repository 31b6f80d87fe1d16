"""Channel-pruned models: a zoo model with fewer channels in named layers (NetAdapt's output, Yang et al. 2018).

A pruned architecture is data: the base model's name and constructor arguments plus, per prunable *channel group*,
how many channels are kept. :func:`build_pruned` builds the base model and shrinks it, so the result is the base
model's own class — ``forward_features``, ``forward_head``, ``reset_classifier``, ``feature_info`` all work — and
needs nothing from :mod:`edgezoo.search`.

Channel groups. Removing an output channel of a conv also removes the matching channel of everything that reads
it: the following BatchNorm, a depthwise conv (whose groups shrink with it), squeeze-excite's gate, layer-scale
vectors, and the input channel of the next conv or linear. Channels tied by a residual add or a gating multiply
must go together, so all convs producing them form one group, pruned with one set of indices. The groups are
found by tracing the model with ``torch.fx`` and following channels through the ops whose channel behaviour is
known; a group touching anything else (attention reshapes, the model input or output, grouped convs) is not
prunable. A group is named after its first producing layer, e.g. ``stages.1.0.conv_pw.conv``.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPEC_FORMAT = "edgezoo-arch/1"
KIND = "pruned"

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh,
                 nn.Identity, nn.Dropout, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.LeakyReLU)
_PASS_FUNCS = {F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.gelu, F.silu, F.sigmoid, torch.sigmoid, torch.relu,
               F.dropout, F.adaptive_avg_pool2d, torch.tanh}
_PASS_METHODS = {"relu", "sigmoid", "contiguous", "clamp", "clone", "tanh", "relu_", "sigmoid_"}
_BINARY = {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul, torch.add,
           torch.mul, torch.sub, "add", "mul", "sub", "div", "add_", "mul_"}
_REDUCE = {torch.mean, torch.sum, "mean", "sum", "amax"}
_FLATTEN = {torch.flatten, "flatten"}
_RESHAPE = {"view", "reshape"}


@dataclass
class ChannelGroup:
    """Channels that must be pruned together: who produces them and who reads them."""

    name: str
    size: int
    producers: list[str] = field(default_factory=list)  # conv / linear paths whose output channels these are
    depthwise: list[str] = field(default_factory=list)  # depthwise convs running per channel (groups shrink)
    norms: list[str] = field(default_factory=list)
    params: list[tuple[str, int]] = field(default_factory=list)  # (parameter path, channel dim)
    consumers: list[str] = field(default_factory=list)  # conv / linear paths reading them as input channels
    blocked: str | None = None  # why the group is not prunable (None: it is)

    @property
    def prunable(self) -> bool:
        return self.blocked is None and bool(self.producers) and self.size > 1


class _Groups:
    """Union-find over channel groups while walking the traced graph."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.data: list[ChannelGroup] = []
        self.order: list[int] = []  # creation order, for stable naming

    def new(self, size: int, blocked: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.data.append(ChannelGroup(name="", size=size, blocked=blocked))
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def get(self, g: int) -> ChannelGroup:
        return self.data[self.find(g)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        keep, drop = min(ra, rb), max(ra, rb)
        da, db = self.data[keep], self.data[drop]
        if da.size != db.size:
            da.blocked = da.blocked or f"joins {da.size} and {db.size} channels"
        for attr in ("producers", "depthwise", "norms", "params", "consumers"):
            getattr(da, attr).extend(getattr(db, attr))
        da.blocked = da.blocked or db.blocked
        self.parent[drop] = keep
        return keep

    def block(self, g: int, why: str) -> None:
        d = self.get(g)
        d.blocked = d.blocked or why


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """All channel groups of ``model`` (prunable or not), in graph order, found at ``input_shape`` (B, C, H, W)."""
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(tuple(input_shape)))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not prunable by this tool
        raise ValueError(f"cannot trace {type(model).__name__} for channel pruning "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    finally:
        model.train(was_training)

    groups = _Groups()
    of: dict[Any, int] = {}  # fx node -> group id of its channel dim
    modules = dict(gm.named_modules())

    def inputs(node: Any) -> list[Any]:
        return [a for a in node.all_input_nodes if a in of]

    def unknown(node: Any, why: str) -> None:
        for a in inputs(node):
            groups.block(of[a], why)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            of[node] = groups.new(shape[1], blocked=why)

    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "placeholder":
            of[node] = groups.new(shape[1] if shape and len(shape) > 1 else 0, blocked="the model input")
        elif node.op == "get_attr":
            if shape is not None and len(shape) == 1:
                gid = groups.new(shape[0])
                groups.get(gid).params.append((node.target, 0))
                of[node] = gid
        elif node.op == "call_module":
            mod = modules[node.target]
            src = node.args[0] if node.args else None
            g_in = of.get(src)
            if isinstance(mod, nn.Conv2d) and g_in is not None:
                if mod.groups == 1:
                    groups.get(g_in).consumers.append(node.target)
                    gid = groups.new(mod.out_channels)
                    groups.get(gid).producers.append(node.target)
                    of[node] = gid
                elif mod.groups == mod.in_channels == mod.out_channels:
                    groups.get(g_in).depthwise.append(node.target)
                    of[node] = g_in
                else:
                    unknown(node, f"grouped conv {node.target}")
            elif isinstance(mod, nn.BatchNorm2d) and g_in is not None:
                groups.get(g_in).norms.append(node.target)
                of[node] = g_in
            elif isinstance(mod, nn.Linear) and g_in is not None and _shape(src) is not None and len(_shape(src)) == 2:
                groups.get(g_in).consumers.append(node.target)
                gid = groups.new(mod.out_features)
                groups.get(gid).producers.append(node.target)
                of[node] = gid
            elif isinstance(mod, _PASS_MODULES) and g_in is not None and shape and shape[1] == groups.get(g_in).size:
                of[node] = g_in
            elif isinstance(mod, nn.Flatten) and g_in is not None and shape and len(shape) == 2 \
                    and _shape(src) is not None and math.prod(_shape(src)[1:]) == shape[1]:
                of[node] = g_in
            elif type(mod).__name__ == "DropPath" and g_in is not None:
                of[node] = g_in
            else:
                unknown(node, f"module {node.target} ({type(mod).__name__})")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            ins = inputs(node)
            first = node.args[0] if node.args else None
            if target in _BINARY:
                if shape is None or len(shape) < 2:
                    unknown(node, f"op {target}")
                    continue
                wide, narrow, odd = [], [], False
                for a in (a for a in node.args if a in of):
                    s_a = _shape(a)
                    if s_a is not None and len(s_a) == len(shape) and s_a[1] == shape[1]:
                        wide.append(a)  # per-channel vectors arrive viewed as (1, C, 1, 1): also "wide"
                    elif s_a is not None and len(s_a) == len(shape) and s_a[1] == 1:
                        narrow.append(a)
                    else:
                        odd = True
                if odd or not wide:
                    unknown(node, f"op {getattr(target, '__name__', target)} mixes channel layouts")
                    continue
                gid = of[wide[0]]
                for a in wide[1:]:
                    gid = groups.union(gid, of[a])
                for a in narrow:
                    groups.block(of[a], "broadcast over channels")
                of[node] = gid
            elif (target in _PASS_FUNCS or target in _PASS_METHODS) and first in of \
                    and shape and len(shape) > 1 and _shape(first) and shape[1] == _shape(first)[1]:
                of[node] = of[first]
            elif target in _REDUCE and first in of and shape and _shape(first) and len(shape) >= 2 \
                    and len(_shape(first)) >= 2 and shape[1] == _shape(first)[1] and shape[0] == _shape(first)[0]:
                of[node] = of[first]
            elif target in _FLATTEN and first in of and shape and len(shape) == 2 and _shape(first) is not None \
                    and math.prod(_shape(first)[1:]) == shape[1]:
                of[node] = of[first]
            elif target in _RESHAPE and first in of and _shape(first) is not None and len(_shape(first)) == 1 \
                    and shape and len(shape) > 1 and shape[1] == _shape(first)[0]:
                of[node] = of[first]  # a per-channel vector viewed as (1, C, 1, 1)
            elif target in (getattr, "size", "dim") or (target is operator.getitem and first not in of):
                continue  # shape queries: no tensor data flows
            elif ins or (shape is not None and len(shape) >= 2):
                unknown(node, f"op {getattr(target, '__name__', target)}")
        elif node.op == "output":
            for a in inputs(node):
                groups.block(of[a], "the model output")

    roots = sorted({groups.find(g) for g in range(len(groups.parent))})
    out = []
    for r in roots:
        d = groups.data[r]
        if not d.producers and not d.depthwise and not d.consumers:
            continue
        d.name = d.producers[0] if d.producers else (d.depthwise or d.consumers)[0]
        out.append(d)
    return out


def prunable_groups(model: nn.Module, input_shape: Sequence[int]) -> dict[str, ChannelGroup]:
    """The prunable channel groups by name."""
    return {g.name: g for g in channel_groups(model, input_shape) if g.prunable}


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


@torch.no_grad()
def shrink_group(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    """Keep only channels ``keep`` (sorted indices) of ``group`` in every layer that touches it (in place)."""
    keep = keep.sort().values.long()
    k = int(keep.numel())
    for path in group.producers:
        m = _get(model, path)
        _set_param(m, "weight", m.weight.index_select(0, keep))
        if m.bias is not None:
            _set_param(m, "bias", m.bias.index_select(0, keep))
        if isinstance(m, nn.Conv2d):
            m.out_channels = k
        else:
            m.out_features = k
    for path in group.depthwise:
        m = _get(model, path)
        _set_param(m, "weight", m.weight.index_select(0, keep))
        if m.bias is not None:
            _set_param(m, "bias", m.bias.index_select(0, keep))
        m.in_channels = m.out_channels = m.groups = k
    for path in group.norms:
        m = _get(model, path)
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                _set_param(m, name, getattr(m, name).index_select(0, keep))
        m.num_features = k
    for path, dim in group.params:
        owner_path, _, name = path.rpartition(".")
        owner = _get(model, owner_path) if owner_path else model
        _set_param(owner, name, getattr(owner, name).index_select(dim, keep))
    for path in group.consumers:
        m = _get(model, path)
        _set_param(m, "weight", m.weight.index_select(1, keep))
        if isinstance(m, nn.Conv2d):
            m.in_channels = k
        else:
            m.in_features = k


def filter_importance(model: nn.Module, group: ChannelGroup) -> Tensor:
    """Per-channel L2 norm of the producing filters (NetAdapt's magnitude-based choice of what to keep)."""
    total = torch.zeros(group.size)
    for path in group.producers:
        w = _get(model, path).weight.detach().float()
        total += w.reshape(w.shape[0], -1).pow(2).sum(1).cpu()
    return total.sqrt()


def refresh_metadata(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Make ``num_features`` and ``feature_info`` describe the shrunk model (they are part of the model contract)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(tuple(input_shape))
            if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                pre = model.forward_head(model.forward_features(x), pre_logits=True)
                model.num_features = int(pre.shape[-1])
                if hasattr(model, "head_hidden_size"):
                    model.head_hidden_size = int(pre.shape[-1])
            info = getattr(model, "full_feature_info", None) or getattr(model, "feature_info", None)
            if info and hasattr(model, "forward_intermediates"):
                feats = model.forward_intermediates(x, list(range(len(info))))
                for entry, f in zip(info, feats):
                    entry["num_chs"] = int(f.shape[1])
    finally:
        model.train(was_training)


def prune_channels(
    model: nn.Module, channels: Mapping[str, int], input_shape: Sequence[int], *, by: str = "magnitude"
) -> nn.Module:
    """Shrink ``model`` in place to ``channels`` (group name → channels kept); returns it.

    ``by="magnitude"`` keeps the filters with the largest L2 norm (for pruning trained weights);
    ``by="first"`` keeps the first channels (for building an architecture whose weights are loaded afterwards).
    """
    if by not in ("magnitude", "first"):
        raise ValueError(f"by must be 'magnitude' or 'first', got {by!r}")
    groups = prunable_groups(model, input_shape)
    for name, k in channels.items():
        if name not in groups:
            close = ", ".join(sorted(groups)[:8])
            raise ValueError(f"channels names {name!r}, which is not a prunable channel group of this model "
                             f"(there are {len(groups)}, e.g. {close})")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= groups[name].size:
            raise ValueError(f"channels[{name!r}] must be an int in [1, {groups[name].size}], got {k!r}")
    for name, k in channels.items():
        g = groups[name]
        if k == g.size:
            continue
        keep = (filter_importance(model, g).topk(k).indices if by == "magnitude" else torch.arange(k))
        shrink_group(model, g, keep)
    refresh_metadata(model, input_shape)
    return model


def _probe_shape(in_chans: int, img_size: Any) -> tuple[int, int, int, int]:
    if img_size is None:
        return (1, in_chans, 64, 64)
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return (1, in_chans, max(32, int(h)), max(32, int(w)))


def check_spec(spec: Any) -> dict[str, Any]:
    """Validate the fields of a ``kind: pruned`` spec; returns it."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping, got {type(spec).__name__}")
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"spec format must be {SPEC_FORMAT!r}, got {spec.get('format')!r}")
    if spec.get("kind") != KIND:
        raise ValueError(f"spec kind must be {KIND!r} for build_pruned, got {spec.get('kind')!r}")
    if not isinstance(spec.get("base"), str):
        raise ValueError(f"spec base must be a model name, got {spec.get('base')!r}")
    if not isinstance(spec.get("base_kwargs", {}), Mapping):
        raise ValueError(f"spec base_kwargs must be a mapping, got {spec.get('base_kwargs')!r}")
    ch = spec.get("channels")
    if not isinstance(ch, Mapping) or not all(isinstance(k, str) for k in ch):
        raise ValueError(f"spec channels must map layer names to channel counts, got {ch!r}")
    return dict(spec)


def build_pruned(
    spec: Mapping[str, Any], *, num_classes: int = 1000, in_chans: int = 3, img_size: Any = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build the base model of a ``kind: pruned`` spec and shrink it to the spec's channel counts.

    ``spec``: ``{"format": "edgezoo-arch/1", "kind": "pruned", "base": name, "base_kwargs": {...},
    "channels": {group name: channels kept}}``. The result is an instance of the base model's class.
    """
    from ..registry import get_entry

    spec = check_spec(spec)
    entry = get_entry(spec["base"])
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                          drop_path_rate=float(drop_path_rate), **dict(spec.get("base_kwargs", {})))
    prune_channels(model, {str(k): v for k, v in spec["channels"].items()}, _probe_shape(in_chans, img_size),
                   by="first")
    return model


__all__ = ["ChannelGroup", "build_pruned", "channel_groups", "check_spec", "filter_importance", "prunable_groups",
           "prune_channels", "shrink_group"]
