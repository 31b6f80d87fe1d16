"""NetAdapt (Yang et al., ECCV 2018): shrink a trained network layer by layer until it meets a latency budget.

The algorithm (paper, Algorithm 1) starts from a trained model and repeats until the predicted latency reaches the
target:

1. set this step's budget: the current latency minus a decrement (a fraction of the starting latency that decays
   from step to step, the paper's resource-reduction schedule);
2. for every prunable layer, *propose* the largest channel count that alone brings the model under the budget
   (latency from empirical measurements, here :mod:`edgezoo.search.latency`), keeping the filters with the
   largest L2 norm;
3. give each proposal a *short-term fine-tune* and measure its accuracy on a holdout split of the training data;
4. keep the proposal with the best holdout accuracy.

A *long-term fine-tune* of the final model follows; here it distils from the original model (Hinton et al. 2015),
which recovers more of the accuracy per epoch than labels alone on small data. "Layer" here is a channel group of
:mod:`edgezoo.models.pruned`: convs tied by a residual add shrink together. Deviations that keep a run within CPU
minutes on small data are recorded in ``report.json`` (``settings``): channel counts move in multiples of
``round_to``; every proposal of a step is fine-tuned on the *same* few augmented batches (a fairer comparison
than independent draws, and one data-loading pass per step); BatchNorm statistics are re-estimated on those
batches before the holdout evaluation, so a proposal is not judged by statistics of channels it no longer has;
``candidates`` may cap how many proposals are fine-tuned (default: all, as in the paper).

Latency on ``hardware="host"`` comes from a per-block table measured in the engine that
:func:`edgezoo.deploy.optimize` picks for the starting model at its resolution (``settings.engine="auto"``); the
binary searches of all layers advance in lock-step so that each round measures its missing blocks in one batch.
At the end the starting and the final model are timed side by side in that same engine (interleaved medians),
and ``report.json`` gives both the predicted and the measured speed-up.

A run saves its state after every step (``out/netadapt_state.json`` + ``.safetensors``); ``resume=True`` continues
a killed run from its last finished step with the same result, or prunes a finished run further when
``max_steps`` / ``minutes`` are raised.

The result is an ordinary model: ``arch.yaml`` (``kind: pruned``, built by
:func:`edgezoo.models.pruned.build_pruned`) and its weights.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.pruned import (
    KIND,
    SPEC_FORMAT,
    ChannelGroup,
    build_pruned,
    filter_importance,
    prunable_groups,
    prune_channels,
    refresh_metadata,
    shrink_group,
)
from .latency import check_hardware, latency_predictor, module_units
from .supernet import recalibrate_bn

STATE_JSON = "netadapt_state.json"
STATE_WEIGHTS = "netadapt_state.safetensors"
# Settings a resumed run may change (how long / how far to go on); everything else stays as the run started.
RESUMABLE = ("max_steps", "minutes", "retarget")


@dataclass
class NetAdaptSettings:
    """Knobs of one NetAdapt run (defaults sized for the bundled digits on two CPU cores)."""

    decrement: float = 0.08  # first step's latency decrement, as a fraction of the starting latency
    decrement_decay: float = 0.96  # the decrement shrinks by this factor each step (the paper's schedule)
    round_to: int = 8  # channel counts move in multiples of this (smaller groups by 1)
    candidates: int | None = None  # proposals per step that get the short fine-tune (fewest norm lost); None: all
    max_groups: int | None = None  # layers probed per step (a seeded sample); None: all, as in the paper
    min_proposals: int = 4  # fewer layers than this can meet a step's budget alone: halve that step's decrement
    finetune_steps: int = 8  # short-term fine-tune: SGD steps per proposal (the same batches for every proposal)
    bn_batches: int = 4  # batches to re-estimate BatchNorm statistics on before a holdout evaluation
    long_epochs: int = 4  # long-term fine-tune of the result, epochs over the training split
    kd_alpha: float = 0.7  # long fine-tune: weight of distillation from the original model (0: labels only)
    kd_temperature: float = 2.0
    batch_size: int = 32
    lr: float = 0.01
    weight_decay: float = 4e-5
    holdout_fraction: float = 0.2  # of the training data, to choose among proposals (the test split is not used)
    max_steps: int = 40
    minutes: float | None = None  # stop proposing after this long in total (then the long fine-tune, the output)
    seed: int = 0
    source: str = "table"  # latency source on "host": "table" or "corrected"; presets use the roofline
    engine: str = "auto"  # host engine of the table: "auto" = what optimize() picks for the starting model
    threads: int | None = None  # host threads for the table and the final timing (None: torch's)
    measure: bool = True  # host: time the starting and final model side by side at the end
    retarget: int = 0  # host: when the predicted target is met, time the model; if the measured speed-up falls
    # short, lower the predicted target by the measured/predicted ratio and go on (at most this many times)

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"NetAdaptSettings.{name} must be {allowed}, got {getattr(self, name)!r}")

        if not 0 < self.decrement < 1:
            raise bad("decrement", "a fraction in (0, 1)")
        if not 0 < self.decrement_decay <= 1:
            raise bad("decrement_decay", "in (0, 1]")
        for name in ("round_to", "batch_size", "max_steps", "min_proposals"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "an int >= 1")
        for name in ("finetune_steps", "bn_batches", "long_epochs", "retarget"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "an int >= 0")
        for name in ("candidates", "max_groups", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(name, "None or an int >= 1")
        if not 0 <= self.kd_alpha <= 1:
            raise bad("kd_alpha", "in [0, 1]")
        if not self.kd_temperature > 0:
            raise bad("kd_temperature", "> 0")
        if not 0 < self.holdout_fraction < 1:
            raise bad("holdout_fraction", "a fraction in (0, 1)")
        if self.minutes is not None and not self.minutes > 0:
            raise bad("minutes", "None or > 0")


class NetAdaptError(ValueError):
    """The request cannot be met (e.g. a target below what pruning can reach)."""


# --------------------------------------------------------------------------------------------------- data
@dataclass
class _Data:
    train: Any  # augmented, for fine-tuning (training split minus the holdout)
    holdout: tuple[Tensor, Tensor]  # un-augmented images and labels, to choose among proposals
    val: tuple[Tensor, Tensor]  # the run's validation split: reported only, never used to choose
    classes: list[str]


def _tensors(ds: Any) -> tuple[Tensor, Tensor]:
    """A deterministic (un-augmented) dataset as two tensors: evaluated once per proposal, so load it once."""
    xs, ys = [], []
    for batch in _loader(ds, 256, shuffle=False):
        if batch is not None:
            xs.append(batch[0])
            ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys)


def _datasets(data: str, meta: dict[str, Any], settings: NetAdaptSettings) -> _Data:
    from torch.utils.data import Subset

    from ..registry import get_entry
    from ..train import build_config, build_datasets, resolve_config
    from ..train.data import eval_transform

    base = meta["model"]
    family = get_entry(base).family
    cfg = resolve_config(build_config({"model": base, "data": data, "img_size": meta["img_size"]}), family=family)
    bundle = build_datasets(cfg, img_size=meta["img_size"], mean=meta["mean"], std=meta["std"],
                            crop_pct=float(meta.get("crop_pct", 1.0)), interpolation=meta.get("interpolation", "bicubic"))
    if list(bundle.classes) != list(meta["classes"]):
        raise ValueError(f"data {data!r} has classes {bundle.classes[:5]}…, the checkpoint was trained on "
                         f"{list(meta['classes'])[:5]}…")
    n = len(bundle.train)
    order = list(range(n))
    random.Random(settings.seed).shuffle(order)
    n_hold = max(1, int(round(settings.holdout_fraction * n)))
    hold_idx, train_idx = sorted(order[:n_hold]), sorted(order[n_hold:])
    plain = copy.copy(bundle.train)
    plain.transform = eval_transform(img_size=meta["img_size"], crop_pct=float(meta.get("crop_pct", 1.0)),
                                     mean=meta["mean"], std=meta["std"],
                                     interpolation=meta.get("interpolation", "bicubic"))
    return _Data(Subset(bundle.train, train_idx), _tensors(Subset(plain, hold_idx)), _tensors(bundle.val),
                 list(bundle.classes))


def _loader(ds: Any, batch_size: int, *, shuffle: bool, seed: int = 0) -> Any:
    from torch.utils.data import DataLoader

    from ..train.data import skip_none_collate

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=skip_none_collate,
                      drop_last=shuffle and len(ds) > batch_size)


def _batches(ds: Any, n: int, batch_size: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` augmented training batches drawn with ``seed`` (the augmentation RNG is seeded too)."""
    from ..train.data import take_batches

    torch.manual_seed(seed)
    return [(b[0], b[1]) for b in take_batches(lambda e: _loader(ds, batch_size, shuffle=True, seed=seed + e), n)]


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 256) -> tuple[float, float]:
    """``(top-1 percent, mean cross-entropy)`` of ``model`` on ``data``: an ``(images, labels)`` pair or a dataset."""
    model.eval()
    x_all, y_all = data if isinstance(data, tuple) else _tensors(data)
    correct, loss, total = 0, 0.0, 0
    for i in range(0, len(y_all), batch_size):
        x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
        logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        total += len(y)
    return 100.0 * correct / max(1, total), loss / max(1, total)


def accuracy(model: nn.Module, data: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``data`` (an ``(images, labels)`` pair or a dataset)."""
    return evaluate(model, data, batch_size)[0]


def _optimizer(model: nn.Module, settings: NetAdaptSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": settings.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, momentum=0.9, nesterov=True)


def finetune_on(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], settings: NetAdaptSettings) -> None:
    """Short-term fine-tune: one SGD step (momentum 0.9, label smoothing 0.1) per batch of ``batches``."""
    if not batches:
        return
    model.train()
    opt = _optimizer(model, settings)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def finetune(model: nn.Module, ds: Any, *, steps: int, settings: NetAdaptSettings, seed: int,
             cosine: bool = False, teacher: nn.Module | None = None) -> None:
    """``steps`` SGD steps on ``ds``, cosine-decayed when ``cosine``; with ``teacher``, the loss distils from it
    (``settings.kd_alpha``, ``settings.kd_temperature``; :func:`edgezoo.train.distill.distillation_loss`)."""
    from ..train.data import take_batches
    from ..train.distill import distillation_loss

    if steps <= 0:
        return
    torch.manual_seed(seed)
    model.train()
    opt = _optimizer(model, settings)
    if teacher is not None:
        teacher.eval()
    batches = take_batches(lambda e: _loader(ds, settings.batch_size, shuffle=True, seed=seed + e), steps)
    for done, (x, y) in enumerate(batches):
        if cosine:
            for group in opt.param_groups:
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * done / steps))
        logits = model(x)
        if teacher is not None and settings.kd_alpha > 0:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = distillation_loss(logits, t_logits, y, alpha=settings.kd_alpha,
                                     temperature=settings.kd_temperature, label_smoothing=0.1)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------------------------------------------ proposals
def _counts(size: int, round_to: int) -> list[int]:
    """Channel counts a group of ``size`` may shrink to, largest first."""
    step = round_to if size > round_to else 1
    top = (size - 1) // step * step
    return [k for k in range(top, 0, -step) if k >= min(step, size - 1)]


@dataclass
class Proposal:
    group: str
    channels_from: int
    channels_to: int
    predicted_ms: float
    norm_lost: float  # fraction of the group's filter L2 norm removed
    model: nn.Module


class _Search:
    """Binary search of one group's channel count: the largest count whose model meets the budget.

    Latency falls as channels fall, so the counts that meet the budget form a suffix of ``counts`` (largest
    first); the search keeps ``lo..hi`` with ``counts[hi]`` known to meet it."""

    def __init__(self, model: nn.Module, group: ChannelGroup, round_to: int) -> None:
        self.model, self.group = model, group
        self.counts = _counts(group.size, round_to)
        self.importance = filter_importance(model, group)
        self.order = self.importance.argsort(descending=True)
        self.models: dict[int, nn.Module] = {}
        self.ms: dict[int, float] = {}
        self.lo, self.hi = 0, len(self.counts) - 1
        self.failed = not self.counts

    def build(self, k: int) -> nn.Module:
        """The model with ``k`` channels in the group, sharing every tensor it does not change with the parent
        (``shrink_group`` replaces tensors, never edits them): cheap to price; :func:`_own` it before training."""
        if k not in self.models:
            memo: dict[int, Any] = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}
            m = copy.deepcopy(self.model, memo)
            shrink_group(m, self.group, self.order[:k])
            self.models[k] = m
        return self.models[k]

    def want(self) -> int | None:
        """The count to price next (None: done)."""
        if self.failed:
            return None
        if self.counts[-1] not in self.ms:
            return self.counts[-1]
        if self.lo >= self.hi:
            return None
        return self.counts[(self.lo + self.hi) // 2]

    def record(self, k: int, ms: float, budget: float) -> None:
        self.ms[k] = ms
        if k == self.counts[-1]:
            self.failed = ms > budget
            return
        mid = (self.lo + self.hi) // 2
        if ms <= budget:
            self.hi = mid
        else:
            self.lo = mid + 1
        self.models = {c: m for c, m in self.models.items() if c in (k, self.counts[self.hi])}

    def result(self) -> Proposal | None:
        if self.failed:
            return None
        k = self.counts[self.hi]
        norms = self.importance.pow(2)
        lost = float(1 - norms[self.order[:k]].sum() / norms.sum().clamp_min(1e-12))
        return Proposal(self.group.name, self.group.size, k, self.ms[k], lost, self.build(k))


def _own(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with tensors of its own (proposals share unchanged tensors with their parent)."""
    return copy.deepcopy(model)


def _in_channels(module: nn.Module) -> int | None:
    """Channels of the tensor ``module`` reads: those of its first conv / linear / norm (``None``: none)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return int(m.num_features)
    return None


class _Pricer:
    """Predicted latency of the models NetAdapt proposes, priced block by block.

    :func:`edgezoo.search.latency.module_units` finds a model's blocks with a shape pass on the meta device, which
    costs ~0.2 s for a MobileNetV2 (Python-level decompositions), and a real forward costs as much (every new
    channel count makes oneDNN build new kernels); a step's binary searches would call it hundreds of times.
    Channel pruning never changes *which* blocks run or their spatial sizes, only the channels, and a block's
    input channels are those of its first conv / linear / norm. So the blocks are found once on the starting
    model, the rule is checked there against the shape pass, and each proposal's blocks are rebuilt from it: the
    same blocks and keys, so the same prediction as ``predict_module_ms`` (where the rule does not hold, that is
    what is used)."""

    def __init__(self, predictor: Any, shape: tuple[int, ...], model: nn.Module) -> None:
        self.predictor, self.shape = predictor, shape
        self.units_at: list[tuple[str, tuple[int, ...]]] | None = None
        try:
            units = module_units(model, shape)
        except ValueError:
            return  # priced whole, by the predictor itself
        self.units_at = [(u.name, u.input_shape) for u in units]
        if [u.input_shape for u in self.units(model)] != [u.input_shape for u in units]:
            self.units_at = None

    def units(self, model: nn.Module) -> list[Any]:
        from .latency import ModuleItem

        out = []
        for name, at in self.units_at or []:
            mod = model.get_submodule(name)
            c = _in_channels(mod)
            out.append(ModuleItem(name, mod, at if c is None else (at[0], c, *at[2:])))
        return out

    def __call__(self, model: nn.Module) -> float:
        if self.units_at is None:
            return float(self.predictor.predict_module_ms(model, self.shape))
        return float(self.predictor.predict_items_ms(self.units(model)))

    def prefetch(self, models: Sequence[nn.Module]) -> None:
        """Price the blocks of all ``models`` in one call, so a measured table times its missing blocks as one
        batch (one round of interleaved timing) instead of one small batch per model."""
        if len(models) < 2 or self.units_at is None:
            return
        self.predictor.predict_items_ms([u for m in models for u in self.units(m)])


def propose_all(model: nn.Module, groups: Sequence[ChannelGroup], budget_ms: float,
                predict: Callable[[nn.Module], float], round_to: int,
                prefetch: Callable[[Sequence[nn.Module]], None] | None = None) -> list[Proposal]:
    """For every group, the largest channel count whose model meets ``budget_ms`` alone (keeping the filters of
    largest L2 norm); groups that cannot reach it are left out. The groups' binary searches advance together so
    that ``prefetch`` can price each round's new models at once."""
    searches = [_Search(model, g, round_to) for g in groups]
    while True:
        todo = [(s, k) for s in searches if (k := s.want()) is not None]
        if not todo:
            break
        built = [(s, k, s.build(k)) for s, k in todo]
        if prefetch is not None:
            prefetch([m for _, _, m in built])
        for s, k, m in built:
            s.record(k, predict(m), budget_ms)
    return [p for s in searches if (p := s.result()) is not None]


def propose(model: nn.Module, group: ChannelGroup, budget_ms: float, predict: Callable[[nn.Module], float],
            round_to: int) -> Proposal | None:
    """The largest channel count of ``group`` whose model meets ``budget_ms`` (binary search: latency falls
    with channels), keeping the filters of largest L2 norm; None when even the smallest count does not."""
    found = propose_all(model, [group], budget_ms, predict, round_to)
    return found[0] if found else None


# ------------------------------------------------------------------------------------------------ main loop
def _load(checkpoint: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, training metadata, base spec) of a checkpoint written by ``edgezoo train`` or ``edgezoo adapt``."""
    from ..checkpoint import load_state_dict_file, read_trained_metadata
    from ..train import load_trained_model

    meta = read_trained_metadata(checkpoint)
    if meta is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} carries no edgezoo training metadata; "
                         "use a run written by `edgezoo train`")
    saved = meta.get("arch_spec")  # read_trained_metadata has parsed it already
    if saved is not None and saved.get("kind") != KIND:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds a searched architecture ({saved.get('kind')!r} spec); "
                         "NetAdapt starts from a zoo model's run or an earlier `edgezoo adapt` result")
    if saved is not None:  # an earlier `edgezoo adapt` result: prune further from where it stopped
        spec = {k: v for k, v in saved.items() if k in ("format", "kind", "base", "base_kwargs", "channels")}
        model = build_pruned(spec, num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                             img_size=meta["img_size"])
        model.load_state_dict(load_state_dict_file(meta["path"]))
        meta = {**meta, "model": spec["base"], "model_kwargs": spec.get("base_kwargs", {})}
        return model.eval(), meta, spec
    model, meta = load_trained_model(checkpoint)
    spec = {"format": SPEC_FORMAT, "kind": KIND, "base": meta["model"], "base_kwargs": meta["model_kwargs"],
            "channels": {}}
    return model, meta, spec


def _channels(model: nn.Module, base_sizes: dict[str, int], input_shape: tuple[int, ...]) -> dict[str, int]:
    now = {name: g.size for name, g in prunable_groups(model, input_shape).items()}
    return {name: now[name] for name in base_sizes if name in now and now[name] != base_sizes[name]}


def _host_engine(model: nn.Module, shape: tuple[int, ...], threads: int) -> str:
    """The engine :func:`edgezoo.deploy.optimize` deploys ``model`` with at ``shape`` on this host (its variant
    name, as latency tables name engines)."""
    from ..deploy.optimize import optimize

    return optimize(copy.deepcopy(model).eval(), torch.randn(shape), threads=threads, repeats=7, block=3).variant


def measure_pair(base: nn.Module, final: nn.Module, shape: tuple[int, ...], *, engine: str, threads: int,
                 rounds: int = 30) -> dict[str, float]:
    """Median milliseconds of ``base`` and ``final`` in ``engine`` (a latency table's engine name), built the way
    :func:`edgezoo.deploy.optimize` builds it and timed side by side (interleaved rounds of back-to-back calls)."""
    from ..deploy.optimize import optimize, time_interleaved

    backend = engine.split("/")[0]
    x = torch.randn(shape)
    runners = {}
    for name, m in (("base", base), ("final", final)):
        if backend == "openvino":  # the table's variant (pinned or not), not whichever optimize() ranks first
            from ..deploy import fuse
            from ..deploy.optimize import _openvino_runner

            run = _openvino_runner(fuse(copy.deepcopy(m).eval()), x, threads, engine.endswith("/pinned"))
        else:
            run = optimize(copy.deepcopy(m).eval(), x, backend=backend, threads=threads)
        runners[name] = (lambda r=run: r(x))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return time_interleaved(runners, warmup=5, repeats=rounds, block=10)
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ resume state
def _save_state(out: Path, model: nn.Module, state: dict[str, Any]) -> None:
    from ..checkpoint import atomic_write_bytes, save_safetensors

    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), out / STATE_WEIGHTS)  # weights first: the JSON names a finished step
    atomic_write_bytes(out / STATE_JSON, (json.dumps(state, indent=1) + "\n").encode())


def _load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_JSON
    if not path.is_file() or not (out / STATE_WEIGHTS).is_file():
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: it holds no {STATE_JSON} of an "
                                "`edgezoo adapt` run; start one without --resume")
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"cannot resume: {str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != "edgezoo-netadapt-state/1":
        raise ValueError(f"cannot resume: {str(path)!r} is not a NetAdapt state file")
    return state


def netadapt(
    checkpoint: str,
    *,
    target_ms: float | None = None,
    hardware: str = "host",
    out: str,
    data: str = "digits",
    settings: NetAdaptSettings | None = None,
    table: str | None = None,
    log: Callable[[str], None] | None = None,
    resume: bool = False,
    speedup: float | None = None,
) -> dict[str, Any]:
    """Run NetAdapt on the trained ``checkpoint`` toward ``target_ms`` on ``hardware``; write ``out``.

    Give either ``target_ms`` or ``speedup`` (the target is then the starting model's predicted latency divided
    by it, e.g. ``speedup=2`` for "twice as fast on this hardware").

    Writes ``out/arch.yaml``, ``out/best.safetensors``, ``out/report.json`` and ``out/pareto.png`` (the step log:
    accuracy against predicted latency); returns the report. Raises :class:`NetAdaptError` when ``target_ms`` is
    below what pruning every layer to its minimum reaches (the message says that minimum).

    ``resume=True`` continues the run saved in ``out`` from its last finished step: checkpoint, target, hardware
    and data must be those it started with; its saved settings are used, except ``settings.max_steps``,
    ``settings.minutes`` and ``settings.retarget`` (:data:`RESUMABLE`), which the call may raise to prune a finished
    run further.
    """
    from ..checkpoint import load_state_dict_file

    s = settings or NetAdaptSettings()
    say = log or (lambda _m: None)
    check_hardware(hardware)
    if (target_ms is None) == (speedup is None):
        raise ValueError(f"give exactly one of target_ms and speedup, got target_ms={target_ms!r}, speedup={speedup!r}")
    for name, v in (("target_ms", target_ms), ("speedup", speedup)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if speedup is not None and not speedup > 1:
        raise ValueError(f"speedup must be > 1 (how many times faster), got {speedup!r}")
    run_ident = {"checkpoint": str(checkpoint), "target_ms": None if target_ms is None else float(target_ms),
                 "speedup": None if speedup is None else float(speedup), "hardware": hardware, "data": data}
    out_dir = Path(out)
    state: dict[str, Any] | None = None
    if resume:
        state = _load_state(out_dir)
        for k, v in run_ident.items():
            if state["run"].get(k) != v:
                raise ValueError(f"cannot resume {str(out)!r}: it was started with {k}={state['run'].get(k)!r}, "
                                 f"not {v!r}")
        saved = NetAdaptSettings(**state["settings"])
        s = NetAdaptSettings(**{**asdict(saved), **{k: getattr(s, k) for k in RESUMABLE}})
    elif (out_dir / STATE_JSON).is_file():
        raise ValueError(f"--out {str(out)!r} already holds a NetAdapt run; pass --resume to continue it, "
                         "or choose another --out")
    torch.manual_seed(s.seed)
    t_start = time.time()
    base_model, meta, spec = _load(checkpoint)
    shape = (1, int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    threads = int(s.threads or torch.get_num_threads())
    source = s.source if hardware == "host" else "roofline"
    engine = None
    if hardware == "host":
        if state is not None:
            engine = state["engine"]
        elif table is not None and Path(table).is_file():
            engine = None  # the table says
        else:
            engine = s.engine if s.engine != "auto" else _host_engine(base_model, shape, threads)
        if table is not None and not Path(table).is_file():
            from .latency import build_latency_table

            build_latency_table([], engine=engine, threads=threads, out=table)  # starts empty, fills as needed
        predictor = latency_predictor(hardware, source, table, engine=engine or "auto", threads=threads,
                                      build_items=[])
        if hasattr(predictor, "table"):
            engine = predictor.table.engine
            threads = predictor.table.threads
    else:
        predictor = latency_predictor(hardware, source, table, build_items=[])

    predict = _Pricer(predictor, shape, base_model)
    base_groups = prunable_groups(base_model, shape)
    if not base_groups:
        raise NetAdaptError(f"{meta['model']} has no prunable channel groups")
    base_sizes = {name: g.size for name, g in base_groups.items()}
    start_ms = predict(base_model)
    if speedup is not None:
        target_ms = start_ms / speedup
    smallest = prune_channels(copy.deepcopy(base_model),
                              {n: (_counts(g.size, s.round_to) or [g.size])[-1] for n, g in base_groups.items()},
                              shape)
    floor_ms = predict(smallest)
    if target_ms < floor_ms:
        raise NetAdaptError(f"target {target_ms:g} ms is below the smallest reachable latency {floor_ms:.3f} ms "
                            f"({meta['model']} with every prunable layer at its minimum, on {hardware})")
    say(f"{meta['model']} at {shape[-1]} px: predicted {start_ms:.3f} ms on {hardware} ({predictor.source}"
        f"{', ' + str(engine) + f', {threads} threads' if engine else ''}); {len(base_groups)} prunable channel "
        f"groups; target {target_ms:.3f} ms (floor {floor_ms:.3f} ms)")

    ds = _datasets(data, meta, s)
    base_holdout = accuracy(base_model, ds.holdout)
    base_top1 = accuracy(base_model, ds.val)
    if state is None:
        model = _own(base_model)  # the starting model stays as it is: the teacher and the measured reference
        history: list[dict[str, Any]] = [dict(step=0, group=None, channels_from=None, channels_to=None,
                                              predicted_ms=start_ms, holdout_top1=base_holdout, seconds=0.0)]
        current_ms, decrement, step, spent = start_ms, s.decrement * start_ms, 0, 0.0
        goal_ms, retargets = target_ms, []  # the predicted latency to reach (lowered by a measured re-target)
        say(f"start: holdout {base_holdout:.2f}%, val top-1 {base_top1:.2f}%")
    else:
        model = build_pruned({**spec, "channels": {**spec.get("channels", {}), **state["channels"]}},
                             num_classes=meta["num_classes"], in_chans=meta["in_chans"], img_size=meta["img_size"])
        model.load_state_dict(load_state_dict_file(out_dir / STATE_WEIGHTS))
        model.eval()
        history, decrement, step, spent = state["history"], state["decrement"], state["step"], state["seconds"]
        goal_ms, retargets = state.get("goal_ms", target_ms), state.get("retargets", [])
        current_ms = predict(model)
        say(f"resumed after step {step}: predicted {current_ms:.3f} ms, holdout {history[-1]['holdout_top1']:.2f}%")

    def save(stopped: str | None) -> None:
        _save_state(out_dir, model, {
            "format": "edgezoo-netadapt-state/1", "run": run_ident, "settings": asdict(s), "engine": engine,
            "step": step, "decrement": decrement, "seconds": spent, "history": history, "stopped": stopped,
            "goal_ms": goal_ms, "retargets": retargets, "channels": _channels(model, base_sizes, shape)})

    stopped = None
    t_phase, spent_before = time.time(), spent  # search seconds of earlier sessions of this run, then this one's
    while True:
        if current_ms <= goal_ms:
            if engine is None or len(retargets) >= s.retarget or goal_ms <= floor_ms:
                break
            # The per-block table prices blocks alone; in the whole model, caches and fusions differ, so check the
            # speed-up where it counts and aim lower by the measured shortfall (NetAdapt's loop on measurements).
            t = measure_pair(base_model, model, shape, engine=engine, threads=threads, rounds=15)
            want = t["base"] * target_ms / start_ms
            if t["final"] <= want:
                break
            new_goal = max(floor_ms, current_ms * want / t["final"])
            retargets.append(dict(step=step, measured_base_ms=t["base"], measured_ms=t["final"],
                                  predicted_ms=current_ms, new_goal_ms=new_goal))
            say(f"re-target: measured {t['base']:.3f} -> {t['final']:.3f} ms ({t['base'] / t['final']:.2f}x) short "
                f"of {start_ms / target_ms:.2f}x; predicted goal {goal_ms:.3f} -> {new_goal:.3f} ms")
            goal_ms = new_goal
            continue
        if step >= s.max_steps:
            stopped = f"max_steps={s.max_steps} reached"
            break
        if s.minutes is not None and spent_before + time.time() - t_phase > 60 * s.minutes:
            stopped = f"time budget of {s.minutes:g} min used"
            break
        t0 = time.time()
        torch.manual_seed(s.seed + 7919 * (step + 1))  # each step draws from its own seed: resume = uninterrupted
        groups = prunable_groups(model, shape)
        if s.max_groups is not None and len(groups) > s.max_groups:
            names = random.Random(s.seed + step + 1).sample(sorted(groups), s.max_groups)
            groups = {n: groups[n] for n in names}
        proposals: list[Proposal] = []
        new_decrement = decrement
        for attempt in range(5):
            budget = max(goal_ms, current_ms - new_decrement)
            proposals = propose_all(model, list(groups.values()), budget, predict, s.round_to, predict.prefetch)
            # Too few layers reach the budget alone (a large decrement late in the run, when the remaining layers
            # are cheap): the choice would be forced onto a drastic cut, so halve this step's decrement (it stays
            # halved for the steps after). Not in the paper, whose decrements are small enough not to need it.
            if len(proposals) >= min(s.min_proposals, len(groups)) or attempt == 4:
                break
            new_decrement /= 2
        if not proposals:
            stopped = f"no layer can reach {budget:.3f} ms alone"
            break
        proposals.sort(key=lambda p: p.norm_lost)
        chosen = proposals if s.candidates is None else proposals[:s.candidates]
        batches = _batches(ds.train, max(s.finetune_steps, s.bn_batches), s.batch_size, s.seed + 104729 * (step + 1))
        tried = []
        for i, p in enumerate(chosen):
            p.model = _own(p.model)
            torch.manual_seed(s.seed + 1000 * (step + 1) + i)
            finetune_on(p.model, batches[:s.finetune_steps], s)
            recalibrate_bn(p.model, batches[:s.bn_batches])
            acc, loss = evaluate(p.model, ds.holdout)
            tried.append((acc, -loss, -p.predicted_ms, -i, p))
        acc, neg_loss, _, _, best = max(tried, key=lambda t: t[:4])
        model = best.model
        refresh_metadata(model, shape)
        current_ms = predict(model)
        step += 1
        decrement = new_decrement * s.decrement_decay
        spent = spent_before + time.time() - t_phase
        history.append(dict(step=step, group=best.group, channels_from=best.channels_from,
                            channels_to=best.channels_to, predicted_ms=current_ms, holdout_top1=acc,
                            holdout_loss=-neg_loss, proposals=len(proposals), finetuned=len(tried),
                            seconds=round(time.time() - t0, 1)))
        save(None)
        say(f"step {step}: {best.group} {best.channels_from}->{best.channels_to} channels, predicted "
            f"{current_ms:.3f} ms ({start_ms / current_ms:.2f}x), holdout {acc:.2f}% ({len(tried)}/{len(proposals)} "
            f"proposals fine-tuned, {time.time() - t0:.0f}s)")
    if stopped:
        say(f"stopping: {stopped}")
    save(stopped)

    long_steps = s.long_epochs * max(1, len(ds.train) // s.batch_size)
    say(f"long-term fine-tune: {long_steps} steps" + (f", distilling from {meta['model']} (alpha {s.kd_alpha:g}, "
                                                     f"T {s.kd_temperature:g})" if s.kd_alpha > 0 else ""))
    t_long = time.time()
    finetune(model, ds.train, steps=long_steps, settings=s, seed=s.seed + 7, cosine=True,
             teacher=base_model if s.kd_alpha > 0 else None)
    long_seconds = time.time() - t_long
    top1 = accuracy(model, ds.val)
    holdout = accuracy(model, ds.holdout)
    final_ms = predict(model)
    spec = {**spec, "channels": {**spec.get("channels", {}), **_channels(model, base_sizes, shape)}}
    report = dict(
        hardware=hardware, target_ms=float(target_ms), latency_source=predictor.source,
        predicted_latency_ms=final_ms, start_predicted_latency_ms=start_ms, floor_predicted_latency_ms=floor_ms,
        target_met=final_ms <= target_ms, speedup_predicted=start_ms / final_ms if final_ms else None,
        top1=top1, base_top1=base_top1, top1_change=top1 - base_top1, holdout_top1=holdout,
        base_holdout_top1=base_holdout, base=meta["model"], params=sum(p.numel() for p in model.parameters()),
        base_params=sum(p.numel() for p in base_model.parameters()), img_size=int(meta["img_size"]),
        engine=engine, threads=threads if engine else None, steps=step, stopped=stopped, history=history,
        settings=asdict(s), search_seconds=round(spent, 1), long_finetune_seconds=round(long_seconds, 1),
        goal_ms=goal_ms, retargets=retargets,
    )
    if engine is not None and s.measure:
        t = measure_pair(base_model, model, shape, engine=engine, threads=threads)
        report.update(start_measured_latency_ms=t["base"], measured_latency_ms=t["final"],
                      speedup_measured=t["base"] / t["final"])
        say(f"measured in {engine} ({threads} threads, interleaved): {t['base']:.3f} -> {t['final']:.3f} ms "
            f"({t['base'] / t['final']:.2f}x)")
    report["seconds"] = round(time.time() - t_start, 1)
    _write(out_dir, model, spec, meta, report, ds.classes)
    say(f"done: predicted {start_ms:.3f} -> {final_ms:.3f} ms ({start_ms / final_ms:.2f}x), val top-1 "
        f"{base_top1:.2f}% -> {top1:.2f}% ({top1 - base_top1:+.2f} pt)")
    return report


def _write(out: Path, model: nn.Module, spec: dict[str, Any], meta: dict[str, Any], report: dict[str, Any],
           classes: list[str]) -> None:
    import yaml

    from ..checkpoint import atomic_write_bytes
    from ..train.checkpoints import make_metadata, save_weights

    out.mkdir(parents=True, exist_ok=True)
    # The spec file and the weights' metadata hold the same spec, so create_model(arch.yaml, checkpoint=...) and
    # `edgezoo eval --checkpoint out` both accept the pair; latency facts go under `latency` (not identity).
    arch = {"format": spec["format"], "kind": spec["kind"], "name": f"{spec['base']}_netadapt",
            "img_size": int(meta["img_size"]), "base": spec["base"], "base_kwargs": spec.get("base_kwargs", {}),
            "channels": spec["channels"],
            "latency": {"hardware": report["hardware"], "target_ms": report["target_ms"],
                        "predicted_ms": round(report["predicted_latency_ms"], 4),
                        "source": report.get("latency_source"), "engine": report.get("engine"),
                        **({"measured_ms": round(report["measured_latency_ms"], 4)}
                           if report.get("measured_latency_ms") is not None else {})}}
    atomic_write_bytes(out / "arch.yaml", yaml.safe_dump(arch, sort_keys=False).encode())
    md = make_metadata(model=arch["name"], classes=classes, img_size=int(meta["img_size"]),
                       in_chans=int(meta["in_chans"]), model_kwargs={}, mean=meta["mean"], std=meta["std"],
                       crop_pct=float(meta.get("crop_pct", 1.0)), interpolation=meta.get("interpolation", "bicubic"),
                       weights="netadapt", epoch=int(report["steps"]), top1=float(report["top1"]), arch_spec=arch)
    save_weights(model, out / "best.safetensors", md)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    plot_history(report, out / "pareto.png")


def plot_history(report: dict[str, Any], path: Path) -> None:
    """The step log as a figure: holdout accuracy against predicted latency along the NetAdapt steps (each step a
    smaller model, numbered), the result after the long fine-tune, and the measured speed-up where there is one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = report["history"]
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [h["predicted_ms"] for h in hist]
    ys = [h["holdout_top1"] for h in hist]
    ax.plot(xs, ys, "o-", ms=4, color="C0", label="after each step: holdout top-1 (short fine-tune)")
    for h in hist[1:]:
        ax.annotate(str(h["step"]), (h["predicted_ms"], h["holdout_top1"]), textcoords="offset points",
                    xytext=(0, 5), ha="center", fontsize=6, color="C0")
    ax.scatter([report["start_predicted_latency_ms"]], [report["base_top1"]], marker="s", s=60, color="C2", zorder=3,
               label=f"{report['base']}: val top-1 {report['base_top1']:.2f}%")
    ax.scatter([report["predicted_latency_ms"]], [report["top1"]], marker="*", s=180, color="C3", zorder=3,
               label=f"result after long fine-tune: val top-1 {report['top1']:.2f}% ({report['top1_change']:+.2f} pt)")
    ax.axvline(report["target_ms"], color="gray", ls="--", lw=1, label=f"target {report['target_ms']:.3f} ms")
    ax.axhline(report["base_top1"] - 0.5, color="C2", ls=":", lw=1, label="starting val top-1 − 0.5 pt")
    # keep the 0.5-point line and the result off the frame: autoscaling puts the lowest of them on the axis itself
    lo = min([*ys, report["top1"], report["base_top1"] - 0.5])
    hi = max([*ys, report["top1"], report["base_top1"]])
    pad = 0.08 * max(hi - lo, 0.2)
    ax.set_ylim(lo - pad, hi + pad)
    src = report["latency_source"] + (f", {report['engine']}, {report['threads']} threads" if report.get("engine")
                                      else "")
    ax.set_xlabel(f"predicted latency on {report['hardware']} ({src}), ms")
    ax.set_ylabel("top-1 (%)")
    title = (f"NetAdapt from {report['base']} at {report['img_size']} px: {report['steps']} steps, "
             f"predicted {report['speedup_predicted']:.2f}× faster")
    if report.get("speedup_measured"):
        title += (f"\nmeasured {report['start_measured_latency_ms']:.3f} → {report['measured_latency_ms']:.3f} ms "
                  f"({report['speedup_measured']:.2f}×, interleaved, same engine)")
    ax.set_title(title, fontsize=9)
    ax.invert_xaxis()  # time runs left to right: the model gets faster
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


__all__ = ["NetAdaptError", "NetAdaptSettings", "accuracy", "evaluate", "finetune", "finetune_on", "measure_pair",
           "netadapt", "propose", "propose_all", "recalibrate_bn"]
