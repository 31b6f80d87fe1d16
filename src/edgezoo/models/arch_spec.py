"""Architecture spec files: a found (or hand-written) architecture as a human-readable YAML, built as a plain model.

Architecture search (:mod:`edgezoo.search`) and NetAdapt produce architectures that are not in the variant
tables. They are written as a spec file so that using one needs none of the search code: ``create_model`` reads the
file and builds a static ``nn.Module`` with the full model contract (features, ``default_cfg``,
``reset_classifier``, …), and every command that takes a model name (``info``, ``roofline``, ``export``, ``bench``,
``train --arch``) accepts the path instead.

Format (``format: edgezoo-arch/1``)::

    format: edgezoo-arch/1
    kind: mobilenetv4            # or "pruned" (NetAdapt output; built by models/pruned.py)
    name: digits-phone_cpu-1ms   # free text, shown in tables
    img_size: 48                 # the resolution the architecture was chosen (and should be trained) at
    space: {name: mnv4-digits, version: 1, hash: 3f…}   # optional: the search space it came from
    latency: {hardware: phone_cpu, source: roofline, predicted_ms: 0.91}   # informative only
    config:                      # kind mobilenetv4: a MobileNetV4Config, block vocabulary of mobilenet_v4.py
      stem_chs: 32
      act: relu
      head_chs: 1280
      layer_scale_init: null
      stages:
        - - {block: FusedIB, out_chs: 32, kernel_size: 3, expand_ratio: 4.0, stride: 2}
        - - {block: ExtraDW, out_chs: 64, start_dw_kernel: 3, mid_dw_kernel: 5, expand_ratio: 4.0, stride: 2}
          - {block: FFN, out_chs: 64, expand_ratio: 2.0}
        ...

UIB blocks are written with the paper's names (``ExtraDW`` / ``IB`` / ``ConvNext`` / ``FFN``), which also say which
optional depthwise convs exist; reading checks that the kernels given agree with the name.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .mobilenet_v4 import (
    FAMILY as MNV4_FAMILY,
    ConvSpec,
    FusedIBSpec,
    MobileNetV4,
    MobileNetV4Config,
    MQASpec,
    UIBSpec,
    _default_cfg,
)

ARCH_FORMAT = "edgezoo-arch/1"
_FORMAT_PREFIX = "edgezoo-arch/"
KINDS = ("mobilenetv4", "pruned")
SPEC_SUFFIXES = (".yaml", ".yml")
BLOCK_NAMES = ("Conv", "FusedIB", "ExtraDW", "IB", "ConvNext", "FFN", "MQA")
_UIB_FORMS = {"ExtraDW": (True, True), "IB": (False, True), "ConvNext": (True, False), "FFN": (False, False)}
_CONFIG_KEYS = ("stem_chs", "stages", "act", "layer_scale_init", "head_chs")


# --- MobileNetV4Config <-> plain dict ----------------------------------------------------------------------------
def _block_to_dict(spec: Any) -> dict[str, Any]:
    if isinstance(spec, ConvSpec):
        name = "Conv"
    elif isinstance(spec, FusedIBSpec):
        name = "FusedIB"
    elif isinstance(spec, UIBSpec):
        name = spec.form
    elif isinstance(spec, MQASpec):
        name = "MQA"
    else:
        raise TypeError(f"unknown block spec {spec!r}; expected ConvSpec, FusedIBSpec, UIBSpec or MQASpec")
    out: dict[str, Any] = {"block": name}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(spec, UIBSpec) and name != "ExtraDW" and value is None and f.name.endswith("_dw_kernel"):
            continue  # implied by the form's name
        if isinstance(value, float) and value.is_integer() and f.name != "expand_ratio":
            value = int(value)
        out[f.name] = value
    return out


def config_to_dict(config: MobileNetV4Config) -> dict[str, Any]:
    """A :class:`MobileNetV4Config` as plain YAML/JSON-able data (the ``config:`` section of a spec)."""
    if not isinstance(config, MobileNetV4Config):
        raise TypeError(f"config must be a MobileNetV4Config, got {type(config).__name__}")
    return {
        "stem_chs": config.stem_chs,
        "act": config.act,
        "head_chs": config.head_chs,
        "layer_scale_init": config.layer_scale_init,
        "stages": [[_block_to_dict(b) for b in stage] for stage in config.stages],
    }


def _block_from_dict(d: Any, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping with a 'block' key, got {d!r}")
    fields = dict(d)
    name = fields.pop("block", None)
    if name not in BLOCK_NAMES:
        raise ValueError(f"{where}: unknown block {name!r}; allowed: {', '.join(BLOCK_NAMES)}")
    if name == "Conv":
        cls = ConvSpec
    elif name == "FusedIB":
        cls = FusedIBSpec
    elif name == "MQA":
        cls = MQASpec
    else:
        cls = UIBSpec
        has_start, has_mid = _UIB_FORMS[name]
        fields.setdefault("start_dw_kernel", None)
        fields.setdefault("mid_dw_kernel", None)
        if (fields["start_dw_kernel"] is not None) != has_start or (fields["mid_dw_kernel"] is not None) != has_mid:
            raise ValueError(
                f"{where}: a {name} block needs start_dw_kernel {'set' if has_start else 'absent'} and "
                f"mid_dw_kernel {'set' if has_mid else 'absent'}, got {fields['start_dw_kernel']!r} / "
                f"{fields['mid_dw_kernel']!r}"
            )
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown} for a {name} block; allowed: {sorted(allowed)}")
    try:
        spec = cls(**fields)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{where}: {name} block: {exc}") from None
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name == "expand_ratio":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{where}: expand_ratio must be a positive number, got {value!r}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{where}: {f.name} must be a positive int, got {value!r}")
    if name in ("ExtraDW", "IB", "ConvNext", "FFN"):
        spec = dataclasses.replace(spec, expand_ratio=float(spec.expand_ratio))
    if name == "FusedIB":
        spec = dataclasses.replace(spec, expand_ratio=float(spec.expand_ratio))
    if getattr(spec, "stride", 1) not in (1, 2):
        raise ValueError(f"{where}: stride must be 1 or 2, got {spec.stride!r}")
    return spec


def config_from_dict(d: Any) -> MobileNetV4Config:
    """The inverse of :func:`config_to_dict`; ``ValueError`` naming the first bad entry."""
    if not isinstance(d, Mapping):
        raise ValueError(f"config must be a mapping with keys {list(_CONFIG_KEYS)}, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: {list(_CONFIG_KEYS)}")
    for key in ("stem_chs", "stages"):
        if key not in d:
            raise ValueError(f"config is missing {key!r}")
    stem = d["stem_chs"]
    if isinstance(stem, bool) or not isinstance(stem, int) or stem < 1:
        raise ValueError(f"config.stem_chs must be a positive int, got {stem!r}")
    head = d.get("head_chs", 1280)
    if isinstance(head, bool) or not isinstance(head, int) or head < 1:
        raise ValueError(f"config.head_chs must be a positive int, got {head!r}")
    act = d.get("act", "relu")
    if not isinstance(act, str):
        raise ValueError(f"config.act must be an activation name, got {act!r}")
    ls = d.get("layer_scale_init")
    if ls is not None and (isinstance(ls, bool) or not isinstance(ls, (int, float)) or not ls > 0):
        raise ValueError(f"config.layer_scale_init must be null or a positive number, got {ls!r}")
    stages = d["stages"]
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"config.stages must be a non-empty list of lists of blocks, got {stages!r}")
    parsed = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, list) or not stage:
            raise ValueError(f"config.stages[{i}] must be a non-empty list of blocks, got {stage!r}")
        parsed.append(tuple(_block_from_dict(b, f"config.stages[{i}][{j}]") for j, b in enumerate(stage)))
    return MobileNetV4Config(stem_chs=stem, stages=tuple(parsed), act=act,
                             layer_scale_init=None if ls is None else float(ls), head_chs=head)


# --- spec files --------------------------------------------------------------------------------------------------
def is_spec_reference(obj: Any) -> bool:
    """True for a spec mapping or a path that names a spec file (``*.yaml`` / ``*.yml``)."""
    if isinstance(obj, Mapping):
        return True
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).suffix.lower() in SPEC_SUFFIXES
    return False


def _check_spec(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    fmt = spec.get("format")
    if fmt is None:
        raise ValueError(f"{where} has no 'format' key; expected format: {ARCH_FORMAT}")
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX):
        raise ValueError(f"{where} has format {fmt!r}, not an edgezoo architecture spec ({ARCH_FORMAT})")
    if fmt != ARCH_FORMAT:
        raise ValueError(f"{where} has format version {fmt!r}; this edgezoo reads {ARCH_FORMAT}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    name = spec.get("name", "arch")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    img = spec.get("img_size")
    if isinstance(img, bool) or not isinstance(img, int) or img < 8:
        raise ValueError(f"{where}: img_size must be an int >= 8, got {img!r}")
    space = spec.get("space")
    if space is not None and (not isinstance(space, Mapping) or not {"name", "version", "hash"} <= set(space)):
        raise ValueError(f"{where}: space must be a mapping with name, version and hash, got {space!r}")
    latency = spec.get("latency")
    if latency is not None and not isinstance(latency, Mapping):
        raise ValueError(f"{where}: latency must be a mapping, got {latency!r}")
    out = dict(spec)
    out["name"] = name
    if kind == "mobilenetv4":
        try:
            config_from_dict(spec.get("config"))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


def load_arch_spec(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate a spec (a path to YAML, or an already-parsed mapping); returns a plain dict.

    ``ValueError`` for an empty or malformed file, an unknown kind or block, or an unsupported format version;
    ``FileNotFoundError`` for a missing file.
    """
    if isinstance(path_or_dict, Mapping):
        return _check_spec(path_or_dict, "architecture spec")
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise TypeError(f"spec must be a path or a mapping, got {type(path_or_dict).__name__}")
    p = Path(path_or_dict)
    if p.is_dir() and (p / "arch.yaml").is_file():
        p = p / "arch.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"architecture spec not found: {str(p)!r}")
    text = p.read_text()
    if not text.strip():
        raise ValueError(f"architecture spec {str(p)!r} is empty")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"architecture spec {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"architecture spec {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return _check_spec(data, f"architecture spec {str(p)!r}")


def save_arch_spec(spec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validate ``spec`` and write it as YAML atomically (block lists in flow style, one block per line)."""
    from ..checkpoint import atomic_write_bytes

    checked = _check_spec(spec, "architecture spec")
    text = dump_arch_spec(checked)
    p = Path(path)
    atomic_write_bytes(p, text.encode())
    return p


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> Any:
    flow = "block" in data  # one block per line reads like the paper's table
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_SpecDumper.add_representer(dict, _represent_dict)


def dump_arch_spec(spec: Mapping[str, Any]) -> str:
    """The YAML text of a spec (keys in the documented order)."""
    order = ["format", "kind", "name", "img_size", "space", "latency", "config"]
    ordered = {k: spec[k] for k in order if k in spec}
    ordered.update({k: v for k, v in spec.items() if k not in ordered})
    return yaml.dump(_plain(ordered), Dumper=_SpecDumper, sort_keys=False, width=120)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def make_arch_spec(config: MobileNetV4Config, *, name: str, img_size: int, space: Mapping[str, Any] | None = None,
                   latency: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``kind: mobilenetv4`` spec for ``config``."""
    spec: dict[str, Any] = {"format": ARCH_FORMAT, "kind": "mobilenetv4", "name": name, "img_size": int(img_size)}
    if space is not None:
        spec["space"] = dict(space)
    if latency is not None:
        spec["latency"] = dict(latency)
    spec["config"] = config_to_dict(config)
    return _check_spec(spec, "architecture spec")


def spec_family(spec: Mapping[str, Any]) -> str:
    """The training-recipe family of a spec's model (``mobilenetv4`` or what a pruned spec names)."""
    if spec["kind"] == "mobilenetv4":
        return MNV4_FAMILY
    base = spec.get("base")  # a pruned model trains with its base model's recipe
    if isinstance(base, str):
        from ..registry import get_entry

        try:
            return get_entry(base).family
        except ValueError:
            pass
    return str(spec.get("family", spec["kind"]))


def spec_default_cfg(spec: Mapping[str, Any], in_chans: int = 3) -> dict[str, Any]:
    size = int(spec["img_size"])
    cfg = _default_cfg(size, crop_pct=1.0, test_size=size, test_crop_pct=1.0)
    cfg["input_size"] = (in_chans, size, size)
    return cfg


def build_arch(spec: str | os.PathLike | Mapping[str, Any], *, num_classes: int = 1000, in_chans: int = 3,
               img_size: int | tuple[int, int] | None = None, drop_path_rate: float = 0.0,
               drop_rate: float = 0.0) -> Any:
    """Build the static model a spec describes (no weights loaded)."""
    spec = load_arch_spec(spec)
    if spec["kind"] == "pruned":
        from .pruned import build_pruned

        return build_pruned(spec, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                            drop_path_rate=drop_path_rate)
    config = config_from_dict(spec["config"])
    cfg = spec_default_cfg(spec, in_chans)
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cfg["input_size"] = (in_chans, h, w)
    return MobileNetV4(config=config, default_cfg=cfg, num_classes=num_classes, in_chans=in_chans,
                       drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def spec_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between a spec and weights saved for it: the kind and the architecture itself."""
    body = {k: v for k, v in spec.items() if k not in ("name", "latency", "img_size", "space", "format")}
    return _plain(body)


__all__ = [
    "ARCH_FORMAT",
    "build_arch",
    "config_from_dict",
    "config_to_dict",
    "dump_arch_spec",
    "is_spec_reference",
    "load_arch_spec",
    "make_arch_spec",
    "save_arch_spec",
    "spec_identity",
]


def spec_entry(spec_ref: str | os.PathLike | Mapping[str, Any]) -> Any:
    """A registry entry (:class:`edgezoo.registry.ModelEntry`) that builds the architecture of a spec."""
    from ..registry import ModelEntry

    spec = load_arch_spec(spec_ref)

    def build(*, num_classes: int = 1000, in_chans: int = 3, img_size: int | tuple[int, int] | None = None,
              drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> Any:
        return build_arch(spec, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                          drop_path_rate=drop_path_rate, drop_rate=drop_rate)

    name = str(spec_ref) if not isinstance(spec_ref, Mapping) else spec["name"]
    build.__name__ = "build_" + "".join(c if c.isalnum() else "_" for c in spec["name"])
    return ModelEntry(name, spec_family(spec), build, spec_default_cfg(spec), None, spec)
