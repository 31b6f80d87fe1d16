"""The depthwise-separable cost arithmetic of MobileNetV1 (Howard et al., 2017, §3.1–3.3).

A standard ``Dk×Dk`` convolution from ``M`` to ``N`` channels on a ``Df×Df`` output costs ``Dk²·M·N·Df²`` MACs and
``Dk²·M·N`` weights. Factorising it into a depthwise ``Dk×Dk`` filter per input channel plus a pointwise ``1×1``
combination costs ``Dk²·M·Df² + M·N·Df²`` MACs and ``Dk²·M + M·N`` weights: a fraction ``1/N + 1/Dk²`` of the
standard conv (about 1/8–1/9 for 3×3 kernels), which is where MobileNets get their efficiency.

:func:`separable_savings` finds the depthwise → pointwise pairs in a :class:`~edgezoo.analysis.profiler.Profile`
and prices the standard convolutions they replace, so ``edgezoo info`` can show what the factorisation saved.
"""
from __future__ import annotations

from dataclasses import dataclass

from .profiler import LayerCost, Profile


def _positive(**values: int) -> None:
    for arg, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {v!r}")


@dataclass(frozen=True)
class ConvCost:
    params: int
    macs: int


def standard_conv_cost(*, kernel: int, in_chs: int, out_chs: int, out_size: int) -> ConvCost:
    """A dense ``kernel×kernel`` conv, ``in_chs → out_chs``, ``out_size×out_size`` outputs (no bias)."""
    _positive(kernel=kernel, in_chs=in_chs, out_chs=out_chs, out_size=out_size)
    weights = kernel * kernel * in_chs * out_chs
    return ConvCost(params=weights, macs=weights * out_size * out_size)


def separable_conv_cost(*, kernel: int, in_chs: int, out_chs: int, out_size: int) -> ConvCost:
    """A depthwise ``kernel×kernel`` conv on ``in_chs`` channels followed by a ``1×1`` conv to ``out_chs``."""
    _positive(kernel=kernel, in_chs=in_chs, out_chs=out_chs, out_size=out_size)
    depthwise = kernel * kernel * in_chs
    pointwise = in_chs * out_chs
    return ConvCost(params=depthwise + pointwise, macs=(depthwise + pointwise) * out_size * out_size)


def separable_ratio(*, kernel: int, out_chs: int) -> float:
    """Separable / standard MACs (and params): ``1/N + 1/Dk²`` (MobileNetV1 eq. 5)."""
    _positive(kernel=kernel, out_chs=out_chs)
    return 1.0 / out_chs + 1.0 / (kernel * kernel)


@dataclass(frozen=True)
class SeparablePair:
    depthwise: str
    pointwise: str
    macs: int  # what the pair costs
    standard_macs: int  # what the dense conv it replaces would cost


@dataclass(frozen=True)
class SeparableSavings:
    pairs: tuple[SeparablePair, ...]

    @property
    def macs(self) -> int:
        return sum(p.macs for p in self.pairs)

    @property
    def standard_macs(self) -> int:
        return sum(p.standard_macs for p in self.pairs)

    @property
    def saved_macs(self) -> int:
        return self.standard_macs - self.macs

    @property
    def ratio(self) -> float:
        """Separable MACs as a fraction of the standard convs they replace (0 when the model has none)."""
        return self.macs / self.standard_macs if self.standard_macs else 0.0


def separable_savings(p: Profile) -> SeparableSavings:
    """Pair each depthwise conv with the next pointwise conv that reads its output map, and price the dense conv
    (depthwise kernel and stride, pointwise output channels) the pair stands in for.

    Squeeze-excite 1×1 convs in between act on pooled 1×1 maps and are skipped by matching spatial sizes.
    """
    convs: list[LayerCost] = [layer for layer in p.layers if layer.conv is not None]
    pairs = []
    for i, dw in enumerate(convs):
        g = dw.conv
        if g is None or not g.is_depthwise:
            continue
        for pw in convs[i + 1:]:
            h = pw.conv
            if h is None or h.in_hw != g.out_hw:
                continue  # an SE conv on a pooled map, or another branch
            if h.is_pointwise and h.in_chs == g.out_chs:
                batch = dw.output_shape[0] if dw.output_shape else 1
                dense = batch * g.in_chs * h.out_chs * _prod(g.kernel) * _prod(g.out_hw)
                pairs.append(SeparablePair(dw.name, pw.name, dw.macs + pw.macs, dense))
            break
    return SeparableSavings(tuple(pairs))


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out
