"""One graph engine in its own process, timed on request: how ``optimize`` ranks ONNX Runtime against OpenVINO.

ONNX Runtime and OpenVINO each keep a private worker-thread pool that spins for a while after every call. Inside
one process, on a machine with few cores, those pools compete with each other and with PyTorch's, so an engine's
in-process latency depends on which other engines were built next to it: on the 2-core host a MobileNetV1 that
ONNX Runtime won in-process ran 1.32x slower than OpenVINO once each engine had a process of its own (BENCHMARKS.md,
issue 14). A deployed model lives alone in its process, so that is how the final ranking is measured.

This file is started as a *script* (``python engine_worker.py SPEC_JSON``) and imports nothing from edgezoo, so
a worker costs the engine's own import and compile (about a second), not PyTorch's. ``SPEC_JSON`` holds ``kind``
(``"onnxruntime"`` or ``"openvino"``), ``path`` (an ``.onnx`` file or OpenVINO IR ``.xml``), ``shape``,
``threads`` and, for OpenVINO, ``pinned`` and ``hint`` (the inference precision). The worker builds the engine,
makes a few warm-up calls on a fixed random input and prints ``ready``; then, for each line ``time N`` on stdin,
it makes one untimed call (it wakes the engine's sleeping thread pool and refills the caches the other workers'
turns evicted), runs ``N`` timed back-to-back calls and prints their median milliseconds; ``quit`` (or end of
input) ends it.

The two settings helpers below are also what :mod:`edgezoo.deploy.optimize` and :mod:`edgezoo.deploy.export`
use in-process, so an engine timed here is configured exactly like the one ``optimize`` returns.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any


def openvino_config(threads: int, pinned: bool = False, extra: dict | None = None) -> dict[str, Any]:
    """OpenVINO CPU properties for batch-1 latency: latency hint, fp32 unless ``extra`` says otherwise."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # the contract is fp32 outputs, not whatever the CPU likes
        "INFERENCE_NUM_THREADS": int(threads),
        # Pinning keeps OpenVINO's workers on their cores between calls; on small machines it is often worth
        # 5-30 % at batch 1, but it fights other thread pools in the process, so optimize measures it.
        "ENABLE_CPU_PINNING": bool(pinned),
        **(extra or {}),
    }


def ort_session_options(ort: Any, threads: int, *, spinning: bool = True) -> Any:
    """ONNX Runtime CPU session options: every graph optimization, sequential, ``threads`` intra-op threads.

    ``spinning=False`` turns off the worker threads' spin-wait after each call: what a deployment wants is
    ONNX Runtime's default (on), but a measurement of many small sessions in turn wants it off, because a
    spinning pool slows whatever runs next (2-3x at 2 threads, measured for the latency table).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def build(spec: dict[str, Any]):
    """A zero-argument callable running the engine described by ``spec`` once on a fixed input."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    threads = int(spec["threads"])
    if spec["kind"] == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(spec["path"], ort_session_options(ort, threads),
                                    providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feed)
    if spec["kind"] == "openvino":
        import openvino as ov

        core = ov.Core()
        extra = {"INFERENCE_PRECISION_HINT": spec["hint"]} if spec.get("hint") else None
        compiled = core.compile_model(core.read_model(spec["path"]), "CPU",
                                      openvino_config(threads, bool(spec.get("pinned")), extra))
        request = compiled.create_infer_request()

        def run():
            request.infer({0: x}, share_inputs=True)
            return request.get_output_tensor(0).data.copy()

        return run
    raise ValueError(f"kind must be 'onnxruntime' or 'openvino', got {spec['kind']!r}")


def main(argv: list[str]) -> int:
    try:
        run = build(json.loads(argv[0]))
        for _ in range(3):
            run()
    except Exception as exc:  # noqa: BLE001 - the parent decides what a failed worker means
        print(f"error {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300], flush=True)
        return 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "time":
            break
        run()  # untimed: wake-up and cache refill after the pause between turns
        times = []
        for _ in range(int(cmd[1])):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        print(f"{statistics.median(times):.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
