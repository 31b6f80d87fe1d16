"""Where the time goes: per-operator-type share of ONNX Runtime latency for edgezoo's BN-folded model.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_engine.py mobilevit_xxs edgenext_xx_small --threads 2

Uses ONNX Runtime's built-in profiler (per-node kernel times), sums them by operator type over 20 runs at batch 1
and the model's default resolution, and prints a markdown table per model.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import torch

import edgezoo
from edgezoo.deploy import fuse
from edgezoo.deploy.export import onnx_bytes


def profile(name: str, threads: int, runs: int = 20) -> list[tuple[str, float, int]]:
    import onnxruntime as ort

    model = edgezoo.create_model(name).eval()
    size = model.default_cfg["input_size"][1]
    x = torch.randn(1, 3, size, size)
    data = onnx_bytes(fuse(model), x)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(5):
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        path = sess.end_profiling()
        events = json.load(open(path))
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev["args"].get("op_name", "?")
            per_op[op] += ev["dur"] / 1e3 / (runs + 5)
            count[op] += 1
    total = sum(per_op.values())
    return [(op, ms, count[op] // (runs + 5)) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])], total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for name in args.models:
        rows, total = profile(name, args.threads)
        print(f"\n**{name}** (ONNX Runtime, {args.threads} threads, kernel time {total:.1f} ms per run)\n")
        print("| op type | nodes | ms per run | share |\n|---|---|---|---|")
        for op, ms, n in rows[:8]:
            print(f"| {op} | {n} | {ms:.2f} | {ms / total * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
