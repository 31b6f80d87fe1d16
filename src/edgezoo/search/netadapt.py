"""NetAdapt (Yang et al., ECCV 2018): shrink a trained network layer by layer until it meets a latency budget.

The algorithm (paper, Algorithm 1) starts from a trained model and repeats until the predicted latency reaches the
target:

1. set this step's budget: the current latency minus a decrement (which decays from step to step);
2. for every prunable layer, *propose* the largest channel count that alone brings the model under the budget
   (latency from empirical measurements, here :mod:`edgezoo.search.latency`), keeping the filters with the
   largest L2 norm;
3. give each proposal a *short-term fine-tune* and measure its accuracy on a holdout split of the training data;
4. keep the proposal with the best holdout accuracy.

A *long-term fine-tune* of the final model follows. "Layer" here is a channel group of
:mod:`edgezoo.models.pruned`: convs tied by a residual add shrink together. Two deviations keep it within CPU
minutes on small data and are reported in ``report.json``: channel counts move in multiples of ``round_to``, and
only the ``candidates`` proposals that lose the least filter norm get the short fine-tune (the paper fine-tunes
every layer's proposal).

The result is an ordinary model: ``arch.yaml`` (``kind: pruned``, built by
:func:`edgezoo.models.pruned.build_pruned`) and its weights.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
from .latency import check_hardware, latency_predictor


@dataclass
class NetAdaptSettings:
    """Knobs of one NetAdapt run (defaults sized for the bundled digits on two CPU cores)."""

    decrement: float = 0.06  # first step's latency decrement, as a fraction of the starting latency
    decrement_decay: float = 0.96  # the decrement shrinks by this factor each step (the paper's schedule)
    round_to: int = 8  # channel counts move in multiples of this (smaller groups by 1)
    candidates: int = 6  # proposals per step that get the short-term fine-tune
    max_groups: int | None = None  # layers probed per step (a seeded sample); None: all, as in the paper
    finetune_steps: int = 30  # short-term fine-tune: SGD steps per proposal
    long_epochs: int = 3  # long-term fine-tune of the result, epochs over the training split
    batch_size: int = 32
    lr: float = 0.01
    weight_decay: float = 4e-5
    holdout_fraction: float = 0.2  # of the training data, to choose among proposals (the test split is not used)
    max_steps: int = 40
    minutes: float | None = None  # stop proposing after this long (then the long fine-tune, then the output)
    seed: int = 0
    source: str = "table"  # latency source on "host": "table" or "corrected"; presets use the roofline


class NetAdaptError(ValueError):
    """The request cannot be met (e.g. a target below what pruning can reach)."""


# --------------------------------------------------------------------------------------------------- data
@dataclass
class _Data:
    train: Any  # augmented, for fine-tuning (training split minus the holdout)
    holdout: Any  # un-augmented, to choose among proposals
    val: Any  # the run's validation split: reported only, never used to choose
    classes: list[str]


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
    return _Data(Subset(bundle.train, train_idx), Subset(plain, hold_idx), bundle.val, list(bundle.classes))


def _loader(ds: Any, batch_size: int, *, shuffle: bool, seed: int = 0) -> Any:
    from torch.utils.data import DataLoader

    from ..train.data import skip_none_collate

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=skip_none_collate,
                      drop_last=shuffle and len(ds) > batch_size)


@torch.no_grad()
def accuracy(model: nn.Module, ds: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``ds``."""
    model.eval()
    correct = total = 0
    for batch in _loader(ds, batch_size, shuffle=False):
        if batch is None:
            continue
        x, y = batch
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


def finetune(model: nn.Module, ds: Any, *, steps: int, settings: NetAdaptSettings, seed: int,
             cosine: bool = False) -> None:
    """``steps`` SGD steps (momentum 0.9, label smoothing 0.1) on ``ds``; cosine-decayed when ``cosine``."""
    if steps <= 0:
        return
    model.train()
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": settings.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, momentum=0.9, nesterov=True)
    done, epoch = 0, 0
    while done < steps:
        for batch in _loader(ds, settings.batch_size, shuffle=True, seed=seed + epoch):
            if batch is None:
                continue
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * done / steps))
            x, y = batch
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
        epoch += 1
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


def propose(model: nn.Module, group: ChannelGroup, budget_ms: float, predict: Callable[[nn.Module], float],
            round_to: int) -> Proposal | None:
    """The largest channel count of ``group`` whose model meets ``budget_ms`` (binary search: latency falls
    with channels), keeping the filters of largest L2 norm; None when even the smallest count does not."""
    counts = _counts(group.size, round_to)
    if not counts:
        return None
    order = filter_importance(model, group).argsort(descending=True)
    cache: dict[int, tuple[float, nn.Module]] = {}

    def at(k: int) -> tuple[float, nn.Module]:
        if k not in cache:
            m = copy.deepcopy(model)
            shrink_group(m, group, order[:k])
            cache[k] = (predict(m), m)
        return cache[k]

    if at(counts[-1])[0] > budget_ms:
        return None
    lo, hi = 0, len(counts) - 1  # counts[hi] meets the budget; find the smallest index that does
    while lo < hi:
        mid = (lo + hi) // 2
        if at(counts[mid])[0] <= budget_ms:
            hi = mid
        else:
            lo = mid + 1
    k = counts[lo]
    ms, m = at(k)
    norms = filter_importance(model, group).pow(2)
    lost = float(1 - norms[order[:k]].sum() / norms.sum().clamp_min(1e-12))
    return Proposal(group.name, group.size, k, ms, lost, m)


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


def netadapt(
    checkpoint: str,
    *,
    target_ms: float,
    hardware: str = "host",
    out: str,
    data: str = "digits",
    settings: NetAdaptSettings | None = None,
    table: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run NetAdapt on the trained ``checkpoint`` toward ``target_ms`` on ``hardware``; write ``out``.

    Writes ``out/arch.yaml``, ``out/best.safetensors``, ``out/report.json`` and ``out/pareto.png``; returns the
    report. Raises :class:`NetAdaptError` when ``target_ms`` is below what pruning every layer to its minimum
    reaches (the message says that minimum).
    """
    s = settings or NetAdaptSettings()
    say = log or (lambda _m: None)
    check_hardware(hardware)
    if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not target_ms > 0:
        raise ValueError(f"target_ms must be a positive number, got {target_ms!r}")
    torch.manual_seed(s.seed)
    t_start = time.time()
    model, meta, spec = _load(checkpoint)
    shape = (1, int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    source = s.source if hardware == "host" else "roofline"
    predictor = latency_predictor(hardware, source, table, build_items=[])

    def predict(m: nn.Module) -> float:
        return float(predictor.predict_module_ms(m, shape))

    base_groups = prunable_groups(model, shape)
    if not base_groups:
        raise NetAdaptError(f"{meta['model']} has no prunable channel groups")
    base_sizes = {name: g.size for name, g in base_groups.items()}
    start_ms = predict(model)
    smallest = prune_channels(copy.deepcopy(model),
                              {n: (_counts(g.size, s.round_to) or [g.size])[-1] for n, g in base_groups.items()},
                              shape)
    floor_ms = predict(smallest)
    if target_ms < floor_ms:
        raise NetAdaptError(f"target {target_ms:g} ms is below the smallest reachable latency {floor_ms:.3f} ms "
                            f"({meta['model']} with every prunable layer at its minimum, on {hardware})")
    say(f"{meta['model']}: predicted {start_ms:.3f} ms on {hardware} ({predictor.source}); "
        f"{len(base_groups)} prunable channel groups; target {target_ms:.3f} ms")

    ds = _datasets(data, meta, s)
    base_holdout = accuracy(model, ds.holdout)
    base_top1 = accuracy(model, ds.val)
    say(f"start: holdout {base_holdout:.2f}%, val top-1 {base_top1:.2f}%")
    history: list[dict[str, Any]] = [dict(step=0, group=None, channels_from=None, channels_to=None,
                                          predicted_ms=start_ms, holdout_top1=base_holdout, seconds=0.0)]
    current_ms = start_ms
    decrement = s.decrement * start_ms
    step = 0
    while current_ms > target_ms and step < s.max_steps:
        if s.minutes is not None and time.time() - t_start > 60 * s.minutes:
            say(f"time budget of {s.minutes:g} min used after {step} steps; stopping")
            break
        step += 1
        t0 = time.time()
        groups = prunable_groups(model, shape)
        if s.max_groups is not None and len(groups) > s.max_groups:
            names = random.Random(s.seed + step).sample(sorted(groups), s.max_groups)
            groups = {n: groups[n] for n in names}
        proposals: list[Proposal] = []
        for _ in range(4):  # no single layer reaches the budget: halve this step's decrement and try again
            budget = max(target_ms, current_ms - decrement)
            proposals = [p for g in groups.values() if (p := propose(model, g, budget, predict, s.round_to))]
            if proposals:
                break
            decrement /= 2
        decrement *= s.decrement_decay
        if not proposals:
            say(f"step {step}: no layer can reach {budget:.3f} ms alone; stopping")
            break
        proposals.sort(key=lambda p: p.norm_lost)
        tried = []
        for i, p in enumerate(proposals[:s.candidates]):
            finetune(p.model, ds.train, steps=s.finetune_steps, settings=s, seed=s.seed + 1000 * step + i)
            tried.append((accuracy(p.model, ds.holdout), -p.predicted_ms, i, p))
        acc, _, _, best = max(tried, key=lambda t: t[:3])
        model, current_ms = best.model, best.predicted_ms
        refresh_metadata(model, shape)
        history.append(dict(step=step, group=best.group, channels_from=best.channels_from,
                            channels_to=best.channels_to, predicted_ms=current_ms, holdout_top1=acc,
                            proposals=len(proposals), finetuned=len(tried), seconds=round(time.time() - t0, 1)))
        say(f"step {step}: {best.group} {best.channels_from}->{best.channels_to} channels, predicted "
            f"{current_ms:.3f} ms, holdout {acc:.2f}% ({len(tried)}/{len(proposals)} proposals fine-tuned, "
            f"{time.time() - t0:.0f}s)")

    long_steps = s.long_epochs * max(1, len(ds.train) // s.batch_size)
    say(f"long-term fine-tune: {long_steps} steps")
    finetune(model, ds.train, steps=long_steps, settings=s, seed=s.seed + 7, cosine=True)
    top1 = accuracy(model, ds.val)
    holdout = accuracy(model, ds.holdout)
    final_ms = predict(model)
    spec = {**spec, "channels": {**spec.get("channels", {}), **_channels(model, base_sizes, shape)}}
    report = dict(
        hardware=hardware, target_ms=float(target_ms), latency_source=predictor.source,
        predicted_latency_ms=final_ms, start_predicted_latency_ms=start_ms, floor_predicted_latency_ms=floor_ms,
        target_met=final_ms <= target_ms, speedup_predicted=start_ms / final_ms if final_ms else None,
        top1=top1, base_top1=base_top1, top1_change=top1 - base_top1, holdout_top1=holdout,
        base=meta["model"], params=sum(p.numel() for p in model.parameters()),
        base_params=sum(p.numel() for p in _load(checkpoint)[0].parameters()), img_size=int(meta["img_size"]),
        steps=step, history=history, settings=asdict(s), seconds=round(time.time() - t_start, 1),
    )
    _write(Path(out), model, spec, meta, report, ds.classes)
    say(f"done: predicted {start_ms:.3f} -> {final_ms:.3f} ms, val top-1 {base_top1:.2f}% -> {top1:.2f}%")
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
                        "source": report.get("latency_source")}}
    atomic_write_bytes(out / "arch.yaml", yaml.safe_dump(arch, sort_keys=False).encode())
    md = make_metadata(model=arch["name"], classes=classes, img_size=int(meta["img_size"]),
                       in_chans=int(meta["in_chans"]), model_kwargs={}, mean=meta["mean"], std=meta["std"],
                       crop_pct=float(meta.get("crop_pct", 1.0)), interpolation=meta.get("interpolation", "bicubic"),
                       weights="netadapt", epoch=int(report["steps"]), top1=float(report["top1"]), arch_spec=arch)
    save_weights(model, out / "best.safetensors", md)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    plot_history(report, out / "pareto.png")


def plot_history(report: dict[str, Any], path: Path) -> None:
    """Holdout accuracy against predicted latency along the NetAdapt steps (each step is a smaller model)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = report["history"]
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([h["predicted_ms"] for h in hist], [h["holdout_top1"] for h in hist], "o-", ms=4,
            label="NetAdapt steps (holdout top-1 after short fine-tune)")
    ax.scatter([report["predicted_latency_ms"]], [report["top1"]], marker="*", s=160, color="C3", zorder=3,
               label="result after long fine-tune (val top-1)")
    ax.scatter([report["start_predicted_latency_ms"]], [report["base_top1"]], marker="s", s=60, color="C2", zorder=3,
               label=f"{report['base']} (val top-1)")
    ax.axvline(report["target_ms"], color="gray", ls="--", lw=1, label="target")
    ax.set_xlabel(f"predicted latency on {report['hardware']} ({report['latency_source']}), ms")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"NetAdapt from {report['base']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


__all__ = ["NetAdaptError", "NetAdaptSettings", "accuracy", "finetune", "netadapt", "propose"]
