"""``edgezoo export | bench | quantize``: thin wrappers over :mod:`edgezoo.deploy` and :mod:`edgezoo.bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import UserError
from .analysis import _positive_int

_EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2", "tflite": ".tflite",
                  "executorch": ".pte", "coreml": ".mlpackage"}


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

    from ..analysis.zoo import check_fits_memory
    from ..deploy import export_model, fuse
    from ..deploy.export import MOBILE_FORMATS

    mobile = args.format in MOBILE_FORMATS
    if args.int8 and not mobile:
        raise UserError(f"--int8 is offered for --format {'/'.join(MOBILE_FORMATS)}; for ONNX use `edgezoo quantize`")
    if args.int8 and args.format != "coreml" and args.calib is None:
        raise UserError("--int8 needs calibration images: add --calib digits or --calib DIR (an image folder)")
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
    check_fits_memory(name, size, arg="--img-size")
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


# What each engine name in bench's table means; the ones that appear are explained under the table.
ENGINE_NOTES = {
    "eager": "PyTorch as built",
    "fused": "PyTorch with BatchNorm folded and fuse()'s inference forms",
    "compile": "torch.compile (Inductor)",
    "onnxruntime": "ONNX Runtime CPU, all graph optimizations",
    "openvino": "OpenVINO CPU, fp32, latency hint",
    "openvino/pinned": "OpenVINO with its worker threads pinned to CPU cores (ENABLE_CPU_PINNING); "
                       "measured against unpinned OpenVINO and faster here",
    "int8/onnxruntime": "int8 QDQ model run by ONNX Runtime",
    "int8/openvino": "int8 QDQ model run by OpenVINO",
}


def engine_footnote(engines: list[str], compare: str | None) -> str:
    """The line under bench's table: what the engines shown are and what the ratio columns divide."""
    seen = list(dict.fromkeys(engines))
    notes = [f"{e}: {ENGINE_NOTES[e]}" for e in seen if e in ENGINE_NOTES]
    ratios = "÷eager = engine ms / eager PyTorch ms" + (f", ÷{compare} = engine ms / {compare} ms" if compare else "")
    return "; ".join(notes + [ratios + " (below 1 is faster)"])


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
    console = table_console()
    console.print(table)
    console.print(engine_footnote([r.engine for r in rows], compare), style="dim", markup=False)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.zoo import check_fits_memory
    from ..bench import benchmark, device_description, pareto_plot, rows_as_dicts
    from ..registry import get_entry

    if args.precision is not None and args.backend not in ("eager", "auto"):
        raise UserError(f"--precision {args.precision} picks the engine itself; it cannot be combined with "
                        f"--backend {args.backend}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        plot_dir = Path(args.plot).parent if str(Path(args.plot).parent) else Path(".")
        if not plot_dir.is_dir() or not os.access(plot_dir, os.W_OK):
            raise UserError(f"cannot write --plot {args.plot!r}: folder {str(plot_dir)!r} is missing or not writable")
        if Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):  # before the timing, not after it
            raise UserError(f"--plot must end in .png, .pdf or .svg, got {args.plot!r}")
    for name in args.names:  # before any timing starts, not after the first models have run
        get_entry(name)
        check_fits_memory(name, args.img_size, batch=max(args.batch), arg="--img-size")
    if not args.json:
        print(f"device: {device_description()}; median of {args.repeats} runs after {args.warmup} warm-up runs, "
              "in interleaved turns of back-to-back calls with the reference", file=sys.stderr)
    try:
        rows = benchmark(args.names, batches=args.batch, img_size=args.img_size, backend=args.backend,
                         compare=args.compare, warmup=args.warmup, repeats=args.repeats, precision=args.precision)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:  # e.g. bf16 refused on a CPU without native bf16
        if args.precision is None:
            raise
        raise UserError(str(exc).splitlines()[0]) from None
    if args.json:
        print(json.dumps({"device": device_description(), "rows": rows_as_dicts(rows)}, indent=2))
    else:
        _print_table(rows, args.compare)
    if args.plot:
        pareto_plot(rows, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}", file=sys.stderr)
            no_top1 = sorted({r.model for r in rows if r.imagenet_top1 is None})
            if no_top1 and len(no_top1) < len({r.model for r in rows}):
                print(f"not on its accuracy panel (no published ImageNet top-1): {', '.join(no_top1)}",
                      file=sys.stderr)
    return 0


def _run_meta(checkpoint: str | None) -> dict[str, Any] | None:
    """The training metadata of ``--checkpoint`` (its preprocessing), or None for weights not written by train."""
    if checkpoint is None:
        return None
    from ..train import read_metadata

    return read_metadata(checkpoint)


def _calib_loader(calib: str, model: Any, meta: dict[str, Any] | None, size: int, limit: int) -> Any:
    """Calibration images for ``--calib``, preprocessed exactly like the run's evaluation (digits: its train split)."""
    from ..train import run_eval_loader

    if calib == "digits":
        loader, _, _ = run_eval_loader("digits", meta=meta, model=model, img_size=size, split="train", limit=limit)
        return loader
    root = Path(calib)
    if not root.is_dir():
        raise UserError(f"--calib must be 'digits' or an ImageFolder directory, got {calib!r}")
    folder = root / "val" if (root / "val").is_dir() else root
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    try:
        loader, _, _ = run_eval_loader(calib, meta=meta, model=model, img_size=size, classes=classes, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"--calib {calib!r}: {exc}") from None
    return loader


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..analysis.zoo import check_fits_memory
    from ..deploy.quantize import loader_top1, quantize_int8

    out = Path(args.out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: give a file in an existing writable folder")
    if args.calib != "digits" and not Path(args.calib).is_dir():
        raise UserError(f"--calib must be 'digits' or an ImageFolder directory, got {args.calib!r}")
    model, size = _load_model(args.name, args.checkpoint, args.img_size)
    check_fits_memory(args.name, size, arg="--img-size")  # the engines calibrate and run batch-1 graphs
    meta = _run_meta(args.checkpoint)
    calib = _calib_loader(args.calib, model, meta, size, args.calib_images)
    try:
        q = quantize_int8(model, calib, backend=args.backend, method=args.method)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    q.save(out)
    print(f"int8 QDQ model written to {out} (engine: {q.backend}; timings ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in q.timings_ms.items()) + ")")
    if args.calib == "digits" and getattr(model, "num_classes", 0) == 10:
        from ..train import run_eval_loader

        # The held-out split with the run's own preprocessing, the same loader `edgezoo eval` uses.
        val, _, _ = run_eval_loader("digits", meta=meta, model=model, img_size=size)
        a32, a8 = loader_top1(model, val), loader_top1(q, val)
        print(f"digits top-1: fp32 {a32:.2f}%  int8 {a8:.2f}%  (change {a8 - a32:+.2f} points)")
    return 0


def _max_drop(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected top-1 points >= 0 (e.g. 0.5) or 'none', got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected top-1 points >= 0 (e.g. 0.5) or 'none', got {text!r}")
    return value


def _engine_list(text: str) -> list[str]:
    from ..deploy.precision import INT8_ENGINES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in INT8_ENGINES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated int8 engines from {', '.join(INT8_ENGINES)}, got {text!r}")
    return names


def _model_or_run(target: str, checkpoint: str | None, img_size: int | None) -> tuple[Any, int, dict | None]:
    """``NAME`` (with ``--checkpoint``) or a training run directory / weights file: (model, size, run metadata)."""
    from ..train import read_metadata

    if checkpoint is None and (Path(target).exists() or os.sep in target):
        if not Path(target).exists():
            raise UserError(f"{target!r} is neither a model name nor an existing run directory")
        meta = read_metadata(target)
        if meta is None:
            raise UserError(f"{target!r} holds no `edgezoo train` run; give a model NAME with --checkpoint FILE")
        model, size = _load_model(meta["model"], target, img_size)
        return model, size, meta
    model, size = _load_model(target, checkpoint, img_size)
    return model, size, _run_meta(checkpoint)


def cmd_optimize(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.precision import optimize_precision

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: {str(existing)!r} is not writable")
    if args.calib != "digits" and not Path(args.calib).is_dir():
        raise UserError(f"--calib must be 'digits' or an ImageFolder directory, got {args.calib!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, size, meta = _model_or_run(args.target, args.checkpoint, args.img_size)
    in_chans = int(meta["in_chans"]) if meta else 3
    example = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    guard = args.max_drop is not None
    if args.calib == "digits":
        if guard and getattr(model, "num_classes", 0) != 10:
            raise UserError(f"the digits accuracy guard needs a model trained on digits (10 classes), this one has "
                            f"{getattr(model, 'num_classes', '?')}; give a run from `edgezoo train`, or --max-drop none")
        calib, val = "digits", ("digits" if guard else None)
    else:
        calib = _calib_loader(args.calib, model, meta, size, args.calib_images)
        val = None
        if guard:
            from ..train import run_eval_loader

            if meta is None:
                raise UserError("a folder --calib guards accuracy only for a run from `edgezoo train` (its classes); "
                                "give one, or --max-drop none")
            try:
                val, _, _ = run_eval_loader(args.calib, meta=meta, img_size=size)
            except (ValueError, FileNotFoundError) as exc:
                raise UserError(f"--calib {args.calib!r}: {exc}") from None
    try:
        engine = optimize_precision(model, example, args.precision, calib=calib, val=val, max_drop=args.max_drop,
                                    meta=meta, int8_engines=args.int8_engines, method=args.method)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:
        sys.stderr.write(f"edgezoo: {str(exc).splitlines()[0]}\n")
        return 1
    written = engine.save(out)
    _print_precision_table(engine, args.target)
    print(f"chosen: {engine.variant} ({engine.reason})")
    if engine.openvino_config:  # the artifact runs as measured only when compiled with these settings
        print("compile it with OpenVINO properties " + ", ".join(f"{k}={v}" for k, v in engine.openvino_config.items()))
    print("wrote " + ", ".join(str(p) for p in written))
    if engine.backend in ("onnxruntime", "openvino"):
        print(f"run it as measured: edgezoo.deploy.load_optimized({str(out)!r})")
    return 0


def _print_precision_table(engine: Any, title: str) -> None:
    from rich.table import Table

    from .._console import table_console

    table = Table(title=f"{title}: candidates (batch 1, {engine.threads} threads; latency = median of alternating turns)")
    for c in ("candidate", "ms", "×fp32", "top-1 %", "agree %", "status", "why"):
        table.add_column(c, justify="left" if c in ("candidate", "status", "why") else "right")
    ref = next((c.latency_ms for c in engine.candidates if c.precision == "fp32" and c.latency_ms), None)
    for c in engine.candidates:
        speed = f"{ref / c.latency_ms:.2f}" if ref and c.latency_ms else "-"
        table.add_row(c.name, f"{c.latency_ms:.3f}" if c.latency_ms else "-", speed,
                      f"{c.top1:.2f}" if c.top1 is not None else "-",
                      f"{c.agreement:.1f}" if c.agreement is not None else "-", c.status, c.reason)
    table_console().print(table)


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
    p.add_argument("--img-size", type=_positive_int, help="square input size (default: each model's)")
    p.add_argument("--backend", choices=BENCH_BACKENDS, default="eager",
                   help="eager: PyTorch as built; fused: BatchNorm folded + inference forms; compile: torch.compile; "
                        "onnxruntime / openvino: that engine on the exported graph; int8: ONNX QDQ int8; "
                        "auto: measure the engines and keep the fastest")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"), default=None,
                   help="time the fastest engine at this precision (calibrated on noise: timing only, accuracy is "
                        "not checked; `edgezoo optimize RUN` makes the guarded choice); replaces --backend")
    p.add_argument("--compare", choices=COMPARE_WITH, help="also time the same model in timm (needs edgezoo[dev])")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--warmup", type=_positive_int, default=5, help="untimed calls per engine before timing")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed calls per engine; the median is reported")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a latency vs GMACs / accuracy plot (PNG)")
    p.set_defaults(func=cmd_bench)

    from ..deploy.precision import CALIBRATION_METHODS as PREC_METHODS, DEFAULT_MAX_DROP, PRECISIONS

    p = sub.add_parser("optimize", help="fastest engine at a precision (fp32/bf16/int8/auto) behind an accuracy guard")
    p.add_argument("target", metavar="NAME|RUN", help="a model name (with --checkpoint) or a run directory of `edgezoo train`")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default): fastest of fp32, bf16 (native CPUs only) and int8 that keeps accuracy")
    p.add_argument("--calib", default="digits",
                   help="calibration + held-out images: 'digits' (train split calibrates, val split guards) or an ImageFolder")
    p.add_argument("--max-drop", type=_max_drop, default=DEFAULT_MAX_DROP,
                   help=f"most top-1 points a candidate may lose vs fp32 (default {DEFAULT_MAX_DROP}); 'none': no guard, timing only")
    p.add_argument("--out", required=True, help="folder for the chosen artifact(s) and report.json")
    p.add_argument("--checkpoint", help="weights for NAME: .safetensors/.pth file or run directory")
    p.add_argument("--img-size", type=_positive_int, help="input resolution (default: the run's / model's)")
    p.add_argument("--calib-images", type=_positive_int, default=300, help="calibration images from a folder (default 300)")
    p.add_argument("--int8-engines", type=_engine_list, default=None,
                   help="comma-separated subset of openvino-nncf,onnxruntime-qdq,openvino-qdq,pt2e (default: all but pt2e)")
    p.add_argument("--method", choices=PREC_METHODS, default="minmax",
                   help="activation range estimation: minmax (default), percentile, entropy (NNCF: histogram)")
    p.add_argument("--threads", type=_positive_int, help="inference threads (default: torch's choice)")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("quantize", help="int8 post-training static quantization (ONNX QDQ) with calibration data")
    p.add_argument("name", help="model name")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--checkpoint", help="weights: .safetensors/.pth file or training run directory")
    p.add_argument("--calib", default="digits", help="'digits' (bundled) or an ImageFolder directory")
    p.add_argument("--calib-images", type=_positive_int, default=128,
                   help="calibration images (digits: from its training split, never the held-out one)")
    p.add_argument("--img-size", type=_positive_int,
                   help="input resolution (default: the checkpoint's training size, else the model's)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax",
                   help="how activation ranges are chosen: minmax (full observed range), percentile (clips rare "
                        "outliers), entropy (minimises the KL divergence of the histogram)")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default="auto",
                   help="engine that runs the int8 model; auto times ONNX Runtime and OpenVINO and keeps the faster")
    p.set_defaults(func=cmd_quantize)
