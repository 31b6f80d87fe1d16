"""int8 post-training static quantization: accuracy change on digits and speed-up over the fastest fp32 engine.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_int8.py --threads 2 --out benchmarks/results

Accuracy: each convnet is trained briefly on scikit-learn's digits at 32 px (edgezoo.deploy.quantize.train_on_digits),
calibrated on 128 training images, and evaluated on the 360-image test split, fp32 (BN-folded) vs int8; we also
report how often the two agree on the top-1 class. Speed: at the model's default resolution, batch 1, the int8
engine vs optimize()'s best fp32 engine, timed interleaved (medians).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import edgezoo
from edgezoo.deploy import fuse, optimize, quantize_int8
from edgezoo.deploy.optimize import time_interleaved
from edgezoo.deploy.quantize import digits_tensors, top1, train_on_digits

DEFAULT_MODELS = ("mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv4_conv_small")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x, train_y, test_x, test_y = digits_tensors(32)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = edgezoo.create_model(name, num_classes=10)
        train_on_digits(model, train_x, train_y, epochs=args.epochs)
        fp32 = fuse(model)
        q = quantize_int8(model, train_x[:128])
        acc32, acc8 = top1(fp32, test_x, test_y), top1(q, test_x, test_y)
        with torch.inference_mode():
            agree = float((fp32(test_x).argmax(1) == q(test_x).argmax(1)).float().mean() * 100)
        # speed at the deployment resolution (weights do not change the speed; ranges from random calibration)
        size = model.default_cfg["input_size"][1]
        x = torch.randn(1, 3, size, size)
        big = edgezoo.create_model(name).eval()
        best32 = optimize(big, x, candidates=["onnxruntime", "openvino"])
        q224 = quantize_int8(big, torch.randn(16, 3, size, size))
        t = time_interleaved({"fp32": lambda: best32(x), "int8": lambda: q224(x)}, repeats=args.repeats)
        row = dict(model=name, fp32_top1=round(acc32, 2), int8_top1=round(acc8, 2), delta=round(acc8 - acc32, 2),
                   agreement=round(agree, 2), img=size, fp32_engine=best32.backend, fp32_ms=round(t["fp32"], 2),
                   int8_engine=q224.backend, int8_ms=round(t["int8"], 2), speedup=round(t["fp32"] / t["int8"], 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| model | digits top-1 fp32 | int8 | change | top-1 agreement | img | fp32 ms (engine) | int8 ms (engine) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fp32_top1']:.2f}% | {r['int8_top1']:.2f}% | {r['delta']:+.2f} | {r['agreement']:.1f}% "
                     f"| {r['img']} | {r['fp32_ms']:.1f} ({r['fp32_engine']}) | {r['int8_ms']:.1f} ({r['int8_engine']}) | {r['speedup']:.2f}× |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "int8.json").write_text(json.dumps(rows, indent=2))
        (out / "int8.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
