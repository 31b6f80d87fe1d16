"""``create_model``: build a registered model, load weights in any supported key format, switch to features."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_state_dict_file, read_trained_metadata
from .convert import available_sources, convert_state_dict, source_build_overrides
from .layers.helpers import to_2tuple
from .models._base import EdgeModel, validate_num_classes
from .registry import check_overrides, get_entry

# BatchNorm's step counter is bookkeeping, not a weight; checkpoints from other libraries may or may not have it.
_IGNORABLE_SUFFIXES = ("num_batches_tracked",)


def _validate_common(num_classes: Any, in_chans: Any, img_size: Any, drop_path_rate: Any) -> None:
    validate_num_classes(num_classes)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    if img_size is not None:
        h, w = to_2tuple(img_size, name="img_size")
        if h < 1 or w < 1:
            raise ValueError(f"img_size must be positive, got {img_size!r}")
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")


def _relevant(keys: Sequence[str] | set[str]) -> set[str]:
    return {k for k in keys if not k.endswith(_IGNORABLE_SUFFIXES)}


def match_state_dict(name: str, model: nn.Module, state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Return ``(state_dict in edgezoo keys, detected source)``; the source is whichever key set fits the model."""
    target = _relevant(model.state_dict().keys())
    candidates: list[tuple[str, dict[str, Tensor]]] = [("edgezoo", dict(state_dict))]
    for source in available_sources(name):
        try:
            candidates.append((source, convert_state_dict(name, state_dict, source=source)))
        except (KeyError, ValueError, RuntimeError, IndexError):
            continue  # keys are not from this source
    best = max(candidates, key=lambda c: len(_relevant(c[1].keys()) & target) - len(_relevant(c[1].keys()) - target))
    return best[1], best[0]


def _adapt(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Let a model resample size-dependent tensors (e.g. ViT position embeddings) before strict loading."""
    hook = getattr(model, "adapt_state_dict", None)
    return hook(state_dict) if callable(hook) else state_dict


def load_weights(model: nn.Module, name: str, state_dict: Mapping[str, Tensor], *, source: str = "auto") -> str:
    """Load ``state_dict`` (edgezoo, timm or torchvision keys) into ``model`` strictly; returns the source used.

    Raises ``ValueError`` listing missing keys, unexpected keys and shape mismatches when it does not fit.
    """
    if source == "auto":
        sd, source = match_state_dict(name, model, state_dict)
    elif source == "edgezoo":
        sd = dict(state_dict)
    else:
        sd = convert_state_dict(name, state_dict, source=source)
    sd = _adapt(model, sd)
    # A features-only model has no head: a full checkpoint's head weights are simply not needed.
    removed = tuple(getattr(model, "removed_head_modules", ()))
    if removed:
        sd = {k: v for k, v in sd.items() if not any(k == r or k.startswith(r + ".") for r in removed)}
    own = model.state_dict()
    missing = sorted(_relevant(own.keys()) - set(sd))
    unexpected = sorted(_relevant(sd.keys()) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f", … ({len(items)} in all)" if len(items) > 12 else "")

        parts = [f"checkpoint does not fit model {name!r} (detected key format: {source})"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        raise ValueError("; ".join(parts))
    sd = {k: v for k, v in sd.items() if k in own}
    with torch.no_grad():
        model.load_state_dict(sd, strict=False)
    return source


def _check_spec_checkpoint(entry: Any, meta: dict[str, Any], checkpoint: Any) -> None:
    """Weights written for a spec carry that spec; refuse weights of another architecture with one clear line."""
    from .models.arch_spec import spec_identity

    saved = meta.get("arch_spec")
    if saved is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds model {meta['model']!r}, not the architecture of "
                         f"spec {entry.name!r}")
    if spec_identity(saved) != spec_identity(entry.spec):
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not match architecture spec {entry.name!r}: it was "
                         f"saved for architecture {saved.get('name')!r}, whose blocks differ")


def create_model(
    name: str | Mapping[str, Any],
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> EdgeModel:
    """Build model ``name`` (timm's naming), or the architecture of a spec file / mapping (``arch.yaml``).

    ``img_size`` is the training/inference resolution the model is set up for (convnets run at any size anyway;
    ViT and Mixer size their position embedding / token MLP by it). ``checkpoint`` may be a ``.safetensors``,
    ``.pth``/``.pt`` file or a training run directory, in edgezoo, timm or torchvision keys (detected).
    ``overrides`` are family-specific (e.g. ``width_mult`` for MobileNet V1–V3, ``patch_size`` for ViT).

    ``num_classes`` defaults to 1000 and ``in_chans`` to 3, except for weights written by ``edgezoo train``: those
    carry their model's classes, channels, input size and overrides, which fill whatever the caller left unset.
    """
    entry = get_entry(name)
    meta = read_trained_metadata(checkpoint) if checkpoint is not None else None
    if meta is not None:
        if entry.spec is not None:
            _check_spec_checkpoint(entry, meta, checkpoint)
        elif meta["model"] != name:
            raise ValueError(f"checkpoint {str(checkpoint)!r} holds model {meta['model']!r}, not {name!r}")
        num_classes = meta["num_classes"] if num_classes is None else num_classes
        in_chans = meta["in_chans"] if in_chans is None else in_chans
        img_size = meta["img_size"] if img_size is None else img_size
        overrides = {**meta["model_kwargs"], **overrides}
    num_classes = 1000 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    _validate_common(num_classes, in_chans, img_size, drop_path_rate)
    check_overrides(name, overrides)  # not "_create_vit() got an unexpected keyword argument"
    if out_indices is not None and not features_only:
        raise ValueError("out_indices is only meaningful with features_only=True")

    def build(**extra: Any) -> EdgeModel:
        model = entry.builder(
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            drop_path_rate=float(drop_path_rate),
            **overrides,
            **extra,
        )
        if features_only:
            model.enable_features_only(out_indices)
        return model

    model = build()
    if checkpoint is not None and entry.spec is not None:  # a spec's weights are edgezoo's own keys
        try:
            load_weights(model, entry.name, load_state_dict_file(checkpoint), source="edgezoo")
        except ValueError as exc:
            raise ValueError(f"checkpoint {str(checkpoint)!r} does not match architecture spec {entry.name!r}: "
                             f"{str(exc).split('; ', 1)[-1]}") from None
    elif checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        state, source = match_state_dict(name, model, state)
        # Settings the source's weights need but do not store (e.g. torchvision's BN eps); explicit overrides win.
        needed = {k: v for k, v in source_build_overrides(name, source).items() if k not in overrides}
        if needed:
            model = build(**needed)
        load_weights(model, name, state, source="edgezoo")
    return model
