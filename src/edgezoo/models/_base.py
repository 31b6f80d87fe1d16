"""The model contract every edgezoo model follows (timm-compatible surface).

Families subclass :class:`EdgeModel` and implement four methods: ``forward_features``, ``forward_head``,
``reset_classifier`` and ``forward_intermediates``, plus ``head_modules`` naming what a feature extractor does not
need. ``features_only`` mode is a state of the same model (not a wrapper), so a features-only model keeps the same
state-dict keys minus its head: checkpoints move between the two without renaming.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from ..layers.helpers import check_width_mult

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def make_default_cfg(
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    first_conv: str,
    classifier: str,
    min_input_size: tuple[int, int, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The preprocessing/pretrained-weights description timm users know as ``default_cfg``."""
    cfg = dict(
        input_size=tuple(input_size),
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=crop_pct,
        interpolation=interpolation,
        first_conv=first_conv,
        classifier=classifier,
    )
    if min_input_size is not None:
        cfg["min_input_size"] = tuple(min_input_size)
    cfg.update(extra)
    return cfg


def feature_entry(num_chs: int, reduction: int, module: str) -> dict[str, Any]:
    """One ``feature_info`` record: channels, stride w.r.t. the input, and the module producing it."""
    return {"num_chs": int(num_chs), "reduction": int(reduction), "module": module}


def resolve_out_indices(out_indices: Sequence[int] | None, num_features: int) -> tuple[int, ...]:
    """Validate feature indices (negative counts from the end, like Python) against ``num_features`` levels."""
    if out_indices is None:
        return tuple(range(num_features))
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    resolved = []
    for idx in out_indices:
        if isinstance(idx, bool) or not isinstance(idx, int) or not -num_features <= idx < num_features:
            raise ValueError(
                f"out_indices entries must be ints in [{-num_features}, {num_features - 1}] for this model, got {idx!r}"
            )
        resolved.append(idx % num_features)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"out_indices must not repeat a level, got {tuple(out_indices)!r}")
    return tuple(sorted(resolved))


class EdgeModel(nn.Module):
    """Base class: classification forward, head/feature access, and the features-only mode."""

    default_cfg: dict[str, Any]
    feature_info: list[dict[str, Any]]
    num_features: int
    num_classes: int
    features_only: bool = False
    out_indices: tuple[int, ...] = ()
    removed_head_modules: tuple[str, ...] = ()  # set by enable_features_only; their checkpoint keys are ignored
    # Models whose feature level i is the output of ``getattr(self, feature_trunk)[i]`` name that container here;
    # features-only mode then drops the entries after the deepest requested level (and ``feature_tail_modules``,
    # used only by the last level), as timm's feature extractors do for these families. None: keep every layer.
    feature_trunk: str | None = None
    feature_tail_modules: tuple[str, ...] = ()
    default_out_indices: tuple[int, ...] | None = None  # features-only levels when none are given (None: all)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:  # timm's newer name for the same thing
        return self.default_cfg

    # --- to implement per family -------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        raise NotImplementedError

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Feature maps at ``self.full_feature_info[i]`` for each ``i`` in (sorted) ``indices``; stops early."""
        raise NotImplementedError

    def head_modules(self) -> list[str]:
        """Attribute names of modules used only after the last feature level (dropped in features-only mode)."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.default_cfg["classifier"])

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices)
        return self.forward_head(self.forward_features(x))

    def enable_features_only(self, out_indices: Sequence[int] | None = None) -> "EdgeModel":
        """Switch to features-only mode in place: forward returns the list of maps at ``out_indices``.

        The head modules are removed (replaced by ``nn.Identity``), so their weights are neither kept nor expected;
        so are layers after the deepest requested level where the model names a ``feature_trunk``.
        Without ``out_indices``, the levels are ``default_out_indices`` (all levels when that is ``None``).
        """
        if out_indices is None:
            out_indices = self.default_out_indices
        full = list(self.feature_info)
        indices = resolve_out_indices(out_indices, len(full))
        removed = list(self.head_modules())
        for name in removed:
            setattr(self, name, nn.Identity())
        if self.feature_trunk is not None:
            trunk = getattr(self, self.feature_trunk)
            keep = max(indices) + 1 if indices else 0
            if keep < len(trunk):
                # Layers after the deepest requested level would never run: drop them (and their weights).
                removed += [f"{self.feature_trunk}.{i}" for i in range(keep, len(trunk))]
                setattr(self, self.feature_trunk, trunk[:keep])
                for name in self.feature_tail_modules:
                    setattr(self, name, nn.Identity())
                    removed.append(name)
        self.removed_head_modules = tuple(removed)
        self.full_feature_info = full
        self.out_indices = indices
        self.feature_info = [dict(full[i]) for i in indices]
        self.features_only = True
        return self


def forward_stages(
    x: Tensor,
    stages: Iterable[Callable[[Tensor], Tensor]],
    wanted: Collection[int],
    *,
    stem: Callable[[Tensor], Tensor] | None = None,
    output: Callable[[Tensor], Tensor] | None = None,
) -> list[Tensor]:
    """The ``forward_intermediates`` loop: run ``stem`` then ``stages`` in order, keeping the output of every stage
    index in ``wanted`` (``-1``: the stem's output), in network order, passed through ``output`` if given.

    Stops after the deepest wanted stage; with nothing wanted it runs nothing (not even the stem).
    """
    out: list[Tensor] = []
    if not wanted:
        return out
    last = max(wanted)
    if stem is not None:
        x = stem(x)
        if -1 in wanted:
            out.append(x if output is None else output(x))
    for idx, stage in enumerate(stages):
        if idx > last:
            break
        x = stage(x)
        if idx in wanted:
            out.append(x if output is None else output(x))
    return out


def validate_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0 = pooled features), got {num_classes!r}")
    return num_classes


def classifier_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or identity when ``num_classes == 0`` (the model then returns pooled features)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def check_avg_pool(global_pool: str | None, *, why: str) -> None:
    """``reset_classifier``'s ``global_pool`` for models that only average-pool: ``None`` or ``"avg"``."""
    if global_pool not in (None, "avg"):
        raise ValueError(f"global_pool must be 'avg' ({why}), got {global_pool!r}")


def width_mult_builder(
    name: str,
    *,
    model_cls: Callable[..., EdgeModel],
    config: Any,
    default_cfg: Callable[[int | tuple[int, int] | None], dict[str, Any]],
    doc: str,
    uses_drop_path: bool = True,
) -> Callable[..., EdgeModel]:
    """The registered builder of a width-multiplier CNN (MobileNet V1–V3): ``model_cls(config, ...)`` where the
    ``width_mult=`` override replaces the variant's α (a frozen dataclass field) and ``img_size`` only sets
    ``default_cfg(img_size)``. Without ``uses_drop_path`` the model takes no ``drop_path_rate`` (it is accepted and
    ignored, as timm does for networks without residual branches).
    """

    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        width_mult: float | None = None,
        drop_rate: float = 0.0,
        bn_eps: float = 1e-5,
    ) -> EdgeModel:
        cfg = config if width_mult is None else replace(config, width_mult=check_width_mult(width_mult))
        extra = {"drop_path_rate": drop_path_rate} if uses_drop_path else {}
        return model_cls(
            cfg,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            bn_eps=bn_eps,
            default_cfg=default_cfg(img_size),
            **extra,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc.replace("{name}", name)
    return build
