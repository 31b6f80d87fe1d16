"""Latency of a candidate architecture, from three sources that share one block key.

A hardware-aware search ranks thousands of candidates, so latency must be predicted, not measured per model.
MnasNet / MobileNetV3 and NetAdapt (Yang et al., 2018, §3.2) do it with per-layer lookup tables measured on the
device; MobileNetV4 (Qin et al., 2024, §3) with the roofline model so one search serves many devices. edgezoo
offers both, plus a blend:

* ``"roofline"`` — :func:`edgezoo.analysis.roofline` per block on any :class:`~edgezoo.analysis.Hardware`
  preset (or the calibrated ``host``); no measurement at all.
* ``"table"`` — a per-block lookup table **measured on this host** in the engine :func:`edgezoo.deploy.optimize`
  would deploy with (ONNX Runtime, OpenVINO or eager PyTorch), with a fixed thread count. Each block is timed in
  isolation, minus the engine's per-call cost; a model is the sum over its blocks plus that per-call cost, measured
  once, plus a **whole-model correction** (:func:`calibrate_table`): a block timed alone keeps its weights in
  cache and copies its own input and output, and at 2+ threads pays the thread pool's split/join per op
  differently than inside a graph, so a few terms (a multiplier on the sum, a cost per block, per MB of weights
  and per MB of block input/output; per-layer costs per op kind on request) are fitted to whole models measured
  in the same engine (by default 15 zoo models kept out of the predictor benchmark's evaluation set). The table is a JSON file that names the host, CPU, engine, threads,
  library versions and measuring protocol and is rebuilt when any of them differs; keys missing at prediction time
  are measured and added. ONNX Runtime is timed with its workers' spin-waiting off (see :data:`PROTOCOL`).
* ``"corrected"`` — the roofline, with one multiplier per op kind (conv, depthwise, linear, attention, ...) and a
  per-layer cost fitted by non-negative least squares to the table: it predicts blocks the table has never seen
  and whole models of any family.

Keys: a MobileNetV4 block is keyed by its spec dataclass (``UIBSpec``, ``FusedIBSpec``, ...) with the stride it
actually runs at, its input channels, input height and width, activation and layer scale
(:class:`BlockItem`); the stem and the pooled head have keys of their own. Any other ``nn.Module`` is cut into the
modules its ``nn.Sequential`` containers run one after another (:func:`module_units`) and each is keyed by its
structure and input shape, so pruned models (NetAdapt) and the rest of the zoo use the same table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis import Hardware, LayerCost, Profile, get_hardware, profile, roofline
from ..analysis.hardware import PRESETS, cache_dir
from ..devices import cpu_name
from ..models.mobilenet_v4 import BlockSpec, MobileNetV4Config, MQASpec, UIBSpec, build_block

TABLE_FORMAT = "edgezoo-latency-table/1"
SOURCES = ("roofline", "table", "corrected")
ENGINES = ("auto", "onnxruntime", "openvino", "openvino/pinned", "eager")
# Op kinds of :mod:`edgezoo.analysis.profiler` that get their own multiplier in the corrected roofline.
FIT_KINDS = ("conv", "dwconv", "gconv", "linear", "matmul", "attention", "norm", "pool", "copy", "elementwise")


# --------------------------------------------------------------------------------------------------------------
# Keys


def _spec_text(spec: BlockSpec, stride: int) -> str:
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("repeats", "stride")}
    fields["stride"] = stride
    return f"{type(spec).__name__}(" + ",".join(f"{k}={v}" for k, v in sorted(fields.items())) + ")"


@dataclass(frozen=True)
class BlockItem:
    """One MobileNetV4 building block at one input shape: the unit every latency source prices.

    ``kind`` is ``"stem"`` (3×3/2 conv-BN-act from ``in_chs`` image channels to ``out_chs``), ``"block"`` (``spec``
    run at ``stride`` — repeats resolved) or ``"head"`` (global pool, 1×1 conv-BN-act to ``out_chs``, classifier
    to ``num_classes``). ``layer_scale`` is the layer-scale init of hybrid models (None: no layer scale).
    """

    kind: str
    in_chs: int
    height: int
    width: int
    act: str
    out_chs: int
    spec: BlockSpec | None = None
    stride: int = 1
    layer_scale: float | None = None
    num_classes: int = 0

    @property
    def key(self) -> str:
        shape = f"{self.in_chs}x{self.height}x{self.width}"
        if self.kind == "stem":
            body = f"stem(out_chs={self.out_chs})"
        elif self.kind == "head":
            body = f"head(out_chs={self.out_chs},num_classes={self.num_classes})"
        else:
            body = _spec_text(self.spec, self.stride) + ("" if self.layer_scale is None else "+ls")
        return f"mnv4:{body}@{shape}:{self.act}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.in_chs, self.height, self.width)

    @property
    def out_hw(self) -> tuple[int, int]:
        s = 2 if self.kind == "stem" else self.stride if self.kind == "block" else 1
        if self.kind == "head":
            return (1, 1)
        return (math.ceil(self.height / s), math.ceil(self.width / s))

    def build(self) -> nn.Module:
        """The block as a module (random weights: latency does not depend on them)."""
        from ..layers.conv import ConvNormAct

        if self.kind == "stem":
            return ConvNormAct(self.in_chs, self.out_chs, 3, stride=2, act=self.act)
        if self.kind == "head":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(self.in_chs, self.out_chs, 1, act=self.act),
                                 nn.Flatten(1), nn.Linear(self.out_chs, self.num_classes))
        return build_block(self.spec, self.in_chs, stride=self.stride, act=self.act,
                           layer_scale_init=self.layer_scale, drop_path=0.0)


def blocks_of_config(
    config: MobileNetV4Config, img_size: int | tuple[int, int], *, in_chans: int = 3, num_classes: int = 1000
) -> list[BlockItem]:
    """The stem, every block (repeats unrolled, strides resolved) and the head of ``config`` at ``img_size``,
    walked exactly as :class:`~edgezoo.models.mobilenet_v4.MobileNetV4` builds them."""
    if not isinstance(config, MobileNetV4Config):
        raise TypeError(f"config must be a MobileNetV4Config, got {type(config).__name__}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if isinstance(h, bool) or not isinstance(h, int) or not isinstance(w, int) or h < 1 or w < 1:
        raise ValueError(f"img_size must be a positive int or (H, W), got {img_size!r}")
    act = config.act
    items = [BlockItem(kind="stem", in_chs=in_chans, height=h, width=w, act=act, out_chs=config.stem_chs)]
    h, w = items[0].out_hw
    chs = config.stem_chs
    for stage in config.stages:
        for spec in stage:
            for repeat in range(spec.repeats):
                stride = spec.stride if repeat == 0 else 1
                item = BlockItem(kind="block", in_chs=chs, height=h, width=w, act=act, out_chs=spec.out_chs,
                                 spec=spec, stride=stride,
                                 layer_scale=config.layer_scale_init if isinstance(spec, (UIBSpec, MQASpec)) else None)
                items.append(item)
                h, w = item.out_hw
                chs = spec.out_chs
    items.append(BlockItem(kind="head", in_chs=chs, height=h, width=w, act=act, out_chs=config.head_chs,
                           num_classes=num_classes))
    return items


def _module_signature(module: nn.Module) -> str:
    """Structure of a module (types, layer shapes and plain settings such as head counts), weights excluded."""
    parts = []
    for name, m in module.named_modules():
        simple = {k: v for k, v in vars(m).items()
                  if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple))}
        parts.append(f"{name}:{type(m).__name__}({m.extra_repr()}){sorted(simple.items())}")
    return "\n".join(parts)


@dataclass
class ModuleItem:
    """A unit of an arbitrary model: a module and the input shape it runs at (see :func:`module_units`)."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            digest = hashlib.sha1((_module_signature(self.module) + repr(self.input_shape)).encode()).hexdigest()
            self.key = f"module:{type(self.module).__name__}:{digest[:20]}@{'x'.join(map(str, self.input_shape[1:]))}"

    def build(self) -> nn.Module:
        return self.module


def module_units(model: nn.Module, input_shape: Sequence[int]) -> list[ModuleItem]:
    """Cut ``model`` into the modules it runs one after another, each with its input shape.

    The model's children are taken in order, ``nn.Sequential`` containers opened (stages into blocks); a forward
    pass at ``input_shape`` records which of them run, on what shape. Functional glue between units (a class-token
    concat, a flatten) is not a unit and is not priced; that is why this is meant for convnets, where it is all but
    free. Raises ``ValueError`` when a unit runs more than once or takes something other than one tensor.
    """
    shape = tuple(int(s) for s in input_shape)
    candidates: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(path + ".", child)
            elif next(iter(child.parameters()), None) is not None or list(child.children()):
                candidates.append((path, child))

    walk("", model)
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    problems: list[str] = []
    handles = []
    for name, mod in candidates:
        def hook(m: nn.Module, args: tuple, name: str = name) -> None:
            if len(args) != 1 or not isinstance(args[0], Tensor):
                problems.append(f"{name} takes {len(args)} arguments")
                return
            seen.append((name, m, tuple(args[0].shape)))
        handles.append(mod.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    # shapes only: run on the meta device with stand-in weights (the model itself is not modified)
    state = {k: torch.empty(t.shape, dtype=t.dtype, device="meta")
             for k, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (torch.empty(shape, device="meta"),), tie_weights=True,
                                       strict=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = [n for n, _, _ in seen]
    if len(set(names)) != len(names):
        problems.append("a module runs more than once per forward")
    if problems:
        raise ValueError(f"model cannot be cut into sequential units: {problems[0]}")
    return [ModuleItem(name, m, s) for name, m, s in seen]


# --------------------------------------------------------------------------------------------------------------
# Measurement in the deployment engine


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    for pkg in ("onnxruntime", "openvino"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _check_threads(threads: Any) -> int:
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return threads


def resolve_engine(engine: str = "auto", *, threads: int | None = None, img_size: int = 224) -> str:
    """The engine to measure in: ``engine`` itself, or for ``"auto"`` the one :func:`edgezoo.deploy.optimize`
    picks for MobileNetV4-Conv-S at ``img_size`` on this host (``"onnxruntime"``, ``"openvino"``,
    ``"openvino/pinned"`` or ``"eager"``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    from ..deploy.optimize import optimize
    from ..models.mobilenet_v4 import CONV_SMALL, MobileNetV4

    model = MobileNetV4(config=CONV_SMALL, default_cfg={}, num_classes=1000).eval()
    opt = optimize(model, torch.randn(1, 3, img_size, img_size), threads=_check_threads(threads), repeats=5, block=3)
    return opt.variant


# How blocks and models are run and timed; a table measured any other way is stale (see LatencyTable.stale_reason).
# "ort-nospin": ONNX Runtime's intra-op workers do not spin-wait between ops and calls. Measured on the 2-core host
# (benchmarks/latency_additivity.py, 2 threads): with spinning, one whole model's time varied 2-3x with whatever
# else ran (MobileNetV4-Conv-M 14 -> 29 ms, ViT-S 40 -> 118 ms, while a short test ran beside it) and block sums
# missed by 40-100 %; without it the sums matched those whole models to 0-3 % (what remains, e.g. +24 % for
# MobileNetV1-0.5's layer-sized units, is systematic and left to the whole-model correction).
# "2pass-min": every item is timed in two passes with other chunk neighbours and keeps the lower (measure_items).
PROTOCOL = "interleaved-medians-2pass-min/ort-nospin"


def _ort_session(onnx: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session like :func:`edgezoo.deploy.export.ort_session`, with spin-waiting off."""
    from ..deploy.export import ort_session

    return ort_session(onnx, threads=threads, spinning=False)


def _runner(engine: str, module: nn.Module, x: Tensor, threads: int) -> Callable[[], Any]:
    from ..deploy import fuse
    from ..deploy.export import onnx_bytes
    from ..deploy.optimize import _eager_runner, _openvino_runner

    folded = fuse(module.eval())
    if engine == "eager":
        run = _eager_runner(folded, False)
    elif engine == "onnxruntime":
        sess = _ort_session(onnx_bytes(folded, x), threads)
        name = sess.get_inputs()[0].name
        feed = {name: x.detach().contiguous().numpy()}
        return lambda: sess.run(None, feed)
    elif engine in ("openvino", "openvino/pinned"):
        run = _openvino_runner(folded, x, threads, engine == "openvino/pinned")
    else:
        raise ValueError(f"engine must be one of {list(ENGINES[1:])}, got {engine!r}")
    return lambda: run(x)


class _Fixed(nn.Module):
    """The cheapest graph an engine can run (one ReLU on one number): its time is the per-call cost."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


def measure_items(
    items: Sequence[Any], *, engine: str, threads: int, chunk: int = 12, repeats: int = 7, block: int = 5,
    passes: int = 2, progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], float]:
    """Time every item (``.key``, ``.build()``, ``.input_shape``) in ``engine``: ``({key: ms}, fixed_ms)``.

    Items are timed in chunks, interleaved with each other and with the engine's cheapest graph (round-robin turns
    of ``block`` back-to-back calls, medians over ``repeats`` rounds, so load from other processes hits all alike);
    each item's time is its median minus the cheapest graph's, and ``fixed_ms`` is the median of the latter.

    The whole is done ``passes`` times, each pass in another order (so an item meets other neighbours, at another
    time) and an item keeps its lowest pass. A burst of load that lasts a whole chunk moves every median of that
    chunk, which the round-robin cannot undo; on a 2-core host such bursts put single block times 30-50 % high
    (BENCHMARKS.md, latency predictors). Load only ever adds time, so the lower pass is the undisturbed one.
    """
    from ..deploy.optimize import time_interleaved

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    fixed: list[float] = []
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise ValueError(f"passes must be a positive integer, got {passes!r}")
    uniq = list({it.key: it for it in items}.values())
    total, done = len(uniq) * passes, 0
    try:
        with torch.inference_mode(False), torch.no_grad():
            for p in range(passes):
                order = list(uniq)
                if p:  # same items, other neighbours: a deterministic shuffle per pass
                    random.Random(p).shuffle(order)
                for start in range(0, len(order), chunk):
                    part = order[start:start + chunk]
                    runners = {"__fixed__": _runner(engine, _Fixed(), torch.ones(1, 1), threads)}
                    for it in part:
                        runners[it.key] = _runner(engine, it.build(), torch.randn(it.input_shape), threads)
                    t = time_interleaved(runners, warmup=2, repeats=repeats, block=block)
                    base = t.pop("__fixed__")
                    fixed.append(base)
                    for k, v in t.items():
                        ms = max(0.0, v - base)
                        out[k] = min(out.get(k, ms), ms)
                    done += len(part)
                    if progress is not None:
                        progress(done, total)
    finally:
        torch.set_num_threads(old)
    return out, statistics.median(fixed) if fixed else 0.0


def _layers_of(item: Any) -> list[list[Any]]:
    """``[[kind, macs, bytes], ...]`` of an item's layers (shapes only, on the meta device)."""
    prof = profile(item.build(), item.input_shape)
    return [[layer.kind, int(layer.macs), int(layer.bytes)] for layer in prof.layers]


def _entry_of(item: Any, ms: float) -> dict[str, Any]:
    """A table entry: the time, the layers, and the bytes the whole-model correction needs (weights that must
    come back into cache when other blocks ran in between, and the input + output a standalone call copies)."""
    prof = profile(item.build(), item.input_shape)
    out_shape = prof.layers[-1].output_shape if prof.layers else item.input_shape
    return {"ms": ms, "layers": [[layer.kind, int(layer.macs), int(layer.bytes)] for layer in prof.layers],
            "weight_bytes": int(sum(layer.weight_bytes for layer in prof.layers)),
            "io_bytes": 4 * (math.prod(item.input_shape) + math.prod(out_shape))}


# --------------------------------------------------------------------------------------------------------------
# The table


def host_fingerprint(engine: str, threads: int) -> dict[str, Any]:
    """What a measured table is only valid for: this host, CPU, engine, thread count and library versions."""
    from .. import __version__

    return {"host": platform.node(), "cpu": cpu_name(), "engine": engine, "threads": int(threads),
            "versions": {**_versions(), "edgezoo": __version__}, "protocol": PROTOCOL}


@dataclass
class LatencyTable:
    """Measured per-block latencies (ms, per-call cost removed) plus the engine's per-call cost ``fixed_ms``."""

    meta: dict[str, Any]
    fixed_ms: float
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"ms": float, "layers": [...]}
    path: Path | None = None

    @property
    def engine(self) -> str:
        return self.meta["engine"]

    @property
    def threads(self) -> int:
        return int(self.meta["threads"])

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def ms(self, key: str) -> float:
        return float(self.entries[key]["ms"])

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, **self.meta, "fixed_ms": self.fixed_ms, "entries": self.entries}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        from ..checkpoint import atomic_write_bytes

        p = Path(path) if path is not None else self.path
        if p is None:
            raise ValueError("no path to save the latency table to")
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode())
        self.path = p
        return p

    def stale_reason(self) -> str | None:
        """Why this table does not describe this host now (None when it does)."""
        now = host_fingerprint(self.engine, self.threads)
        for k in ("host", "cpu", "versions", "protocol"):
            if self.meta.get(k) != now[k]:
                return f"{k} differs (table: {self.meta.get(k)!r}, now: {now[k]!r})"
        return None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"latency table not found: {str(p)!r}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"latency table {str(p)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"latency table {str(p)!r} is not an {TABLE_FORMAT} file")
        meta = {k: data[k] for k in ("host", "cpu", "engine", "threads", "versions", "created", "fixed_samples_ms",
                                     "correction", "protocol") if k in data}
        return cls(meta=meta, fixed_ms=float(data["fixed_ms"]), entries=dict(data["entries"]), path=p)

    @property
    def correction(self) -> dict[str, float]:
        """Fitted whole-model correction terms (see :func:`calibrate_table`); empty when never calibrated."""
        return dict(self.meta.get("correction", {}).get("coef", {}))

    def correction_ms(self, keys: Sequence[str]) -> float:
        """What running the blocks ``keys`` in one graph adds to (or saves on) the sum of their isolated times."""
        coef = self.correction
        if not coef:
            return 0.0
        feats = correction_features(self, keys)
        return sum(c * feats.get(term, 0.0) for term, c in coef.items())

    def predict_keys_ms(self, keys: Sequence[str], *, corrected: bool = True) -> float:
        """A model made of the blocks ``keys`` (repeats included): their sum + the per-call cost (+ the
        whole-model correction when the table has one and ``corrected``)."""
        total = sum(self.ms(k) for k in keys) + self.fixed_ms
        if not corrected:
            return total
        # a fitted correction may be negative; no model runs faster than the engine's empty call
        return max(self.fixed_ms, total + self.correction_ms(keys))

    def add(self, items: Iterable[Any], *, progress: Callable[[int, int], None] | None = None) -> int:
        """Measure the items whose keys are missing (same engine and threads) and add them; returns how many."""
        todo = [it for it in {it.key: it for it in items}.values() if it.key not in self.entries]
        if not todo:
            return 0
        times, fixed = measure_items(todo, engine=self.engine, threads=self.threads, progress=progress)
        for it in todo:
            self.entries[it.key] = _entry_of(it, times[it.key])
        # every measuring session re-times the per-call cost; the table keeps the median of those sessions
        samples = [*self.meta.get("fixed_samples_ms", []), fixed]
        self.meta["fixed_samples_ms"] = samples
        self.fixed_ms = statistics.median(samples)
        return len(todo)


# --------------------------------------------------------------------------------------------------------------
# Whole-model correction: what a graph pays that its blocks timed alone do not (or the other way round)

# Terms of the correction, each a feature of a model's list of blocks: "block_ms" (the blocks' summed time: a
# multiplier on it), "unit" (one cost per block boundary), "weight_mb" (weights to bring back into cache: a block
# timed alone keeps its weights cached, in a model the other blocks evict them), "io_mb" (a block's input and
# output, which a standalone call copies in and allocates, and a graph keeps in its arena) and "layer:<kind>" (one
# cost per layer of that op kind, e.g. an intra-op thread pool's split/join per parallelised op).
CORRECTION_TERMS = ("block_ms", "unit", "weight_mb", "io_mb", *(f"layer:{k}" for k in FIT_KINDS))
# Chosen by cross-validation on the predictor benchmark (BENCHMARKS.md): per-op-kind layer costs added nothing
# over these four at 1 or 2 threads once ONNX Runtime's spin-waiting is off, and made the fit less stable.
DEFAULT_CORRECTION_TERMS = ("block_ms", "unit", "weight_mb", "io_mb")
# Zoo models the table is calibrated on by default. None of them is in the predictor benchmark's evaluation set
# (benchmarks/latency_predictor.py), and together they hold every op kind the zoo uses: plain/depthwise convs (V1,
# V2, V3 with SE), UIB/MQA blocks (MobileNetV4-L), conv+attention hybrids (MobileViT-S, EdgeNeXt-XS), plain
# transformers (ViT-B/32) and token-mixing MLPs (Mixer-S/16).
CALIBRATION_MODELS: tuple[tuple[str, int], ...] = (
    ("mobilenetv1_025", 224), ("mobilenetv1_075", 224), ("mobilenetv2_050", 224), ("mobilenetv2_075", 160),
    ("mobilenetv3_small_050", 160), ("mobilenetv3_small_075", 224), ("mobilenetv3_large_075", 224),
    ("mobilenetv4_conv_large", 128), ("mobilenetv4_conv_large", 192), ("mobilenetv4_hybrid_large", 128),
    ("mobilenetv4_hybrid_large", 192), ("mobilevit_s", 192), ("edgenext_x_small", 224),
    ("vit_base_patch32_224", 224), ("mixer_s16_224", 224),
)


def _fit_kind(kind: str) -> str:
    return kind if kind in FIT_KINDS else "elementwise"


def correction_features(table: LatencyTable, keys: Sequence[str]) -> dict[str, float]:
    """The correction terms' features of a model made of the blocks ``keys`` (each key as often as it runs)."""
    feats = dict.fromkeys(CORRECTION_TERMS, 0.0)
    for key in keys:
        entry = table.entries[key]
        feats["block_ms"] += float(entry["ms"])
        feats["unit"] += 1.0
        feats["weight_mb"] += entry.get("weight_bytes", 0) / 1e6
        feats["io_mb"] += entry.get("io_bytes", 0) / 1e6
        for kind, _macs, _bytes in entry["layers"]:
            feats[f"layer:{_fit_kind(kind)}"] += 1.0
    return feats


def fit_correction(
    samples: Sequence[tuple[dict[str, float], float]], *, terms: Sequence[str] = DEFAULT_CORRECTION_TERMS,
    ridge: float = 1e-2,
) -> dict[str, float]:
    """Coefficients ``c`` so that ``measured ≈ block_ms + Σ c[t]·feature[t]`` (per-call cost already removed).

    ``samples`` are ``(features, measured_ms)`` pairs of whole models (:func:`correction_features`). The fit
    minimises *relative* error (rows weighted by 1/measured, so a 2 ms model counts as much as a 60 ms one),
    with a small ridge on standardised columns: a few calibration models must not buy a wild coefficient for a
    kind they barely contain. Terms no sample has get no coefficient.
    """
    import numpy as np

    unknown = [t for t in terms if t not in CORRECTION_TERMS]
    if unknown:
        raise ValueError(f"unknown correction term {unknown[0]!r}; allowed: {list(CORRECTION_TERMS)}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or ridge < 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    used = [t for t in terms if any(f.get(t, 0.0) for f, _ in samples)]
    if not samples or not used:
        return {}
    w = np.array([1.0 / y for _, y in samples])
    A = np.array([[f.get(t, 0.0) for t in used] for f, _ in samples]) * w[:, None]
    r = np.array([y - f["block_ms"] for f, y in samples]) * w
    scale = np.sqrt((A ** 2).mean(axis=0))
    scale[scale == 0] = 1.0
    As = A / scale
    coef = np.linalg.solve(As.T @ As + ridge * len(samples) * np.eye(len(used)), As.T @ r) / scale
    return {t: float(c) for t, c in zip(used, coef)}


def calibration_cases(
    models: Sequence[tuple[str, int]] = CALIBRATION_MODELS,
) -> list[tuple[str, nn.Module, tuple[int, ...], list[ModuleItem]]]:
    """``(name@size, model, input shape, blocks)`` for zoo models given as ``(name, resolution)`` pairs; a
    MobileNetV4 is cut into the :class:`BlockItem` s a search prices, any other model into its sequential units."""
    from ..models.mobilenet_v4 import MobileNetV4
    from ..factory import create_model

    cases = []
    for name, size in models:
        model = create_model(name, img_size=size).eval()
        shape = (1, 3, size, size)
        if isinstance(model, MobileNetV4):
            items: list[Any] = blocks_of_config(model.config, size, num_classes=model.num_classes)
        else:
            items = module_units(model, shape)
        cases.append((f"{name}@{size}", model, shape, items))
    return cases


def calibrate_table(
    table: LatencyTable,
    cases: Sequence[tuple[str, nn.Module, Sequence[int], Sequence[Any]]] | None = None,
    *,
    terms: Sequence[str] = DEFAULT_CORRECTION_TERMS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Fit the table's whole-model correction to whole models measured in its engine, and store it in the table.

    Timed alone, a block does not run as it does inside a graph: at 1 thread it starts with cold caches and pays
    its own call, at 2+ threads the engine's intra-op pool splits and joins every op, which small isolated graphs
    and whole models pay differently. ``cases`` are ``(name, model, input_shape, blocks)`` (default:
    :func:`calibration_cases`); their blocks are added to the table if missing, each whole model is timed with
    the same protocol as the blocks, and :func:`fit_correction` fits ``terms`` to the difference. The samples are
    kept in the table, so calibrating again on more models refits on all of them. Returns the coefficients.
    """
    cases = list(calibration_cases() if cases is None else cases)
    table.add([it for *_, items in cases for it in items])
    wholes = [ModuleItem(f"calibration:{name}", model, tuple(shape)) for name, model, shape, _ in cases]
    times, fixed = measure_items(wholes, engine=table.engine, threads=table.threads, chunk=6, progress=progress)
    old = table.meta.get("correction", {}).get("samples", [])
    samples = {s["name"]: s for s in old}
    for (name, _, _, items), whole in zip(cases, wholes):
        samples[name] = {"name": name, "measured_ms": times[whole.key] + fixed - table.fixed_ms,
                         "keys": [it.key for it in items]}
    fit_rows = [(correction_features(table, s["keys"]), s["measured_ms"]) for s in samples.values()
                if all(k in table for k in s["keys"]) and s["measured_ms"] > 0]
    coef = fit_correction(fit_rows, terms=terms)
    table.meta["correction"] = {"coef": coef, "terms": list(terms), "samples": list(samples.values())}
    if table.path is not None:
        table.save()
    return coef


def default_table_path(engine: str, threads: int) -> Path:
    return cache_dir() / f"latency_table_{engine.replace('/', '-')}_{threads}t.json"


def build_latency_table(
    items: Iterable[Any],
    *,
    engine: str = "auto",
    threads: int | None = None,
    out: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyTable:
    """Measure ``items`` (:class:`BlockItem` / :class:`ModuleItem`) on this host and write the table to ``out``
    (default: the cache folder, one file per engine and thread count).

    An existing table at ``out`` for the same host, CPU, engine, threads and versions is extended (only missing
    keys are measured); one for anything else is replaced.
    """
    threads = _check_threads(threads)
    engine = resolve_engine(engine, threads=threads)
    path = Path(out) if out is not None else default_table_path(engine, threads)
    table = None
    if path.is_file():
        try:
            old = LatencyTable.load(path)
            if old.stale_reason() is None and old.engine == engine and old.threads == threads:
                table = old
        except ValueError:
            table = None
    if table is None:
        table = LatencyTable(meta={**host_fingerprint(engine, threads), "created": time.strftime("%Y-%m-%d %H:%M")},
                             fixed_ms=0.0, path=path)
    table.add(list(items), progress=progress)
    table.save(path)
    return table


def default_items(img_sizes: Sequence[int] = (64, 128, 224)) -> list[BlockItem]:
    """Items of the default space until a search space provides its own: the blocks of every MobileNetV4 zoo
    config at ``img_sizes``, plus a grid of UIB variants (start/mid DW ∈ {none, 3, 5}, expansion ∈ {2, 3, 4, 6})
    at a few widths and resolutions."""
    from ..models.mobilenet_v4 import CONV_MEDIUM, CONV_SMALL, HYBRID_MEDIUM

    items: list[BlockItem] = []
    for cfg in (CONV_SMALL, CONV_MEDIUM, HYBRID_MEDIUM):
        for size in img_sizes:
            items += blocks_of_config(cfg, size, num_classes=10 if size <= 64 else 1000)
    for chs, hw in ((32, 32), (64, 16), (96, 8), (128, 4)):
        for start in (None, 3, 5):
            for mid in (None, 3, 5):
                for e in (2.0, 3.0, 4.0, 6.0):
                    spec = UIBSpec(out_chs=chs, start_dw_kernel=start, mid_dw_kernel=mid, expand_ratio=e)
                    items.append(BlockItem(kind="block", in_chs=chs, height=hw, width=hw, act="relu",
                                           out_chs=chs, spec=spec, stride=1))
    return list({it.key: it for it in items}.values())


# --------------------------------------------------------------------------------------------------------------
# Predictors


def _items_for(config: MobileNetV4Config, img_size: int, num_classes: int) -> list[BlockItem]:
    return blocks_of_config(config, img_size, num_classes=num_classes)


class _Predictor:
    source = ""
    hardware_name = ""

    def predict_items_ms(self, items: Sequence[Any]) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_ms(self, config: MobileNetV4Config, img_size: int, *, num_classes: int = 1000) -> float:
        """Predicted batch-1 latency (ms) of the MobileNetV4 ``config`` at ``img_size``."""
        return self.predict_items_ms(_items_for(config, img_size, num_classes))

    def predict_module_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        """Predicted batch-1 latency (ms) of any model, from its sequential units (:func:`module_units`; each
        unit is priced once and remembered by its key, so a search that changes one layer re-prices one unit).
        Models that cannot be cut into units are priced whole where the source allows it."""
        try:
            units = module_units(model, input_shape)
        except ValueError:
            return self.predict_whole_ms(model, input_shape)
        return self.predict_items_ms(units)

    def predict_whole_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        raise ValueError(f"the {self.source} source prices models block by block; this one cannot be cut into "
                         "sequential units")


class RooflinePredictor(_Predictor):
    source = "roofline"

    def __init__(self, hardware: Hardware) -> None:
        self.hardware = hardware
        self.hardware_name = hardware.name
        self._cache: dict[str, float] = {}

    def item_ms(self, item: Any) -> float:
        if item.key not in self._cache:
            self._cache[item.key] = roofline(profile(item.build(), item.input_shape), self.hardware).latency_ms
        return self._cache[item.key]

    def predict_items_ms(self, items: Sequence[Any]) -> float:
        return sum(self.item_ms(it) for it in items)

    def predict_whole_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        """The roofline of the whole model's profile (functional glue between blocks included)."""
        return roofline(profile(model, tuple(input_shape)), self.hardware).latency_ms


class TablePredictor(_Predictor):
    """Sum of measured block latencies plus the engine's per-call cost, plus the table's whole-model correction
    when it has been calibrated (:func:`calibrate_table`); measures (and stores) missing keys."""

    source = "table"

    def __init__(self, table: LatencyTable, *, measure_missing: bool = True, corrected: bool = True) -> None:
        self.table = table
        self.hardware_name = "host"
        self.measure_missing = measure_missing
        self.corrected = corrected  # add the table's whole-model correction (if it was calibrated)

    def predict_items_ms(self, items: Sequence[Any]) -> float:
        missing = [it for it in items if it.key not in self.table]
        if missing:
            if not self.measure_missing:
                raise ValueError(f"latency table has no entry for {len(missing)} block(s), e.g. {missing[0].key!r}")
            self.table.add(missing)
            if self.table.path is not None:
                self.table.save()
        return self.table.predict_keys_ms([it.key for it in items], corrected=self.corrected)


def _layer_times(layers: Sequence[Sequence[Any]], hardware: Hardware) -> list[tuple[str, float]]:
    """Roofline milliseconds of stored ``[kind, macs, bytes]`` layers, without the per-layer overhead term."""
    hw = dataclasses.replace(hardware, layer_overhead_s=0.0)
    prof = Profile(layers=tuple(
        LayerCost(name=str(i), type=kind, kind=kind, output_shape=(), params=0, macs=int(macs), weight_bytes=int(nb),
                  activation_bytes=0, elementwise=0, ops=1) for i, (kind, macs, nb) in enumerate(layers)
    ), input_shape=(1,), dtype=torch.float32, params=0)
    return [(lt.kind, 1e3 * lt.time_s) for lt in roofline(prof, hw).layers]


def _features(layers: Sequence[Sequence[Any]], hardware: Hardware) -> list[float]:
    feats = [0.0] * (len(FIT_KINDS) + 1)
    for kind, ms in _layer_times(layers, hardware):
        feats[FIT_KINDS.index(kind) if kind in FIT_KINDS else FIT_KINDS.index("elementwise")] += ms
    feats[-1] = float(len(layers))  # per-layer cost (dispatch, kernel launch) not in the roofline
    return feats


def _nnls(a: list[list[float]], b: list[float]) -> list[float]:
    """Non-negative least squares by active-set elimination (Lawson–Hanson style, small problems)."""
    import numpy as np

    A = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    active = [j for j in range(A.shape[1]) if np.any(A[:, j] != 0)]
    x = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if np.all(sol >= 0):
            x[active] = sol
            break
        active = [j for j, s in zip(active, sol) if s > 0] if np.any(sol > 0) else []
    return [float(v) for v in x]


class CorrectedPredictor(_Predictor):
    """Roofline per op kind × a fitted multiplier, + a fitted per-layer cost, + the table's per-call cost.

    The fit weights each block by 1/measured so that it minimises *relative* error (small blocks count as much as
    big ones). Kinds absent from the table get the multiplier of one pooled fit over all kinds.
    """

    source = "corrected"

    def __init__(self, hardware: Hardware, table: LatencyTable) -> None:
        self.hardware = hardware
        self.hardware_name = hardware.name
        self.table = table
        self._layers: dict[str, list[list[Any]]] = {}
        rows, ys, pooled_rows = [], [], []
        present = [False] * len(FIT_KINDS)
        for entry in table.entries.values():
            ms = float(entry["ms"])
            if ms <= 0:
                continue
            f = _features(entry["layers"], hardware)
            w = 1.0 / ms
            rows.append([v * w for v in f])
            pooled_rows.append([sum(f[:-1]) * w, f[-1] * w])
            ys.append(1.0)
            for i, v in enumerate(f[:-1]):
                present[i] = present[i] or v > 0
        if len(rows) < 3:
            raise ValueError(f"the latency table has {len(rows)} usable entries; the corrected roofline needs >= 3")
        coef = _nnls(rows, ys)
        pooled = _nnls(pooled_rows, ys)
        self.kind_scale = {k: (coef[i] if present[i] and coef[i] > 0 else pooled[0]) for i, k in enumerate(FIT_KINDS)}
        self.layer_ms = coef[-1]
        self.fixed_ms = table.fixed_ms

    def layers_ms(self, layers: Sequence[Sequence[Any]]) -> float:
        total = sum(self.kind_scale.get(kind, self.kind_scale["elementwise"]) * ms
                    for kind, ms in _layer_times(layers, self.hardware))
        return total + self.layer_ms * len(layers)

    def predict_items_ms(self, items: Sequence[Any]) -> float:
        total = 0.0
        for it in items:
            entry = self.table.entries.get(it.key)
            if entry is None and it.key not in self._layers:
                self._layers[it.key] = _layers_of(it)
            total += self.layers_ms(entry["layers"] if entry is not None else self._layers[it.key])
        return total + self.fixed_ms

    def predict_whole_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        """The corrected roofline of the whole model's profile (functional glue between blocks included)."""
        prof = profile(model, tuple(input_shape))
        return self.layers_ms([[layer.kind, layer.macs, layer.bytes] for layer in prof.layers]) + self.fixed_ms


def check_hardware(hardware: str) -> str:
    if not isinstance(hardware, str) or (hardware not in PRESETS and hardware != "host"):
        raise ValueError(f"unknown hardware {hardware!r}; allowed: {', '.join([*PRESETS, 'host'])}")
    return hardware


def load_or_build_table(
    table: str | os.PathLike | None, *, engine: str = "auto", threads: int | None = None,
    items: Iterable[Any] | None = None,
) -> LatencyTable:
    """The table at ``table`` (which must match this host), else the cached one for ``engine``/``threads``
    (built from ``items`` or :func:`default_items` when missing or stale)."""
    if table is not None:
        t = LatencyTable.load(table)
        reason = t.stale_reason()
        if reason is not None:
            raise ValueError(f"latency table {str(table)!r} was measured elsewhere: {reason}; rebuild it with "
                             "`edgezoo latency-table --hardware host`")
        return t
    threads = _check_threads(threads)
    if engine == "auto":
        for candidate in sorted(cache_dir().glob(f"latency_table_*_{threads}t.json")):
            try:
                t = LatencyTable.load(candidate)
            except ValueError:
                continue
            if t.stale_reason() is None:
                return t
    return build_latency_table(items if items is not None else default_items(), engine=engine, threads=threads)


def latency_predictor(
    hardware: str, source: str = "roofline", table: str | os.PathLike | None = None, *,
    engine: str = "auto", threads: int | None = None, build_items: Iterable[Any] | None = None,
) -> _Predictor:
    """A latency predictor: ``.predict_ms(config, img_size)``, ``.predict_module_ms(model, shape)``, ``.source``.

    ``hardware``: a preset name or ``"host"``. ``source``: ``"roofline"`` (any hardware), ``"table"`` or
    ``"corrected"`` (measured on this host, so ``hardware="host"``); ``table`` is the table file (default: the
    cached one, built on first use from ``build_items``, default :func:`default_items`; pass ``[]`` to start
    an empty table that fills as predictions need it).
    """
    check_hardware(hardware)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if source == "roofline":
        return RooflinePredictor(get_hardware(hardware))
    if hardware != "host":
        raise ValueError(f"source {source!r} is measured on this host; use hardware='host' (got {hardware!r}), "
                         "or source='roofline' for a preset")
    t = load_or_build_table(table, engine=engine, threads=threads, items=build_items)
    if source == "table":
        return TablePredictor(t)
    return CorrectedPredictor(get_hardware("host"), t)


__all__ = [
    "CALIBRATION_MODELS", "CORRECTION_TERMS", "BlockItem", "CorrectedPredictor", "LatencyTable", "ModuleItem",
    "RooflinePredictor", "TablePredictor", "blocks_of_config", "build_latency_table", "calibrate_table",
    "calibration_cases", "correction_features", "default_items", "fit_correction", "latency_predictor",
    "measure_items",
    "module_units", "resolve_engine",
]
