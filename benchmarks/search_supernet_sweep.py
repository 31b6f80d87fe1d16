"""Supernet settings vs proxy quality: train a supernet with given ``SupernetConfig`` overrides, then rank the
architectures whose retrained accuracy is already known by their inherited accuracy, and report Kendall's tau.

Two ground truths are reused, nothing is retrained here:

* ``benchmarks/results/search_proxy.json``: 12 architectures spanning the space's latency range, each retrained
  with 3 seeds for 8 epochs (``benchmarks/search_proxy.py --retrain --seeds 3``);
* ``benchmarks/results/search_quality.json``: the 10 random architectures of each of its 3 latency targets (30 in
  all), retrained once for the recipe's 16 epochs (``benchmarks/search_quality.py``), read from their saved
  ``subnet``.

Each variant trains into ``--work/NAME`` (resumable) and its scores go to ``--out`` (default
``benchmarks/results/search_supernet_sweep.json``); ``--score-only`` rescores supernets already trained::

    PYTHONPATH=src python benchmarks/search_supernet_sweep.py --work /tmp/sweep --name lr2 --set lr_multiplier=2
    PYTHONPATH=src python benchmarks/search_supernet_sweep.py --work /tmp/sweep --name e40 --set epochs=40 \\
        --set lr_multiplier=1

``--finetune-steps N`` scores a different proxy on the same supernet: each architecture's inherited weights are
fine-tuned for N steps before BN re-estimation and scoring (``edgezoo.search.supernet_train.finetune_and_evaluate``,
the score ``edgezoo search --rerank`` uses; learning rate ``--finetune-lr``); the result is stored as variant
``NAME+ftN``::

    PYTHONPATH=src python benchmarks/search_supernet_sweep.py --work /tmp/sweep --score-only --name lr2 \\
        --finetune-steps 16
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def ground_truths() -> dict[str, list[tuple[Any, float, float]]]:
    """``{set name: [(subnet, retrained top-1, retrained loss), ...]}`` from the two saved studies."""
    from edgezoo.search.space import Subnet

    proxy = json.loads((HERE / "results" / "search_proxy.json").read_text())
    quality = json.loads((HERE / "results" / "search_quality.json").read_text())
    sets: dict[str, list[tuple[Any, float, float]]] = {"proxy_12x3seeds_8ep": [], "random_30x1seed_16ep": []}
    for a in proxy["archs"]:
        runs = list(a["retrained_runs"].values())
        sets["proxy_12x3seeds_8ep"].append((Subnet.from_dict(a["subnet"]), statistics.fmean(r["top1"] for r in runs),
                                            statistics.fmean(r["loss"] for r in runs)))
    for key, t in sorted(quality["targets"].items(), key=lambda kv: float(kv[0])):
        for a in t["random"]:
            if "subnet" not in a:
                raise SystemExit(f"w {key}: {a['arch']} has no saved subnet; rerun benchmarks/search_quality.py once "
                                 "(it redraws and saves them)")
            seed0 = a["runs"]["0"]  # one seed for all of them (the best one has more: not mixed in)
            sets["random_30x1seed_16ep"].append((Subnet.from_dict(a["subnet"]), seed0["top1"], seed0["loss"]))
    return sets


def score(run: Path, space: Any, sets: dict[str, list[tuple[Any, float, float]]], finetune_steps: int = 0,
          finetune_lr: float = 5e-4) -> dict[str, Any]:
    from scipy.stats import kendalltau

    from edgezoo.search.supernet_train import (SearchData, evaluate_subnet, finetune_and_evaluate, load_supernet,
                                               read_supernet_run)

    cfg, summary = read_supernet_run(run, space)
    data = SearchData(cfg, space)
    net = load_supernet(run, space, len(data.classes), kernel_transform=cfg.kernel_transform)
    last = summary["history"][-1]
    out: dict[str, Any] = {"config": cfg.to_dict(), "train_seconds": summary["seconds"],
                           "largest_top1": last.get("largest_top1"), "smallest_top1": last.get("smallest_top1"),
                           "kd_loss_end": last.get("kd_loss"), "sets": {}}
    for name, items in sets.items():
        t0 = time.perf_counter()
        if finetune_steps:
            inherited = [finetune_and_evaluate(net, data, s, steps=finetune_steps, lr=finetune_lr) for s, _, _ in items]
        else:
            inherited = [evaluate_subnet(net, data, s) for s, _, _ in items]
        seconds = time.perf_counter() - t0
        tau_top1, p_top1 = kendalltau([i["top1"] for i in inherited], [x[1] for x in items])
        tau_loss, p_loss = kendalltau([i["loss"] for i in inherited], [x[2] for x in items])
        out["sets"][name] = {"n": len(items), "tau_top1": tau_top1, "p_top1": p_top1, "tau_loss": tau_loss,
                             "p_loss": p_loss, "inherited_top1_mean": statistics.fmean(i["top1"] for i in inherited),
                             "inherited_top1_min": min(i["top1"] for i in inherited),
                             "score_seconds": round(seconds, 1), "inherited": inherited}
    if finetune_steps:
        out["finetune"] = {"steps": finetune_steps, "lr": finetune_lr}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder holding one supernet run per variant")
    ap.add_argument("--name", action="append", required=True, help="variant name (a folder under --work); repeatable"
                    " with --score-only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="SupernetConfig override (YAML value), e.g. lr_multiplier=2 or epochs=40")
    ap.add_argument("--score-only", action="store_true", help="score supernets already trained under --work")
    ap.add_argument("--out", default=str(HERE / "results" / "search_supernet_sweep.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each architecture this many steps "
                    "before scoring (another proxy; stored as NAME+ftN)")
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import yaml

    from edgezoo.checkpoint import atomic_write_bytes
    from edgezoo.search.space import DIGITS_SPACE as space
    from edgezoo.search.supernet_train import STATE_FILE, SupernetConfig, train_supernet

    if not args.score_only and len(args.name) != 1:
        raise SystemExit("training takes one --name (several only with --score-only)")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {"space": space.identity(), "variants": {}}
    sets = ground_truths()
    for name in args.name:
        run = Path(args.work) / name
        if not args.score_only:
            over: dict[str, Any] = {}
            for kv in args.set:
                key, _, value = kv.partition("=")
                over[key] = yaml.safe_load(value)
            if "phase_fractions" in over:
                over["phase_fractions"] = tuple(over["phase_fractions"])
            cfg = SupernetConfig(out=str(run), progress=False, **over)
            t0 = time.perf_counter()
            train_supernet(cfg, space, resume=(run / STATE_FILE).is_file(), log=lambda _m: None)
            print(f"{name}: trained in {time.perf_counter() - t0:.0f} s wall", flush=True)
        r = score(run, space, sets, args.finetune_steps, args.finetune_lr)
        if args.finetune_steps:
            name = f"{name}+ft{args.finetune_steps}"
        results["variants"][name] = r
        atomic_write_bytes(out_path, (json.dumps(results, indent=1) + "\n").encode())
        cells = "; ".join(f"{k}: tau top-1 {v['tau_top1']:.2f} loss {v['tau_loss']:.2f}, inherited top-1 mean "
                          f"{v['inherited_top1_mean']:.1f} % (min {v['inherited_top1_min']:.1f})"
                          for k, v in r["sets"].items())
        print(f"{name}: {r['train_seconds']:.0f} s training, largest {r['largest_top1']:.2f} % smallest "
              f"{r['smallest_top1']:.2f} % distillation loss {r['kd_loss_end']}; {cells}", flush=True)


if __name__ == "__main__":
    main()
