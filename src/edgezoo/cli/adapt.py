"""``edgezoo latency-table`` and ``edgezoo adapt``: thin wrappers over :mod:`edgezoo.search.latency` and
:mod:`edgezoo.search.netadapt`."""
from __future__ import annotations

import argparse
import json
import sys

from . import UserError
from .analysis import _positive_float, _positive_int


def _hardware_names() -> list[str]:
    from ..analysis.hardware import PRESETS

    return [*PRESETS, "host"]


def cmd_latency_table(args: argparse.Namespace) -> int:
    from ..search.latency import (
        CALIBRATION_MODELS,
        ENGINES,
        build_latency_table,
        calibrate_table,
        default_items,
        resolve_engine,
    )

    if args.hardware != "host":
        raise UserError(f"--hardware {args.hardware!r}: a latency table is measured on this machine; use "
                        "--hardware host (presets use the roofline, no table needed)")
    if args.engine not in ENGINES:
        raise UserError(f"--engine must be one of {list(ENGINES)}, got {args.engine!r}")
    sizes = tuple(args.img_sizes) if args.img_sizes else (64, 128, 224)
    items = default_items(sizes)
    engine = resolve_engine(args.engine, threads=args.threads)
    print(f"measuring {len(items)} blocks in {engine}, {args.threads or 'default'} thread(s)", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\r{done}/{total} blocks", end="" if done < total else "\n", file=sys.stderr, flush=True)

    table = build_latency_table(items, engine=engine, threads=args.threads, out=args.out, progress=progress)
    if not args.no_calibrate:
        print(f"calibrating the whole-model correction on {len(CALIBRATION_MODELS)} zoo models", file=sys.stderr)
        calibrate_table(table, progress=progress)
    summary = {"out": str(table.path), "entries": len(table.entries), "engine": table.engine,
               "threads": table.threads, "fixed_ms": round(table.fixed_ms, 5), "cpu": table.meta["cpu"],
               "correction": table.correction}
    print(json.dumps(summary) if args.json else
          f"wrote {table.path}: {len(table.entries)} blocks, {table.engine}, {table.threads} thread(s), "
          f"per-call cost {table.fixed_ms:.4f} ms")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from ..search.netadapt import NetAdaptSettings, netadapt

    if args.hardware not in _hardware_names():
        raise UserError(f"unknown hardware {args.hardware!r}; allowed: {', '.join(_hardware_names())}")
    settings = NetAdaptSettings(  # a bad value raises ValueError naming the setting: one line, exit 2
        finetune_steps=args.finetune_steps, long_epochs=args.long_epochs, candidates=args.candidates,
        max_steps=args.max_steps, decrement=args.decrement, source=args.source, seed=args.seed,
        max_groups=args.max_groups, minutes=args.minutes, kd_alpha=args.kd_alpha, engine=args.engine,
        threads=args.threads, measure=not args.no_measure, bn_batches=args.bn_batches,
        decrement_decay=args.decrement_decay, min_proposals=args.min_proposals, lr=args.lr,
        retarget=args.retarget,
    )
    report = netadapt(args.checkpoint, target_ms=args.target_ms, speedup=args.speedup, hardware=args.hardware,
                      out=args.out, data=args.data, settings=settings, table=args.table, resume=args.resume,
                      log=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    keys = ("hardware", "target_ms", "predicted_latency_ms", "start_predicted_latency_ms", "speedup_predicted",
            "measured_latency_ms", "start_measured_latency_ms", "speedup_measured", "engine", "target_met", "top1",
            "base_top1", "top1_change", "steps", "seconds")
    print(json.dumps({k: report[k] for k in keys if k in report}))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency-table", help="measure a per-block latency table on this host (for search / adapt)")
    p.add_argument("--hardware", default="host", help="must be 'host': the table is measured here")
    p.add_argument("--out", default=None, help="table file (default: the edgezoo cache folder)")
    p.add_argument("--engine", default="auto",
                   help="onnxruntime | openvino | openvino/pinned | eager | auto (what optimize() picks here)")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads to measure with (default: torch's)")
    p.add_argument("--img-sizes", type=_positive_int, nargs="*", default=None, metavar="PX",
                   help="resolutions of the zoo configs' blocks (default 64 128 224)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip timing whole zoo models for the whole-model correction (plain block sums)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress output while measuring")
    p.set_defaults(func=cmd_latency_table)

    p = sub.add_parser("adapt", help="NetAdapt: prune a trained model toward a latency target, with fine-tuning")
    p.add_argument("--checkpoint", required=True, help="run directory or weights written by `edgezoo train`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-ms", type=_positive_float, help="latency target in milliseconds")
    target.add_argument("--speedup", type=_positive_float,
                        help="target = the starting model's predicted latency on --hardware divided by this")
    p.add_argument("--hardware", default="host", help="a hardware preset or 'host' (measured latency table)")
    p.add_argument("--out", required=True, help="output folder: arch.yaml, best.safetensors, report.json, pareto.png")
    p.add_argument("--data", default="digits", help="the data the checkpoint was trained on")
    p.add_argument("--table", default=None, help="latency table file (host; default: the cached one)")
    p.add_argument("--source", default="table", choices=["table", "corrected"], help="host latency source")
    p.add_argument("--finetune-steps", type=int, default=8,
                   help="short-term fine-tune steps per proposal (every proposal of a step sees the same batches)")
    p.add_argument("--bn-batches", type=int, default=4,
                   help="batches to re-estimate BatchNorm statistics on before each holdout evaluation")
    p.add_argument("--long-epochs", type=int, default=4, help="long-term fine-tune epochs of the result")
    p.add_argument("--kd-alpha", type=float, default=0.7,
                   help="long fine-tune: weight of distillation from the starting model (0: labels only)")
    p.add_argument("--candidates", type=_positive_int, default=None,
                   help="proposals fine-tuned per step, fewest filter norm lost first (default: all, as the paper)")
    p.add_argument("--max-steps", type=_positive_int, default=40,
                   help="at most this many NetAdapt steps (one layer shrunk per step)")
    p.add_argument("--max-groups", type=_positive_int, default=None,
                   help="layers probed per step, a seeded sample (default: all, as in the paper)")
    p.add_argument("--decrement", type=_positive_float, default=0.08,
                   help="first step's latency decrement, fraction of the starting latency")
    p.add_argument("--decrement-decay", type=_positive_float, default=0.96,
                   help="the decrement is multiplied by this after every step")
    p.add_argument("--min-proposals", type=_positive_int, default=4,
                   help="halve a step's decrement while fewer layers than this can meet its budget alone")
    p.add_argument("--lr", type=_positive_float, default=0.01, help="SGD learning rate of the fine-tunes")
    p.add_argument("--minutes", type=_positive_float, default=None,
                   help="stop proposing after this many minutes in all, then fine-tune and write the result")
    p.add_argument("--engine", default="auto",
                   help="host: engine of the latency table (auto: the one optimize() picks for this model)")
    p.add_argument("--threads", type=_positive_int, default=None, help="host: threads to measure with")
    p.add_argument("--no-measure", action="store_true",
                   help="host: skip timing the starting and final model side by side at the end")
    p.add_argument("--retarget", type=int, default=0,
                   help="host: when the predicted target is met but the measured speed-up is short, lower the "
                        "predicted target by the shortfall and go on, at most this many times")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished step (a larger --max-steps or "
                        "--minutes prunes a finished run further)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the holdout split and fine-tunes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_adapt)
