"""Where MobileNetV3's int8 chain breaks on OpenVINO, and what graph forms / NNCF settings mend it (issue 14).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/int8_forms.py --run runs/bench_precision/mobilenetv3_small_050
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/int8_forms.py --model mobilenetv3_large_100 --img-size 224

For one model (a digits run's weights, or random weights with ``--model``) at one input size, builds OpenVINO int8
engines from the BN-folded graph in several variants and reports, per variant, what OpenVINO runs in int8 (conv /
FC layers in int8 and precision/layout reorders, read from the compiled runtime graph), the latency with **each
engine in its own process** (:func:`edgezoo.deploy.optimize.time_in_processes`, alternating turns, medians) and,
with ``--run``, held-out top-1 on digits:

* activation forms: ``ops`` — ONNX ``HardSwish`` / ``HardSigmoid`` as torch exports them; ``explicit`` —
  :func:`edgezoo.deploy.fuse.openvino_forms`: ``x * relu6(x + 3) / 6`` and ``relu6(x + 3) / 6`` spelled out, the
  decomposed forms OpenVINO's HSwish/HSigmoid fusion passes match (what edgezoo's OpenVINO engines now use);
* NNCF placement: ``nncf`` — NNCF's defaults (its ``SE_BLOCK`` ignored pattern keeps the squeeze-excite 1×1 convs
  in float); ``nncf+se`` — the same with that pattern removed, so the SE convs get FakeQuantize too;
  ``qdq`` — ONNX Runtime's static QDQ model (per channel) read by OpenVINO;
* ``fp32`` and ``bf16`` OpenVINO references.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch


def perf_profile(ov_model_or_onnx, x, threads: int, hint: str, runs: int = 30) -> list[tuple[str, float, int]]:
    """OpenVINO PERF_COUNT: (layer type / kernel, ms per inference, node count), largest first."""
    from edgezoo.deploy.optimize import openvino_compile
    from edgezoo.deploy.precision import _ov_read

    model = _ov_read(ov_model_or_onnx) if isinstance(ov_model_or_onnx, bytes) else ov_model_or_onnx
    request = openvino_compile(model, threads, False, {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint}
                               ).create_infer_request()
    arr = x.numpy()
    for _ in range(5):
        request.infer({0: arr})
    totals: dict[str, list[float]] = {}
    for _ in range(runs):
        request.infer({0: arr})
        for info in request.get_profiling_info():
            if info.real_time.total_seconds() <= 0:
                continue
            key = f"{info.node_type}/{info.exec_type}"
            entry = totals.setdefault(key, [0.0, 0])
            entry[0] += info.real_time.total_seconds() * 1e3 / runs
            entry[1] += 1
    return sorted(((k, v[0], v[1] // runs) for k, v in totals.items()), key=lambda r: -r[1])


@contextlib.contextmanager
def se_blocks_quantized():
    """NNCF without its SE_BLOCK ignored pattern (restored afterwards)."""
    from nncf.common.graph.patterns.patterns import IgnoredPatternNames
    from nncf.openvino.quantization.ignored_patterns import OPENVINO_IGNORED_PATTERNS

    saved = OPENVINO_IGNORED_PATTERNS.registry_dict.pop(IgnoredPatternNames.SE_BLOCK)
    try:
        yield
    finally:
        OPENVINO_IGNORED_PATTERNS.registry_dict[IgnoredPatternNames.SE_BLOCK] = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a digits run (weights, preprocessing, accuracy)")
    p.add_argument("--model", help="random weights of this model instead of --run (latency only)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--calib", type=int, default=300, help="calibration images (digits training split)")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--profile", action="store_true",
                   help="also OpenVINO PERF_COUNT per layer type for fp32, bf16 and QDQ int8 (explicit forms)")
    args = p.parse_args(argv)

    import edgezoo
    from edgezoo.deploy import fuse
    from edgezoo.deploy.fuse import openvino_forms
    from edgezoo.deploy.export import onnx_bytes
    from edgezoo.deploy.optimize import time_in_processes
    from edgezoo.deploy.precision import (_nncf_int8, _ov_read, _ov_runner, _top1_and_preds, calibration_images,
                                          validation_set)
    from edgezoo.deploy.quantize import _qdq_model

    torch.set_num_threads(args.threads)
    meta = None
    if args.run:
        from edgezoo.train import load_trained_model

        model, meta = load_trained_model(args.run)
        name = meta["model"]
    else:
        name = args.model
        model = edgezoo.create_model(name, num_classes=10)
    model.eval()
    size = args.img_size or int((meta or {}).get("img_size", 224))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    calib = calibration_images("digits", x, model=model, meta=meta, limit=args.calib)
    val = validation_set("digits", x, model=model, meta=meta) if args.run else None
    samples = [calib[i : i + 1].numpy() for i in range(len(calib))]
    folded = fuse(model)
    graphs = {"ops": onnx_bytes(folded, x), "explicit": onnx_bytes(openvino_forms(folded), x)}
    runners = {}
    for form, onnx in graphs.items():
        runners[f"fp32/{form}"] = _ov_runner(onnx, args.threads)
        runners[f"nncf/{form}"] = _ov_runner(_nncf_int8(onnx, calib, "minmax", False), args.threads)
        with se_blocks_quantized():
            runners[f"nncf+se/{form}"] = _ov_runner(_nncf_int8(onnx, calib, "minmax", False), args.threads)
        runners[f"qdq/{form}"] = _ov_runner(_ov_read(_qdq_model(onnx, samples, "minmax", per_channel=True,
                                                                reduce_range=False)), args.threads)
    runners["bf16/ops"] = _ov_runner(graphs["ops"], args.threads, precision_hint="bf16")
    profiles = {}
    if args.profile:
        q = _qdq_model(graphs["explicit"], samples, "minmax", per_channel=True, reduce_range=False)
        for label, model_bytes, hint in (("fp32/explicit", graphs["explicit"], "f32"),
                                         ("bf16/explicit", graphs["explicit"], "bf16"),
                                         ("qdq/explicit", q, "f32"), ("qdq/explicit+bf16", q, "bf16")):
            profiles[label] = perf_profile(model_bytes, x, args.threads, hint)
            print(f"PERF_COUNT {label}: total {sum(r[1] for r in profiles[label]):.3f} ms")
            for kind, ms_, n in profiles[label][:8]:
                print(f"   {kind:45s} {ms_:7.3f} ms  ({n} nodes)")
    runners["qdq+bf16/explicit"] = _ov_runner(_ov_read(_qdq_model(graphs["explicit"], samples, "minmax",
                                              per_channel=True, reduce_range=False)), args.threads,
                                              precision_hint="bf16")
    runners["bf16/explicit"] = _ov_runner(graphs["explicit"], args.threads, precision_hint="bf16")
    ms = time_in_processes(runners, x, threads=args.threads, repeats=args.repeats, block=5) or {}
    rows = []
    fp32_top1 = None
    if val is not None:
        fp32_top1, _ = _top1_and_preds(model, *val)
    for key, run in runners.items():
        top1 = _top1_and_preds(run, *val)[0] if val is not None else None
        rows.append({"variant": key, "ms": ms.get(key), "int8": getattr(run, "int8_layers", ""), "top1": top1})
    print(f"{name} at {size} px, {args.threads} threads; fp32 eager top-1 {fp32_top1}")
    print("| variant | ms (own process) | OpenVINO runtime graph | top-1 |\n|---|---|---|---|")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2f}"
        print(f"| {r['variant']} | {r['ms']:.3f} | {r['int8']} | {top1} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": name, "img_size": size, "fp32_top1": fp32_top1, "rows": rows,
                       "profiles": profiles, "command": " ".join(sys.argv)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
