"""Batch-norm folding for inference.

At inference a BatchNorm is a fixed per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)``
and ``t = beta - s * mean`` (Ioffe & Szegedy, 2015). When it directly follows a convolution or linear layer the
affine map can be multiplied into that layer's weights, so the BN costs nothing at run time: this is the standard
"conv-BN folding" every deployment toolchain does (Jacob et al., 2018, sec. 3.2, for the quantized case).

Pairs are found by structure, never by guessing from names of classes:

1. a module whose children are named ``conv`` (a Conv1d/2d/Linear) and ``bn`` (a BatchNorm) — the
   :class:`~edgezoo.layers.conv.ConvNormAct` layout, which runs ``conv`` then ``bn``;
2. a conv/linear immediately followed by a BatchNorm inside an ``nn.Sequential``.

A BatchNorm that follows no foldable layer (e.g. after an addition) is replaced by an equivalent
:class:`ChannelAffine`, so the folded model never contains a BatchNorm.

Then every module that offers a ``deploy_form()`` method is replaced by what it returns: an inference-only
module computing the same function in a form engines run faster, e.g. EdgeNeXt's blocks without their
channels-last permutes, with LayerNorm affines and layer scales folded into the 1×1 convs around them. The
outermost such module wins (its deploy form takes care of its children). Finally a model offering
``deploy_logits_only()`` may make ``forward`` skip what its logits never read (ViT with token pooling runs its
last block for the class token only); ``forward_features`` is left computing everything.

The inference forms are written for graph engines (ONNX Runtime, OpenVINO), where they were measured to pay. In
eager PyTorch they can cost: EdgeNeXt's channels-first blocks run 1.4× slower there than the channels-last
training form, whose LayerNorms and Linears are single fast aten kernels. ``fuse(model, deploy_forms=False)`` only
folds; :func:`edgezoo.deploy.optimize` measures both for its eager candidate.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel (dim 1): what an inference-mode BatchNorm computes, without the name."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))


@dataclass
class FuseReport:
    """What :func:`fuse` did: names of folded conv/linear layers and of BNs turned into :class:`ChannelAffine`."""

    folded: list[str] = field(default_factory=list)
    affine: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)  # modules replaced by their ``deploy_form()``


def _is_plain_bn(m: nn.Module) -> bool:
    # Subclasses that change forward (e.g. a BN with a fused activation) are not a pure affine map: leave them alone.
    return isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward


def _bn_affine(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an inference-mode BatchNorm, in float64 for an exact fold."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold a BatchNorm without running statistics (track_running_stats=False): {bn}")
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def fold_bn(layer: nn.Module, bn: _BatchNorm) -> nn.Module:
    """Return a copy of ``layer`` (conv or linear) computing ``bn(layer(x))``; ``layer`` itself is not changed."""
    if not isinstance(layer, _FOLDABLE):
        raise TypeError(f"layer must be one of {[c.__name__ for c in _FOLDABLE]}, got {type(layer).__name__}")
    if layer.weight.shape[0] != bn.num_features:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the layer before it outputs {layer.weight.shape[0]}")
    scale, shift = _bn_affine(bn)
    fused = copy.deepcopy(layer)
    dtype = layer.weight.dtype
    with torch.no_grad():
        w = layer.weight.double()
        view = (-1,) + (1,) * (w.dim() - 1)
        fused.weight = nn.Parameter((w * scale.view(view)).to(dtype), requires_grad=False)
        bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
        fused.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)
    return fused


def _fold_named_pairs(model: nn.Module, report: FuseReport) -> None:
    for name, mod in model.named_modules():
        conv, bn = getattr(mod, "conv", None), getattr(mod, "bn", None)
        if isinstance(conv, _FOLDABLE) and bn is not None and _is_plain_bn(bn):
            mod.conv = fold_bn(conv, bn)
            mod.bn = nn.Identity()
            report.folded.append(f"{name}.conv" if name else "conv")


def _fold_sequential(model: nn.Module, report: FuseReport) -> None:
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        keys = list(mod._modules)
        for a, b in zip(keys, keys[1:]):
            first, second = mod._modules[a], mod._modules[b]
            if isinstance(first, _FOLDABLE) and second is not None and _is_plain_bn(second):
                mod._modules[a] = fold_bn(first, second)
                mod._modules[b] = nn.Identity()
                report.folded.append(f"{name}.{a}" if name else a)


def _replace_leftover_bns(model: nn.Module, report: FuseReport) -> None:
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if _is_plain_bn(child):
                scale, shift = _bn_affine(child)
                dtype = child.running_mean.dtype
                setattr(mod, child_name, ChannelAffine(scale.to(dtype), shift.to(dtype)))
                report.affine.append(f"{name}.{child_name}" if name else child_name)


def _apply_deploy_forms(module: nn.Module, report: FuseReport, prefix: str = "") -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        form = getattr(child, "deploy_form", None)
        if callable(form):
            setattr(module, child_name, form().eval())
            report.rewritten.append(name)
        else:
            _apply_deploy_forms(child, report, name)


def remaining_batchnorms(model: nn.Module) -> list[str]:
    """Names of every BatchNorm module (of any subclass) still in ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def fuse(
    model: nn.Module, *, inplace: bool = False, deploy_forms: bool = True, return_report: bool = False
) -> nn.Module | tuple[nn.Module, FuseReport]:
    """An inference copy of ``model`` (eval mode, no gradients) with every Conv+BN and Linear+BN folded.

    The result computes the same function as ``model.eval()`` up to float rounding and contains no BatchNorm:
    BNs that cannot be folded (nothing foldable before them) become a :class:`ChannelAffine`; with
    ``deploy_forms`` (default) modules offering ``deploy_form()`` are replaced by their inference form. Raises
    ``ValueError`` if a BatchNorm subclass with custom behaviour is left (it cannot be replaced safely).
    With ``return_report=True`` returns ``(model, FuseReport)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    report = FuseReport()
    with torch.no_grad():
        _fold_named_pairs(out, report)
        _fold_sequential(out, report)
        _replace_leftover_bns(out, report)
        if deploy_forms:
            _apply_deploy_forms(out, report)
            # A model may also drop work its logits never read (ViT with token pooling: the last block for the
            # class token only); forward_features keeps computing everything.
            logits_only = getattr(out, "deploy_logits_only", None)
            if callable(logits_only):
                note = logits_only()
                if note:
                    report.rewritten.append(note)
    left = remaining_batchnorms(out)
    if left:
        raise ValueError(f"fuse: BatchNorm subclasses with custom forward cannot be folded: {left[:5]}")
    for p in out.parameters():
        p.requires_grad_(False)
    return (out, report) if return_report else out


# --- OpenVINO's forms of the hard activations ------------------------------------------------------------------------
class ExplicitHardSwish(nn.Module):
    """h-swish spelled ``x * relu6(x + 3) / 6`` (Howard et al., 2019, eq. 2) rather than one ``HardSwish`` op.

    OpenVINO's ONNX reader turns the fused ``HardSwish`` / ``HardSigmoid`` ops into nodes its CPU plugin does not
    fuse with the convolution before them, so MobileNetV3's int8 chain was cut around every h-swish and SE gate
    (58 precision/layout reorders for 54 int8 layers in MobileNetV3-small). Written out, the same arithmetic is
    what OpenVINO's HSwish/HSigmoid fusion passes match and run as a post-op of the convolution: 2 reorders.
    ONNX Runtime and eager PyTorch prefer the single op, so only OpenVINO exports use these forms.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.nn.functional.relu6(x + 3.0) / 6.0


class ExplicitHardSigmoid(nn.Module):
    """h-sigmoid spelled ``relu6(x + 3) / 6``; see :class:`ExplicitHardSwish` for why."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.relu6(x + 3.0) / 6.0


def openvino_forms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with ``nn.Hardswish`` / ``nn.Hardsigmoid`` in the forms OpenVINO fuses (the model
    itself when it has none). Same function, to float rounding; used for every OpenVINO export edgezoo makes."""
    if not any(isinstance(m, (nn.Hardswish, nn.Hardsigmoid)) for m in model.modules()):
        return model
    copied = copy.deepcopy(model)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Hardswish):
                setattr(module, name, ExplicitHardSwish())
            elif isinstance(child, nn.Hardsigmoid):
                setattr(module, name, ExplicitHardSigmoid())
            else:
                swap(child)

    swap(copied)
    return copied
