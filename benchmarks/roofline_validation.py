"""Does the roofline model rank the zoo like measured latency on this host?

Measures batch-1 CPU latency of models from every family (interleaved rounds, medians, since the machine may be
shared), predicts latency with the roofline on the calibrated ``host`` hardware — once as the pure roofline of
MobileNetV4 §3 (peak + bandwidth only) and once with the calibrated per-layer overhead and depthwise efficiency —
and reports the Spearman rank correlation of each with the measurement. Writes a JSON of all numbers and a
before/after scatter plot.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/roofline_validation.py --threads 1 --rounds 15

(``--recalibrate`` re-measures the host first; otherwise the stored ``host`` calibration is used or created.)
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import edgezoo
from edgezoo.analysis import calibrate, get_hardware, profile_model, roofline, save_host
from edgezoo.analysis.zoo import model_input_shape
from edgezoo.registry import get_entry

DEFAULT_MODELS = (
    "mobilenetv1_050", "mobilenetv1_100",
    "mobilenetv2_035", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_small_100", "mobilenetv3_large_100",
    "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium",
    "mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
    "edgenext_xx_small", "edgenext_small",
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch32_224",
    "mixer_s32_224", "mixer_s16_224", "mixer_b32_224",
)
RESULTS = Path(__file__).parent / "results"


def measure(names: list[str], *, rounds: int, runs: int, seed: int = 0) -> dict[str, list[float]]:
    """Per-forward seconds: ``rounds`` passes over the models in a fresh random order, ``runs`` calls each."""
    models = {}
    inputs = {}
    for name in names:
        models[name] = edgezoo.create_model(name).eval()
        inputs[name] = torch.randn(1, *model_input_shape(name))
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(seed)
    with torch.inference_mode():
        for name in names:  # warm-up: allocator, oneDNN primitive caches
            for _ in range(2):
                models[name](inputs[name])
        for r in range(rounds):
            order = list(names)
            rng.shuffle(order)
            for name in order:
                for _ in range(runs):
                    t0 = time.perf_counter()
                    models[name](inputs[name])
                    times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def plot(rows: list[dict], rho_pure: float, rho_cal: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.5))
    FigureCanvasAgg(fig)
    meas = [r["measured_ms"] for r in rows]
    for i, (key, label, rho) in enumerate(
        (("pure_ms", "pure roofline (peak + bandwidth)", rho_pure),
         ("calibrated_ms", "roofline + calibrated overhead, depthwise efficiency, overlap", rho_cal))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        pred = [r[key] for r in rows]
        ax.scatter(pred, meas, s=20, zorder=3)
        for r, x, y in zip(rows, pred, meas):
            ax.annotate(r["name"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        lo = min(pred + meas) * 0.8
        hi = max(pred + meas) * 1.25
        ax.plot([lo, hi], [lo, hi], "--", color="gray", linewidth=1, label="predicted = measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("measured latency, median (ms)")
        ax.set_title(f"{label}\nSpearman ρ = {rho:.3f}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Roofline prediction vs measured batch-1 CPU latency (eager PyTorch)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="model names (default: 21 models from all families)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=3, help="consecutive calls per model per round")
    ap.add_argument("--recalibrate", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "roofline_validation.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "roofline_validation.png")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    available = set(edgezoo.list_models())
    names = [n for n in (args.models or DEFAULT_MODELS) if n in available]
    missing = sorted(set(args.models or DEFAULT_MODELS) - available)
    if missing:
        print(f"not registered, skipped: {missing}", file=sys.stderr)
    families = sorted({get_entry(n).family for n in names})

    if args.recalibrate:
        host = calibrate(threads=args.threads, progress=lambda m: print(f"calibrating: {m}", file=sys.stderr))
        save_host(host)
    else:
        host = get_hardware("host")
    if host.threads is not None and host.threads != args.threads:
        print(f"warning: host calibrated with {host.threads} threads, measuring with {args.threads}", file=sys.stderr)
    pure = replace(host, name="host (pure roofline)", layer_overhead_s=0.0, depthwise_efficiency=1.0, memory_overlap=1.0)

    times = measure(names, rounds=args.rounds, runs=args.runs)
    rows = []
    for name in names:
        prof = profile_model(name)
        rows.append(dict(
            name=name,
            family=get_entry(name).family,
            macs=prof.macs,
            bytes=prof.bytes,
            layers=len(prof.layers),
            measured_ms=1e3 * statistics.median(times[name]),
            measured_iqr_ms=[1e3 * q for q in statistics.quantiles(times[name], n=4)[::2]],
            samples=len(times[name]),
            pure_ms=roofline(prof, pure).latency_ms,
            calibrated_ms=roofline(prof, host).latency_ms,
        ))
    meas = [r["measured_ms"] for r in rows]
    rho_macs = spearman([r["macs"] for r in rows], meas)
    rho_pure = spearman([r["pure_ms"] for r in rows], meas)
    rho_cal = spearman([r["calibrated_ms"] for r in rows], meas)
    result = dict(
        host=host.to_dict(), threads=args.threads, rounds=args.rounds, runs=args.runs, families=families,
        spearman=dict(macs=rho_macs, pure_roofline=rho_pure, calibrated_roofline=rho_cal), models=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, rho_pure, rho_cal, args.plot)

    print(f"host: peak {host.peak_macs_per_s / 1e9:.1f} GMAC/s, bandwidth {host.bytes_per_s / 1e9:.1f} GB/s, "
          f"ridge {host.ridge_point:.2f} MAC/B, overhead {1e6 * host.layer_overhead_s:.1f} us/layer, "
          f"depthwise efficiency {host.depthwise_efficiency:.3f}, memory overlap {host.memory_overlap:.2f}, "
          f"{args.threads} thread(s)")
    print(f"{'model':28s} {'MACs(M)':>9s} {'layers':>6s} {'measured':>9s} {'pure':>9s} {'calib.':>9s}  (ms)")
    for r in sorted(rows, key=lambda r: r["measured_ms"]):
        print(f"{r['name']:28s} {r['macs'] / 1e6:9.1f} {r['layers']:6d} {r['measured_ms']:9.2f} "
              f"{r['pure_ms']:9.2f} {r['calibrated_ms']:9.2f}")
    print(f"Spearman rho vs measured ({len(rows)} models, families {families}): MACs {rho_macs:.3f}, "
          f"pure roofline {rho_pure:.3f}, calibrated roofline {rho_cal:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
