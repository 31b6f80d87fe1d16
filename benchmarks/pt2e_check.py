"""Does PyTorch's pt2e int8 path (torchao's X86InductorQuantizer, lowered by Inductor) work here, and how does it
compare with the OpenVINO int8 engines on the same digits run? (issue 14)

    OMP_NUM_THREADS=2 /work/venv-full/bin/python benchmarks/pt2e_check.py runs/bench_precision/mobilenetv3_small_050

Runs ``optimize(precision="int8", int8_engines=["pt2e", "openvino-qdq"])`` on each run and prints every candidate:
latency (graph engines each in its own process, pt2e in this one), held-out top-1, status and reason.
"""
from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from edgezoo.deploy import optimize
    from edgezoo.train import load_trained_model

    try:
        import torchao

        print(f"torchao {torchao.__version__}, torch {torch.__version__}")
    except ImportError:
        print(f"torchao not installed (torch {torch.__version__})")
    for run in argv:
        model, meta = load_trained_model(run)
        size = int(meta["img_size"])
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        start = time.time()
        eng = optimize(model, x, precision="int8", calib="digits", meta=meta, max_drop=0.5,
                       int8_engines=["pt2e", "openvino-qdq"], bf16_engines=[], threads=torch.get_num_threads())
        build_s = time.time() - start
        print(f"{meta['model']} ({size} px): chose {eng.variant}; fp32 top-1 {eng.fp32_top1:.2f}; "
              f"optimize took {build_s:.0f} s")
        for c in eng.candidates:
            ms = "-" if c.latency_ms is None else f"{c.latency_ms:.3f}"
            top1 = "-" if c.top1 is None else f"{c.top1:.2f}"
            print(f"  {c.name:24s} {ms:>8s} ms  top-1 {top1:>6s}  {c.status:9s} {c.reason[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
