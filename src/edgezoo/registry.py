"""Model registry: timm-compatible names → builder, family and default config.

Family modules register their variants at import time with :func:`register_model`; ``edgezoo.models`` imports
every family so the registry is complete once ``edgezoo`` is imported.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    default_cfg: dict[str, Any]
    # Known ImageNet-1k top-1 (percent) of the reference weights, for Pareto plots; None when unknown.
    imagenet_top1: float | None = None
    # Set for architectures read from a spec file (edgezoo.models.arch_spec) rather than registered by name.
    spec: dict[str, Any] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    builder: Callable[..., nn.Module],
    default_cfg: dict[str, Any],
    imagenet_top1: float | None = None,
) -> None:
    """Add a model name. Names are unique; registering twice is a programming error."""
    if name in _REGISTRY:
        raise RuntimeError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, family, builder, dict(default_cfg), imagenet_top1)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching an fnmatch ``pattern`` (e.g. ``"mobilenetv4*"``)."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {pattern!r}")
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name: str | Mapping[str, Any]) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ``ValueError`` suggesting the closest ones.

    ``name`` may also be an architecture spec (a ``*.yaml`` path or a parsed mapping, see
    :mod:`edgezoo.models.arch_spec`): the entry then builds that architecture, so every command that takes a model
    name takes a spec too.
    """
    if isinstance(name, Mapping) or (isinstance(name, str) and name.lower().endswith((".yaml", ".yml"))):
        from .models.arch_spec import spec_entry

        return spec_entry(name)
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see edgezoo.list_models()"
        raise ValueError(f"unknown model name {name!r}{hint}") from None


# Keyword arguments every builder takes; create_model passes them itself, so they are not family overrides.
_COMMON_BUILD_ARGS = ("num_classes", "in_chans", "img_size", "drop_path_rate")


def model_overrides(name: str) -> tuple[str, ...]:
    """The family-specific ``create_model`` overrides model ``name`` accepts (e.g. ``width_mult``, ``patch_size``)."""
    params = inspect.signature(get_entry(name).builder).parameters.values()
    return tuple(p.name for p in params
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _COMMON_BUILD_ARGS)


def families_with_override(override: str) -> list[str]:
    """Families whose models accept ``override`` (e.g. which take ``width_mult``), in registration order."""
    out: list[str] = []
    for entry in _REGISTRY.values():
        if entry.family not in out and override in model_overrides(entry.name):
            out.append(entry.family)
    return out


def check_overrides(name: str, overrides: dict[str, Any] | Any) -> None:
    """``TypeError`` naming any override ``name``'s builder does not take, with the ones it does."""
    params = inspect.signature(get_entry(name).builder).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):  # a builder taking **kwargs checks its own
        return
    allowed = model_overrides(name)
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        family = get_entry(name).family
        others = families_with_override(unknown[0])
        where = f"; {unknown[0]!r} applies to the {', '.join(others)} families" if others else ""
        raise TypeError(f"model {name!r} ({family}) takes no override {unknown[0]!r}; its overrides are: "
                        f"{', '.join(allowed) or 'none'}{where}")


def model_family(name: str) -> str:
    return get_entry(name).family
