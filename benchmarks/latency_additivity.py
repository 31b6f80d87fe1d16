"""Why per-block latency sums miss whole-model latency at 2 threads: one question per protocol.

For a few models (zoo and random MobileNetV4 configs from ``latency_predictor.py``), every sequential unit and the
whole model are timed in ONNX Runtime under several protocols, and the sum of the units (plus one per-call cost)
is compared with the whole model timed the same way:

* ``interleaved`` — the table's protocol: a chunk of sessions timed round-robin (turns of back-to-back calls);
* ``solo``        — one session at a time, many back-to-back calls, after the previous session's threads had time
                    to go idle;
* ``chain``       — each unit repeated ``--copies`` times in one graph (one session): the in-graph cost per copy;
* spinning on (ORT's default) or off (``session.intra_op.allow_spinning = 0``).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/latency_additivity.py --threads 2 \
        --models mobilenetv4_conv_medium vit_small_patch16_224 mobilenetv1_050 --randoms 6 44

Prints one line per model and protocol and writes ``benchmarks/results/latency_additivity.json``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import edgezoo
from edgezoo.analysis.zoo import model_input_shape
from edgezoo.deploy import fuse
from edgezoo.deploy.export import onnx_bytes
from edgezoo.deploy.optimize import time_interleaved
from edgezoo.models.mobilenet_v4 import MobileNetV4
from edgezoo.search.latency import blocks_of_config, module_units

sys.path.insert(0, str(Path(__file__).parent))
from latency_predictor import RESOLUTIONS, random_config  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def session(module: nn.Module, x: torch.Tensor, threads: int, spin: bool):
    from edgezoo.deploy.export import ort_session

    sess = ort_session(onnx_bytes(fuse(module.eval()), x), threads=threads, spinning=spin)
    name = sess.get_inputs()[0].name
    arr = x.numpy()
    return lambda: sess.run(None, {name: arr})


def solo(fn, calls: int = 25) -> float:
    time.sleep(0.02)  # let other sessions' workers stop spinning
    for _ in range(3):
        fn()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


class Chain(nn.Module):
    def __init__(self, make, copies: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(make() for _ in range(copies))

    def forward(self, x):
        for u in self.units:
            x = u(x)
        return x


def cases(names: list[str], randoms: list[int]):
    rng = random.Random(0)
    cfgs = []
    for _ in range(max(randoms, default=-1) + 1):
        cfgs.append((random_config(rng), rng.choice(RESOLUTIONS)))
    for i in randoms:
        cfg, size = cfgs[i]
        model = MobileNetV4(config=cfg, default_cfg={}, num_classes=1000).eval()
        yield f"random{i}@{size}", model, (1, 3, size, size), blocks_of_config(cfg, size)
    for name in names:
        model = edgezoo.create_model(name).eval()
        shape = (1, *model_input_shape(name))
        yield name, model, shape, module_units(model, shape)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=["mobilenetv4_conv_medium", "vit_small_patch16_224",
                                                      "mobilenetv1_050", "mobilenetv2_140"])
    ap.add_argument("--randoms", type=int, nargs="*", default=[6, 19, 44])
    ap.add_argument("--copies", type=int, default=0, help="also time each unit in a chain of this many copies")
    ap.add_argument("--out", type=Path, default=RESULTS / "latency_additivity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    with torch.no_grad():
        for name, model, shape, items in cases(args.models, args.randoms):
            x = torch.randn(shape)
            rec = {"name": name, "threads": args.threads, "units": len(items)}
            for spin in (True, False):
                tag = "spin" if spin else "nospin"
                fixed = session(nn.ReLU(), torch.ones(1, 1), args.threads, spin)
                whole = session(model, x, args.threads, spin)
                units = {it.key: session(it.build(), torch.randn(it.input_shape), args.threads, spin) for it in items}
                # solo
                f = solo(fixed, 200)
                rec[f"whole_solo_{tag}"] = solo(whole)
                rec[f"sum_solo_{tag}"] = sum(max(0.0, solo(units[it.key]) - f) for it in items) + f
                # interleaved in chunks of 12 with the fixed graph, as measure_items does
                keys = list(units)
                fs = []
                per = {}
                for s in range(0, len(keys), 12):
                    r = {"__f": fixed, **{k: units[k] for k in keys[s:s + 12]}}
                    t = time_interleaved(r, warmup=2, repeats=7, block=5)
                    b = t.pop("__f")
                    fs.append(b)
                    per.update({k: max(0.0, v - b) for k, v in t.items()})
                rec[f"sum_interleaved_{tag}"] = sum(per[it.key] for it in items) + statistics.median(fs)
                del units, whole, fixed
            if args.copies:
                csum = 0.0
                for it in items:
                    ch = Chain(it.build, args.copies)
                    xi = torch.randn(it.input_shape)
                    try:
                        fn = session(ch, xi, args.threads, True)
                    except Exception:  # shape-changing unit: a chain is impossible
                        fn = None
                    if fn is None or tuple(ch.units[0](xi).shape) != tuple(xi.shape):
                        csum += solo(session(it.build(), xi, args.threads, True))
                    else:
                        csum += solo(fn) / args.copies
                rec["sum_chain_spin"] = csum
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
            out.append(rec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
