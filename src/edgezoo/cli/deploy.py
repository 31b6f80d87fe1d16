"""``edgezoo export | bench | quantize``: thin wrappers over :mod:`edgezoo.deploy` and :mod:`edgezoo.bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import UserError

_EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2", "tflite": ".tflite",
                  "executorch": ".pte", "coreml": ".mlpackage"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,8, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,8, got {text!r}")
    return values


def _load_model(name: str, checkpoint: str | None, img_size: int | None) -> tuple[Any, int]:
    """Build ``name`` (with weights from ``checkpoint`` if given); returns (model, input resolution)."""
    from ..factory import create_model
    from ..registry import get_entry

    entry = get_entry(name)
    token_model = entry.family in ("vit", "mlp_mixer")
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist")
        from ..train import load_trained_model, read_metadata

        meta = read_metadata(checkpoint)
        if meta is not None:  # written by `edgezoo train`: it knows its classes and resolution
            model, meta = load_trained_model(checkpoint, model=name)
            return model, int(img_size or meta["img_size"])
    size = int(img_size or entry.default_cfg["input_size"][1])
    kwargs = {"img_size": size} if token_model else {}
    try:
        model = create_model(name, checkpoint=checkpoint, **kwargs)
    except ValueError as exc:
        if checkpoint is not None and "does not fit" in str(exc):
            raise UserError(f"--checkpoint {checkpoint!r} does not match model {name!r}: {str(exc).split('; ', 1)[-1]}") from None
        raise
    return model.eval(), size


def _resolve_name_or_run(args: argparse.Namespace) -> tuple[str, dict | None]:
    """``NAME|RUN``: a registered model name, or a run directory / weights file written by ``edgezoo train``."""
    from ..registry import get_entry

    target = args.name
    try:
        get_entry(target)
        return target, None
    except (KeyError, ValueError):
        if not Path(target).exists():
            raise
    if args.checkpoint is not None:
        raise UserError(f"give either a run ({target!r}) or --checkpoint, not both")
    from ..train import read_metadata

    meta = read_metadata(target)
    if meta is None:
        raise UserError(f"{target!r} is not a model name nor a run or weights file written by `edgezoo train`")
    args.checkpoint = target
    return str(meta["model"]), meta


def _path_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..deploy import export_model, fuse
    from ..deploy.export import MOBILE_FORMATS

    mobile = args.format in MOBILE_FORMATS
    if args.int8 and not mobile:
        raise UserError(f"--int8 is offered for --format {'/'.join(MOBILE_FORMATS)}; for ONNX use `edgezoo quantize`")
    if args.int8 and args.format != "coreml" and args.calib is None:
        raise UserError(f"--int8 needs calibration images: add --calib digits or --calib DIR (an image folder)")
    if args.dynamic_batch and mobile:
        raise UserError(f"--dynamic-batch is not supported for --format {args.format}: phone artifacts have batch 1")
    if mobile:
        from ..deploy.mobile import runtime_missing

        why = runtime_missing(args.format)
        if why:
            raise UserError(why)
    name, meta = _resolve_name_or_run(args)
    out = Path(args.out)
    if out.exists() and out.is_dir() and not (args.format == "coreml" and out.suffix == ".mlpackage"):
        raise UserError(f"--out {args.out!r} is a directory; give a file path such as {name}{_EXPORT_SUFFIX[args.format]}")
    parent = out.parent if str(out.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: {str(existing)!r} is not a writable folder")
    if args.calib is not None and args.calib != "digits" and not Path(args.calib).is_dir():
        raise UserError(f"--calib must be 'digits' or an image folder, got {args.calib!r}")
    model, size = _load_model(name, args.checkpoint, args.img_size)
    if meta is None and args.checkpoint is not None:
        from ..train import read_metadata

        meta = read_metadata(args.checkpoint)
    if args.fuse and not mobile:
        model = fuse(model)
    in_chans = int(model.get_submodule(model.default_cfg["first_conv"]).weight.shape[1])
    x = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    calib = None
    prep = None
    if mobile:
        from ..deploy.mobile_export import Preprocessing, calibration_images

        prep = Preprocessing.of(model, size, meta)
        if args.int8 and args.calib is not None:
            calib, _ = calibration_images(args.calib, prep, count=args.calib_images, split="train")
    try:
        if mobile:
            from ..deploy.mobile import input_spec
            from ..deploy.mobile_export import export_mobile

            spec = input_spec(model, x, mean=prep.mean, std=prep.std, classes=(meta or {}).get("classes"), name=name)
            result = export_mobile(model, out, format=args.format, example_input=x, int8=args.int8,
                                   calibration=calib, spec=spec)
        else:
            result = export_model(model, out, format=args.format, example_input=x, dynamic_batch=args.dynamic_batch)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    size_mb = _path_size(out) / 1e6
    folded = "BN-folded, " if (args.fuse or mobile) else ""
    print(f"exported {name} ({folded}{'int8, ' if args.int8 else ''}input 1x{in_chans}x{size}x{size}"
          f"{', dynamic batch' if args.dynamic_batch else ''}) to {out} [{args.format}, {size_mb:.1f} MB]")
    details = result.details
    if "partitions" in details:
        outside = ", ".join(f"{k} x{v}" for k, v in sorted(details["outside"].items())) or "none"
        print(f"XNNPACK: {details['partitions']} delegated partition(s); ops outside XNNPACK: {outside}")
    if args.format == "coreml":
        print(f"Core ML structure: {details.get('structure')}")
        if details.get("problems"):
            print(f"Core ML structure problems: {'; '.join(details['problems'])}")
            return 1
        if result.rel_diff is None:
            print("parity: not run (Core ML predicts on macOS only); conversion, names and shapes checked")
            return 0
    if args.int8:
        print(f"int8 vs fp32 eager: max |diff| = {result.rel_diff:.2e} of the output scale; top-1 agreement on "
              f"calibration images {100 * details['top1_agreement']:.1f}%")
        classes = (meta or {}).get("classes")
        if args.calib == "digits" and classes is not None and [str(c) for c in classes] == [str(d) for d in range(10)]:
            from ..deploy.mobile_export import artifact_runner, calibration_images, top1

            val_x, val_y = calibration_images("digits", prep, count=10_000, split="val")
            run = artifact_runner(out, args.format)
            a32, a8 = top1(model, val_x, val_y), top1(run, val_x, val_y)
            print(f"digits top-1 (held-out, {len(val_y)} images): fp32 eager {a32:.2f}%  int8 {args.format} {a8:.2f}%"
                  f"  (change {a8 - a32:+.2f} points)")
        return 0
    status = "OK" if result.rel_diff is not None and result.rel_diff <= 1e-4 else "MISMATCH"
    print(f"parity vs PyTorch eager ({result.checked_with}): max |diff| = {result.rel_diff:.2e} of the output scale -> {status}")
    return 0 if status == "OK" else 1


def _print_table(rows: list[Any], compare: str | None) -> None:
    from .._console import table_console
    from rich.table import Table

    from ..bench import device_description

    table = Table(title=f"inference latency — {device_description()}")
    cols = ["model", "engine", "batch", "img", "median ms", "img/s", "eager ms", "÷eager"]
    if compare:
        cols += [f"{compare} ms", f"÷{compare}"]
    cols.append("GMACs")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "engine") else "right")
    for r in rows:
        cells = [r.model, r.engine, str(r.batch), str(r.img_size), f"{r.median_ms:.2f}", f"{r.throughput:.1f}",
                 f"{r.eager_ms:.2f}", f"{r.ratio_vs_eager:.2f}×"]
        if compare:
            cells += [f"{r.timm_ms:.2f}" if r.timm_ms else "-", f"{r.ratio_vs_timm:.2f}×" if r.ratio_vs_timm else "-"]
        cells.append(f"{r.gmacs:.2f}")
        table.add_row(*cells)
    table_console().print(table)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import benchmark, device_description, pareto_plot, rows_as_dicts

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        plot_dir = Path(args.plot).parent if str(Path(args.plot).parent) else Path(".")
        if not plot_dir.is_dir() or not os.access(plot_dir, os.W_OK):
            raise UserError(f"cannot write --plot {args.plot!r}: folder {str(plot_dir)!r} is missing or not writable")
    if not args.json:
        print(f"device: {device_description()}; median of {args.repeats} runs after {args.warmup} warm-up runs, "
              "in interleaved turns of back-to-back calls with the reference", file=sys.stderr)
    try:
        rows = benchmark(args.names, batches=args.batch, img_size=args.img_size, backend=args.backend,
                         compare=args.compare, warmup=args.warmup, repeats=args.repeats)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"device": device_description(), "rows": rows_as_dicts(rows)}, indent=2))
    else:
        _print_table(rows, args.compare)
    if args.plot:
        pareto_plot(rows, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from ..deploy import fuse
    from ..deploy.quantize import digits_tensors, quantize_int8, top1

    out = Path(args.out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: give a file in an existing writable folder")
    model, size = _load_model(args.name, args.checkpoint, args.img_size)
    if args.calib == "digits":
        _, _, calib, labels = digits_tensors(size)
        calib_x, eval_x, eval_y = calib[: args.calib_images], calib, labels
    else:
        from torchvision import datasets, transforms

        if not Path(args.calib).is_dir():
            raise UserError(f"--calib must be 'digits' or an ImageFolder directory, got {args.calib!r}")
        cfg = model.default_cfg
        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                 transforms.Normalize(cfg["mean"], cfg["std"])])
        ds = datasets.ImageFolder(args.calib, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        calib_x = torch.cat([b for b, _ in loader])[: args.calib_images]
        eval_x, eval_y = None, None
    try:
        q = quantize_int8(model, calib_x, backend=args.backend, method=args.method)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    q.save(out)
    print(f"int8 QDQ model written to {out} (engine: {q.backend}; timings ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in q.timings_ms.items()) + ")")
    if eval_x is not None and getattr(model, "num_classes", 0) == 10:
        fp32 = fuse(model)
        a32, a8 = top1(fp32, eval_x, eval_y), top1(q, eval_x, eval_y)
        print(f"digits top-1: fp32 {a32:.2f}%  int8 {a8:.2f}%  (change {a8 - a32:+.2f} points)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..bench import BENCH_BACKENDS, COMPARE_WITH
    from ..deploy import FORMATS
    from ..deploy.quantize import CALIBRATION_METHODS, QUANT_BACKENDS

    p = sub.add_parser("export", help="export to ONNX / TorchScript / ExportedProgram / LiteRT / ExecuTorch / Core ML "
                                      "and check the artifact")
    p.add_argument("name", metavar="NAME|RUN", help="model name (see `edgezoo list`) or a run written by `edgezoo train`")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="tflite/executorch/coreml need pip install 'edgezoo[mobile]'")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt, .pt2, .tflite, .pte, .mlpackage)")
    p.add_argument("--checkpoint", help="weights: .safetensors/.pth file or training run directory")
    p.add_argument("--img-size", type=_positive_int, help="input resolution (default: the model's or the run's)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (ONNX, ExportedProgram)")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into conv weights first (always for phone formats)")
    p.add_argument("--int8", action="store_true",
                   help="int8: static PT2E for tflite/executorch (needs --calib), int8 weights for coreml")
    p.add_argument("--calib", help="calibration images: 'digits' (bundled) or an image folder")
    p.add_argument("--calib-images", type=_positive_int, default=128, help="how many calibration images (default 128)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="inference latency: medians, throughput, ratios, optional Pareto plot")
    p.add_argument("names", nargs="+", help="model names")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--img-size", type=_positive_int)
    p.add_argument("--backend", choices=BENCH_BACKENDS, default="eager")
    p.add_argument("--compare", choices=COMPARE_WITH, help="also time the same model in timm (needs edgezoo[dev])")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--warmup", type=_positive_int, default=5)
    p.add_argument("--repeats", type=_positive_int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a latency vs GMACs / accuracy plot (PNG)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quantize", help="int8 post-training static quantization (ONNX QDQ) with calibration data")
    p.add_argument("name", help="model name")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--checkpoint", help="weights: .safetensors/.pth file or training run directory")
    p.add_argument("--calib", default="digits", help="'digits' (bundled) or an ImageFolder directory")
    p.add_argument("--calib-images", type=_positive_int, default=128)
    p.add_argument("--img-size", type=_positive_int)
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default="auto")
    p.set_defaults(func=cmd_quantize)
