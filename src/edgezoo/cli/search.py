"""``edgezoo search``: hardware-aware architecture search on a dataset, ending in a plain, trained model.

A thin wrapper over :func:`edgezoo.search.pipeline.run_search`; see that module for the outputs.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from . import UserError
from .analysis import _non_negative_int, _positive_float, _positive_int


def cmd_search(args: argparse.Namespace) -> int:
    from ..search.pipeline import run_search
    from ..search.space import get_space

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    space = get_space(args.space)
    if args.data != "digits":
        from pathlib import Path

        if not Path(args.data).is_dir():
            raise UserError(f"--data must be 'digits' or an ImageFolder directory, got {args.data!r}")
    report = run_search(
        data=args.data, hardware=args.hardware, target_ms=args.target_ms, out=args.out, minutes=args.minutes,
        resume=args.resume, space=space, strategy=args.strategy, budget=args.budget,
        supernet_epochs=args.supernet_epochs, retrain_epochs=args.retrain_epochs,
        latency_source=args.latency_source, table=args.table, reward=args.reward, seed=args.seed,
        progress=not (args.no_progress or args.json), teacher_checkpoint=args.teacher_checkpoint,
        supernet_from=args.supernet, rerank=args.rerank, rerank_steps=args.rerank_steps,
        log=(lambda m: None) if args.json else print,
    )
    if args.json:
        print(json.dumps({k: report[k] for k in ("hardware", "target_ms", "predicted_latency_ms", "top1", "arch",
                                                 "seconds")}))
        return 0
    _print_tables(report, args.out)
    return 0


def _print_tables(report: dict[str, Any], out: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .._console import table_console

    console = table_console()
    front = Table(title=f"Pareto front on the search split ({report['hardware']}, {report['latency_source']})")
    front.add_column("predicted ms", justify="right")
    front.add_column("search top-1", justify="right")
    front.add_column("architecture")
    for p in report["pareto"]:
        # escaped: rich would take an expansion like "[e2]" in an architecture string for a style tag and drop it
        front.add_row(f"{p['latency_ms']:.3f}", f"{p['search_top1']:.2f}%", escape(p["arch"]))
    console.print(front)
    zoo = Table(title="zoo models on the same predictor (latency only)")
    zoo.add_column("model")
    zoo.add_column("predicted ms", justify="right")
    for z in report["zoo"]:
        zoo.add_row(f"{z['name']} @{z['img_size']}px", f"{z['latency_ms']:.3f}")
    console.print(zoo)
    res = Table(title="found architecture")
    res.add_column("metric")
    res.add_column("value", justify="right")
    for k, v in (("architecture", escape(report["arch"])), ("input", f"{report['img_size']} px"),
                 ("predicted latency", f"{report['predicted_latency_ms']:.3f} ms (target {report['target_ms']:g})"),
                 ("top-1 retrained", f"{report['top1']:.2f}% (held-out split)"),
                 ("params / MACs", f"{report['params']:,} / {report['macs'] / 1e6:.1f}M"),
                 ("time", " + ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items() if k != "total")
                  + f" = {report['seconds']['total']:.0f}s"),
                 ("outputs", f"{out}/arch.yaml, best.safetensors, report.json, pareto.png")):
        res.add_row(k, v)
    console.print(res)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..analysis import PRESETS
    from ..search.pipeline import LATENCY_SOURCES, RERANK_STEPS, RERANK_TOP
    from ..search.strategies import STRATEGIES

    p = sub.add_parser("search", help="hardware-aware architecture search (supernet + evolution) on your data")
    p.add_argument("--data", default="digits", help="'digits' (bundled) or an ImageFolder directory")
    p.add_argument("--hardware", required=True, metavar="PRESET",
                   help=f"one of {', '.join([*PRESETS, 'host'])}: the device whose latency the target is for")
    p.add_argument("--target-ms", type=_positive_float, required=True, help="latency limit in milliseconds")
    p.add_argument("--out", required=True, help="run directory (arch.yaml, best.safetensors, report.json, ...)")
    p.add_argument("--minutes", type=_positive_float, default=None,
                   help="time budget: the supernet gets as many epochs as fit in about half of it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--space", default="mnv4-conv-s-digits",
                   help="built-in space (mnv4-conv-s-digits, mnv4-hybrid-s-digits) or a space .yaml")
    p.add_argument("--strategy", default="two-stage", choices=STRATEGIES,
                   help="MobileNetV4's coarse-to-fine schedule, plain evolution, or the random baseline")
    p.add_argument("--budget", type=_positive_int, default=96, help="architectures to evaluate (default 96)")
    p.add_argument("--reward", default="hard", choices=("hard", "soft"),
                   help="hard latency limit, or MnasNet's soft reward ACC x (LAT/TAR)^-0.07")
    p.add_argument("--supernet-epochs", type=_positive_int, default=24,
                   help="epochs of supernet training: progressive shrinking, sandwich rule (--minutes may lower it)")
    p.add_argument("--retrain-epochs", type=_positive_int, default=None,
                   help="epochs for retraining the winner (default: the MobileNetV4 digits recipe)")
    p.add_argument("--latency-source", default="roofline", choices=LATENCY_SOURCES,
                   help="roofline on --hardware, a measured per-block table, or the roofline corrected by it")
    p.add_argument("--table", default=None, help="latency table JSON (for --latency-source table/corrected)")
    p.add_argument("--teacher-checkpoint", default=None,
                   help="a run trained on the same data (edgezoo train) that teaches the supernet's largest subnet")
    p.add_argument("--supernet", default=None, metavar="RUN",
                   help="reuse the trained supernet of another search run (same space and data) instead of training "
                        "one: one supernet, many targets or devices")
    p.add_argument("--rerank", type=_non_negative_int, default=RERANK_TOP, metavar="K",
                   help=f"fine-tune the search's best K architectures briefly and pick the best of them by that "
                        f"score (default {RERANK_TOP}; 0: the search's own pick)")
    p.add_argument("--rerank-steps", type=_non_negative_int, default=RERANK_STEPS, metavar="N",
                   help=f"fine-tuning steps per re-ranked architecture (default {RERANK_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split, sampling and training")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON summary only")
    p.set_defaults(func=cmd_search)
