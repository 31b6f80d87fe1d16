"""Phone runtimes on this CPU: edgezoo's LiteRT / ExecuTorch artifacts vs timm's same model through the same
toolchain's default flow, vs OpenVINO — partitions, parity and latency (batch 1, interleaved rounds, medians).

    OMP_NUM_THREADS=2 .venv-mobile/bin/python benchmarks/bench_mobile.py vit_tiny_patch16_224 edgenext_xx_small \\
        --threads 2 --repeats 20 --out benchmarks/results/mobile.json

Per model at its default resolution: edgezoo's artifact (``export_model(format=...)``: mobile form, XNNPACK) and
timm's model with the same weights (``edgezoo.bench.timm_twin``) converted by the toolchain's default flow
(``litert_torch.convert`` / ``torch.export`` + ``to_edge_transform_and_lower`` with the XNNPACK partitioner), each
run by its runtime (LiteRT interpreter with XNNPACK, ExecuTorch runtime), plus OpenVINO on the BN-folded model
(``optimize``'s engine, pinned threads). Every contender is checked against eager PyTorch, then all are timed
round-robin (``time_interleaved``: turns of back-to-back calls, a new order each round) and summarized by medians.
``--int8`` adds edgezoo's int8 artifacts (calibrated on 32 digits images through the model's eval transform;
speed does not depend on the calibration set) and their speed-up over the same runtime's fp32 artifact.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgezoo
from edgezoo.bench import device_description, timm_twin
from edgezoo.deploy import export_model, fuse
from edgezoo.deploy.export import onnx_bytes, rel_diff
from edgezoo.deploy.optimize import _openvino_runner, time_interleaved
from edgezoo.registry import get_entry

DEFAULT_MODELS = ("mobilenetv2_100", "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium", "mobilevit_xxs",
                  "edgenext_xx_small", "vit_tiny_patch16_224", "mixer_s32_224")


def _timm_runners(name: str, model, x: torch.Tensor, threads: int, runtimes: list[str]) -> dict:
    """timm's twin through each toolchain's default flow: {runtime: (runner, partitions, outside)}."""
    from edgezoo.deploy import executorch, litert

    ref = timm_twin(name, model, x.shape[-1]).eval()
    out = {}
    if "tflite" in runtimes:
        art = litert.convert_default(ref, x)
        out["tflite"] = (litert.runner(art.data, threads), art.partitions, art.outside)
    if "executorch" in runtimes:
        with torch.no_grad():
            art = executorch.lower_program(torch.export.export(ref, (x,)))
        out["executorch"] = (executorch.runner(art.data, threads), art.partitions, art.outside)
    return out, ref


def measure(name: str, *, threads: int, repeats: int, block: int, int8: bool, timm: bool, runtimes: list[str],
            workdir: Path) -> dict:
    from edgezoo.deploy.mobile_export import Preprocessing, artifact_runner, calibration_images

    size = get_entry(name).default_cfg["input_size"][1]
    kwargs = {"img_size": size} if get_entry(name).family in ("vit", "mlp_mixer") else {}
    model = edgezoo.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    row: dict = {"model": name, "img": size, "partitions": {}, "outside": {}, "rel_diff": {}, "convert_s": {}}
    runners = {}
    for fmt in runtimes:
        t0 = time.perf_counter()
        res = export_model(model, workdir / f"{name}.{fmt}", format=fmt, example_input=x)
        row["convert_s"][f"edgezoo_{fmt}"] = round(time.perf_counter() - t0, 1)
        runners[f"edgezoo_{fmt}"] = artifact_runner(res.path, fmt, threads)
        row["partitions"][f"edgezoo_{fmt}"] = res.details["partitions"]
        row["outside"][f"edgezoo_{fmt}"] = res.details["outside"]
        if int8:
            prep = Preprocessing.of(model, size)
            calib, _ = calibration_images("digits", prep, count=32)
            t0 = time.perf_counter()
            q = export_model(model, workdir / f"{name}.int8.{fmt}", format=fmt, example_input=x, int8=True,
                             calibration=calib)
            row["convert_s"][f"edgezoo_{fmt}_int8"] = round(time.perf_counter() - t0, 1)
            runners[f"edgezoo_{fmt}_int8"] = artifact_runner(q.path, fmt, threads)
            row["partitions"][f"edgezoo_{fmt}_int8"] = q.details["partitions"]
            row["outside"][f"edgezoo_{fmt}_int8"] = q.details["outside"]
    if timm:
        t0 = time.perf_counter()
        ref_runners, _ = _timm_runners(name, model, x, threads, runtimes)
        row["convert_s"]["timm_default_flows"] = round(time.perf_counter() - t0, 1)
        for fmt, (run, parts, outside) in ref_runners.items():
            runners[f"timm_{fmt}"] = run
            row["partitions"][f"timm_{fmt}"] = parts
            row["outside"][f"timm_{fmt}"] = outside
    try:
        folded = fuse(model)
        runners["openvino"] = _openvino_runner(folded, x, threads, True, onnx=onnx_bytes(folded, x))
    except ImportError:
        pass
    for key, run in runners.items():
        row["rel_diff"][key] = float(f"{rel_diff(run(x), expected):.3g}")
    t = time_interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, warmup=3, repeats=repeats, block=block)
    row["ms"] = {k: round(v, 2) for k, v in t.items()}
    ratios = {}
    for fmt in runtimes:
        ours = t[f"edgezoo_{fmt}"]
        if f"timm_{fmt}" in t:
            ratios[f"{fmt}_vs_timm"] = round(ours / t[f"timm_{fmt}"], 3)
        if "openvino" in t:
            ratios[f"{fmt}_vs_openvino"] = round(ours / t["openvino"], 3)
        if f"edgezoo_{fmt}_int8" in t:
            ratios[f"{fmt}_int8_speedup"] = round(ours / t[f"edgezoo_{fmt}_int8"], 3)
    row["ratios"] = ratios
    return row


def markdown(rows: list[dict]) -> str:
    """The BENCHMARKS.md tables for ``rows`` (partitions and parity; latency and ratios)."""
    def cell(row, key, fmt="{}"):
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    out = ["| model | img | edgezoo .tflite partitions (outside) | timm .tflite | edgezoo .pte partitions (outside) "
           "| timm .pte | parity edgezoo tflite / pte | parity timm tflite / pte |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, o, d = r["partitions"], r["outside"], r["rel_diff"]

        def part(k):
            if k not in p:
                return "-"
            left = ", ".join(f"{n.split('.')[-2] if n.count('.') > 1 else n} ×{c}" for n, c in sorted(o[k].items()))
            return f"{p[k]}" + (f" ({left})" if left else "")
        out.append(f"| {r['model']} | {r['img']} | {part('edgezoo_tflite')} | {part('timm_tflite')} | "
                   f"{part('edgezoo_executorch')} | {part('timm_executorch')} | "
                   f"{cell(d, 'edgezoo_tflite', '{:.1e}')} / {cell(d, 'edgezoo_executorch', '{:.1e}')} | "
                   f"{cell(d, 'timm_tflite', '{:.1e}')} / {cell(d, 'timm_executorch', '{:.1e}')} |")
    out += ["", "| model | edgezoo tflite ms | timm tflite ms | edgezoo pte ms | timm pte ms | OpenVINO ms | tflite ÷ timm "
            "| pte ÷ timm | tflite ÷ OpenVINO | pte ÷ OpenVINO |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, ra = r["ms"], r["ratios"]
        out.append(f"| {r['model']} | {cell(ms, 'edgezoo_tflite')} | {cell(ms, 'timm_tflite')} | "
                   f"{cell(ms, 'edgezoo_executorch')} | {cell(ms, 'timm_executorch')} | {cell(ms, 'openvino')} | "
                   f"{cell(ra, 'tflite_vs_timm')} | {cell(ra, 'executorch_vs_timm')} | {cell(ra, 'tflite_vs_openvino')} | "
                   f"{cell(ra, 'executorch_vs_openvino')} |")
    return "\n".join(out)


def emit(row: dict, out: str | None) -> dict:
    """Stamp ``row`` with the device, print it as one JSON line and append it to ``out`` (JSON lines), so a run cut
    short keeps the rows it finished."""
    row["device"] = device_description()
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


def read_rows(path: str | Path) -> list[dict]:
    """The rows :func:`emit` appended to ``path`` (JSON lines; blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20, help="interleaved rounds")
    p.add_argument("--block", type=int, default=5, help="back-to-back calls per contender per round")
    p.add_argument("--runtimes", default="tflite,executorch", help="comma-separated: tflite, executorch")
    p.add_argument("--int8", action="store_true", help="also edgezoo's int8 artifacts")
    p.add_argument("--no-timm", action="store_true", help="skip timm's default-flow conversions")
    p.add_argument("--out", help="append JSON rows to this file")
    p.add_argument("--table", help="print the markdown tables of a JSON-lines results file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(read_rows(args.table)))
        return 0
    torch.set_num_threads(args.threads)
    runtimes = [r for r in args.runtimes.split(",") if r]
    print(f"# {device_description()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgezoo-bench-mobile-") as tmp:
        for name in args.models:
            row = measure(name, threads=args.threads, repeats=args.repeats, block=args.block, int8=args.int8,
                          timm=not args.no_timm, runtimes=runtimes, workdir=Path(tmp))
            rows.append(emit(row, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
