"""The search space: MobileNetV4's building blocks as data (typed dataclasses, YAML, a version and a content hash).

Layout of every candidate (MobileNetV4-Conv-M's skeleton, Qin et al. 2024, Table 11):

    stem 3×3/2 conv → fused-IB stage (4×) → UIB stages (8×, 16×, 32× by default) → 1×1 conv → pooled head

Choices, all nested so that one set of supernet weights serves every candidate (Cai et al. 2020, "Once-for-All"):

* input resolution;
* per stage: output width (a subnet takes the first k channels) and depth (it takes the first d blocks);
* per UIB block: start depthwise conv ∈ {none, 3, 5}, middle depthwise conv ∈ {none, 3, 5} (a 3×3 kernel is the
  centre of the 5×5) and expansion ∈ {2, 3, 4, 6} — which spans the paper's IB / ConvNext / ExtraDW / FFN forms;
  a stage's strided first block needs at least one depthwise conv to carry the stride;
* optionally, in stages given an ``mqa`` option, a non-first block may be a Mobile MQA block instead (hybrid);
* the width of the final 1×1 conv before the pooled head.

A :class:`Subnet` stores choices for every block position up to the stage's largest depth (its "genome"), so
mutating the depth keeps the deeper blocks' choices; :meth:`Subnet.key` is the canonical identity (unused positions
dropped). :meth:`SearchSpace.to_config` turns a subnet into an ordinary :class:`MobileNetV4Config`.

The default space :data:`DIGITS_SPACE` is sized so its largest subnet is about MobileNetV4-Conv-S (3.3M vs 2.5M
parameters with 10 classes, similar block mix at most expansion) and its smallest ~1/6 of the MACs; its resolutions
(32/48/64 px) are what the training pipeline feeds for the 8×8 digits (upsampled; 64 px is the MobileNetV4 digits
preset), so searching on digits is meaningful yet fast on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..models.mobilenet_v4 import (
    ConvSpec,
    FusedIBSpec,
    MobileNetV4Config,
    MQASpec,
    UIBSpec,
)

SPACE_FORMAT = "edgezoo-space/1"


def _ints(value: Any, name: str, *, allow_none: bool = False, odd: bool = False) -> tuple:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list, got {value!r}")
    out = []
    for v in value:
        if v is None and allow_none:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (odd and v % 2 == 0):
            allowed = "odd positive ints" if odd else "positive ints"
            raise ValueError(f"{name} must hold {allowed}{' or null' if allow_none else ''}, got {v!r}")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a value, got {value!r}")
    # ascending order (None first): "first k channels" nesting and largest/smallest rely on it
    return tuple(sorted(out, key=lambda x: -1 if x is None else x))


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must hold positive numbers, got {v!r}")
    out = tuple(sorted(float(v) for v in value))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a value, got {value!r}")
    return out


# --- the space ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FusedStageSpace:
    """The fused-IB stage right after the stem: width, depth and expansion choices, one kernel size."""

    widths: tuple[int, ...]
    depths: tuple[int, ...] = (1,)
    expand_ratios: tuple[float, ...] = (4.0,)
    kernel_size: int = 3
    stride: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _ints(self.widths, "fused.widths"))
        object.__setattr__(self, "depths", _ints(self.depths, "fused.depths"))
        object.__setattr__(self, "expand_ratios", _floats(self.expand_ratios, "fused.expand_ratios"))
        _ints([self.kernel_size], "fused.kernel_size", odd=True)
        if self.stride not in (1, 2):
            raise ValueError(f"fused.stride must be 1 or 2, got {self.stride!r}")


@dataclass(frozen=True, kw_only=True)
class MQAOption:
    """Mobile MQA as an alternative for a stage's non-first blocks: heads, per-head width, K/V down-sampling."""

    num_heads: int = 4
    head_dim: int = 64
    kv_stride: int = 1

    def __post_init__(self) -> None:
        for name in ("num_heads", "head_dim", "kv_stride"):
            _ints([getattr(self, name)], f"mqa.{name}")


@dataclass(frozen=True, kw_only=True)
class UIBStageSpace:
    """One UIB stage: width and depth choices, and the per-block UIB choices (``None`` = that DW conv absent)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int = 2
    start_dw_kernels: tuple[int | None, ...] = (None, 3, 5)
    mid_dw_kernels: tuple[int | None, ...] = (None, 3, 5)
    expand_ratios: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0)
    mqa: MQAOption | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _ints(self.widths, "stage.widths"))
        object.__setattr__(self, "depths", _ints(self.depths, "stage.depths"))
        object.__setattr__(self, "start_dw_kernels", _ints(self.start_dw_kernels, "stage.start_dw_kernels",
                                                           allow_none=True, odd=True))
        object.__setattr__(self, "mid_dw_kernels", _ints(self.mid_dw_kernels, "stage.mid_dw_kernels",
                                                         allow_none=True, odd=True))
        object.__setattr__(self, "expand_ratios", _floats(self.expand_ratios, "stage.expand_ratios"))
        if self.stride not in (1, 2):
            raise ValueError(f"stage.stride must be 1 or 2, got {self.stride!r}")
        if self.stride == 2 and self.start_dw_kernels == (None,) and self.mid_dw_kernels == (None,):
            raise ValueError("a strided stage needs a depthwise kernel choice to carry the stride")
        if isinstance(self.mqa, Mapping):
            object.__setattr__(self, "mqa", MQAOption(**self.mqa))

    def block_options(self, position: int) -> list["BlockChoice"]:
        """Every choice for the block at ``position`` (0 = the stage's first, strided block)."""
        strided = position == 0 and self.stride > 1
        out = [BlockChoice(expand_ratio=e, start_dw_kernel=s, mid_dw_kernel=m)
               for s in self.start_dw_kernels for m in self.mid_dw_kernels for e in self.expand_ratios
               if not (strided and s is None and m is None)]
        if self.mqa is not None and position > 0:
            out.append(BlockChoice(mqa=True))
        return out


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A MobileNetV4-style space. ``version`` is the user's: bump it when editing a space whose specs exist."""

    name: str
    version: int = 1
    resolutions: tuple[int, ...]
    stem_chs: int = 32
    fused: FusedStageSpace
    stages: tuple[UIBStageSpace, ...]
    last_chs: tuple[int, ...] = (960,)
    head_chs: int = 1280
    act: str = "relu"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"space name must be a non-empty string, got {self.name!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"space version must be an int >= 1, got {self.version!r}")
        object.__setattr__(self, "resolutions", _ints(self.resolutions, "resolutions"))
        object.__setattr__(self, "last_chs", _ints(self.last_chs, "last_chs"))
        _ints([self.stem_chs], "stem_chs")
        _ints([self.head_chs], "head_chs")
        if isinstance(self.fused, Mapping):
            object.__setattr__(self, "fused", FusedStageSpace(**self.fused))
        stages = tuple(UIBStageSpace(**s) if isinstance(s, Mapping) else s for s in self.stages)
        if not stages:
            raise ValueError("a search space needs at least one UIB stage")
        object.__setattr__(self, "stages", stages)

    # --- identity --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {"format": SPACE_FORMAT, **d}
        return json.loads(json.dumps(d))  # tuples -> lists

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        if not isinstance(d, Mapping):
            raise ValueError(f"a search space must be a mapping, got {type(d).__name__}")
        d = dict(d)
        fmt = d.pop("format", SPACE_FORMAT)
        if fmt != SPACE_FORMAT:
            raise ValueError(f"search space format {fmt!r} is not supported; expected {SPACE_FORMAT}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"search space has unknown keys {unknown}; allowed: {sorted(allowed)}")
        try:
            fused = FusedStageSpace(**d.pop("fused"))
            stages = tuple(UIBStageSpace(**{**s, "mqa": MQAOption(**s["mqa"]) if s.get("mqa") else None})
                           for s in d.pop("stages"))
            return cls(fused=fused, stages=stages, **d)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed search space: {exc}") from None

    @property
    def hash(self) -> str:
        """Content hash of everything but the name: two specs from spaces with equal hashes are comparable."""
        body = self.to_dict()
        body.pop("name")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """The ``space:`` section of a spec file."""
        return {"name": self.name, "version": self.version, "hash": self.hash}

    def save(self, path: str | os.PathLike) -> Path:
        from ..checkpoint import atomic_write_bytes

        p = Path(path)
        atomic_write_bytes(p, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchSpace":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"search space file not found: {str(p)!r}")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"search space {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not data:
            raise ValueError(f"search space file {str(p)!r} is empty")
        return cls.from_dict(data)

    # --- subnets ---------------------------------------------------------------------------------------------
    def stage_max_depths(self) -> tuple[int, ...]:
        return tuple(max(s.depths) for s in self.stages)

    def sample(self, rng: random.Random) -> "Subnet":
        """A uniformly random subnet (each choice uniform and independent)."""
        fused = StageChoice(width=rng.choice(self.fused.widths), depth=rng.choice(self.fused.depths),
                            blocks=tuple(BlockChoice(expand_ratio=rng.choice(self.fused.expand_ratios))
                                         for _ in range(max(self.fused.depths))))
        stages = tuple(
            StageChoice(width=rng.choice(s.widths), depth=rng.choice(s.depths),
                        blocks=tuple(rng.choice(s.block_options(i)) for i in range(max(s.depths))))
            for s in self.stages
        )
        return Subnet(resolution=rng.choice(self.resolutions), fused=fused, stages=stages,
                      last_chs=rng.choice(self.last_chs))

    def largest(self) -> "Subnet":
        """Every choice at its maximum (no MQA: an attention block is an alternative, not a bigger UIB)."""
        fused = StageChoice(width=max(self.fused.widths), depth=max(self.fused.depths),
                            blocks=(BlockChoice(expand_ratio=max(self.fused.expand_ratios)),) * max(self.fused.depths))
        stages = tuple(
            StageChoice(width=max(s.widths), depth=max(s.depths),
                        blocks=(BlockChoice(expand_ratio=max(s.expand_ratios), start_dw_kernel=s.start_dw_kernels[-1],
                                            mid_dw_kernel=s.mid_dw_kernels[-1]),) * max(s.depths))
            for s in self.stages
        )
        return Subnet(resolution=max(self.resolutions), fused=fused, stages=stages, last_chs=max(self.last_chs))

    def smallest(self) -> "Subnet":
        """Every choice at its minimum; a strided block keeps the cheapest depthwise conv that can carry it."""
        fused = StageChoice(width=min(self.fused.widths), depth=min(self.fused.depths),
                            blocks=(BlockChoice(expand_ratio=min(self.fused.expand_ratios)),) * max(self.fused.depths))
        stages = []
        for s in self.stages:
            blocks = []
            for i in range(max(s.depths)):
                start, mid = s.start_dw_kernels[0], s.mid_dw_kernels[0]
                if i == 0 and s.stride > 1 and start is None and mid is None:
                    # a DW conv on the block input is cheaper than one on the expanded features
                    start = next((k for k in s.start_dw_kernels if k is not None), None)
                    if start is None:
                        mid = next(k for k in s.mid_dw_kernels if k is not None)
                blocks.append(BlockChoice(expand_ratio=min(s.expand_ratios), start_dw_kernel=start, mid_dw_kernel=mid))
            stages.append(StageChoice(width=min(s.widths), depth=min(s.depths), blocks=tuple(blocks)))
        return Subnet(resolution=min(self.resolutions), fused=fused, stages=tuple(stages), last_chs=min(self.last_chs))

    def contains(self, subnet: "Subnet") -> bool:
        """Whether every choice of ``subnet`` is allowed by this space."""
        try:
            self.check(subnet)
        except ValueError:
            return False
        return True

    def check(self, subnet: "Subnet") -> None:
        """``ValueError`` naming the first choice of ``subnet`` this space does not allow."""
        if subnet.resolution not in self.resolutions:
            raise ValueError(f"resolution {subnet.resolution} not in {self.resolutions}")
        if subnet.last_chs not in self.last_chs:
            raise ValueError(f"last_chs {subnet.last_chs} not in {self.last_chs}")
        f = subnet.fused
        if f.width not in self.fused.widths or f.depth not in self.fused.depths:
            raise ValueError(f"fused stage width/depth {f.width}/{f.depth} not allowed")
        if len(f.blocks) != max(self.fused.depths) or any(b.expand_ratio not in self.fused.expand_ratios
                                                          for b in f.blocks):
            raise ValueError("fused stage blocks do not match the space")
        if len(subnet.stages) != len(self.stages):
            raise ValueError(f"subnet has {len(subnet.stages)} UIB stages, the space {len(self.stages)}")
        for i, (c, s) in enumerate(zip(subnet.stages, self.stages)):
            if c.width not in s.widths or c.depth not in s.depths or len(c.blocks) != max(s.depths):
                raise ValueError(f"stage {i}: width/depth {c.width}/{c.depth} not allowed")
            for j, b in enumerate(c.blocks):
                if b not in s.block_options(j):
                    raise ValueError(f"stage {i} block {j}: {b} not allowed")

    def enumerate(self) -> Iterator["Subnet"]:
        """Every distinct subnet (canonical form: unused block positions at their first option). Tiny spaces only."""
        fused_opts = []
        for w, d in itertools.product(self.fused.widths, self.fused.depths):
            for es in itertools.product(self.fused.expand_ratios, repeat=d):
                pad = (self.fused.expand_ratios[0],) * (max(self.fused.depths) - d)
                fused_opts.append(StageChoice(width=w, depth=d, blocks=tuple(BlockChoice(expand_ratio=e)
                                                                          for e in es + pad)))
        stage_opts = []
        for s in self.stages:
            opts = []
            for w, d in itertools.product(s.widths, s.depths):
                per_pos = [s.block_options(i) for i in range(d)]
                pad = tuple(s.block_options(i)[0] for i in range(d, max(s.depths)))
                for blocks in itertools.product(*per_pos):
                    opts.append(StageChoice(width=w, depth=d, blocks=tuple(blocks) + pad))
            stage_opts.append(opts)
        for r, last, fused in itertools.product(self.resolutions, self.last_chs, fused_opts):
            for stages in itertools.product(*stage_opts):
                yield Subnet(resolution=r, fused=fused, stages=tuple(stages), last_chs=last)

    def num_subnets(self) -> int:
        """How many distinct subnets the space holds."""
        n = len(self.resolutions) * len(self.last_chs)
        n *= sum(len(self.fused.expand_ratios) ** d for d in self.fused.depths) * len(self.fused.widths)
        for s in self.stages:
            per_depth = 0
            for d in s.depths:
                k = 1
                for i in range(d):
                    k *= len(s.block_options(i))
                per_depth += k
            n *= per_depth * len(s.widths)
        return n

    def canonical(self, subnet: "Subnet") -> "Subnet":
        """The same architecture with unused block positions reset, so equal architectures compare equal."""
        def fix(choice: StageChoice, first: BlockChoice | None, opts: Any) -> StageChoice:
            blocks = list(choice.blocks[:choice.depth])
            blocks += [opts(i)[0] for i in range(choice.depth, len(choice.blocks))]
            return dataclasses.replace(choice, blocks=tuple(blocks))

        fused = fix(subnet.fused, None, lambda i: [BlockChoice(expand_ratio=self.fused.expand_ratios[0])])
        stages = tuple(fix(c, None, s.block_options) for c, s in zip(subnet.stages, self.stages))
        return dataclasses.replace(subnet, fused=fused, stages=stages)

    def to_config(self, subnet: "Subnet") -> MobileNetV4Config:
        """The standalone architecture of ``subnet`` (one block spec per block, in MobileNetV4's vocabulary)."""
        f = self.fused
        fused_stage = tuple(
            FusedIBSpec(out_chs=subnet.fused.width, kernel_size=f.kernel_size,
                        expand_ratio=subnet.fused.blocks[i].expand_ratio, stride=f.stride if i == 0 else 1)
            for i in range(subnet.fused.depth)
        )
        stages: list[tuple[Any, ...]] = [fused_stage]
        for c, s in zip(subnet.stages, self.stages):
            blocks = []
            for i in range(c.depth):
                b = c.blocks[i]
                if b.mqa:
                    assert s.mqa is not None
                    blocks.append(MQASpec(out_chs=c.width, num_heads=s.mqa.num_heads, head_dim=s.mqa.head_dim,
                                          kv_stride=s.mqa.kv_stride))
                else:
                    blocks.append(UIBSpec(out_chs=c.width, start_dw_kernel=b.start_dw_kernel,
                                          mid_dw_kernel=b.mid_dw_kernel, expand_ratio=b.expand_ratio,
                                          stride=s.stride if i == 0 else 1))
            stages.append(tuple(blocks))
        stages.append((ConvSpec(out_chs=subnet.last_chs, kernel_size=1),))
        return MobileNetV4Config(stem_chs=self.stem_chs, stages=tuple(stages), act=self.act, head_chs=self.head_chs)

    def block_items(self) -> Iterator[tuple[Any, int, int, int, str]]:
        """Every distinct ``(block spec, in_chs, input H, input W, act)`` a subnet of this space can contain.

        Covers the stem (a :class:`ConvSpec` 3×3/2 from 3 channels), every fused and UIB/MQA block at every
        resolution, input width and output width it can see, and the final 1×1 conv. (The pooled head after it
        runs on a 1×1 map: its cost does not depend on the choices except through ``last_chs``.)
        """
        seen: set[Any] = set()

        def emit(item: tuple[Any, int, int, int, str]) -> Iterator[tuple[Any, int, int, int, str]]:
            if item not in seen:
                seen.add(item)
                yield item

        from ..layers.conv import same_padding

        def down(size: int, stride: int) -> int:
            k = 3
            return (size + 2 * same_padding(k, stride) - k) // stride + 1

        for res in self.resolutions:
            yield from emit((ConvSpec(out_chs=self.stem_chs, kernel_size=3, stride=2), 3, res, res, self.act))
            size = down(res, 2)
            f = self.fused
            for w, e in itertools.product(f.widths, f.expand_ratios):
                yield from emit((FusedIBSpec(out_chs=w, kernel_size=f.kernel_size, expand_ratio=e, stride=f.stride),
                                 self.stem_chs, size, size, self.act))
            after = down(size, f.stride)
            if max(f.depths) > 1:
                for w, e in itertools.product(f.widths, f.expand_ratios):
                    yield from emit((FusedIBSpec(out_chs=w, kernel_size=f.kernel_size, expand_ratio=e), w, after,
                                     after, self.act))
            size, in_widths = after, f.widths
            for s in self.stages:
                after = down(size, s.stride)
                for cin, w in itertools.product(in_widths, s.widths):
                    for b in s.block_options(0):
                        spec = UIBSpec(out_chs=w, start_dw_kernel=b.start_dw_kernel, mid_dw_kernel=b.mid_dw_kernel,
                                       expand_ratio=b.expand_ratio, stride=s.stride)
                        yield from emit((spec, cin, size, size, self.act))
                if max(s.depths) > 1:
                    for w in s.widths:
                        for b in s.block_options(1):
                            if b.mqa:
                                assert s.mqa is not None
                                spec = MQASpec(out_chs=w, num_heads=s.mqa.num_heads, head_dim=s.mqa.head_dim,
                                               kv_stride=s.mqa.kv_stride)
                            else:
                                spec = UIBSpec(out_chs=w, start_dw_kernel=b.start_dw_kernel,
                                               mid_dw_kernel=b.mid_dw_kernel, expand_ratio=b.expand_ratio)
                            yield from emit((spec, w, after, after, self.act))
                size, in_widths = after, s.widths
            for cin, last in itertools.product(in_widths, self.last_chs):
                yield from emit((ConvSpec(out_chs=last, kernel_size=1), cin, size, size, self.act))


@dataclass(frozen=True)
class BlockChoice:
    """One block's choices. Fused blocks use only ``expand_ratio``; ``mqa=True`` replaces the UIB by Mobile MQA."""

    expand_ratio: float = 4.0
    start_dw_kernel: int | None = None
    mid_dw_kernel: int | None = None
    mqa: bool = False

    def __post_init__(self) -> None:
        if self.mqa:  # normalise so that every MQA choice compares equal
            object.__setattr__(self, "expand_ratio", 0.0)
            object.__setattr__(self, "start_dw_kernel", None)
            object.__setattr__(self, "mid_dw_kernel", None)
        else:
            object.__setattr__(self, "expand_ratio", float(self.expand_ratio))

    def describe(self) -> str:
        if self.mqa:
            return "MQA"
        s = "-" if self.start_dw_kernel is None else str(self.start_dw_kernel)
        m = "-" if self.mid_dw_kernel is None else str(self.mid_dw_kernel)
        return f"{s}/{m}/e{self.expand_ratio:g}"


@dataclass(frozen=True)
class StageChoice:
    width: int
    depth: int
    blocks: tuple[BlockChoice, ...]  # one per position up to the stage's largest depth; the first ``depth`` are used


@dataclass(frozen=True)
class Subnet:
    """One candidate: resolution, the fused stage, each UIB stage and the final conv width."""

    resolution: int
    fused: StageChoice
    stages: tuple[StageChoice, ...]
    last_chs: int

    def key(self) -> tuple:
        """Hashable identity of the architecture (unused block positions ignored)."""
        def stage_key(c: StageChoice) -> tuple:
            return (c.width, c.depth, tuple(c.blocks[:c.depth]))

        return (self.resolution, stage_key(self.fused), tuple(stage_key(c) for c in self.stages), self.last_chs)

    def describe(self) -> str:
        """One line that tells subnets apart: ``r48 | F24x1[e4] | 32x2[3/5/e4 -/3/e2] | … | L480`` (the fused
        stage's expansions in brackets, then each UIB block's start DW / middle DW / expansion)."""
        fused = " ".join(f"e{b.expand_ratio:g}" for b in self.fused.blocks[:self.fused.depth])
        parts = [f"r{self.resolution}", f"F{self.fused.width}x{self.fused.depth}[{fused}]"]
        for c in self.stages:
            parts.append(f"{c.width}x{c.depth}[" + " ".join(b.describe() for b in c.blocks[:c.depth]) + "]")
        parts.append(f"L{self.last_chs}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Subnet":
        def stage(s: Mapping[str, Any]) -> StageChoice:
            return StageChoice(width=int(s["width"]), depth=int(s["depth"]),
                               blocks=tuple(BlockChoice(**b) for b in s["blocks"]))

        return cls(resolution=int(d["resolution"]), fused=stage(d["fused"]),
                   stages=tuple(stage(s) for s in d["stages"]), last_chs=int(d["last_chs"]))


# --- the default space -------------------------------------------------------------------------------------------
DIGITS_SPACE = SearchSpace(
    name="mnv4-conv-s-digits",
    version=1,
    resolutions=(32, 48, 64),
    stem_chs=32,
    fused=FusedStageSpace(widths=(16, 24, 32), depths=(1,), expand_ratios=(2.0, 4.0)),  # 4× (16×16 at 64 px)
    stages=(
        UIBStageSpace(widths=(32, 48, 64), depths=(1, 2)),  # 8×
        UIBStageSpace(widths=(48, 64, 80, 96), depths=(2, 3, 4, 5, 6)),  # 16×
        UIBStageSpace(widths=(64, 96, 128), depths=(2, 3, 4, 5, 6)),  # 32×
    ),
    last_chs=(480, 720, 960),
    head_chs=1280,
)

# The same skeleton with Mobile MQA allowed in the last two stages (MobileNetV4-Hybrid's placement).
DIGITS_HYBRID_SPACE = dataclasses.replace(
    DIGITS_SPACE,
    name="mnv4-hybrid-s-digits",
    stages=(
        DIGITS_SPACE.stages[0],
        dataclasses.replace(DIGITS_SPACE.stages[1], mqa=MQAOption(num_heads=4, head_dim=32, kv_stride=2)),
        dataclasses.replace(DIGITS_SPACE.stages[2], mqa=MQAOption(num_heads=4, head_dim=32, kv_stride=1)),
    ),
)

SPACES = {s.name: s for s in (DIGITS_SPACE, DIGITS_HYBRID_SPACE)}


def get_space(name_or_path: str | os.PathLike | SearchSpace) -> SearchSpace:
    """A built-in space by name, or one loaded from a YAML file."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in SPACES:
        return SPACES[name_or_path]
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml"):
        return SearchSpace.load(p)
    raise ValueError(f"unknown search space {str(name_or_path)!r}; built-in: {', '.join(SPACES)}, or a .yaml file")
