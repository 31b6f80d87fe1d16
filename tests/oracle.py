"""Test helpers: timm as the oracle, weight perturbation, relative comparisons.

timm is imported here only (tests), never by ``src/``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

import edgezoo


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every floating tensor of the state dict off its init (weights, biases, BN statistics, layer scales).

    Default inits (BN weight 1 / bias 0, zero biases, constant layer scales) are identical across layers and would
    hide a wrong key mapping; random offsets make every tensor distinguishable.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(noise * 0.1)
            else:
                std = float(t.float().std()) if t.numel() > 1 else 0.0
                scale = 0.5 * std if std > 1e-3 else 0.1
                t.add_(noise * scale)
    return model


def rel_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| divided by the output scale max |b| (at least 1e-6 so all-zero outputs do not divide by 0)."""
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def assert_close(a: Tensor, b: Tensor, tol: float = 1e-4, what: str = "output") -> float:
    d = rel_diff(a, b)
    assert d <= tol, f"{what}: max abs diff is {d:.3g} of the output scale (allowed {tol:g})"
    return d


def timm_model(name: str, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


def pair_from_timm(name: str, seed: int = 0, *, timm_kwargs: dict | None = None, **ez_kwargs) -> tuple[nn.Module, nn.Module]:
    """(timm model with perturbed weights, edgezoo model loaded via convert_state_dict), both in eval mode."""
    ref = perturb_(timm_model(name, **(timm_kwargs or {})), seed).eval()
    ours = edgezoo.create_model(name, **ez_kwargs).eval()
    sd = edgezoo.convert_state_dict(name, ref.state_dict(), source="timm")
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, f"missing {missing[:8]}, unexpected {unexpected[:8]}"
    return ref, ours


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
