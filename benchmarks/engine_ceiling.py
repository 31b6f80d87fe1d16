"""How fast could any fp32 graph be? A lower bound per model from this machine's measured GEMM ceiling.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/engine_ceiling.py --threads 2 --out benchmarks/results

Issue 6 asks optimize() to run hybrids and transformers in <= 0.8x the time of the best engine on timm's model.
Graph-level work (folding, layouts, fused attention) can only remove work *around* the dense matrix products; the
dense products themselves - convolutions with more than one input channel per group, Linear layers, attention
matmuls - cannot run faster than the machine's fp32 GEMM ceiling. So for each model:

    floor_ms = dense MACs / measured GEMM ceiling      (every other op free, every GEMM at the ceiling)

and if ``floor_ms / best_peer_ms > 0.8`` the 0.8x target is unreachable in fp32 by *any* graph on this machine,
whatever edgezoo does. The ceiling is the best of large square-ish GEMMs through PyTorch (oneDNN/MKL) and through
OpenVINO (a single MatMul graph), same thread count; dense MACs come from ``edgezoo.analysis.profile`` (the same
counts as torch's flop counter / 2). The best peer is the fastest of ONNX Runtime, OpenVINO and pinned OpenVINO
running timm's exported model, timed interleaved in back-to-back turns as in ``bench_vs_peers.py``.

The bound is loose: the small GEMMs of these models (ViT-Ti: 197 x 192 x 576 ...) run well below the large-GEMM
ceiling in every library, so "not excluded" means only that arithmetic alone does not rule 0.8x out. On the
2-core Skylake machine of 2026-12-01 it excluded no model (floor / best peer 0.23-0.68; see BENCHMARKS.md, which
adds OpenVINO's per-node profiles to say where the remaining time goes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import edgezoo
from edgezoo.analysis import profile
from edgezoo.bench import device_description, timm_twin
from edgezoo.deploy.export import onnx_bytes
from edgezoo.deploy.optimize import _openvino_runner, time_interleaved
from edgezoo.registry import get_entry

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_peers import DEFAULT_MODELS, _peer_runners, _perturb  # noqa: E402

# Layer kinds whose MACs are dense matrix products (im2col-able convs, Linear, matmul, attention); "dwconv" is not.
DENSE_KINDS = ("conv", "gconv", "linear", "matmul", "attention")
GEMM_SHAPES = ((2048, 2048, 2048), (1024, 1024, 1024), (4096, 1024, 1024), (1024, 4096, 1024))


def _rate(fn, macs: int, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    times.sort()
    return macs / times[len(times) // 2]


def gemm_ceiling(threads: int) -> dict[str, float]:
    """Median-of-9 GMAC/s of large fp32 GEMMs in PyTorch and OpenVINO; the best is the machine's ceiling here."""
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out[f"torch {m}x{k}x{n}"] = _rate(lambda: torch.mm(a, b), m * k * n, 3) / 1e9

    class MatMul(torch.nn.Module):
        def __init__(self, k: int, n: int) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(k, n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    for m, k, n in GEMM_SHAPES[:2]:
        mod, x = MatMul(k, n).eval(), torch.randn(m, k)
        run = _openvino_runner(mod, x, threads, False, onnx=onnx_bytes(mod, x))
        out[f"openvino {m}x{k}x{n}"] = _rate(lambda: run(x), m * k * n, 3) / 1e9
    return out


def model_row(name: str, threads: int, ceiling: float, repeats: int, block: int) -> dict:
    entry = get_entry(name)
    size = entry.default_cfg["input_size"][1]
    model = edgezoo.create_model(name).eval()
    _perturb(model)
    by_kind = profile(model, (1, 3, size, size)).by_kind()
    dense = sum(v["macs"] for k, v in by_kind.items() if k in DENSE_KINDS)
    total = sum(v["macs"] for v in by_kind.values())
    ref = timm_twin(name, model, size).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ort_run, ov_run, ov_pin_run = _peer_runners(ref, x, threads)
    t = time_interleaved({"ort": ort_run, "ov": ov_run, "ov_pin": ov_pin_run}, warmup=5, repeats=repeats,
                         block=block, gap_s=0.02)
    best = min(t.values())
    floor_ms = dense / ceiling * 1e3
    return dict(
        model=name, family=entry.family, img=size, macs=total, dense_macs=dense, dense_share=dense / total,
        peer_ms={k: round(v, 2) for k, v in t.items()}, best_peer_ms=round(best, 2),
        peer_dense_gmacs=round(dense / best / 1e6, 1), peer_share_of_ceiling=round(dense / (best / 1e3) / ceiling, 3),
        floor_ms=round(floor_ms, 2), floor_ratio=round(floor_ms / best, 3),
    )


def markdown(rows: list[dict], ceiling: float) -> str:
    lines = [
        f"GEMM ceiling (best measured fp32 GEMM): {ceiling / 1e9:.1f} GMAC/s\n",
        "| model | img | MACs (M) | dense share | best peer ms | peer dense GMAC/s (% of ceiling) | fp32 floor ms "
        "| floor ÷ best peer | 0.8× reachable? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "no" if r["floor_ratio"] > 0.8 else "not excluded"
        lines.append(
            f"| {r['model']} | {r['img']} | {r['macs'] / 1e6:.0f} | {r['dense_share']:.0%} | {r['best_peer_ms']:.1f} "
            f"| {r['peer_dense_gmacs']:.1f} ({r['peer_share_of_ceiling']:.0%}) | {r['floor_ms']:.1f} "
            f"| {r['floor_ratio']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--out", default=None, help="folder for ceiling.json and ceiling.md")
    args = p.parse_args(argv)
    print(f"# {device_description()}; load average {os.getloadavg()}", file=sys.stderr)
    gemms = gemm_ceiling(args.threads)
    for k, v in gemms.items():
        print(f"# {k}: {v:.1f} GMAC/s", file=sys.stderr)
    ceiling = max(gemms.values()) * 1e9
    rows = []
    for name in args.models:
        rows.append(model_row(name, args.threads, ceiling, args.repeats, args.block))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, ceiling)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ceiling.json").write_text(json.dumps(
            {"device": device_description(), "gemm_gmacs": gemms, "rows": rows}, indent=2))
        (out / "ceiling.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
