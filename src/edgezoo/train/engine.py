"""The training loop: one process or many (``torchrun``), resumable bit-exactly, writing a self-describing run dir.

Determinism and resumption. Every source of randomness in an epoch is a function of ``(seed, epoch, rank)``:
the sampler's shuffle (``DistributedSampler`` seeded by epoch), and the global RNGs that drive augmentation,
MixUp/CutMix and drop path, re-seeded at the start of each epoch. The state saved at the end of an epoch
(model, optimiser, scheduler, EMA, RNG states, history) therefore determines the rest of the run: a run killed at
any moment and resumed replays the unfinished epoch exactly and ends with the same ``last.safetensors`` as an
uninterrupted run (on CPU, same thread count). The state file is written last in an epoch, atomically, so it is
the commit point; a kill before it only costs the epoch in progress.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..checkpoint import atomic_torch_save, atomic_write_bytes
from ..devices import resolve_device
from .checkpoints import (
    STATE_FILE,
    load_state,
    load_trained_model,
    make_metadata,
    read_metadata,
    rng_state,
    save_weights,
    set_rng_state,
)
from .config import TrainConfig, config_from_dict, config_to_yaml, resolve_config, validate_config
from .data import DataBundle, batch_mixer, build_datasets, skip_none_collate
from .distill import TeacherAdapter, distillation_loss

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
_WEIGHTS_WORDS = {"ema": "EMA", "raw": "raw"}
# "weights": which of the raw and EMA weights that epoch's checkpoints hold (the better on validation)
METRIC_COLUMNS = ("epoch", "train_loss", "lr", "val_loss", "val_top1", "val_top5", "ema_top1", "epoch_seconds",
                  "train_img_per_s", "weights")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last finished epoch's checkpoints are kept."""


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str) -> Runtime:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rt = Runtime(rank=int(os.environ.get("RANK", "0")), world_size=world,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    dev = resolve_device(device)  # unknown or absent device -> ValueError naming it and what this machine has
    if dev.type == "cuda":
        rt.device = torch.device("cuda", rt.local_rank if world > 1 else dev.index or 0)
        torch.cuda.set_device(rt.device)
    else:
        rt.device = dev
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if rt.device.type == "cuda" else "gloo")
    return rt


def _all_reduce(t: Tensor, rt: Runtime) -> Tensor:
    if rt.distributed:
        dist.all_reduce(t)
    return t


def _broadcast_object(obj: Any, rt: Runtime) -> Any:
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------------- EMA
class WeightEma:
    """Exponential moving average of weights and buffers (Polyak & Juditsky 1992), as used by the MobileNet
    recipes. The decay ramps up as ``(1 + n) / (10 + n)`` so that short runs are not dominated by the random init.

    The average is folded in every ``every`` optimiser steps with decay ``d ** every`` (the same time constant):
    on small models the per-step update of every tensor costs ~15 % of a CPU training step, every 4th step ~4 %.
    """

    def __init__(self, model: nn.Module, decay: float, *, every: int = 4) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.every = every
        self.steps = 0
        self.updates = 0
        self._pairs_cache: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None = None

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        if self._pairs_cache is None:
            src, dst = model.state_dict(), self.module.state_dict()
            fl = [k for k, v in dst.items() if v.is_floating_point()]
            other = [k for k, v in dst.items() if not v.is_floating_point()]
            self._pairs_cache = ([dst[k] for k in fl], [src[k] for k in fl], [dst[k] for k in other],
                                 [src[k] for k in other])
        return self._pairs_cache

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        if self.steps % self.every:
            return
        self.updates += 1
        d = min(self.decay, (1 + self.updates * self.every) / (10 + self.updates * self.every)) ** self.every
        ema_f, model_f, ema_o, model_o = self._pairs(model)
        torch._foreach_lerp_(ema_f, model_f, 1.0 - d)
        for e, m in zip(ema_o, model_o):
            e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.steps = int(state["steps"])


# ------------------------------------------------------------------------------------------- optimisation
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norm scales and token/position embeddings (1-D or named by the model)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":
        # TF-style RMSprop of the MobileNet papers: decay 0.9, momentum 0.9, eps 1e-3 (PyTorch's default is 1e-8).
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up then half-cosine decay (Loshchilov & Hutter 2017) to ``min_ratio`` of the peak, per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ------------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Iterable, *, num_classes: int, rt: Runtime, amp: bool = False,
                   channels_last: bool = False) -> dict[str, Any]:
    """Loss, top-1/top-5 (percent) and the confusion matrix, summed over all ranks."""
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, correct@1, correct@k, n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        x = x.to(rt.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(rt, amp):
            logits = model(x)
        logits = logits.float().cpu()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(k, dim=-1).indices
        sums[1] += (top[:, 0] == y).sum().item()
        sums[2] += (top == y[:, None]).any(dim=-1).sum().item()
        sums[3] += len(y)
        confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes**2).view(num_classes, -1)
    if rt.distributed:
        sums = _all_reduce(sums.to(rt.device), rt).cpu()
        confusion = _all_reduce(confusion.to(rt.device), rt).cpu()
    n = max(1.0, sums[3].item())
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
            "n": int(sums[3].item()), "confusion": confusion}


def _autocast(rt: Runtime, amp: bool):
    if not amp:
        return nullcontext()
    if rt.device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one image's forward pass: ``FlopCounterMode`` FLOPs / 2 (conv, linear, matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, in_chans, img_size, img_size, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


def measure_latency_ms(model: nn.Module, img_size: int, in_chans: int = 3, repeats: int = 20) -> float:
    """Median batch-1 inference latency on the model's device (after warm-up), in milliseconds."""
    model.eval()
    p = next(model.parameters())
    x = torch.randn(1, in_chans, img_size, img_size, device=p.device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


# ------------------------------------------------------------------------------------------------- outputs
def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def curves_figure(history: list[dict[str, Any]], title: str) -> Any:
    """Three panels per epoch: losses, validation top-1 (raw and EMA) and the learning rate.

    Epochs are whole numbers on the x axes (a 2-epoch run gets ticks 1 and 2, not 1.25, 1.5 …), and each epoch is a
    marker, so even a one-epoch run shows its values.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    axes = fig.subplots(1, 3)
    ep = [h["epoch"] for h in history]
    style = dict(marker="o", markersize=3)
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train (training objective)", **style)
    axes[0].plot(ep, [h["val_loss"] for h in history], label="val (cross-entropy)", **style)
    axes[0].set_title("loss")
    axes[0].set_ylabel("loss per image")
    axes[1].plot(ep, [h["val_top1"] for h in history], label="val top-1 (raw)", **style)
    if any(h.get("ema_top1") is not None for h in history):
        axes[1].plot(ep, [h.get("ema_top1") for h in history], label="val top-1 (EMA)", **style)
    axes[1].set_title("accuracy")
    axes[1].set_ylabel("top-1 (%)")
    axes[2].plot(ep, [h["lr"] for h in history], **style)
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_curves_png(path: Path, history: list[dict[str, Any]], title: str) -> None:
    buf = io.BytesIO()
    curves_figure(history, title).savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


# -------------------------------------------------------------------------------------------------- setup
def _build_teacher(cfg: TrainConfig, num_classes: int, student_cfg: dict[str, Any]) -> TeacherAdapter:
    from ..factory import create_model

    if cfg.teacher_checkpoint is not None:
        if read_metadata(cfg.teacher_checkpoint) is not None:
            teacher, meta = load_trained_model(cfg.teacher_checkpoint, model=cfg.teacher)
            mean, std = meta["mean"], meta["std"]
            if meta["num_classes"] != num_classes:
                raise ValueError(f"teacher has {meta['num_classes']} classes, the data has {num_classes}")
        else:
            teacher = create_model(cfg.teacher, num_classes=num_classes, checkpoint=cfg.teacher_checkpoint)
            mean, std = teacher.default_cfg["mean"], teacher.default_cfg["std"]
    else:
        # Only with teacher_random_init (validate_config refuses it otherwise): a teacher without weights teaches
        # nothing useful, but the option allows testing the wiring.
        teacher = create_model(cfg.teacher, num_classes=num_classes)
        mean, std = teacher.default_cfg["mean"], teacher.default_cfg["std"]
    return TeacherAdapter(teacher, student_mean=student_cfg["mean"], student_std=student_cfg["std"],
                          teacher_mean=mean, teacher_std=std)


def _val_shard(ds: Dataset, rt: Runtime) -> Dataset:
    """Each rank evaluates a disjoint stride of the validation set (no padding, so sums are exact)."""
    if not rt.distributed:
        return ds
    return Subset(ds, list(range(rt.rank, len(ds), rt.world_size)))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _progress(iterable: Iterable, *, enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5)


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# --------------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the report (also written as ``report.json``).

    ``explicit`` names the fields the user set on the command line; on ``--resume`` those must agree with the
    saved run (a resumed run continues the same recipe).
    """
    from ..factory import create_model
    from ..registry import get_entry

    cfg = validate_config(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    state = load_state(out) if cfg.resume else None
    if not cfg.resume and (out / STATE_FILE).exists():
        raise ValueError(f"--out {str(out)!r} already holds a training run; pass --resume to continue it, "
                         "or choose another --out")
    if cfg.resume:
        # The saved recipe wins over every default: the state file's copy once an epoch has finished, else the
        # config.yaml written when the run started (a run stopped during its first epoch has only that).
        saved = config_from_dict(state["config"]) if state is not None else _saved_run_config(out)
        explicit = set(explicit or ())
        for name in sorted(explicit):
            if name in ("resume", "out", "progress", "device"):
                continue
            if getattr(cfg, name) != getattr(saved, name):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r} differs from the run being "
                                 f"resumed ({getattr(saved, name)!r}); a resumed run keeps its recipe")
        device = cfg.device if "device" in explicit else saved.device  # the one setting a resume may change
        cfg = saved.__class__(**{**saved.to_dict(), "resume": True, "out": cfg.out, "progress": cfg.progress,
                                 "device": device})
        if state is not None and int(state["epoch"]) >= int(cfg.epochs):
            finished = _finished_report(out)
            if finished is not None:
                return finished

    entry = get_entry(cfg.model)  # unknown names → ValueError with suggestions
    if entry.spec is not None and cfg.img_size is None:
        cfg.img_size = int(entry.spec["img_size"])  # an architecture spec was chosen for its resolution
    rt = setup_runtime(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        cfg = resolve_config(cfg, family=entry.family, world_size=rt.world_size)
        return _train(cfg, entry, rt, state, create_model)
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _saved_run_config(out: Path) -> TrainConfig:
    """The settings of the run in ``out`` that has no finished epoch yet, from its ``config.yaml``."""
    path = out / CONFIG_FILE
    if not out.is_dir():
        raise FileNotFoundError(f"nothing to resume: --out {str(out)!r} does not exist; start a run with "
                                f"`edgezoo train --model NAME --out {out}` (without --resume)")
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: it holds no {STATE_FILE} or {CONFIG_FILE} of a "
                                f"training run; start one with `edgezoo train --model NAME --out {out}` "
                                "(without --resume)")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot resume: {str(path)!r} could not be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"cannot resume: {str(path)!r} does not hold a run's settings")
    return config_from_dict(data)


def _finished_report(out: Path) -> dict[str, Any] | None:
    """The report of a run whose every epoch is done (``None`` if it was stopped before writing it)."""
    try:
        report = json.loads((out / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if os.environ.get("RANK", "0") == "0":
        print(finished_message(report, out), flush=True)
    return report


def finished_message(report: dict[str, Any], out: Path) -> str:
    return (f"{out}: already finished: best top-1 {report['best_top1']:.2f}% (epoch {report['best_epoch']}, "
            f"{_WEIGHTS_WORDS.get(report.get('weights'), 'saved')} weights) after {report['epochs']} epochs; nothing "
            f"to resume. Outputs: {out / 'best.safetensors'}, {out / REPORT_FILE}")


def _pick_weights(raw: dict[str, Any], ema: dict[str, Any] | None) -> str:
    """Which weights to deliver after an evaluation: the EMA unless the raw weights score higher on validation.

    The EMA usually generalises better late in a run, but in short runs (and with distillation) it can lag far
    behind the raw weights; keeping the better of the two means ``best.safetensors`` is never the worse model.
    """
    if ema is None or raw["top1"] > ema["top1"]:
        return "raw"
    return "ema"


def _train(cfg: TrainConfig, entry: Any, rt: Runtime, state: dict[str, Any] | None, create_model: Any) -> dict:
    out = Path(cfg.out)
    dcfg = entry.default_cfg
    img_size = cfg.img_size or int(dcfg["input_size"][-1])
    in_chans = 3
    mean, std = tuple(dcfg["mean"]), tuple(dcfg["std"])
    crop_pct = cfg.crop_pct if cfg.crop_pct is not None else float(dcfg.get("crop_pct", 0.875))
    interpolation = dcfg.get("interpolation", "bicubic")
    cfg.img_size, cfg.crop_pct = img_size, crop_pct

    data: DataBundle = build_datasets(cfg, img_size=img_size, mean=mean, std=std, crop_pct=crop_pct,
                                      interpolation=interpolation)
    classes = data.classes
    num_classes = len(classes)

    _seed_everything(cfg.seed)  # identical initial weights on every rank and every (re)start
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                         drop_path_rate=float(cfg.drop_path), **cfg.model_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, img_size, in_chans)
    model.to(rt.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    teacher = _build_teacher(cfg, num_classes, dcfg).to(rt.device) if cfg.teacher else None

    # data loading: the sampler shuffles by (seed, epoch); batches never straddle ranks
    sampler = DistributedSampler(data.train, num_replicas=rt.world_size, rank=rt.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=rt.distributed)
    per_rank = len(sampler)
    drop_last = per_rank > cfg.batch_size  # a last batch of 1 would break BatchNorm; keep tiny sets whole
    loader_kw = dict(num_workers=cfg.workers, pin_memory=rt.device.type == "cuda", collate_fn=skip_none_collate,
                     persistent_workers=False)
    val_loader = DataLoader(_val_shard(data.val, rt), batch_size=max(cfg.batch_size, 128), shuffle=False,
                            **loader_kw)
    steps_per_epoch = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    optimizer = make_optimizer(cfg, model)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps,
                                                                           cfg.min_lr_ratio))
    ema_decay = cfg.ema_decay
    if ema_decay is None:
        ema_decay = min(0.9999, max(0.99, 1 - 10 / max(1, total_steps)))
        cfg.ema_decay = round(ema_decay, 6)
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema else None
    use_scaler = cfg.amp and rt.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    mixer = batch_mixer(cfg, num_classes)

    history: list[dict[str, Any]] = []
    start_epoch, best_top1, best_epoch, train_seconds = 0, -1.0, -1, 0.0
    best_weights = "ema" if ema is not None else "raw"
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][rt.rank] if rt.rank < len(state["rng"]) else state["rng"][0])
        start_epoch = int(state["epoch"])
        best_top1, best_epoch = float(state["best_top1"]), int(state["best_epoch"])
        # states written before the EMA-or-raw choice always delivered the EMA when it was on
        best_weights = str(state.get("best_weights", best_weights))
        train_seconds = float(state["train_seconds"])
        history = [dict(h) for h in state["history"]]

    net: nn.Module = model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    meta_common = dict(model=cfg.model if entry.spec is None else entry.spec["name"], classes=classes,
                       img_size=img_size, in_chans=in_chans, model_kwargs=cfg.model_kwargs, mean=mean, std=std,
                       crop_pct=crop_pct, interpolation=interpolation, arch_spec=entry.spec)
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume or not (out / CONFIG_FILE).is_file():  # a resumed run keeps the file it started with
            atomic_write_bytes(out / CONFIG_FILE, config_to_yaml(cfg).encode())
    if rt.main and start_epoch < cfg.epochs:
        print(f"training {cfg.model} ({n_params / 1e6:.2f}M params, {macs / 1e6:.1f}M MACs at {img_size}px) on "
              f"{cfg.data}: {len(data.train)} train / {len(data.val)} val images, {num_classes} classes, "
              f"{cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:.4g}, world size {rt.world_size}, "
              f"device {rt.device}" + (f", skipped {data.skipped} unreadable images" if data.skipped else ""),
              flush=True)

    for epoch in range(start_epoch, cfg.epochs):
        _seed_everything(_epoch_seed(cfg.seed, epoch, rt.rank))
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, rt.rank))
        loader = DataLoader(data.train, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                            generator=gen, **loader_kw)
        t0 = time.perf_counter()
        net.train()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of losses, images
        n_seen = 0
        bar = _progress(loader, enabled=rt.main and cfg.progress, total=steps_per_epoch,
                        desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for step, batch in enumerate(bar):
            if batch is None:
                continue
            x, y = batch
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            hard_y = y
            if mixer is not None:
                x, y = mixer(x, y)
            with _autocast(rt, cfg.amp):
                logits = net(x)
                if teacher is not None:
                    loss = distillation_loss(logits.float(), teacher(x).float(), y, alpha=cfg.kd_alpha,
                                             temperature=cfg.kd_temperature, label_smoothing=cfg.label_smoothing)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
            if rt.distributed:
                finite = _all_reduce(finite, rt) / rt.world_size
            if finite.item() < 1:
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped, keeping the "
                    f"checkpoints of epoch {start_epoch if not history else history[-1]['epoch']} in {str(out)!r} "
                    "(lower --lr or enable gradient clipping)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            bs = len(hard_y)
            loss_sum[0] += loss.item() * bs
            loss_sum[1] += bs
            n_seen += bs
            if rt.main and cfg.progress and step % 5 == 0:
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                img_s=f"{n_seen * rt.world_size / max(dt, 1e-9):.0f}", refresh=False)
        bar.close()
        epoch_train_s = time.perf_counter() - t0
        if not _finite_params(model):
            raise TrainingDiverged(f"weights became NaN/inf in epoch {epoch + 1}; stopped, keeping the previous "
                                   f"epoch's checkpoints in {str(out)!r} (lower --lr)")
        loss_sum = _all_reduce(loss_sum.to(rt.device), rt).cpu()
        raw = evaluate_model(model, val_loader, num_classes=num_classes, rt=rt, amp=cfg.amp,
                             channels_last=cfg.channels_last)
        ema_eval = evaluate_model(ema.module, val_loader, num_classes=num_classes, rt=rt, amp=cfg.amp,
                                  channels_last=cfg.channels_last) if ema is not None else None
        # deliver whichever of the EMA and the raw weights is better on validation at this evaluation
        chosen = _pick_weights(raw, ema_eval)
        final_eval = ema_eval if chosen == "ema" else raw
        epoch_s = time.perf_counter() - t0
        train_seconds += epoch_s
        row = {"epoch": epoch + 1, "train_loss": loss_sum[0].item() / max(1.0, loss_sum[1].item()),
               "lr": float(scheduler.get_last_lr()[0]), "val_loss": raw["loss"], "val_top1": raw["top1"],
               "val_top5": raw["top5"], "ema_top1": ema_eval["top1"] if ema_eval else None,
               "epoch_seconds": epoch_s, "train_img_per_s": loss_sum[1].item() / max(epoch_train_s, 1e-9),
               "final_top1": final_eval["top1"], "final_top5": final_eval["top5"], "weights": chosen}
        history.append(row)
        improved = final_eval["top1"] > best_top1
        if improved:
            best_top1, best_epoch, best_weights = final_eval["top1"], epoch + 1, chosen
        deliver = ema.module if chosen == "ema" else model
        if rt.main:
            meta = make_metadata(**meta_common, weights=chosen, epoch=epoch + 1, top1=final_eval["top1"])
            save_weights(deliver, out / "last.safetensors", meta)
            if improved:
                save_weights(deliver, out / "best.safetensors", meta)
            write_metrics_csv(out / "metrics.csv", history)
            write_curves_png(out / "curves.png", history, f"{cfg.model} on {cfg.data}")
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}  val top-1 {raw['top1']:.2f}%"
                  + (f"  EMA {ema_eval['top1']:.2f}% (keeping {_WEIGHTS_WORDS[chosen]})" if ema_eval else "")
                  + f"  lr {row['lr']:.3g}  {row['train_img_per_s']:.0f} img/s  {epoch_s:.1f}s", flush=True)
        rngs = [rng_state()]
        if rt.distributed:
            gathered: list[Any] = [None] * rt.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rt.main:
            atomic_torch_save({
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else {}, "rng": rngs, "best_top1": best_top1,
                "best_epoch": best_epoch, "best_weights": best_weights, "train_seconds": train_seconds, "history": history,
                "config": cfg.to_dict(),
            }, out / STATE_FILE)
        if rt.distributed:
            dist.barrier()

    final = history[-1] if history else {}
    at_best = next((h for h in history if h["epoch"] == best_epoch), {})
    deliver = model  # for the latency only: the EMA copy has the same architecture
    report = {
        "model": cfg.model,
        "data": cfg.data,
        "epochs": cfg.epochs,
        "best_top1": round(best_top1, 4),
        "best_epoch": best_epoch,
        "final_top1": round(final.get("final_top1", float("nan")), 4),
        "final_top5": round(final.get("final_top5", float("nan")), 4),
        "train_seconds": round(train_seconds, 2),
        "params": n_params,
        "macs": macs,
        "img_size": img_size,
        "num_classes": num_classes,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "skipped_images": data.skipped,
        "weights": best_weights,  # what best.safetensors holds: "ema" or "raw", the better on validation
        "final_weights": final.get("weights", best_weights),
        "raw_top1_at_best": None if at_best.get("val_top1") is None else round(at_best["val_top1"], 4),
        "ema_top1_at_best": None if at_best.get("ema_top1") is None else round(at_best["ema_top1"], 4),
        "train_img_per_s": round(float(np.mean([h["train_img_per_s"] for h in history])), 1) if history else None,
        "world_size": rt.world_size,
        "device": str(rt.device),
        "threads": torch.get_num_threads(),
    }
    if rt.main:
        report["latency_ms"] = round(measure_latency_ms(deliver, img_size, in_chans), 3)
        atomic_write_bytes(out / REPORT_FILE, _json_bytes(report))
        if start_epoch >= cfg.epochs:  # resumed after the last epoch, before the report was written
            print(finished_message(report, out), flush=True)
        elif cfg.progress:
            print_summary(report, out)
    return report


def _weights_note(report: dict[str, Any]) -> str:
    """Which weights ``best.safetensors`` holds, and the validation scores the choice was made on."""
    raw, ema = report.get("raw_top1_at_best"), report.get("ema_top1_at_best")
    if ema is None:
        return "raw weights (no EMA kept)"
    if report.get("weights") == "ema":
        return f"EMA weights (EMA {ema:.2f}% >= raw {raw:.2f}% on validation)"
    return f"raw weights (raw {raw:.2f}% > EMA {ema:.2f}% on validation)"


def print_summary(report: dict[str, Any], out: Path) -> None:
    from .._console import table_console
    from rich.table import Table

    table = Table(title=f"{report['model']} on {report['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("best val top-1", f"{report['best_top1']:.2f}% (epoch {report['best_epoch']}, "
                           f"{_WEIGHTS_WORDS.get(report.get('weights'), '?')} weights)"),
        ("saved as best.safetensors", _weights_note(report)),
        ("final val top-1", f"{report['final_top1']:.2f}% ({_WEIGHTS_WORDS.get(report.get('final_weights'), '?')} "
                            "weights)"),
        ("final val top-5", f"{report['final_top5']:.2f}%"),
        ("params", f"{report['params']:,}"),
        ("MACs / image", f"{report['macs'] / 1e6:.1f}M at {report['img_size']}px"),
        ("latency (batch 1)", f"{report.get('latency_ms', float('nan')):.2f} ms on {report['device']}"),
        ("train time", f"{report['train_seconds']:.1f}s for {report['epochs']} epochs"),
        ("train throughput", f"{report['train_img_per_s']} img/s"),
        ("outputs", str(out)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    table_console().print(table)
