"""Side-by-side CPU latency: edgezoo vs timm, and edgezoo.deploy.optimize() vs ONNX Runtime / OpenVINO on timm.

One model per family, batch 1, fp32, one process; all five contenders are timed interleaved: every round gives each
one a turn of ``--block`` back-to-back calls (its steady state, as a deployed model runs; single alternating calls
would charge one engine's still-spinning worker threads to the next), turns 20 ms apart and in a new random order
every round (a fixed cyclic order made one ONNX Runtime session always follow the other), so that load from other
processes hits them alike. Per contender: median over rounds of each turn's median call; ratios of those.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_vs_peers.py --threads 2 --repeats 15 --block 10 --out benchmarks/results

Contenders:
  ez_eager   edgezoo model, PyTorch eager (no folding), inference_mode
  timm_eager timm model of the same name with the same weights, PyTorch eager
  ez_opt     edgezoo.deploy.optimize(model, x) — backend chosen by measurement
  timm_ort   timm model exported to ONNX (opset 17), ONNX Runtime CPU, all graph optimizations, same threads
  timm_ov    the same ONNX file in OpenVINO CPU, LATENCY hint, fp32, same threads
  timm_ov_pin  the same, with ENABLE_CPU_PINNING (the knob optimize() also tries), so that the comparison
               credits edgezoo only for what its graph does, not for engine settings a user could set too

Needs timm (``pip install 'edgezoo[dev]'``), onnxruntime and openvino (``'edgezoo[export]'``).
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
from edgezoo.bench import device_description, timm_twin
from edgezoo.deploy import optimize
from edgezoo.deploy.export import onnx_bytes, ort_session
from edgezoo.deploy.optimize import _openvino_runner, time_interleaved
from edgezoo.registry import get_entry

# One representative per family (the ones the issue measured first).
DEFAULT_MODELS = (
    "mobilenetv1_100",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "mobilenetv4_hybrid_medium",
    "mobilevit_xxs",
    "edgenext_xx_small",
    "vit_tiny_patch16_224",
    "mixer_s32_224",
)
HYBRID_OR_TRANSFORMER = {"mobilevit", "edgenext", "vit", "mlp_mixer"}


def _perturb(model: torch.nn.Module) -> None:
    """Off-init weights (non-trivial BN stats, layer scales) so nothing is accidentally a no-op."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.add_(torch.randn(t.shape, generator=gen) * 0.02)


def _peer_runners(timm_model: torch.nn.Module, x: torch.Tensor, threads: int):
    """ONNX Runtime, OpenVINO and pinned OpenVINO on timm's export, configured exactly as optimize()'s engines."""
    data = onnx_bytes(timm_model, x)
    sess = ort_session(data, threads=threads)
    name = sess.get_inputs()[0].name
    xn = x.numpy()
    ov_run, ov_pin_run = (_openvino_runner(timm_model, x, threads, pinned, onnx=data) for pinned in (False, True))
    return (lambda: sess.run(None, {name: xn})), (lambda: ov_run(x)), (lambda: ov_pin_run(x))


def run(models, threads: int, repeats: int, block: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        entry = get_entry(name)
        size = entry.default_cfg["input_size"][1]
        model = edgezoo.create_model(name).eval()
        _perturb(model)
        ref = timm_twin(name, model, size).eval()
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        engine = optimize(model, x)
        build_s = time.perf_counter() - t0
        ort_run, ov_run, ov_pin_run = _peer_runners(ref, x, threads)
        with torch.inference_mode():
            d = float((engine(x) - model(x)).abs().max() / model(x).abs().max())
            t = time_interleaved(
                {
                    "ez_eager": lambda: model(x),
                    "timm_eager": lambda: ref(x),
                    "ez_opt": lambda: engine(x),
                    "timm_ort": ort_run,
                    "timm_ov": ov_run,
                    "timm_ov_pin": ov_pin_run,
                },
                warmup=5,
                repeats=repeats,
                block=block,
                gap_s=0.02,  # let the previous contender's spinning worker threads go idle
            )
        best_peer = min(t["timm_ort"], t["timm_ov"], t["timm_ov_pin"])
        row = dict(
            model=name,
            family=entry.family,
            img=size,
            **{k: round(v, 2) for k, v in t.items()},
            eager_ratio=round(t["ez_eager"] / t["timm_eager"], 3),
            opt_backend=engine.variant,
            opt_ratio=round(t["ez_opt"] / best_peer, 3),
            target=0.8 if entry.family in HYBRID_OR_TRANSFORMER or "hybrid" in entry.name else 1.0,
            opt_rel_diff=d,
            opt_candidates_ms={k: round(v, 2) for k, v in engine.timings_ms.items()},
            opt_build_s=round(build_s, 1),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| model | img | edgezoo eager | timm eager | eager ratio | optimize() (engine) | timm→ORT | timm→OpenVINO "
            "| timm→OpenVINO pinned | optimize ÷ best peer | target |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ok = "✓" if r["opt_ratio"] <= r["target"] else "✗"
        lines.append(
            f"| {r['model']} | {r['img']} | {r['ez_eager']:.1f} | {r['timm_eager']:.1f} | {r['eager_ratio']:.2f}× "
            f"| {r['ez_opt']:.1f} ({r['opt_backend']}) | {r['timm_ort']:.1f} | {r['timm_ov']:.1f} | {r['timm_ov_pin']:.1f} "
            f"| {r['opt_ratio']:.2f}× | ≤{r['target']}× {ok} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="round-robin rounds")
    p.add_argument("--block", type=int, default=10, help="back-to-back calls per contender per round")
    p.add_argument("--out", default=None, help="folder for results.json and table.md")
    args = p.parse_args(argv)
    print(f"# {device_description()}; load average {os.getloadavg()}", file=sys.stderr)
    rows = run(args.models, args.threads, args.repeats, args.block)
    table = markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"device": device_description(), "rows": rows}, indent=2))
        (out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
