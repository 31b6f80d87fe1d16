"""State-dict converters from other libraries' keys to edgezoo's, a small mapping per family.

Family converter modules register functions with :func:`register_converter`; :func:`convert_state_dict` dispatches
on the model's family. Converters are pure key/shape transforms: they never build a model.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor

from ..registry import get_entry

SOURCES = ("timm", "torchvision")
Converter = Callable[[str, Mapping[str, Tensor]], dict[str, Tensor]]
_CONVERTERS: dict[tuple[str, str], Converter] = {}
# Constructor settings a source's weights were trained with that are not stored in its state dict
# (e.g. torchvision's MobileNetV3 uses BatchNorm eps=1e-3); create_model applies them when it detects that source.
_BUILD_OVERRIDES: dict[tuple[str, str], dict[str, object]] = {}

# One module per family (or group of families); imported lazily on first use.
_CONVERTER_MODULES = ("mobilenet", "mobilenetv4", "mobilevit", "edgenext", "vit", "mlp_mixer")


def register_converter(
    family: str, source: str, *, build_overrides: Mapping[str, object] | None = None
) -> Callable[[Converter], Converter]:
    """Register ``fn(name, state_dict) -> state_dict`` for (family, source).

    ``build_overrides`` are model-constructor settings the source's weights need to reproduce its outputs.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")

    def deco(fn: Converter) -> Converter:
        _CONVERTERS[(family, source)] = fn
        if build_overrides:
            _BUILD_OVERRIDES[(family, source)] = dict(build_overrides)
        return fn

    return deco


def _load_all() -> None:
    for mod in _CONVERTER_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def available_sources(name: str) -> list[str]:
    """Sources that have a converter for model ``name``."""
    _load_all()
    family = get_entry(name).family
    return [s for s in SOURCES if (family, s) in _CONVERTERS]


def source_build_overrides(name: str, source: str) -> dict[str, object]:
    """Constructor overrides needed by weights of ``source`` for model ``name`` (empty for edgezoo's own)."""
    _load_all()
    return dict(_BUILD_OVERRIDES.get((get_entry(name).family, source), {}))


def convert_state_dict(name: str, state_dict: Mapping[str, Tensor], source: str = "timm") -> dict[str, Tensor]:
    """Convert ``state_dict`` from ``source`` keys ("timm" or "torchvision") to edgezoo keys for model ``name``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    family = get_entry(name).family
    _load_all()
    fn = _CONVERTERS.get((family, source))
    if fn is None:
        have = [s for s in SOURCES if (family, s) in _CONVERTERS]
        raise ValueError(f"no {source!r} converter for model {name!r} (family {family!r}); available sources: {have}")
    return fn(name, state_dict)


def rename_keys(state_dict: Mapping[str, Tensor], rules: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()) -> dict[str, Tensor]:
    """Apply regex ``(pattern, replacement)`` rules to every key, first match wins; keys matching ``drop`` vanish."""
    compiled = [(re.compile(p), r) for p, r in rules]
    dropped = [re.compile(p) for p in drop]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if any(d.fullmatch(key) for d in dropped):
            continue
        new = key
        for pat, repl in compiled:
            if pat.fullmatch(key):
                new = pat.sub(repl, key)
                break
        out[new] = value
    return out
