"""int8 phone artifacts of digits-trained runs: held-out top-1 (fp32 vs int8) and int8 speed-up, per runtime.

    OMP_NUM_THREADS=2 python benchmarks/bench_mobile_int8.py runs/mobilevit_xxs runs/edgenext_xx_small \\
        --threads 2 --out benchmarks/results/mobile_int8.json
    python benchmarks/bench_mobile_int8.py --table benchmarks/results/mobile_int8.json

Per run (a directory written by ``edgezoo train --data digits``) and runtime (LiteRT, ExecuTorch): the fp32 and the
int8 artifact (``export_model(..., int8=True)``, calibrated on 128 digits training images through the run's own
eval transform — what ``edgezoo export RUN --int8 --calib digits`` does), both run by the runtime on the 450
held-out digits images (top-1), then timed against each other round-robin (batch 1, medians; LiteRT gets its input
already in the model's input type — int8 for an int8 model — as an app would feed it). An int8 export that
edgezoo refuses (a known wrong result) is recorded with its reason instead of numbers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgezoo.bench import device_description
from edgezoo.deploy import export_model
from edgezoo.deploy.mobile_export import Preprocessing, artifact_runner, calibration_images, int8_refusal, top1
from edgezoo.deploy.optimize import time_interleaved
from edgezoo.train import load_trained_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_mobile import emit, read_rows  # noqa: E402 - one JSON-lines format for both phone-runtime harnesses

SUFFIX = {"tflite": ".tflite", "executorch": ".pte"}


def measure(run: str, *, runtimes: list[str], threads: int, calib_count: int, repeats: int, block: int,
            workdir: Path) -> dict:
    model, meta = load_trained_model(run)
    model = model.eval()
    size = int(meta["img_size"])
    prep = Preprocessing.of(model, size, meta)
    calib, _ = calibration_images("digits", prep, count=calib_count, split="train")
    val_x, val_y = calibration_images("digits", prep, count=10_000, split="val")
    x = calib[:1]
    row: dict = {"run": str(run), "model": meta["model"], "img": size, "val_images": len(val_y),
                 "eager_top1": round(top1(model, val_x, val_y), 2), "runtimes": {}}
    for fmt in runtimes:
        why = int8_refusal(model, fmt)
        out: dict = {}
        t0 = time.perf_counter()
        fp32 = export_model(model, workdir / f"f{SUFFIX[fmt]}", format=fmt, example_input=x)
        run32 = artifact_runner(fp32.path, fmt, threads)
        out.update(fp32_top1=round(top1(run32, val_x, val_y), 2), fp32_partitions=fp32.details["partitions"],
                   fp32_mb=round(fp32.path.stat().st_size / 1e6, 2))
        if why:
            out["int8_refused"] = why
            row["runtimes"][fmt] = out
            continue
        q = export_model(model, workdir / f"q{SUFFIX[fmt]}", format=fmt, example_input=x, int8=True,
                         calibration=calib)
        out["convert_s"] = round(time.perf_counter() - t0, 1)
        run8 = artifact_runner(q.path, fmt, threads)
        out.update(int8_top1=round(top1(run8, val_x, val_y), 2), int8_partitions=q.details["partitions"],
                   int8_outside=q.details["outside"], int8_mb=round(q.path.stat().st_size / 1e6, 2))
        out["top1_change"] = round(out["int8_top1"] - out["fp32_top1"], 2)
        if fmt == "tflite":  # the model's own input type, as an app feeds it (no NumPy quantize in the timing)
            from edgezoo.deploy.litert import invoker

            calls = {"fp32": invoker(fp32.path.read_bytes(), x, threads),
                     "int8": invoker(q.path.read_bytes(), x, threads)}
        else:
            calls = {"fp32": lambda: run32(x), "int8": lambda: run8(x)}
        t = time_interleaved(calls, warmup=5, repeats=repeats, block=block)
        out.update(fp32_ms=round(t["fp32"], 3), int8_ms=round(t["int8"], 3), speedup=round(t["fp32"] / t["int8"], 2))
        row["runtimes"][fmt] = out
    return row


def markdown(rows: list[dict]) -> str:
    names = {"tflite": "LiteRT", "executorch": "ExecuTorch"}
    out = ["| model (digits run, img) | runtime | fp32 top-1 | int8 top-1 | change (pt) | XNNPACK partitions int8 "
           "| size fp32 → int8 | fp32 ms | int8 ms | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for fmt, o in r["runtimes"].items():
            head = f"| {r['model']} ({r['img']} px) | {names.get(fmt, fmt)} | {o['fp32_top1']:.2f} % |"
            if "int8_refused" in o:
                out.append(f"{head} refused: {o['int8_refused']} | | | | | | |")
                continue
            left = ", ".join(f"{k} ×{v}" for k, v in sorted(o["int8_outside"].items()))
            out.append(f"{head} {o['int8_top1']:.2f} % | {o['top1_change']:+.2f} | {o['int8_partitions']}"
                       f"{f' ({left})' if left else ''} | {o['fp32_mb']} → {o['int8_mb']} MB | {o['fp32_ms']} | "
                       f"{o['int8_ms']} | {o['speedup']}× |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*")
    p.add_argument("--runtimes", default="tflite,executorch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20, help="interleaved rounds")
    p.add_argument("--block", type=int, default=10, help="back-to-back calls per contender per round")
    p.add_argument("--out", help="append JSON rows to this file")
    p.add_argument("--table", help="print the markdown table of a JSON-lines results file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(read_rows(args.table)))
        return 0
    if not args.runs:
        p.error("give at least one run directory")
    torch.set_num_threads(args.threads)
    print(f"# {device_description()}", file=sys.stderr)
    done = set()
    if args.out and Path(args.out).exists():  # resume: runs already measured are skipped
        done = {row["run"] for row in read_rows(args.out)}
    with tempfile.TemporaryDirectory(prefix="edgezoo-bench-mobile-int8-") as tmp:
        for run in [r for r in args.runs if str(r) not in done]:
            try:
                row = measure(run, runtimes=[r for r in args.runtimes.split(",") if r], threads=args.threads,
                              calib_count=args.calib_images, repeats=args.repeats, block=args.block,
                              workdir=Path(tmp))
            except Exception as exc:  # one failing run (a converter error) must not lose the others' rows
                print(f"{run}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            emit(row, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
