"""Training the supernet with the sandwich rule and in-place distillation, through the training engine's parts.

Each step trains the **largest** subnet on the labels (or on a trained teacher), then the **smallest** and ``N``
random subnets on the largest one's soft predictions ("sandwich rule" + "in-place distillation", Yu & Huang 2019,
"Universally Slimmable Networks"; BigNAS, Yu et al. 2020), accumulating the gradients of all of them into one
optimiser step. Training the extremes every step bounds every subnet's accuracy from above and below; the
distillation target is free (one forward pass) and softer than one-hot labels, which small subnets learn better.

Data, recipe, optimiser, schedule, seeding and resumption come from :mod:`edgezoo.train`: the digits or an
ImageFolder, MobileNetV4's family recipe (AdamW, warm-up + cosine), progress bars, and an epoch-level state file
written atomically, so a killed run resumes and ends with the same weights as an uninterrupted one. A **search
split** is held out (stratified, seeded) from the training split: search accuracy is measured on it, never on the
validation split, which stays the untouched test set of the found model. Subnets are scored after re-estimating
BatchNorm statistics on a fixed set of training images (:func:`~edgezoo.search.supernet.recalibrate_bn`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoint import atomic_torch_save, save_safetensors
from ..train.checkpoints import rng_state, set_rng_state
from ..train.config import TrainConfig, resolve_config
from ..train.data import build_datasets, eval_transform, skip_none_collate, take_batches
from ..train.distill import distillation_loss
from ..train.engine import _epoch_seed, _progress, _seed_everything, make_optimizer, warmup_cosine
from .space import BlockChoice, SearchSpace, StageChoice, Subnet
from .supernet import Supernet, recalibrate_bn, resize_to

STATE_FILE = "supernet_state.pt"
WEIGHTS_FILE = "supernet.safetensors"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class SupernetConfig:
    """Supernet training settings; ``None`` fields come from MobileNetV4's family recipe for the data."""

    data: str = "digits"
    out: str = "runs/search"
    epochs: int = 24
    batch_size: int = 64
    num_random: int = 2  # random subnets per step besides the largest and the smallest
    lr: float | None = None  # None: the family recipe's rate for this batch size, times lr_multiplier
    # The recipe's rate is tuned for one model trained for its own epochs; a supernet gets a few hundred steps on the
    # small data sets it is meant for (digits: 16 per epoch), and its random subnets stayed far from the largest one
    # (mean inherited top-1 47 % on digits, in-place distillation loss 0.67 at the end). Twice the rate: 85 % and 0.25
    # at the same cost (BENCHMARKS.md, issue 12); four times: see there.
    lr_multiplier: float = 2.0
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float = 0.1
    kd_temperature: float = 1.0  # in-place distillation: the largest subnet's plain softmax
    kernel_transform: bool = True
    # Progressive shrinking (Once-for-All, Cai et al. 2020, §3.2): the epochs are split into phases by these
    # fractions -- "full" (the largest subnet alone), "kernel" (+ elastic start/middle DW: kernel size and presence),
    # "expand" (+ elastic expansion), "elastic" (+ depth, width and the last conv: the whole space). A zero fraction
    # skips its phase; progressive=False trains the whole space from the first step (plain sandwich rule).
    progressive: bool = True
    phase_fractions: tuple[float, ...] = (0.2, 0.3, 0.2, 0.3)
    # one input resolution per step for the whole sandwich (else the largest always sees the largest resolution and
    # each other subnet its own, so the teacher's resolution is the only one the shared weights are fitted at)
    resolution_per_step: bool = True
    # each phase gets its own warm-up + cosine learning-rate schedule (OFA trains every phase as a fine-tune of the
    # previous one with a fresh schedule); False: one schedule over all epochs, so the last phase -- the one that
    # teaches the whole space -- would run at the tail of the cosine
    phase_lr_restart: bool = True
    zero_init_residual: bool = True  # residual blocks start as the identity (BigNAS §3.1)
    search_fraction: float = 0.2  # of the training split, held out to score subnets
    calib_images: int = 256  # training images for BatchNorm re-estimation of each subnet
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    kd_alpha: float = 0.5
    seed: int = 0
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        fr = tuple(self.phase_fractions)
        if len(fr) != len(PHASES) or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 0
                                          for f in fr) or not sum(fr) > 0:
            raise ValueError(f"phase_fractions must be {len(PHASES)} non-negative numbers (phases {list(PHASES)}) "
                             f"with a positive sum, got {self.phase_fractions!r}")
        self.phase_fractions = tuple(float(f) for f in fr)
        if isinstance(self.lr_multiplier, bool) or not isinstance(self.lr_multiplier, (int, float)) \
                or not math.isfinite(self.lr_multiplier) or not self.lr_multiplier > 0:
            raise ValueError(f"lr_multiplier must be a positive number, got {self.lr_multiplier!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# phases of progressive shrinking and the dimensions each one lets vary (the input resolution always varies)
PHASES = ("full", "kernel", "expand", "elastic")
OPEN_DIMS: dict[str, frozenset[str]] = {
    "full": frozenset(),
    "kernel": frozenset({"kernel"}),
    "expand": frozenset({"kernel", "expand"}),
    "elastic": frozenset({"kernel", "expand", "depth", "width"}),
}


def phase_schedule(cfg: SupernetConfig) -> list[str]:
    """The phase of every epoch: ``cfg.phase_fractions`` of ``cfg.epochs`` each, in order; all "elastic" if not
    progressive. Boundaries are rounded cumulative fractions, so the schedule is a pure function of the config and a
    resumed run re-enters the phase it was killed in."""
    if not cfg.progressive:
        return ["elastic"] * cfg.epochs
    total = sum(cfg.phase_fractions)
    last = max(i for i, f in enumerate(cfg.phase_fractions) if f > 0)
    out: list[str] = []
    cum = 0.0
    for i, (name, f) in enumerate(zip(PHASES, cfg.phase_fractions)):
        cum += f
        # the last phase in use always gets an epoch: the supernet must end trained on what the search samples
        end = cfg.epochs if i >= last else min(cfg.epochs - 1, int(round(cfg.epochs * cum / total)))
        out += [name] * max(0, end - len(out))
    return out


def restrict(subnet: Subnet, reference: Subnet, open_dims: frozenset[str] | set[str]) -> Subnet:
    """``subnet`` with every dimension not in ``open_dims`` (``kernel``, ``expand``, ``depth``, ``width``) set to
    ``reference``'s (the largest subnet); the resolution is kept. Used to sample within a progressive-shrinking phase.
    """
    unknown = set(open_dims) - {"kernel", "expand", "depth", "width"}
    if unknown:
        raise ValueError(f"open_dims holds unknown dimensions {sorted(unknown)}")

    def block(b: BlockChoice, r: BlockChoice) -> BlockChoice:
        src = b if "kernel" in open_dims else r
        if src.mqa:
            return BlockChoice(mqa=True)
        e = b.expand_ratio if "expand" in open_dims and not b.mqa else r.expand_ratio
        return BlockChoice(expand_ratio=e, start_dw_kernel=src.start_dw_kernel, mid_dw_kernel=src.mid_dw_kernel)

    def stage(c: StageChoice, r: StageChoice, fused: bool) -> StageChoice:
        blocks = tuple(BlockChoice(expand_ratio=(b if "expand" in open_dims else rb).expand_ratio) if fused
                       else block(b, rb) for b, rb in zip(c.blocks, r.blocks))
        return StageChoice(width=c.width if "width" in open_dims else r.width,
                           depth=c.depth if "depth" in open_dims else r.depth, blocks=blocks)

    return Subnet(resolution=subnet.resolution, fused=stage(subnet.fused, reference.fused, True),
                  stages=tuple(stage(c, r, False) for c, r in zip(subnet.stages, reference.stages)),
                  last_chs=subnet.last_chs if "width" in open_dims else reference.last_chs)


def _stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    idx = list(range(len(labels)))
    n_classes = len(set(labels))
    n_hold = max(n_classes, int(round(len(labels) * fraction)))
    keep, hold = train_test_split(idx, test_size=n_hold, stratify=labels, random_state=seed)
    return sorted(keep), sorted(hold)


def _labels(ds: Dataset) -> list[int]:
    labels = getattr(ds, "labels", None)
    if labels is None:
        raise ValueError("the training dataset does not expose its labels")
    return [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]


class SearchData:
    """The training split minus a held-out search split, and cached search / calibration tensors per resolution."""

    def __init__(self, cfg: SupernetConfig, space: SearchSpace) -> None:
        tcfg = resolve_config(TrainConfig(model="mobilenetv4_conv_small", data=cfg.data, batch_size=cfg.batch_size,
                                          img_size=max(space.resolutions), seed=cfg.seed, device=cfg.device),
                              family="mobilenetv4")
        self.train_cfg = tcfg
        bundle = build_datasets(tcfg, img_size=max(space.resolutions), mean=MEAN, std=STD, crop_pct=1.0
                                if cfg.data == "digits" else 0.875)
        self.classes = bundle.classes
        full = bundle.train
        keep, hold = _stratified_split(_labels(full), cfg.search_fraction, cfg.seed)
        self.train: Dataset = Subset(full, keep)
        self._base = full
        self._search_idx = hold
        rng = random.Random(cfg.seed)
        self._calib_idx = sorted(rng.sample(keep, min(cfg.calib_images, len(keep))))
        self.crop_pct = 1.0 if cfg.data == "digits" else 0.875
        self._cache: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    def _tensors(self, which: str, resolution: int) -> tuple[Tensor, Tensor]:
        key = (which, resolution)
        if key not in self._cache:
            ds = copy.copy(self._base)  # same images, evaluation transform at this resolution
            ds.transform = eval_transform(img_size=resolution, crop_pct=self.crop_pct, mean=MEAN, std=STD)
            idx = self._search_idx if which == "search" else self._calib_idx
            items = [ds[i] for i in idx]
            items = [it for it in items if it is not None]
            self._cache[key] = (torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))
        return self._cache[key]

    def search_set(self, resolution: int) -> tuple[Tensor, Tensor]:
        return self._tensors("search", resolution)

    def calibration_batches(self, resolution: int, batch_size: int = 128) -> list[Tensor]:
        x, _ = self._tensors("calib", resolution)
        return list(x.split(batch_size))

    @property
    def num_search(self) -> int:
        return len(self._search_idx)


@torch.no_grad()
def evaluate_subnet(net: Supernet, data: SearchData, subnet: Subnet, *, device: torch.device | str = "cpu"
                    ) -> dict[str, float]:
    """Top-1 (percent) and loss of ``subnet`` on the search split, after BN re-estimation on calibration images."""
    return _score_on_search_split(net.extract(subnet), data, subnet.resolution, device)


def finetune_and_evaluate(net: Supernet, data: SearchData, subnet: Subnet, *, steps: int, lr: float = 5e-4,
                          batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 (percent) and loss of ``subnet`` on the search split after ``steps`` steps of fine-tuning its
    inherited weights (a copy: the supernet is untouched), then BN re-estimation.

    A sharper proxy than the inherited weights alone, for re-ranking a search's best few: on the default digits
    space, 48 steps raised Kendall's tau against 3-seed retrained accuracy from 0.40 to 0.55 (BENCHMARKS.md,
    issue 12). AdamW with a cosine decay from ``lr``, cross-entropy with label smoothing 0.1, the supernet's
    training split at the subnet's resolution; deterministic for a given ``seed``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    model = net.extract(subnet).to(device)
    if steps:
        with torch.random.fork_rng(devices=[]):  # the augmentations draw from torch's global generator
            torch.manual_seed(seed)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            gen = torch.Generator().manual_seed(seed)  # one generator, advancing from pass to pass
            loader = DataLoader(data.train, batch_size=batch_size, shuffle=True,
                                drop_last=len(data.train) > batch_size, generator=gen, num_workers=0,
                                collate_fn=skip_none_collate)
            model.train()
            for step, (x, y) in enumerate(take_batches(lambda _epoch: loader, steps)):
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(model(resize_to(x.to(device), subnet.resolution)), y.to(device),
                                       label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return _score_on_search_split(model, data, subnet.resolution, device)


@torch.no_grad()  # the BN re-estimation's forward passes too: no autograd graph for them
def _score_on_search_split(model: nn.Module, data: SearchData, resolution: int, device: torch.device | str
                           ) -> dict[str, float]:
    """Top-1 (percent) and loss of ``model`` on the search split after BN re-estimation on calibration images."""
    model.eval()
    recalibrate_bn(model, [b.to(device) for b in data.calibration_batches(resolution)])
    x, y = data.search_set(resolution)
    logits = torch.cat([model(b.to(device)) for b in x.split(256)]).float().cpu()
    return {"top1": 100.0 * (logits.argmax(1) == y).float().mean().item(),
            "loss": F.cross_entropy(logits, y).item()}


def _build_teacher(cfg: SupernetConfig, num_classes: int) -> nn.Module | None:
    if cfg.teacher is None and cfg.teacher_checkpoint is None:
        return None
    from ..train.checkpoints import load_trained_model
    from ..train.distill import TeacherAdapter

    if cfg.teacher_checkpoint is None:
        raise ValueError("a supernet teacher needs teacher_checkpoint (weights trained on this data)")
    teacher, meta = load_trained_model(cfg.teacher_checkpoint, model=cfg.teacher)
    if meta["num_classes"] != num_classes:
        raise ValueError(f"teacher has {meta['num_classes']} classes, the data has {num_classes}")
    return TeacherAdapter(teacher, student_mean=MEAN, student_std=STD, teacher_mean=meta["mean"],
                          teacher_std=meta["std"])


def _step_rng(seed: int, epoch: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + epoch * 10_007 + step)


def train_supernet(cfg: SupernetConfig, space: SearchSpace, *, resume: bool = False,
                   log: Callable[[str], None] = print, data: SearchData | None = None,
                   stop_after_epoch: int | None = None) -> tuple[Supernet, SearchData, dict[str, Any]]:
    """Train (or resume) the supernet; returns ``(supernet, data, summary)``; writes ``out/supernet.safetensors``.

    ``stop_after_epoch`` ends the process early as a kill would (tests of resumption).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = None
    if resume and state_path.is_file():
        state = _read_state(state_path)
        if state["space_hash"] != space.hash:
            raise ValueError(f"the run in {str(out)!r} trained a supernet for another search space "
                             f"(hash {state['space_hash']}, now {space.hash})")
        cfg = dataclasses.replace(_saved_config(state["config"]), out=cfg.out, progress=cfg.progress,
                                  device=cfg.device)
    elif not resume and state_path.is_file():
        raise ValueError(f"--out {str(out)!r} already holds a supernet run; pass --resume or choose another --out")

    device = torch.device(cfg.device)
    data = data or SearchData(cfg, space)
    num_classes = len(data.classes)
    _seed_everything(cfg.seed)
    net = Supernet(space, num_classes=num_classes, kernel_transform=cfg.kernel_transform,
                   zero_init_residual=cfg.zero_init_residual).to(device)
    teacher = _build_teacher(cfg, num_classes)
    if teacher is not None:
        teacher.to(device)

    tcfg = dataclasses.replace(data.train_cfg, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs, optimizer=None, grad_clip=None)
    tcfg = resolve_config(tcfg, family="mobilenetv4")
    if cfg.lr is None:
        tcfg = dataclasses.replace(tcfg, lr=tcfg.lr * cfg.lr_multiplier)
    optimizer = make_optimizer(tcfg, net)
    n_train = len(data.train)
    drop_last = n_train > cfg.batch_size
    steps_per_epoch = n_train // cfg.batch_size if drop_last else math.ceil(n_train / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = int(round(tcfg.warmup_epochs * steps_per_epoch))
    phases = phase_schedule(cfg)
    lr_factor: Callable[[int], float] = warmup_cosine(total, warm, tcfg.min_lr_ratio)
    if cfg.progressive and cfg.phase_lr_restart:
        # one warm-up + cosine per progressive-shrinking phase: each phase opens new dimensions and starts afresh
        spans = [(phases.index(p) * steps_per_epoch, phases.count(p) * steps_per_epoch) for p in PHASES if p in phases]
        per_phase = [(start, warmup_cosine(n, min(warm, n // 4), tcfg.min_lr_ratio)) for start, n in spans]

        def per_phase_factor(step: int) -> float:
            start, f = max((sp for sp in per_phase if sp[0] <= step), key=lambda sp: sp[0])
            return f(step - start)

        lr_factor = per_phase_factor

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict[str, Any]] = []
    start_epoch, seconds = 0, 0.0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
        history = [dict(h) for h in state["history"]]
        if start_epoch:
            log(f"resuming the supernet after epoch {start_epoch}/{cfg.epochs}")

    largest, smallest = space.largest(), space.smallest()
    if start_epoch == 0 and cfg.progress:
        plan = ", ".join(f"{p} {phases.count(p)}" for p in PHASES if p in phases) if cfg.progressive else "off"
        log(f"supernet: space {space.name!r} ({space.num_subnets():.3g} subnets), {n_train} train / "
            f"{data.num_search} search images, {cfg.epochs} epochs, sandwich of 2 + {cfg.num_random} subnets, "
            f"progressive shrinking: {plan} epochs, AdamW lr {tcfg.lr:.3g}")
    for epoch in range(start_epoch, cfg.epochs):
        phase = phases[epoch]
        open_dims = OPEN_DIMS[phase]
        if cfg.progress and cfg.progressive and (epoch == start_epoch or phases[epoch - 1] != phase):
            log(f"supernet phase {phase!r} (epochs {phases.index(phase) + 1}-{len(phases) - phases[::-1].index(phase)}):"
                f" elastic {', '.join(['resolution', *sorted(open_dims)])}")
        t0 = time.perf_counter()
        _seed_everything(_epoch_seed(cfg.seed, epoch, 0))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 0))
        loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last, generator=gen,
                            num_workers=0, collate_fn=skip_none_collate)
        net.train()
        loss_sum, n_seen, kd_sum, n_kd = 0.0, 0, 0.0, 0
        step_lr = optimizer.param_groups[0]["lr"]
        bar = _progress(loader, enabled=cfg.progress, total=steps_per_epoch, desc=f"supernet {epoch + 1}/{cfg.epochs}")
        for step, batch in enumerate(bar):
            if batch is None:
                continue
            x, y = batch
            x, y = x.to(device), y.to(device)
            rng = _step_rng(cfg.seed, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            big = largest
            if cfg.resolution_per_step:
                big = dataclasses.replace(largest, resolution=rng.choice(space.resolutions))
            logits = net(resize_to(x, big.resolution), big)
            if teacher is not None:
                loss = distillation_loss(logits, teacher(x), y, alpha=cfg.kd_alpha, temperature=4.0,
                                         label_smoothing=cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            t = cfg.kd_temperature
            soft = F.log_softmax(logits.detach() / t, dim=-1)
            students: list[Subnet] = []
            if open_dims:  # the "full" phase trains the largest subnet alone
                students = [smallest] + [space.sample(rng) for _ in range(cfg.num_random)]
                if cfg.progressive:
                    students = [restrict(sub, largest, open_dims) for sub in students]
                if cfg.resolution_per_step:
                    students = [dataclasses.replace(sub, resolution=big.resolution) for sub in students]
            for sub in students:
                student = net(resize_to(x, sub.resolution), sub)
                kd = F.kl_div(F.log_softmax(student / t, dim=-1), soft, log_target=True, reduction="batchmean") * t * t
                kd.backward()
                kd_sum += kd.item()
                n_kd += 1
            if not torch.isfinite(loss):
                raise ValueError(f"supernet loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            n_seen += len(y)
            if cfg.progress and step % 5 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        epoch_s = time.perf_counter() - t0
        seconds += epoch_s
        row = {"epoch": epoch + 1, "phase": phase, "train_loss": loss_sum / max(1, n_seen), "seconds": epoch_s,
               "lr": step_lr}  # the learning rate of the epoch's last step
        if n_kd:  # mean in-place distillation loss (KL to the largest) of the other subnets
            row["kd_loss"] = kd_sum / n_kd
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1) % 4 == 0:  # scoring costs a BN re-estimation per subnet: not every epoch
            row["largest_top1"] = evaluate_subnet(net, data, largest, device=device)["top1"]
            row["smallest_top1"] = evaluate_subnet(net, data, smallest, device=device)["top1"]
        history.append(row)
        if cfg.progress:
            log(f"supernet epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}"
                + (f" distillation {row['kd_loss']:.4f}" if "kd_loss" in row else "")
                + (f"  search top-1 largest {row['largest_top1']:.2f}% smallest {row['smallest_top1']:.2f}%"
                   if "largest_top1" in row else "") + f"  {epoch_s:.1f}s")
        atomic_torch_save({
            "epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(), "seconds": seconds, "history": history,
            "config": cfg.to_dict(), "space_hash": space.hash,
        }, state_path)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and not last:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (as asked)")
    save_safetensors(net.state_dict(), out / WEIGHTS_FILE, metadata={"space_hash": space.hash})
    summary = {"epochs": cfg.epochs, "seconds": round(seconds, 2), "history": history,
               "train_images": n_train, "search_images": data.num_search,
               "params": sum(p.numel() for p in net.parameters())}
    return net.eval(), data, summary


def _read_state(path: Path) -> dict[str, Any]:
    """A supernet state file, loaded safely; ``ValueError`` naming it when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"supernet state {str(path)!r} could not be read: {exc}") from None


def _saved_config(saved: dict[str, Any]) -> SupernetConfig:
    """The :class:`SupernetConfig` a state file was written with (fields unknown to this version dropped)."""
    saved = dict(saved)
    # a run saved before progressive shrinking existed trained the plain sandwich: read it as such
    saved.setdefault("progressive", False)
    saved.setdefault("resolution_per_step", False)
    saved.setdefault("phase_lr_restart", False)
    saved.setdefault("zero_init_residual", False)
    saved.setdefault("lr_multiplier", 1.0)  # runs saved before it existed used the recipe's rate
    names = {f.name for f in dataclasses.fields(SupernetConfig)}
    return SupernetConfig(**{k: v for k, v in saved.items() if k in names})


def read_supernet_run(run: str | Path, space: SearchSpace) -> tuple[SupernetConfig, dict[str, Any]]:
    """The config and training summary of the **finished** supernet in ``run`` (a search or supernet run directory).

    Lets another search reuse a trained supernet instead of training its own (``edgezoo search --supernet RUN``):
    the supernet must belong to ``space`` (same hash) and have finished its epochs; its config fixes the data and
    the held-out search split (``seed``, ``search_fraction``), so the reusing search scores subnets on images the
    supernet never trained on.
    """
    run = Path(run)
    weights, state_path = run / WEIGHTS_FILE, run / STATE_FILE
    if not weights.is_file() or not state_path.is_file():
        raise ValueError(f"supernet run {str(run)!r} holds no trained supernet (needs {WEIGHTS_FILE} and "
                         f"{STATE_FILE}); allowed: the --out of a finished 'edgezoo search'")
    state = _read_state(state_path)
    if state.get("space_hash") != space.hash:
        raise ValueError(f"supernet run {str(run)!r} trained a supernet for another search space (hash "
                         f"{state.get('space_hash')}), not {space.name!r} version {space.version} (hash {space.hash})")
    cfg = _saved_config(state["config"])
    if int(state["epoch"]) < cfg.epochs:
        raise ValueError(f"the supernet in {str(run)!r} stopped after epoch {int(state['epoch'])} of {cfg.epochs}; "
                         "finish it first (edgezoo search --resume on that run)")
    summary = {"epochs": cfg.epochs, "seconds": round(float(state["seconds"]), 2),
               "history": [dict(h) for h in state["history"]]}
    return cfg, summary


def load_supernet(out: str | Path, space: SearchSpace, num_classes: int, *, kernel_transform: bool) -> Supernet:
    """The trained supernet of a run directory."""
    from ..checkpoint import load_state_dict_file, read_safetensors_metadata

    path = Path(out) / WEIGHTS_FILE
    meta = read_safetensors_metadata(path)
    if meta.get("space_hash") != space.hash:
        raise ValueError(f"supernet {str(path)!r} was trained for another search space")
    net = Supernet(space, num_classes=num_classes, kernel_transform=kernel_transform)
    net.load_state_dict(load_state_dict_file(path))
    return net.eval()


__all__ = ["PHASES", "SearchData", "SupernetConfig", "evaluate_subnet", "load_supernet", "phase_schedule",
           "read_supernet_run", "restrict", "train_supernet"]
