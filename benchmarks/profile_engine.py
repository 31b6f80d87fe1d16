"""Where the time goes: per-operator-type share of an engine's latency for edgezoo's folded model.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_engine.py mobilevit_xxs edgenext_xx_small --threads 2
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_engine.py vit_tiny_patch16_224 --engine openvino --nodes blocks.5/

The model is ``fuse(model)`` (what optimize() hands the engines), at batch 1 and its default resolution.
ONNX Runtime: its built-in profiler's per-node kernel times. OpenVINO: ``PERF_COUNT`` per-node real times with
the settings optimize() uses (LATENCY hint, fp32, pinned threads), grouped by node type *and* the kernel
OpenVINO chose (e.g. ``FullyConnected/gemm_mlas_f32``; "Subgraph" nodes are its fused elementwise/attention
kernels). Both are summed over 20 runs after warm-up and printed as a markdown table per model; ``--nodes S``
also lists every OpenVINO node whose name contains S (e.g. one transformer block).
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
from edgezoo.deploy.optimize import openvino_compile


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


def profile_openvino(name: str, threads: int, runs: int = 20, nodes: str | None = None):
    model = edgezoo.create_model(name).eval()
    size = model.default_cfg["input_size"][1]
    x = torch.randn(1, 3, size, size)
    compiled = openvino_compile(onnx_bytes(fuse(model), x), threads, pinned=True, extra_config={"PERF_COUNT": True})
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    for _ in range(10):
        request.infer(feed)
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for _ in range(runs):
        request.infer(feed)
        for info in request.profiling_info:
            op = f"{info.node_type}/{info.exec_type}"
            per_op[op] += info.real_time.total_seconds() * 1e3 / runs
            count[op] += 1
    listed = []
    if nodes:
        listed = [(info.node_name, info.node_type, info.exec_type, info.real_time.total_seconds() * 1e3)
                  for info in request.profiling_info if nodes in info.node_name]
    total = sum(per_op.values())
    rows = [(op, ms, count[op] // runs) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]) if ms > 0]
    return rows, total, listed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--nodes", default=None, help="OpenVINO: also list the nodes whose name contains this")
    p.add_argument("--top", type=int, default=8, help="rows per table")
    args = p.parse_args(argv)
    for name in args.models:
        listed = []
        if args.engine == "openvino":
            rows, total, listed = profile_openvino(name, args.threads, nodes=args.nodes)
            what = "OpenVINO PERF_COUNT, node real time"
        else:
            rows, total = profile(name, args.threads)
            what = "ONNX Runtime, kernel time"
        print(f"\n**{name}** ({what} {total:.1f} ms per run, {args.threads} threads)\n")
        print("| op type | nodes | ms per run | share |\n|---|---|---|---|")
        for op, ms, n in rows[: args.top]:
            print(f"| {op} | {n} | {ms:.2f} | {ms / total * 100:.0f}% |")
        if listed:
            print("\n| node | type | kernel | ms |\n|---|---|---|---|")
            for node, kind, kernel, ms in listed:
                if ms > 0:
                    print(f"| {node} | {kind} | {kernel} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
