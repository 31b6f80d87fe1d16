"""Training throughput (img/s): edgezoo's training step vs. the same architecture in timm with a plain loop.

edgezoo's step is the engine's (label-smoothed CE, backward, optimiser, per-step LR schedule, EMA update, and
gradient clipping when the family recipe uses it); timm's is the bare minimum (CE, backward, optimiser). Both run
on the same synthetic batch, same optimiser, interleaved in rounds so that machine noise hits both alike. The
ratio edgezoo / timm ≥ 1 means our loop, with its extras, is not slower.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py --models mobilenetv3_small_050 --img-size 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import edgezoo
from edgezoo.registry import get_entry
from edgezoo.train.config import build_config, resolve_config
from edgezoo.train.engine import WeightEma, make_optimizer, warmup_cosine


def edgezoo_step(name: str, img_size: int, batch: int, num_classes: int):
    cfg = resolve_config(build_config({"model": name, "img_size": img_size, "batch_size": batch}),
                         family=get_entry(name).family)
    kwargs = dict(cfg.model_kwargs)
    model = edgezoo.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs).train()
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(10_000, 10, 0.01))
    ema = WeightEma(model, 0.999)

    def step(x, y):
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update(model)

    def plain(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, plain, cfg, kwargs


def timm_step(name: str, img_size: int, batch: int, num_classes: int, cfg, kwargs):
    extra = {"img_size": img_size, **kwargs} if "patch_size" in kwargs else {}
    model = timm.create_model(name, num_classes=num_classes, **extra).train()
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=cfg.lr, momentum=0.9, nesterov=True),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=0.9),
           "adamw": lambda p: torch.optim.AdamW(p, lr=cfg.lr, weight_decay=cfg.weight_decay)}[cfg.optimizer](
        model.parameters())

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench(step, x, y, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mobilenetv3_small_050", "mobilenetv3_small_100"])
    ap.add_argument("--img-size", type=int, default=None, help="default: the digits recipe's size per family")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}")
    print("| model | img | batch | edgezoo engine step img/s | edgezoo plain loop img/s | timm plain loop img/s | "
          "engine / timm | plain / timm |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        fam = get_entry(name).family
        size = args.img_size or resolve_config(build_config({"model": name}), family=fam).img_size
        ez, ez_plain, cfg, kwargs = edgezoo_step(name, size, args.batch_size, 10)
        tm = timm_step(name, size, args.batch_size, 10, cfg, kwargs)
        x, y = torch.randn(args.batch_size, 3, size, size), torch.randint(0, 10, (args.batch_size,))
        bench(ez, x, y, 2), bench(tm, x, y, 2)  # warm-up
        a, b, c = [], [], []
        for _ in range(args.rounds):
            a.append(bench(ez, x, y, args.steps))
            c.append(bench(ez_plain, x, y, args.steps))
            b.append(bench(tm, x, y, args.steps))
        ma, mb, mc = statistics.median(a), statistics.median(b), statistics.median(c)
        print(f"| {name} | {size} | {args.batch_size} | {ma:.1f} | {mc:.1f} | {mb:.1f} | {ma / mb:.2f} | "
              f"{mc / mb:.2f} |", flush=True)


if __name__ == "__main__":
    main()
