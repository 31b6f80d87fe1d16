"""The weight-sharing UIB supernet: one set of weights from which every subnet of a :class:`SearchSpace` runs.

Weight sharing follows Once-for-All (Cai et al., ICLR 2020) and BigNAS (Yu et al., ECCV 2020), the family of
methods MobileNetV4's TuNAS search belongs to (Qin et al. 2024, §5: > 95 % of parameters shared by all candidates):

* **channels are nested**: a subnet of width k uses the first k output (and input) channels of every weight, BN
  scale and running statistic, so important channels learn to sit first;
* **kernels are nested**: a 3×3 depthwise kernel is the centre of the 5×5 one, optionally passed through a learned
  9×9 linear map per layer ("kernel transformation", OFA §3.2), initialised to the identity;
* **depth is nested**: a stage of depth d runs its first d blocks.

Every layer reads its weights through one slicing function (``_slices``), used by both the supernet's forward and
:meth:`Supernet.extract`, which copies them into an ordinary :class:`~edgezoo.models.mobilenet_v4.MobileNetV4`; the
standalone model's outputs therefore equal the supernet's for that subnet (tested for every subnet of a tiny space).
Subnets are evaluated after :func:`recalibrate_bn`: shared running statistics fit no single subnet, so they are
re-estimated on a few training batches (OFA §3.3).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.activations import get_act
from ..layers.conv import same_padding
from ..layers.helpers import make_divisible
from ..models.mobilenet_v4 import MobileNetV4
from .space import BlockChoice, SearchSpace, Subnet


class DynConvBN(nn.Module):
    """A conv → BN → act whose active output channels, input channels and kernel size are chosen per call.

    Holds the largest weight (``conv_weight``: out × in/groups × K × K) and a BN of the largest width; parameter
    layout mirrors :class:`~edgezoo.layers.conv.ConvNormAct` (``conv`` + ``bn`` children) so ``extract`` can copy
    slices into one.
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: Iterable[int], *, depthwise: bool = False,
                 act: str | None = "relu", kernel_transform: bool = False) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.max_k = self.kernel_sizes[-1]
        self.depthwise = depthwise
        if depthwise and max_in != max_out:
            raise ValueError(f"a depthwise conv keeps its channels, got {max_in} -> {max_out}")
        self.conv = nn.Conv2d(max_in, max_out, self.max_k, groups=max_in if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(max_out)
        self.act = get_act(act)
        self.act_name = act
        # one learned (k²×k²) map per smaller kernel, applied to the centre of the next larger kernel (OFA)
        self.transforms = nn.ParameterDict()
        if kernel_transform:
            for k in self.kernel_sizes[:-1]:
                self.transforms[str(k)] = nn.Parameter(torch.eye(k * k))

    def kernel(self, out_chs: int, in_chs: int, k: int) -> Tensor:
        """The active weight: first ``out_chs`` × first ``in_chs`` (1 for depthwise), centre ``k`` × ``k``."""
        if k not in self.kernel_sizes:
            raise ValueError(f"kernel {k} not in this layer's choices {self.kernel_sizes}")
        w = self.conv.weight[:out_chs, : (1 if self.depthwise else in_chs)]
        size = self.max_k
        for nxt in reversed(self.kernel_sizes[:-1]):  # shrink step by step: 7 -> 5 -> 3
            if nxt < k:
                break
            start = (size - nxt) // 2
            w = w[:, :, start:start + nxt, start:start + nxt]
            if str(nxt) in self.transforms:
                shape = w.shape
                w = (w.reshape(-1, nxt * nxt) @ self.transforms[str(nxt)].t()).reshape(shape)
            size = nxt
        return w.contiguous()  # sliced views are several times slower in the CPU conv kernels

    def _slices(self, out_chs: int, in_chs: int, k: int) -> dict[str, Tensor]:
        """Every tensor of the active layer, under :class:`ConvNormAct`'s key names."""
        bn = self.bn
        return {
            "conv.weight": self.kernel(out_chs, in_chs, k),
            "bn.weight": bn.weight[:out_chs],
            "bn.bias": bn.bias[:out_chs],
            "bn.running_mean": bn.running_mean[:out_chs],
            "bn.running_var": bn.running_var[:out_chs],
            "bn.num_batches_tracked": bn.num_batches_tracked,
        }

    def forward(self, x: Tensor, out_chs: int, k: int | None = None, stride: int = 1) -> Tensor:
        in_chs = x.shape[1]
        if self.depthwise:
            out_chs = in_chs
        k = self.max_k if k is None else k
        s = self._slices(out_chs, in_chs, k)
        x = F.conv2d(x, s["conv.weight"], None, stride, same_padding(k, stride), 1, in_chs if self.depthwise else 1)
        x = _sliced_bn(self.bn, x)
        return self.act(x)

    def export(self, out_chs: int, in_chs: int, k: int | None = None) -> dict[str, Tensor]:
        if self.depthwise:
            out_chs = in_chs
        return {key: t.detach().clone() for key, t in self._slices(out_chs, in_chs, k or self.max_k).items()}


class DynConv(nn.Module):
    """A bias-free 1×1 conv (the attention projections) sliced on both channel axes."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor, out_chs: int) -> Tensor:
        return F.conv2d(x, self.weight[:out_chs, : x.shape[1]])

    def export(self, out_chs: int, in_chs: int) -> Tensor:
        return self.weight[:out_chs, :in_chs].detach().clone()


def _sliced_bn(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    c = x.shape[1]
    if bn.training:
        bn.num_batches_tracked += 1
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked.clamp(min=1))
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c], bn.training,
                        momentum, bn.eps)


def _export_bn(bn: nn.BatchNorm2d, c: int, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}weight": bn.weight[:c].detach().clone(), f"{prefix}bias": bn.bias[:c].detach().clone(),
            f"{prefix}running_mean": bn.running_mean[:c].clone(), f"{prefix}running_var": bn.running_var[:c].clone(),
            f"{prefix}num_batches_tracked": bn.num_batches_tracked.clone()}


def _prefixed(prefix: str, d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


class SuperFused(nn.Module):
    """Fused IB with elastic width and expansion (MobileNetV4's ``conv_exp`` / ``conv_pwl``)."""

    def __init__(self, max_in: int, max_out: int, max_expand: float, kernel_size: int, act: str) -> None:
        super().__init__()
        max_mid = make_divisible(max_in * max_expand)
        self.conv_exp = DynConvBN(max_in, max_mid, (kernel_size,), act=act)
        self.conv_pwl = DynConvBN(max_mid, max_out, (1,), act=None)

    def forward(self, x: Tensor, width: int, choice: BlockChoice, stride: int) -> Tensor:
        in_chs = x.shape[1]
        mid = make_divisible(in_chs * choice.expand_ratio)
        out = self.conv_pwl(self.conv_exp(x, mid, stride=stride), width)
        return out + x if stride == 1 and in_chs == width else out

    def export(self, in_chs: int, width: int, choice: BlockChoice) -> dict[str, Tensor]:
        mid = make_divisible(in_chs * choice.expand_ratio)
        return {**_prefixed("conv_exp", self.conv_exp.export(mid, in_chs)),
                **_prefixed("conv_pwl", self.conv_pwl.export(width, mid))}


class SuperMQA(nn.Module):
    """Mobile MQA block (pre-BN, one shared K/V head) with elastic input/output width; heads are fixed."""

    def __init__(self, max_in: int, max_out: int, *, num_heads: int, head_dim: int, kv_stride: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.kv_stride = num_heads, head_dim, kv_stride
        self.norm = nn.BatchNorm2d(max_in)
        self.query_proj = DynConv(max_in, num_heads * head_dim)
        self.key_proj = DynConv(max_in, head_dim)
        self.value_proj = DynConv(max_in, head_dim)
        self.out_proj = DynConv(num_heads * head_dim, max_out)
        if kv_stride > 1:
            self.key_down = DynConvBN(max_in, max_in, (3,), depthwise=True, act=None)
            self.value_down = DynConvBN(max_in, max_in, (3,), depthwise=True, act=None)

    def forward(self, x: Tensor, width: int, choice: BlockChoice, stride: int) -> Tensor:
        batch, in_chs, height, width_px = x.shape
        y = _sliced_bn(self.norm, x)
        h, d = self.num_heads, self.head_dim
        q = self.query_proj(y, h * d).reshape(batch, h, d, height * width_px).transpose(-1, -2)
        kx = self.key_down(y, in_chs, stride=self.kv_stride) if self.kv_stride > 1 else y
        vx = self.value_down(y, in_chs, stride=self.kv_stride) if self.kv_stride > 1 else y
        k = self.key_proj(kx, d).flatten(2).transpose(-1, -2).unsqueeze(1).expand(-1, h, -1, -1)
        v = self.value_proj(vx, d).flatten(2).transpose(-1, -2).unsqueeze(1).expand(-1, h, -1, -1)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(-1, -2).reshape(batch, h * d, height, width_px)
        out = self.out_proj(o, width)
        return out + x if in_chs == width else out

    def export(self, in_chs: int, width: int, choice: BlockChoice) -> dict[str, Tensor]:
        h, d = self.num_heads, self.head_dim
        sd = _export_bn(self.norm, in_chs, "norm.")
        sd["attn.query_proj.weight"] = self.query_proj.export(h * d, in_chs)
        sd["attn.key_proj.weight"] = self.key_proj.export(d, in_chs)
        sd["attn.value_proj.weight"] = self.value_proj.export(d, in_chs)
        sd["attn.out_proj.weight"] = self.out_proj.export(width, h * d)
        if self.kv_stride > 1:
            sd.update(_prefixed("attn.key_down", self.key_down.export(in_chs, in_chs)))
            sd.update(_prefixed("attn.value_down", self.value_down.export(in_chs, in_chs)))
        return sd


class SuperUIB(nn.Module):
    """UIB with elastic width, expansion and optional start / middle depthwise convs of nested kernel sizes."""

    def __init__(self, max_in: int, max_out: int, *, start_kernels: tuple[int | None, ...],
                 mid_kernels: tuple[int | None, ...], max_expand: float, act: str, kernel_transform: bool) -> None:
        super().__init__()
        max_mid = make_divisible(max_in * max_expand)
        start = [k for k in start_kernels if k is not None]
        mid = [k for k in mid_kernels if k is not None]
        self.dw_start = DynConvBN(max_in, max_in, start, depthwise=True, act=None,
                                  kernel_transform=kernel_transform) if start else None
        self.pw_exp = DynConvBN(max_in, max_mid, (1,), act=act)
        self.dw_mid = DynConvBN(max_mid, max_mid, mid, depthwise=True, act=act,
                                kernel_transform=kernel_transform) if mid else None
        self.pw_proj = DynConvBN(max_mid, max_out, (1,), act=None)

    def forward(self, x: Tensor, width: int, choice: BlockChoice, stride: int) -> Tensor:
        in_chs = x.shape[1]
        mid = make_divisible(in_chs * choice.expand_ratio)
        out = x
        if choice.start_dw_kernel is not None:
            out = self.dw_start(out, in_chs, choice.start_dw_kernel, 1 if choice.mid_dw_kernel is not None else stride)
        out = self.pw_exp(out, mid)
        if choice.mid_dw_kernel is not None:
            out = self.dw_mid(out, mid, choice.mid_dw_kernel, stride)
        out = self.pw_proj(out, width)
        return out + x if stride == 1 and in_chs == width else out

    def export(self, in_chs: int, width: int, choice: BlockChoice) -> dict[str, Tensor]:
        mid = make_divisible(in_chs * choice.expand_ratio)
        sd: dict[str, Tensor] = {}
        if choice.start_dw_kernel is not None:
            sd.update(_prefixed("dw_start", self.dw_start.export(in_chs, in_chs, choice.start_dw_kernel)))
        sd.update(_prefixed("pw_exp", self.pw_exp.export(mid, in_chs)))
        if choice.mid_dw_kernel is not None:
            sd.update(_prefixed("dw_mid", self.dw_mid.export(mid, mid, choice.mid_dw_kernel)))
        sd.update(_prefixed("pw_proj", self.pw_proj.export(width, mid)))
        return sd


class Supernet(nn.Module):
    """All subnets of ``space`` in one module; ``forward(x, subnet)`` runs one of them.

    ``x`` must already be at the subnet's resolution (the caller resizes: :func:`resize_to`).
    """

    def __init__(self, space: SearchSpace, *, num_classes: int, in_chans: int = 3,
                 kernel_transform: bool = False, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        act = space.act
        self.conv_stem = DynConvBN(in_chans, space.stem_chs, (3,), act=act)
        f = space.fused
        max_w = max(f.widths)
        self.fused = nn.ModuleList(
            SuperFused(space.stem_chs if i == 0 else max_w, max_w, max(f.expand_ratios), f.kernel_size, act)
            for i in range(max(f.depths))
        )
        self.stages = nn.ModuleList()
        self.mqa = nn.ModuleList()  # per stage: a ModuleList of MQA alternatives (None-free: Identity placeholders)
        prev = max_w
        for s in space.stages:
            w = max(s.widths)
            blocks = nn.ModuleList(
                SuperUIB(prev if i == 0 else w, w, start_kernels=s.start_dw_kernels, mid_kernels=s.mid_dw_kernels,
                         max_expand=max(s.expand_ratios), act=act, kernel_transform=kernel_transform)
                for i in range(max(s.depths))
            )
            self.stages.append(blocks)
            alts = nn.ModuleList(
                SuperMQA(w, w, num_heads=s.mqa.num_heads, head_dim=s.mqa.head_dim, kv_stride=s.mqa.kv_stride)
                if s.mqa is not None and i > 0 else nn.Identity()
                for i in range(max(s.depths))
            )
            self.mqa.append(alts)
            prev = w
        self.conv_last = DynConvBN(prev, max(space.last_chs), (1,), act=act)
        self.conv_head = DynConvBN(max(space.last_chs), space.head_chs, (1,), act=act)
        self.classifier = nn.Linear(space.head_chs, num_classes)
        self._init_weights()
        if zero_init_residual:
            self._zero_residual_branches()

    def _zero_residual_branches(self) -> None:
        """Zero the last BN scale of every block that always has a residual (not a stage's first block), so each
        starts as the identity (BigNAS §3.1, after Goyal et al. 2017): a block whose choices change then perturbs the
        residual stream by its own small branch instead of a unit-scale one, and those perturbations do not compound
        through the 15-odd blocks of a subnet the way they do from a unit-scale start."""
        for i, blk in enumerate(self.fused):
            if i > 0:
                nn.init.zeros_(blk.conv_pwl.bn.weight)
        for blocks in self.stages:
            for i, blk in enumerate(blocks):
                if i > 0:
                    nn.init.zeros_(blk.pw_proj.bn.weight)

    def _init_weights(self) -> None:
        """MobileNetV4's init (He-normal on fan-out, BN at identity) on the largest weights, except a small
        classifier (normal, std 0.01, as torchvision's MobileNetV3): MobileNetV4's uniform fan-in init gives
        logits of std ~4 for 10 classes, whose initial loss of ~7-9 cost the supernet its first epochs."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _block(self, stage: int, pos: int, choice: BlockChoice) -> nn.Module:
        return self.mqa[stage][pos] if choice.mqa else self.stages[stage][pos]

    def forward(self, x: Tensor, subnet: Subnet) -> Tensor:
        return self.forward_head(self.forward_features(x, subnet))

    def forward_features(self, x: Tensor, subnet: Subnet) -> Tensor:
        space = self.space
        x = self.conv_stem(x, space.stem_chs, stride=2)
        for i in range(subnet.fused.depth):
            x = self.fused[i](x, subnet.fused.width, subnet.fused.blocks[i], space.fused.stride if i == 0 else 1)
        for si, (c, s) in enumerate(zip(subnet.stages, space.stages)):
            for i in range(c.depth):
                b = c.blocks[i]
                x = self._block(si, i, b)(x, c.width, b, s.stride if i == 0 else 1)
        return self.conv_last(x, subnet.last_chs)

    def forward_head(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.conv_head(x, self.space.head_chs)
        return self.classifier(x.flatten(1))

    # --- standalone models ---------------------------------------------------------------------------------------
    def export_state_dict(self, subnet: Subnet) -> dict[str, Tensor]:
        """``subnet``'s weights under :class:`MobileNetV4`'s key names."""
        space = self.space
        sd = _prefixed("conv_stem", self.conv_stem.export(space.stem_chs, self.conv_stem.conv.in_channels))
        chs = space.stem_chs
        for i in range(subnet.fused.depth):
            sd.update(_prefixed(f"blocks.0.{i}", self.fused[i].export(chs, subnet.fused.width, subnet.fused.blocks[i])))
            chs = subnet.fused.width
        for si, c in enumerate(subnet.stages):
            for i in range(c.depth):
                b = c.blocks[i]
                sd.update(_prefixed(f"blocks.{si + 1}.{i}", self._block(si, i, b).export(chs, c.width, b)))
                chs = c.width
        sd.update(_prefixed(f"blocks.{len(subnet.stages) + 1}.0", self.conv_last.export(subnet.last_chs, chs)))
        sd.update(_prefixed("conv_head", self.conv_head.export(space.head_chs, subnet.last_chs)))
        sd["classifier.weight"] = self.classifier.weight.detach().clone()
        sd["classifier.bias"] = self.classifier.bias.detach().clone()
        return sd

    def extract(self, subnet: Subnet) -> MobileNetV4:
        """An ordinary MobileNetV4 for ``subnet`` with the supernet's (sliced, transformed) weights copied in."""
        from ..models.arch_spec import build_arch, make_arch_spec

        self.space.check(subnet)
        spec = make_arch_spec(self.space.to_config(subnet), name="subnet", img_size=subnet.resolution,
                              space=self.space.identity())
        model = build_arch(spec, num_classes=self.num_classes, in_chans=self.conv_stem.conv.in_channels)
        model.load_state_dict(self.export_state_dict(subnet), strict=True)
        device = self.classifier.weight.device
        return model.to(device).train(self.training)


def resize_to(x: Tensor, resolution: int) -> Tensor:
    """Down-sample a batch to a subnet's resolution (anti-aliased bilinear, as OFA's elastic resolution)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor] | Iterable[tuple[Tensor, Tensor]]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (exact averages, not a moving one).

    ``batches``: image tensors, or ``(images, labels)`` pairs (labels ignored). Returns the model in eval mode,
    each BatchNorm's momentum restored even if a forward fails. Needed before evaluating a subnet: the shared
    statistics were accumulated over many subnets and fit none of them (Cai et al. 2020, §3.3; Yu et al. 2020);
    likewise after NetAdapt prunes a layer, whose successors then see other inputs than their statistics describe.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = list(batches)
    if not bns or not batches:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches seen
    model.train()
    try:
        for b in batches:
            model(b[0] if isinstance(b, (tuple, list)) else b)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


def shared_fraction(supernet: Supernet, subnet: Subnet) -> float:
    """Fraction of the supernet's parameters ``subnet`` uses (BN buffers excluded)."""
    used = sum(v.numel() for k, v in supernet.export_state_dict(subnet).items() if "running" not in k
               and "num_batches" not in k)
    total = sum(p.numel() for p in supernet.parameters())
    return used / total


__all__ = ["DynConvBN", "Supernet", "recalibrate_bn", "resize_to", "shared_fraction"]
