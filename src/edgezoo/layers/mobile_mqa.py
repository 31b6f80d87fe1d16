"""Mobile MQA: multi-query attention with spatially down-sampled keys/values (MobileNetV4, arXiv:2404.10518).

Multi-query attention (Shazeer, 2019) keeps one key/value head shared by all query heads. On mobile accelerators
attention is memory-bound, so cutting K/V to one head (and, in the early high-resolution stages, shrinking the K/V
map with a stride-2 depthwise conv + BN, "SRA"-style) removes most of the memory traffic at almost no accuracy cost.
Queries may be down-sampled too (average pool + BN, output upsampled back bilinearly); MobileNetV4's published
models do not use that, but the reference supports it.

Projections are 1×1 convs on NCHW maps (no bias) and the attention itself is ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct
from .drop import DropPath
from .uib import LayerScale2d


def _check_int(value: int, name: str, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class MobileMQA(nn.Module):
    """Multi-query attention over an NCHW map: ``num_heads`` query heads, one shared key head and value head.

    Args:
        dim: input channels.
        out_dim: output channels (default ``dim``).
        num_heads: query heads.
        key_dim: per-head query/key width; the scale is ``key_dim ** -0.5``.
        value_dim: value width (default ``key_dim``); the heads' outputs are concatenated to ``num_heads·value_dim``.
        kv_stride: >1 down-samples K and V, each with its own stride-``kv_stride`` depthwise conv + BN.
        kv_kernel: kernel of those depthwise convs.
        query_stride: >1 average-pools the queries (then BN) and upsamples the output back to the input size.
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        query_stride: int = 1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        for value, name in ((dim, "dim"), (num_heads, "num_heads"), (key_dim, "key_dim"), (kv_stride, "kv_stride"),
                            (kv_kernel, "kv_kernel"), (query_stride, "query_stride")):
            _check_int(value, name)
        out_dim = dim if out_dim is None else out_dim
        value_dim = key_dim if value_dim is None else value_dim
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.query_stride = query_stride
        self.attn_drop = attn_drop

        if query_stride > 1:
            # ceil_mode keeps the last row/column of odd maps (averaged over the pixels that exist)
            self.query_pool = nn.AvgPool2d(query_stride, ceil_mode=True)
            self.query_norm = nn.BatchNorm2d(dim)
        else:
            self.query_pool = nn.Identity()
            self.query_norm = nn.Identity()
        self.query_proj = nn.Conv2d(dim, num_heads * key_dim, 1, bias=False)

        def down() -> nn.Module:
            if kv_stride == 1:
                return nn.Identity()
            return ConvNormAct(dim, dim, kv_kernel, stride=kv_stride, groups=dim, act=None)

        self.key_down = down()
        self.key_proj = nn.Conv2d(dim, key_dim, 1, bias=False)
        self.value_down = down()
        self.value_proj = nn.Conv2d(dim, value_dim, 1, bias=False)
        self.out_proj = nn.Conv2d(num_heads * value_dim, out_dim, 1, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        q = self.query_proj(self.query_norm(self.query_pool(x)))
        q_height, q_width = q.shape[-2:]
        # (B, heads·dk, h, w) -> (B, heads, h·w, dk)
        q = q.reshape(batch, self.num_heads, self.key_dim, q_height * q_width).transpose(-1, -2)
        # single K/V head: (B, d, m, n) -> (B, 1, m·n, d), broadcast (a view, no copy) over the query heads
        k = self.key_proj(self.key_down(x)).flatten(2).transpose(-1, -2).unsqueeze(1)
        v = self.value_proj(self.value_down(x)).flatten(2).transpose(-1, -2).unsqueeze(1)
        k = k.expand(-1, self.num_heads, -1, -1)
        v = v.expand(-1, self.num_heads, -1, -1)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        # (B, heads, h·w, dv) -> (B, heads·dv, h, w), head-major channels
        o = o.transpose(-1, -2).reshape(batch, self.num_heads * self.value_dim, q_height, q_width)
        if self.query_stride > 1:
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return self.proj_drop(self.out_proj(o))

    def mobile_form(self) -> nn.Module:
        """Inference form for phone runtimes (see :func:`edgezoo.deploy.mobile.mobile_form`): heads folded."""
        return _HeadsFoldedMQA(self)

    def deploy_form(self) -> nn.Module:
        """Inference form for graph engines (see :func:`edgezoo.deploy.fuse`): heads folded, two plain matmuls."""
        return _HeadsFoldedMQA(self, explicit_matmuls=True)


class _HeadsFoldedMQA(nn.Module):
    """:class:`MobileMQA` with the query heads folded into the query rows of one attention.

    With a single K/V head every query head attends over the same keys, so ``heads × queries`` rows against one
    ``(keys, d)`` matrix compute the same softmax rows as the broadcast form — without the ``unsqueeze``/``expand``
    of K and V, which XNNPACK (ExecuTorch, LiteRT) cannot run and which would split the graph there.

    ``heads_as_batch`` (set for LiteRT by :func:`edgezoo.deploy.mobile.litert_form`) keeps the query heads as the
    batch of the two matmuls instead, each against its own copy of K and V (a ``cat``): at batch 1 LiteRT's
    converter turns a matmul whose batch is 1 into ``FULLY_CONNECTED`` with an activation as its "weights", which
    XNNPACK's LiteRT delegate refuses (one partition split per matmul); with ``heads`` as the batch it stays a
    ``BATCH_MATMUL``, which XNNPACK takes. ExecuTorch keeps the folded form: its XNNPACK partitioner does not take a
    ``cat`` of one tensor repeated, and lowers the batch-1 matmul itself.

    ``explicit_matmuls`` (the form :func:`edgezoo.deploy.fuse` gives ONNX Runtime / OpenVINO) writes the attention
    as ``softmax((q·scale) @ k) @ v`` with K kept ``(dk, keys)`` as the 1x1 conv emits it: the training form's
    ``expand`` of K and V exports (traced) as a Shape/ConstantOfShape/Equal/Where/Expand chain per tensor and
    ``scaled_dot_product_attention`` as a scale multiply on both q and k — on MobileNetV4-hybrid-M 248 of its 755
    ONNX nodes (497 in this form; timm's graph: 630).
    """

    def __init__(self, mqa: MobileMQA, *, explicit_matmuls: bool = False) -> None:
        super().__init__()
        self.mqa = mqa
        self.heads_as_batch = False
        self.explicit_matmuls = explicit_matmuls
        self.scale = mqa.key_dim ** -0.5

    def mobile_form(self) -> nn.Module:
        """Phone runtimes take the SDPA form (:func:`edgezoo.deploy.mobile.mobile_form` runs after ``fuse``)."""
        return _HeadsFoldedMQA(self.mqa) if self.explicit_matmuls else self

    def forward(self, x: Tensor) -> Tensor:
        m = self.mqa
        batch, _, height, width = x.shape
        q = m.query_proj(m.query_norm(m.query_pool(x)))
        q_height, q_width = q.shape[-2:]
        rows = q_height * q_width
        if self.heads_as_batch:
            return self._heads_as_batch(x, q, batch, height, width)
        # (B, heads·dk, h, w) -> (B, 1, heads·h·w, dk): head-major query rows
        q = q.reshape(batch, m.num_heads, m.key_dim, rows).transpose(-1, -2).reshape(batch, 1, m.num_heads * rows, m.key_dim)
        if self.explicit_matmuls:
            k = m.key_proj(m.key_down(x)).reshape(batch, 1, m.key_dim, -1)  # (B, 1, dk, keys)
            v = m.value_proj(m.value_down(x)).reshape(batch, 1, m.value_dim, -1).transpose(-1, -2)  # (B, 1, keys, dv)
            o = torch.softmax((q * self.scale) @ k, dim=-1) @ v  # (B, 1, heads·h·w, dv)
        else:
            k = m.key_proj(m.key_down(x)).flatten(2).transpose(-1, -2)
            v = m.value_proj(m.value_down(x)).flatten(2).transpose(-1, -2)
            k = k.reshape(batch, 1, k.shape[1], m.key_dim)
            v = v.reshape(batch, 1, v.shape[1], m.value_dim)
            o = F.scaled_dot_product_attention(q, k, v)  # (B, 1, heads·h·w, dv)
        o = o.reshape(batch, m.num_heads, rows, m.value_dim).transpose(-1, -2)
        o = o.reshape(batch, m.num_heads * m.value_dim, q_height, q_width)
        if m.query_stride > 1:
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return m.proj_drop(m.out_proj(o))

    def _heads_as_batch(self, x: Tensor, q: Tensor, batch: int, height: int, width: int) -> Tensor:
        m = self.mqa
        heads = m.num_heads
        q_height, q_width = q.shape[-2:]
        rows = q_height * q_width
        # (B, heads·dk, h, w) -> (B·heads, h·w, dk)
        q = q.reshape(batch * heads, m.key_dim, rows).transpose(-1, -2)
        k = m.key_proj(m.key_down(x)).flatten(2).transpose(-1, -2)  # (B, keys, dk)
        v = m.value_proj(m.value_down(x)).flatten(2).transpose(-1, -2)
        keys = k.shape[1]
        # one copy per head, batch-major: (B, heads·keys, d) -> (B·heads, keys, d)
        k = torch.cat([k] * heads, dim=1).reshape(batch * heads, keys, m.key_dim)
        v = torch.cat([v] * heads, dim=1).reshape(batch * heads, keys, m.value_dim)
        o = F.scaled_dot_product_attention(q, k, v)  # (B·heads, h·w, dv)
        o = o.transpose(-1, -2).reshape(batch, heads * m.value_dim, q_height, q_width)
        if m.query_stride > 1:
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return m.proj_drop(m.out_proj(o))


class MobileMQABlock(nn.Module):
    """Pre-norm residual attention block of MobileNetV4's hybrids: ``x + drop_path(ls(MQA(BN(x))))``.

    BatchNorm (not LayerNorm) as the pre-norm keeps the whole network foldable/quantisable like a convnet.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        query_stride: int = 1,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.attn = MobileMQA(
            in_chs,
            out_dim=out_chs,
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            kv_stride=kv_stride,
            kv_kernel=kv_kernel,
            query_stride=query_stride,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        self.layer_scale = LayerScale2d(out_chs, init_value=layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.has_skip = in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer_scale(self.attn(self.norm(x)))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out
