"""GPU latency/throughput: edgezoo vs timm, eager and torch.compile, bf16, channels_last, batch 1 and 256.

The GPU rows issue 6 asks for when a device is available. One process; for every model and batch the contenders
(edgezoo eager, timm eager, and with ``--compile`` both compiled with Inductor) are timed interleaved: each round
gives every contender a turn of ``--block`` back-to-back calls, every call synchronised, the turn's median kept;
reported: the median over rounds, images/s, and edgezoo ÷ timm ratios. Both models hold the same weights (copied
through the converter mapping) and run in the same dtype and memory format; their outputs are compared.

    .venv/bin/python benchmarks/bench_gpu.py --device cuda --dtype bf16 --batches 1,256 --compile --out benchmarks/results/gpu

Runs on CPU too (``--device cpu``, e.g. as a smoke test), where bf16 is slow unless the CPU has AMX/AVX-512 BF16.
Needs timm (``pip install 'edgezoo[dev]'``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import edgezoo
from edgezoo.bench import device_description, timm_twin
from edgezoo.deploy.optimize import time_interleaved
from edgezoo.registry import get_entry

DEFAULT_MODELS = (
    "mobilenetv1_100",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_medium",
    "mobilenetv4_hybrid_medium",
    "mobilevit_s",
    "edgenext_small",
    "vit_small_patch16_224",
    "mixer_b16_224",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    model = model.eval().to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _synced(fn, device: torch.device):
    if device.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize(device)
        return run
    return fn


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    rows = []
    for name in args.models:
        entry = get_entry(name)
        size = entry.default_cfg["input_size"][1]
        base = edgezoo.create_model(name).eval()
        ref_base = timm_twin(name, base, size).eval()
        channels_last = args.channels_last and entry.family not in ("vit", "mlp_mixer")
        ours = _prepare(base, device, dtype, channels_last)
        ref = _prepare(ref_base, device, dtype, channels_last)
        contenders = {"ez_eager": ours, "timm_eager": ref}
        if args.compile:
            contenders["ez_compiled"] = torch.compile(ours, mode=args.compile_mode)
            contenders["timm_compiled"] = torch.compile(ref, mode=args.compile_mode)
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                build = time.perf_counter()
                outs = {k: m(x).float() for k, m in contenders.items()}  # compiles here, not in the timing
                build_s = time.perf_counter() - build
                scale = outs["timm_eager"].abs().max().clamp_min(1e-6)
                diff = {k: float((v - outs["timm_eager"]).abs().max() / scale) for k, v in outs.items() if k != "timm_eager"}
                runners = {k: _synced(lambda m=m: m(x), device) for k, m in contenders.items()}
                t = time_interleaved(runners, warmup=args.warmup, repeats=args.repeats, block=args.block)
            row = dict(
                model=name, family=entry.family, batch=batch, img=size, dtype=args.dtype, channels_last=channels_last,
                **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                **{f"{k}_img_s": round(batch / v * 1e3, 1) for k, v in t.items()},
                eager_ratio=round(t["ez_eager"] / t["timm_eager"], 3),
                rel_diff_vs_timm=diff, first_call_s=round(build_s, 1),
            )
            if args.compile:
                row["compiled_ratio"] = round(t["ez_compiled"] / t["timm_compiled"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del contenders, ours, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict], compiled: bool) -> str:
    head = "| model | batch | dtype | channels_last | edgezoo eager ms | timm eager ms | ratio |"
    sep = "|---|---|---|---|---|---|---|"
    if compiled:
        head += " edgezoo compiled ms | timm compiled ms | ratio | edgezoo compiled img/s |"
        sep += "---|---|---|---|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['channels_last']} | {r['ez_eager_ms']:.2f} "
                f"| {r['timm_eager_ms']:.2f} | {r['eager_ratio']:.2f}× |")
        if compiled:
            line += (f" {r['ez_compiled_ms']:.2f} | {r['timm_compiled_ms']:.2f} | {r['compiled_ratio']:.2f}× "
                     f"| {r['ez_compiled_img_s']:.0f} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 256])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (Inductor)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="round-robin rounds")
    p.add_argument("--block", type=int, default=10, help="back-to-back calls per contender per round")
    p.add_argument("--out", default=None, help="folder for gpu_results.json and gpu_table.md")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    desc = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else device_description()
    print(f"# {desc}; torch {torch.__version__}", file=sys.stderr)
    rows = run(args)
    table = markdown(rows, args.compile)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_results.json").write_text(json.dumps({"device": desc, "rows": rows}, indent=2))
        (out / "gpu_table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
