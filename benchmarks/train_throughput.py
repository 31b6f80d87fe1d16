"""Training throughput (img/s): edgezoo's training step vs. the same architecture in timm with an equivalent loop.

Two comparisons, each edgezoo model vs timm model of the same name:
* the engine's step (label-smoothed CE, backward, optimiser, per-step LR schedule, weight EMA, and gradient
  clipping when the family recipe uses it) vs timm's model run through exactly the same step code;
* a plain loop (CE, backward, optimiser) with each model.
All four run on the same synthetic batch with the same optimiser settings, interleaved in rounds so that machine
noise hits them alike. Ratios ≥ 1 mean edgezoo is not slower.

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


def recipe(name: str, img_size: int, batch: int):
    cfg = resolve_config(build_config({"model": name, "img_size": img_size, "batch_size": batch}),
                         family=get_entry(name).family)
    return cfg, dict(cfg.model_kwargs)


def steps_for(model: torch.nn.Module, cfg):
    """(engine-equivalent step, plain step) closures for one model."""
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

    return step, plain


def models_for(name: str, img_size: int, num_classes: int, kwargs):
    ours = edgezoo.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs).train()
    extra = {"img_size": img_size, **kwargs} if "patch_size" in kwargs else {}
    theirs = timm.create_model(name, num_classes=num_classes, **extra).train()
    return ours, theirs


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
    print("| model | img | batch | engine step: edgezoo img/s | same step: timm img/s | ratio | plain loop: edgezoo "
          "img/s | plain loop: timm img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        fam = get_entry(name).family
        size = args.img_size or resolve_config(build_config({"model": name}), family=fam).img_size
        cfg, kwargs = recipe(name, size, args.batch_size)
        ours, theirs = models_for(name, size, 10, kwargs)
        runs = dict(zip(("ez", "ez_plain"), steps_for(ours, cfg)))
        runs.update(zip(("timm", "timm_plain"), steps_for(theirs, cfg)))
        x, y = torch.randn(args.batch_size, 3, size, size), torch.randint(0, 10, (args.batch_size,))
        for fn in runs.values():
            bench(fn, x, y, 2)  # warm-up
        got = {k: [] for k in runs}
        for r in range(args.rounds):
            keys = list(runs)[r % 4:] + list(runs)[:r % 4]
            for k in keys:
                got[k].append(bench(runs[k], x, y, args.steps))
        m = {k: statistics.median(v) for k, v in got.items()}
        print(f"| {name} | {size} | {args.batch_size} | {m['ez']:.1f} | {m['timm']:.1f} | {m['ez'] / m['timm']:.2f} "
              f"| {m['ez_plain']:.1f} | {m['timm_plain']:.1f} | {m['ez_plain'] / m['timm_plain']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
