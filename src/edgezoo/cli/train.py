"""``edgezoo train | eval | predict | data | demo``: thin wrappers over :mod:`edgezoo.train`.

Only flags the user actually typed override the recipe (their argparse default is "absent"), so the precedence
defaults < family recipe < ``--config FILE.yaml`` < flags holds, and ``--resume`` can tell a conflicting flag
from an omitted one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import UserError

DEMO_MODEL = "mobilenetv3_small_050"
DEMO_EPOCHS = 12
DEMO_OUT = "runs/demo"
_DEMO_FILES = ("state.pt", "best.safetensors", "last.safetensors", "config.yaml", "metrics.csv", "curves.png",
               "report.json")

# flag name → (TrainConfig field, type, help)
_TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model", str, "model name (see `edgezoo list`); default mobilenetv3_small_050"),
    "--arch": ("model", str, "an architecture spec file (arch.yaml from `edgezoo search`) to train instead of --model (default: none)"),
    "--data": ("data", str, "'digits' (bundled; the default) or an ImageFolder dir "
                            "(DIR/train + DIR/val, or DIR/<class>/)"),
    "--epochs": ("epochs", int, "number of epochs (default: the family's digits preset on digits, else 30)"),
    "--batch-size": ("batch_size", int, "images per step per process (default 64)"),
    "--img-size": ("img_size", int, "training resolution (default: the family's digits size, 64 or 16 px, on digits, else the model's)"),
    "--lr": ("lr", float, "peak learning rate (default: the family's, scaled by batch size)"),
    "--weight-decay": ("weight_decay", float, "decoupled/L2 weight decay (default: the family's)"),
    "--optimizer": ("optimizer", str, "sgd | rmsprop | adamw (default: the family's)"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warm-up length before the cosine decay (default: the family's, at most a fifth of the run)"),
    "--grad-clip": ("grad_clip", float, "max global gradient norm, 0 disables (default: the family's)"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing (default 0.1)"),
    "--drop-path": ("drop_path", float, "stochastic depth rate (default: the family's)"),
    "--ema-decay": ("ema_decay", float, "EMA decay (default: adapted to the run length)"),
    "--mixup": ("mixup_alpha", float, "MixUp alpha, 0 = off (default 0)"),
    "--cutmix": ("cutmix_alpha", float, "CutMix alpha, 0 = off (default 0)"),
    "--randaugment-ops": ("randaugment_ops", int, "RandAugment operations per image, 0 = off (default: 0 on digits, else 2)"),
    "--val-fraction": ("val_fraction", float, "held-out fraction for a single ImageFolder dir (default 0.25)"),
    "--seed": ("seed", int, "random seed (default 0)"),
    "--out": ("out", str, "run directory for checkpoints, metrics and plots (default runs/edgezoo)"),
    "--workers": ("workers", int, "data-loading worker processes (default: 0 on digits, else up to 4)"),
    "--train-subset": ("train_subset", int, "train on only this many images, for smoke tests (default: all)"),
    "--val-subset": ("val_subset", int, "validate on only this many images (default: all)"),
    "--device": ("device", str, "cpu | cuda | cuda:N (default: cuda if available)"),
    "--teacher": ("teacher", str, "teacher model name for knowledge distillation, needs --teacher-checkpoint (default: none)"),
    "--teacher-checkpoint": ("teacher_checkpoint", str, "teacher weights: a run dir or weights file (default: none)"),
    "--kd-alpha": ("kd_alpha", float, "weight of the distillation term (default 0.5)"),
    "--kd-temperature": ("kd_temperature", float, "distillation temperature (default 4)"),
}
_BOOL_FLAGS = {
    "amp": "mixed precision (bf16/fp16 autocast); default on for CUDA",
    "channels_last": "NHWC memory format; default on for CUDA convnets",
    "ema": "keep an EMA of the weights (default on)",
    "hflip": "random horizontal flips (default on, off for digits)",
    "teacher_random_init": "distil from a randomly initialised --teacher when no --teacher-checkpoint is given "
                           "(default off: refused, as such a teacher teaches nothing; only for testing the wiring)",
}


def _parse_kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def _collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    overrides: dict[str, Any] = {}
    for flag, (field, _, _) in _TRAIN_FLAGS.items():
        if field in given:
            overrides[field] = given[field]
    for field in _BOOL_FLAGS:
        if field in given:
            overrides[field] = given[field]
    if given.get("resume"):
        overrides["resume"] = True
    if given.get("no_progress"):
        overrides["progress"] = False
    if "model_kwarg" in given:
        overrides["model_kwargs"] = dict(given["model_kwarg"])
    return overrides


def _run_training(overrides: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    from ..train import TrainingDiverged, build_config, train

    cfg = build_config(overrides, yaml_path=config_file)
    try:
        return train(cfg, explicit=set(overrides))
    except TrainingDiverged as exc:
        sys.stderr.write(f"edgezoo: training stopped: {exc}\n")
        raise SystemExit(1) from None


def cmd_qat(args: argparse.Namespace) -> int:
    """``train --qat --checkpoint RUN``: fake-quant fine-tuning of a run, int8 QDQ export, parity check."""
    from ..train.qat import qat_finetune

    given = vars(args)
    if not given.get("qat"):
        raise UserError("--checkpoint goes with --qat (fine-tune a run for int8); to continue a run use --resume")
    if not given.get("qat_checkpoint"):
        raise UserError("--qat needs --checkpoint RUN (a run directory or weights written by `edgezoo train`)")
    if not Path(given["qat_checkpoint"]).exists():
        raise UserError(f"--checkpoint {given['qat_checkpoint']!r} does not exist")
    allowed = {"epochs", "lr", "batch_size", "out", "data", "seed", "train_subset", "progress"}
    extra = sorted(k for k in _collect_overrides(args) if k not in allowed)
    if extra:
        raise UserError(f"--qat fine-tunes a finished run; these flags do not apply: {', '.join(extra)}")
    report = qat_finetune(given["qat_checkpoint"], out=given.get("out"), data=given.get("data", "digits"),
                          epochs=given.get("epochs", 2), lr=given.get("lr", 1e-4),
                          batch_size=given.get("batch_size", 64), seed=given.get("seed", 0),
                          train_limit=given.get("train_subset"), progress=not given.get("no_progress", False))
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        print(f"QAT {report['model']}: fp32 top-1 {report['fp32_top1']:.2f}%  fake-quant {report['fake_quant_top1']:.2f}%  "
              f"int8 (ONNX Runtime) {report['int8_onnxruntime_top1']:.2f}%")
        print(f"export parity vs fake-quant PyTorch: max |diff| = {report['parity_rel_diff']:.2e} of the output scale "
              f"-> {report['parity']}; wrote {report['out']}/model_int8.onnx")
    return 0 if report["parity"] == "OK" else 1


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "qat", False) or getattr(args, "qat_checkpoint", None):
        return cmd_qat(args)
    report = _run_training(_collect_overrides(args), getattr(args, "config", None))
    if getattr(args, "json", False) and os.environ.get("RANK", "0") == "0":  # one report per job, not per rank
        print(json.dumps(report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint

    ckpt = Path(args.checkpoint)
    png = args.confusion_png
    if png is None:
        png = str((ckpt if ckpt.is_dir() else ckpt.parent) / "confusion.png")
    elif Path(png).suffix.lower() != ".png":
        raise UserError(f"--confusion-png must name a .png file, got {png!r}")
    res = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                              confusion_png=png)
    if args.json:
        print(json.dumps({"top1": round(res["top1"], 4), "top5": round(res["top5"], 4), "n": res["n"]}))
        return 0
    from .._console import table_console
    from rich.table import Table

    console = table_console()
    console.print(f"[bold]{res['model']}[/bold] ({res['checkpoint']}) on {args.data}: "
                  f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  n={res['n']}"
                  + (f"  (skipped {res['skipped']} unreadable)" if res["skipped"] else ""))
    table = Table(title="per-class accuracy")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for i, (cls, acc) in enumerate(res["per_class"].items()):
        table.add_row(cls, "-" if acc is None else f"{acc:.2f}%", str(sum(res["confusion"][i])))
    console.print(table)
    console.print(f"confusion matrix: {png}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..train import predict_images

    results = predict_images(args.checkpoint, args.images, topk=args.topk, device=args.device)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{c} {p:.4f}" for c, p in r["top"]))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ..train import write_digits_imagefolder

    counts = write_digits_imagefolder(args.out)
    print(f"wrote digits to {args.out}: {counts['train']} train + {counts['val']} val PNGs "
          f"(8x8 grayscale, 10 classes, stratified 75/25 split, seed 0)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo model on digits with the default recipe, then print its report."""
    out = Path(args.out)
    if out.is_dir():  # start afresh: remove only what an earlier demo wrote
        for name in _DEMO_FILES:
            (out / name).unlink(missing_ok=True)
    elif out.exists():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    report = _run_training({"model": args.model, "data": "digits", "epochs": args.epochs, "out": str(out)}, None)
    print(json.dumps({k: report[k] for k in ("model", "best_top1", "final_top1", "params", "macs", "latency_ms",
                                             "train_seconds", "img_size")}))
    print(f"curves: {out / 'curves.png'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    S = argparse.SUPPRESS
    p = sub.add_parser("train", help="train a model (digits or an ImageFolder); torchrun for several processes")
    p.add_argument("--config", metavar="FILE.yaml", help="recipe settings (TrainConfig fields) from YAML")
    for flag, (field, typ, help_) in _TRAIN_FLAGS.items():
        p.add_argument(flag, dest=field, type=typ, default=S, help=help_)
    for field, help_ in _BOOL_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, action=argparse.BooleanOptionalAction,
                       default=S, help=help_)
    p.add_argument("--model-kwarg", dest="model_kwarg", action="append", type=_parse_kv, default=S,
                   metavar="KEY=VALUE", help="family-specific create_model override, e.g. patch_size=4 (repeatable)")
    p.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --out with its saved settings (config.yaml); a finished run says so")
    p.add_argument("--no-progress", action="store_true", default=S, help="no progress bars or summary table")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--qat", action="store_true", default=S,
                   help="quantization-aware fine-tuning of --checkpoint RUN (default 2 epochs, lr 1e-4), "
                        "then an int8 QDQ ONNX export checked against the fake-quant model")
    p.add_argument("--checkpoint", dest="qat_checkpoint", default=S, help="with --qat: the run to fine-tune (default: none; required by --qat)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="run directory or .safetensors written by `edgezoo train`")
    p.add_argument("--data", default="digits", help="'digits' or an ImageFolder dir (uses DIR/val if present)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--confusion-png", default=None, help="where to write the confusion matrix (default: run dir)")
    p.add_argument("--json", action="store_true", help='print {"top1", "top5", "n"} as JSON')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files with a trained checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders: every image under a folder, at any depth, in sorted path order")
    p.add_argument("--checkpoint", required=True, help="run directory or .safetensors written by `edgezoo train`")
    p.add_argument("--topk", type=int, default=5, help="how many classes to list per image, most likely first")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help='print [{"image", "top": [[class, probability], ...]}] as JSON')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="write a bundled dataset as an ImageFolder of PNGs")
    p.add_argument("name", choices=["digits"], help="dataset to write: digits (scikit-learn's 8x8 handwritten digits)")
    p.add_argument("--out", required=True, help="folder to write DIR/train/<class>/*.png and DIR/val/<class>/*.png into")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="train the demo model on digits and print its report (a few CPU minutes)")
    p.add_argument("--model", default=DEMO_MODEL, help="model to train (see `edgezoo list`)")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs")
    p.add_argument("--out", default=DEMO_OUT, help="run directory (files of an earlier demo there are replaced)")
    p.set_defaults(func=cmd_demo)
