"""What do fuse()'s inference forms buy? The folded model with and without them, timed side by side.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_deploy_forms.py vit_tiny_patch16_224 edgenext_xx_small --repeats 40

``fuse(model)`` folds BatchNorms and then swaps in inference forms (EdgeNeXt's channels-first blocks, ViT's
class-token-only last block); ``fuse(model, deploy_forms=False)`` only folds. Both are run by OpenVINO (pinned
threads, the engine optimize() picks for these models here) and by eager PyTorch, all four timed interleaved in
turns of back-to-back calls (as in ``bench_vs_peers.py``). Per model: medians in ms, the ratio with/without, and
the largest output difference between the two forms relative to the output scale.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import edgezoo
from edgezoo.bench import device_description
from edgezoo.deploy import fuse
from edgezoo.deploy.export import onnx_bytes, rel_diff
from edgezoo.deploy.optimize import _eager_runner, _openvino_runner, time_interleaved
from edgezoo.registry import get_entry

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_peers import _perturb  # noqa: E402


def compare(name: str, threads: int, repeats: int, block: int) -> dict:
    size = get_entry(name).default_cfg["input_size"][1]
    model = edgezoo.create_model(name).eval()
    _perturb(model)
    with_forms, fold_only = fuse(model), fuse(model, deploy_forms=False)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = rel_diff(with_forms(x), fold_only(x))

    eager_forms, eager_fold = _eager_runner(with_forms, False), _eager_runner(fold_only, False)
    ov_forms = _openvino_runner(with_forms, x, threads, True, onnx=onnx_bytes(with_forms, x))
    ov_fold = _openvino_runner(fold_only, x, threads, True, onnx=onnx_bytes(fold_only, x))
    t = time_interleaved(
        {"openvino_forms": lambda: ov_forms(x), "openvino_fold_only": lambda: ov_fold(x),
         "eager_forms": lambda: eager_forms(x), "eager_fold_only": lambda: eager_fold(x)},
        warmup=5, repeats=repeats, block=block, gap_s=0.02,
    )
    return dict(
        model=name, img=size, rel_diff=diff, ms={k: round(v, 2) for k, v in t.items()},
        openvino_ratio=round(t["openvino_forms"] / t["openvino_fold_only"], 3),
        eager_ratio=round(t["eager_forms"] / t["eager_fold_only"], 3),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["vit_tiny_patch16_224", "edgenext_xx_small"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=40, help="interleaved rounds")
    p.add_argument("--block", type=int, default=10, help="back-to-back calls per contender per round")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {device_description()}", file=sys.stderr)
    rows = [compare(n, args.threads, args.repeats, args.block) for n in args.models]
    print("| model | img | OpenVINO forms / fold only (ms) | ratio | eager forms / fold only (ms) | ratio | output diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r["ms"]
        print(f"| {r['model']} | {r['img']} | {ms['openvino_forms']:.1f} / {ms['openvino_fold_only']:.1f} "
              f"| {r['openvino_ratio']:.2f} | {ms['eager_forms']:.1f} / {ms['eager_fold_only']:.1f} "
              f"| {r['eager_ratio']:.2f} | {r['rel_diff']:.1e} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": device_description(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
