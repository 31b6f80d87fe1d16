"""The training recipe: one typed dataclass, per-family defaults, YAML and command-line overrides.

Precedence, lowest first: the dataclass defaults < the model family's recipe < the dataset's preset (``digits``)
< a ``--config FILE.yaml`` < explicit command-line flags. Fields left at ``None`` are "auto" and are resolved by
:func:`resolve_config` once the model and data are known, so the saved ``config.yaml`` of a run always holds the
concrete values that were used.

Why the family split: depthwise-separable convnets train well with SGD + Nesterov momentum and a large learning
rate (the MobileNet V1–V3 papers used RMSprop/SGD), while transformers and hybrids (ViT, Mixer, MobileViT,
EdgeNeXt, MobileNetV4-hybrid) need AdamW with weight decay, warm-up and gradient clipping (Dosovitskiy et al. 2021;
Touvron et al. 2021 "DeiT"; Mehta & Rastegari 2022). MobileNetV4 (Qin et al. 2024) itself is trained with AdamW.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DIGITS = "digits"
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
DEFAULT_EPOCHS = 30  # for ImageFolder data; digits runs take their family's ``digits_epochs``


@dataclass
class TrainConfig:
    """Everything that determines a training run. ``None`` means "choose for this model and data"."""

    model: str = "mobilenetv3_small_050"
    data: str = DIGITS  # "digits" (bundled scikit-learn digits) or an ImageFolder directory
    out: str = "runs/edgezoo"
    epochs: int | None = None  # None: the family's digits epochs on digits, else DEFAULT_EPOCHS
    batch_size: int = 64
    img_size: int | None = None  # None: the family's digits size, or the model's default_cfg input size
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # family-specific create_model overrides
    seed: int = 0
    # optimisation
    optimizer: str | None = None  # sgd | rmsprop | adamw
    lr: float | None = None  # peak learning rate at this batch size
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = None  # max global gradient norm; 0 disables
    label_smoothing: float = 0.1
    drop_path: float | None = None
    ema: bool = True
    ema_decay: float | None = None  # None: time constant of ~1/10 of the run, within [0.99, 0.9999]
    amp: bool | None = None  # None: on for CUDA, off on CPU (no speed-up there for these models)
    channels_last: bool | None = None  # None: on for CUDA convnets
    # data and augmentation
    val_fraction: float = 0.25  # for a single ImageFolder without train/ and val/
    scale_min: float | None = None  # RandomResizedCrop's smallest area fraction
    hflip: bool | None = None  # off for digits (a mirrored 2 is not a 2)
    randaugment_ops: int | None = None  # 0 disables RandAugment
    randaugment_magnitude: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    crop_pct: float | None = None  # evaluation centre-crop fraction; None: model default_cfg (1.0 for digits)
    workers: int | None = None
    train_subset: int | None = None  # use only this many training images (smoke tests)
    val_subset: int | None = None
    # knowledge distillation
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    # A teacher without weights only adds noise to the loss; it must be asked for (to test the wiring).
    teacher_random_init: bool = False
    kd_alpha: float = 0.5  # weight of the soft-target KL term; the hard-label CE gets 1 - kd_alpha
    kd_temperature: float = 4.0
    # runtime
    device: str | None = None  # None: cuda if available else cpu
    resume: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FamilyRecipe:
    """Family defaults, as a table: optimiser settings, regularisation, and the digits preset.

    ``digits_img_size`` exists because the digits are 8×8: fed at that size a stride-32 network collapses them to a
    1×1 map after its second stage. Upsampling to 64 px keeps a 2×2 grid at stride 32 and costs little.
    ``digits_epochs`` and ``digits_scale_min`` are chosen so a default digits run reaches ≥ 98 % held-out top-1 in
    about three minutes on two CPU cores (BENCHMARKS.md, "Training on digits"). Cropping away 40 % of an 8×8 digit
    is a strong augmentation: the SGD convnets still reach 99 % with it, but the AdamW families (transformers
    above all) learn several times faster with crops of ≥ 90 % of the area.
    """

    optimizer: str
    lr_per_256: float  # peak lr for a batch of 256, scaled linearly with the batch size
    weight_decay: float
    warmup_epochs: float
    grad_clip: float
    drop_path: float
    digits_img_size: int
    digits_epochs: int
    digits_scale_min: float  # RandomResizedCrop's smallest area fraction on digits
    digits_model_kwargs: tuple[tuple[str, Any], ...] = ()


_CONVNET = FamilyRecipe(
    optimizer="sgd", lr_per_256=0.8, weight_decay=4e-5, warmup_epochs=2, grad_clip=0.0, drop_path=0.0,
    digits_img_size=64, digits_epochs=15, digits_scale_min=0.6,
)
# MobileNetV1-0.25 (0.2M parameters) costs a third of V2/V3 per step but under-fits the heavy crop (97.8 % after
# 20 epochs at scale 0.6): it gets 20 epochs and the light crop.
_CONVNET_V1 = dataclasses.replace(_CONVNET, digits_epochs=20, digits_scale_min=0.9)
# MobileNetV2-0.35's loss rose above chance (3.0-3.8) during warm-up at 0.8 per 256 and it ended at 94.9 %; a
# quarter of that (0.05 at batch 64, near the paper's 0.045 at batch 96) is stable.
_CONVNET_V2 = dataclasses.replace(_CONVNET, lr_per_256=0.2)
# MobileNetV4's (timm-faithful) classifier init gives logits of std ~4 for 10 classes, an initial loss of ~6.7:
# it spends ~5 epochs recovering (97.6 % after 12 epochs; half the lr recovered more slowly still), so it gets 16.
_ADAMW_CONV = FamilyRecipe(
    optimizer="adamw", lr_per_256=4e-3, weight_decay=0.05, warmup_epochs=2, grad_clip=5.0, drop_path=0.0,
    digits_img_size=64, digits_epochs=16, digits_scale_min=0.9,
)
_HYBRID = FamilyRecipe(
    optimizer="adamw", lr_per_256=4e-3, weight_decay=0.05, warmup_epochs=2, grad_clip=1.0, drop_path=0.0,
    digits_img_size=64, digits_epochs=12, digits_scale_min=0.9,
)
# Plain transformers see the digit as a grid of patches. A patch embedding is linear, so a patch of the upsampled
# image carries the information of the source pixels under it: at 16 px, 8-px patches give a 2×2 grid of 4 tokens
# of 4×4 source pixels. 4-px patches (16 tokens of 2×2 pixels) cost ViT-Ti 3.4× more per image and learned more
# slowly per epoch (59 % vs 91 % after 6 epochs), so they do not fit the time budget. Mixer-S's token MLP is
# 256 wide whatever the grid, so its cost hardly falls with fewer tokens (~50 s CPU per epoch at 4 tokens). It
# learns fast (90 % after one epoch) but ended at 97.8 % (EMA) after 4, so it gets 5 (98.0 %): 2 min 18 s on two
# threads, the slowest default digits run (BENCHMARKS.md).
_VIT = FamilyRecipe(
    optimizer="adamw", lr_per_256=4e-3, weight_decay=0.05, warmup_epochs=2, grad_clip=1.0, drop_path=0.0,
    digits_img_size=16, digits_epochs=20, digits_scale_min=0.9, digits_model_kwargs=(("patch_size", 8),),
)
_MIXER = FamilyRecipe(
    optimizer="adamw", lr_per_256=4e-3, weight_decay=0.05, warmup_epochs=1, grad_clip=1.0, drop_path=0.0,
    digits_img_size=16, digits_epochs=5, digits_scale_min=0.9, digits_model_kwargs=(("patch_size", 8),),
)

# Keyed by the registry's family name. Unknown families fall back to the hybrid (AdamW) recipe.
FAMILY_RECIPES: dict[str, FamilyRecipe] = {
    "mobilenetv1": _CONVNET_V1,
    "mobilenetv2": _CONVNET_V2,
    "mobilenetv3": _CONVNET,
    "mobilenetv4": _ADAMW_CONV,
    "mobilevit": _HYBRID,
    "edgenext": _HYBRID,
    "vit": _VIT,
    "mlp_mixer": _MIXER,
}
FALLBACK_RECIPE = _HYBRID


def family_recipe(family: str) -> FamilyRecipe:
    return FAMILY_RECIPES.get(family, FALLBACK_RECIPE)


_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _check_number(name: str, value: Any, *, kind: type, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{name} must be {'a number' if kind is float else 'an integer'}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""
    if not isinstance(cfg.model, str) or not cfg.model:
        raise ValueError(f"model must be a model name, got {cfg.model!r}")
    if not isinstance(cfg.data, str) or not cfg.data:
        raise ValueError(f"data must be 'digits' or an ImageFolder directory, got {cfg.data!r}")
    _check_number("epochs", cfg.epochs, kind=int, lo=1, allow_none=True)
    _check_number("batch_size", cfg.batch_size, kind=int, lo=1)
    _check_number("img_size", cfg.img_size, kind=int, lo=8, hi=4096, allow_none=True)
    _check_number("seed", cfg.seed, kind=int, lo=0)
    _check_number("lr", cfg.lr, kind=float, lo=0, lo_open=True, allow_none=True)
    _check_number("weight_decay", cfg.weight_decay, kind=float, lo=0, allow_none=True)
    _check_number("momentum", cfg.momentum, kind=float, lo=0, hi=1)
    _check_number("warmup_epochs", cfg.warmup_epochs, kind=float, lo=0, allow_none=True)
    _check_number("min_lr_ratio", cfg.min_lr_ratio, kind=float, lo=0, hi=1)
    _check_number("grad_clip", cfg.grad_clip, kind=float, lo=0, allow_none=True)
    _check_number("label_smoothing", cfg.label_smoothing, kind=float, lo=0, hi=0.99)
    _check_number("drop_path", cfg.drop_path, kind=float, lo=0, hi=0.99, allow_none=True)
    _check_number("ema_decay", cfg.ema_decay, kind=float, lo=0, hi=0.99999, allow_none=True)
    _check_number("val_fraction", cfg.val_fraction, kind=float, lo=0, lo_open=True, hi=0.9)
    _check_number("scale_min", cfg.scale_min, kind=float, lo=0.01, hi=1, allow_none=True)
    _check_number("randaugment_ops", cfg.randaugment_ops, kind=int, lo=0, hi=14, allow_none=True)
    _check_number("randaugment_magnitude", cfg.randaugment_magnitude, kind=int, lo=0, hi=30)
    _check_number("mixup_alpha", cfg.mixup_alpha, kind=float, lo=0)
    _check_number("cutmix_alpha", cfg.cutmix_alpha, kind=float, lo=0)
    _check_number("crop_pct", cfg.crop_pct, kind=float, lo=0.05, hi=1, allow_none=True)
    _check_number("workers", cfg.workers, kind=int, lo=0, allow_none=True)
    _check_number("train_subset", cfg.train_subset, kind=int, lo=1, allow_none=True)
    _check_number("val_subset", cfg.val_subset, kind=int, lo=1, allow_none=True)
    _check_number("kd_alpha", cfg.kd_alpha, kind=float, lo=0, hi=1)
    _check_number("kd_temperature", cfg.kd_temperature, kind=float, lo=0, lo_open=True)
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.teacher_checkpoint is not None and cfg.teacher is None:
        raise ValueError("teacher_checkpoint was given without teacher (the teacher's model name)")
    if cfg.teacher_random_init and cfg.teacher is None:
        raise ValueError("teacher_random_init=True was given without teacher (the teacher's model name)")
    if cfg.teacher_random_init and cfg.teacher_checkpoint is not None:
        raise ValueError(f"teacher_random_init=True contradicts teacher_checkpoint={cfg.teacher_checkpoint!r}; "
                         "give one or the other")
    if cfg.teacher is not None and cfg.teacher_checkpoint is None and not cfg.teacher_random_init:
        raise ValueError(f"teacher={cfg.teacher!r} needs teacher_checkpoint (--teacher-checkpoint RUN_DIR or "
                         "weights file): a randomly initialised teacher teaches nothing; pass "
                         "teacher_random_init=True (--teacher-random-init) to distil from one anyway")
    if not isinstance(cfg.model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a mapping, got {cfg.model_kwargs!r}")
    if cfg.device is not None and (not isinstance(cfg.device, str) or not cfg.device.strip()):
        raise ValueError(f"device must be cpu, cuda or cuda:N (or unset for cuda-if-available), got {cfg.device!r}")
    return cfg


def resolve_config(cfg: TrainConfig, *, family: str, world_size: int = 1) -> TrainConfig:
    """Fill every ``None`` ("auto") field from the family recipe and the dataset; returns a new config."""
    import torch

    recipe = family_recipe(family)
    digits = cfg.data == DIGITS
    r = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if digits:
        for key, value in recipe.digits_model_kwargs:
            r.model_kwargs.setdefault(key, value)
    if r.img_size is None and digits:
        r.img_size = recipe.digits_img_size
    if r.epochs is None:
        r.epochs = recipe.digits_epochs if digits else DEFAULT_EPOCHS
    if r.optimizer is None:
        r.optimizer = recipe.optimizer
    if r.lr is None:
        # Linear scaling rule (Goyal et al. 2017) on the global batch.
        r.lr = recipe.lr_per_256 * r.batch_size * world_size / 256
    if r.weight_decay is None:
        r.weight_decay = recipe.weight_decay
    if r.warmup_epochs is None:
        r.warmup_epochs = min(recipe.warmup_epochs, r.epochs / 5)
    if r.grad_clip is None:
        r.grad_clip = recipe.grad_clip
    if r.drop_path is None:
        r.drop_path = recipe.drop_path
    if r.scale_min is None:
        r.scale_min = recipe.digits_scale_min if digits else 0.08
    if r.hflip is None:
        r.hflip = not digits
    if r.randaugment_ops is None:
        r.randaugment_ops = 0 if digits else 2
    if r.crop_pct is None and digits:
        r.crop_pct = 1.0
    if r.device is None:
        r.device = "cuda" if torch.cuda.is_available() else "cpu"
    if r.amp is None:
        r.amp = r.device.startswith("cuda")
    if r.channels_last is None:
        # NHWC helps cuDNN convolutions; token models gain nothing from it.
        r.channels_last = r.device.startswith("cuda") and recipe not in (_VIT, _MIXER)
    if r.workers is None:
        r.workers = 0 if digits else min(4, max(1, (os.cpu_count() or 2) // 2))
    return validate_config(r)


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of :class:`TrainConfig` fields; unknown keys are an error naming them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"config file {str(p)!r} has unknown keys {unknown}; allowed: {sorted(_FIELD_TYPES)}")
    return data


def build_config(overrides: dict[str, Any] | None = None, *, yaml_path: str | os.PathLike | None = None) -> TrainConfig:
    """A validated config from the defaults, an optional YAML file, then ``overrides`` (explicit flags)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml_config(yaml_path))
    for key, value in (overrides or {}).items():
        if key not in _FIELD_TYPES:
            raise TypeError(f"unknown training setting {key!r}; allowed: {sorted(_FIELD_TYPES)}")
        values[key] = value
    return validate_config(TrainConfig(**values))


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated config from a saved run's settings (``config.yaml`` or the state file)."""
    known = {k: v for k, v in data.items() if k in _FIELD_TYPES}
    if known.get("teacher") and known.get("teacher_checkpoint") is None and "teacher_random_init" not in known:
        # Runs saved before teacher_random_init existed distilled from a random teacher; resuming keeps that.
        known["teacher_random_init"] = True
    return validate_config(TrainConfig(**known))
