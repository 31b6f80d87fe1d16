"""int8 / bf16 / fp32 per family, each contender in its OWN process: edgezoo optimize() vs engines built by hand.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_precision.py --threads 2 --rounds 15 --out benchmarks/results

For the smallest model of every family: train it briefly on digits with ``edgezoo train`` (the family's digits
recipe, ``--epochs``), then start one worker process per contender; each builds its engine on that run's weights
at the run's resolution, batch 1, and waits. The parent then alternates over the workers for ``--rounds`` rounds
(a new random order each round, a short pause before each turn so the previous engine's spinning threads go idle);
in each turn a worker times ``--block`` back-to-back calls and reports their median. A contender's latency is the
median of its turn medians. Because each engine lives in its own process, no engine's thread pool competes with
another's inside one process, and its idle spinning is never charged to the next contender.

Contenders:

* ``edgezoo-int8``  — ``optimize(precision="int8", calib="digits", max_drop=0.5)`` on the edgezoo model (the
  fastest int8 candidate whose held-out top-1 is within 0.5 pt of fp32; if none is, the fastest int8 one, marked);
* ``edgezoo-bf16``  — ``optimize(precision="bf16")`` where the CPU has native bf16;
* ``edgezoo-fp32``  — ``optimize()`` (fp32, backend auto);
* ``edgezoo-int8(artifact)`` / ``edgezoo-fp32(artifact)`` (opt-in via ``--contenders``) — what a user ships:
  ``edgezoo optimize RUN --precision int8|fp32 --out DIR`` run in a process of its own, and only the written
  artifact loaded in the worker with ``edgezoo.deploy.load_optimized`` (its recorded engine settings);
* ``nncf-ov(timm)`` — timm's model with the same weights, ``openvino.convert_model`` + ``nncf.quantize`` on the same
  calibration images (defaults; ``model_type=TRANSFORMER`` for token mixers), compiled with OpenVINO's defaults
  plus the latency hint — what the OpenVINO documentation tells a user to do;
* ``ort-qdq(timm)`` — timm's model exported with ``torch.onnx.export``, ``quant_pre_process`` + ``quantize_static``
  (QDQ, per-channel weights), ONNX Runtime CPU;
* ``fp32-ort(timm)`` / ``fp32-ov(timm)`` — timm's model in fp32 on ONNX Runtime and OpenVINO (f32 hint): the best
  of these is the "best fp32 peer".

Accuracy (top-1 on the 450 held-out digits, the run's own preprocessing) is measured by each worker on its engine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

FAMILY_MODELS = {
    "mobilenetv1": "mobilenetv1_025",
    "mobilenetv2": "mobilenetv2_035",
    "mobilenetv3": "mobilenetv3_small_050",
    "mobilenetv4": "mobilenetv4_conv_small",
    "mobilenetv4-hybrid": "mobilenetv4_hybrid_medium",
    "mobilevit": "mobilevit_xxs",
    "edgenext": "edgenext_xx_small",
    "vit": "vit_tiny_patch16_224",
    "mlp_mixer": "mixer_s32_224",
}
# "-pinned(timm)": the same OpenVINO engine with ENABLE_CPU_PINNING, which optimize() also tries for its own
# OpenVINO candidates; a peer a user could get with one setting, so it counts among the best peers
CONTENDERS = ("edgezoo-int8", "edgezoo-bf16", "edgezoo-fp32", "nncf-ov(timm)", "nncf-ov-pinned(timm)", "ort-qdq(timm)",
              "fp32-ort(timm)", "fp32-ov(timm)", "fp32-ov-pinned(timm)")
INT8_PEERS = ("nncf-ov(timm)", "nncf-ov-pinned(timm)", "ort-qdq(timm)")
FP32_PEERS = ("fp32-ort(timm)", "fp32-ov(timm)", "fp32-ov-pinned(timm)")
HERE = Path(__file__).resolve()
BUILD_REPEATS = 7  # optimize()'s own choice among its candidates; the comparison below is the harness's rounds


# --------------------------------------------------------------------------------------------------- worker side
def _load_run(run: str):
    from edgezoo.train import load_trained_model

    model, meta = load_trained_model(run)
    size = os.environ.get("EDGEZOO_BENCH_IMG")  # --img-size: convnets run (and are measured) at another size
    if size and not meta.get("model", "").startswith(("vit", "mixer")):
        meta = {**meta, "img_size": int(size)}
    return model.eval(), meta


def _digits(meta, split: str, limit=None):
    import torch

    from edgezoo.train import run_eval_loader

    loader, _, _ = run_eval_loader("digits", meta=meta, split=split, limit=limit, batch_size=256)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _timm_model(name: str, model, size: int):
    from edgezoo.bench import timm_twin

    ref = timm_twin(name, model, size)
    if ref is None:
        raise RuntimeError(f"no timm twin for {name}")
    return ref.eval()


def _per_image(fn):
    import numpy as np
    import torch

    def run(x):
        return torch.from_numpy(np.concatenate([fn(x[i : i + 1].contiguous().numpy()) for i in range(len(x))]))

    return run


def build(contender: str, run: str, threads: int):
    """(callable on a (1, C, H, W) tensor, info dict) for one contender."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    model, meta = _load_run(run)
    size = int(meta["img_size"])
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    info: dict = {"contender": contender, "model": meta["model"], "img_size": size}
    if contender.endswith("(artifact)"):
        # what a user ships: `edgezoo optimize RUN --out DIR` in a process of its own, then only the written
        # artifact loaded here (edgezoo.deploy.load_optimized), so nothing of the optimizing process stays around
        import shutil
        import subprocess

        from edgezoo.deploy import load_optimized

        prec = contender.split("-")[1].split("(")[0]
        guarded = not os.environ.get("EDGEZOO_BENCH_NOGUARD")
        out = tempfile.mkdtemp(prefix="edgezoo-bench-artifact-")
        cmd = [_python(), "-m", "edgezoo", "optimize", run, "--precision", prec, "--calib", "digits",
               "--max-drop", "0.5" if guarded else "none", "--threads", str(threads), "--out", out, "--img-size",
               str(size)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"edgezoo optimize failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        eng = load_optimized(out, threads=threads)  # reads every file: the folder is not needed any more
        shutil.rmtree(out, ignore_errors=True)
        info.update(variant=eng.variant, fp32_top1=eng.fp32_top1, top1=eng.accuracy.get(eng.variant),
                    guard="passed" if guarded else "passed (not applied: --no-guard, latency only)",
                    openvino_config=eng.openvino_config)
        return eng, info
    if contender.startswith("edgezoo-"):
        from edgezoo.deploy import optimize

        if contender == "edgezoo-fp32":
            eng = optimize(model, x, threads=threads, repeats=BUILD_REPEATS, block=3)
            info.update(variant=eng.variant, timing=eng.timing, own_timings_ms=eng.timings_ms)
            return eng, info
        prec = contender.split("-")[1]
        guarded = not os.environ.get("EDGEZOO_BENCH_NOGUARD")  # --no-guard: latency rows on untrained weights
        try:
            eng = optimize(model, x, precision=prec, calib="digits", meta=meta, max_drop=0.5 if guarded else None,
                           threads=threads, repeats=BUILD_REPEATS, block=3)
            info["guard"] = "passed" if guarded else "passed (not applied: --no-guard, latency only)"
        except RuntimeError as exc:  # nothing within 0.5 pt: time the fastest anyway and say so
            eng = optimize(model, x, precision=prec, calib="digits", meta=meta, max_drop=100.0, threads=threads,
                           repeats=BUILD_REPEATS, block=3)
            info["guard"] = f"failed: {exc}"[:300]
        info.update(variant=eng.variant, fp32_top1=eng.fp32_top1, top1=eng.accuracy.get(eng.variant),
                    candidates={c.name: [c.latency_ms, c.top1, c.status, c.int8_layers, c.reason]
                                for c in eng.candidates})
        return eng, info
    try:
        ref = _timm_model(meta["model"], model, size)
        with torch.no_grad():  # a twin only counts if it computes what our model computes (same weights)
            diff = float((ref(x) - model(x)).abs().max() / model(x).abs().max().clamp_min(1e-6))
        if not diff <= 1e-3:
            raise RuntimeError(f"timm twin differs by {diff:.2g} (different patch size or weights)")
    except Exception as exc:  # noqa: BLE001 - timm lacks some widths (mobilenetv1_025): same tools on our graph
        from edgezoo.deploy import fuse

        ref = fuse(model, deploy_forms=False)
        info["note"] = f"no timm twin ({str(exc)[:60]}); built by hand on edgezoo's BN-folded model"
    calib_x, _ = _digits(meta, "train", limit=300)
    pinned = "-pinned(" in contender  # the same engine with OpenVINO's threads pinned to cores
    contender = contender.replace("-pinned(", "(")
    if contender == "nncf-ov(timm)":
        import nncf
        import openvino as ov

        from edgezoo.deploy.precision import is_transformer_like

        ov_model = ov.convert_model(ref, example_input=x)
        q = nncf.quantize(ov_model, nncf.Dataset([calib_x[i : i + 1].numpy() for i in range(len(calib_x))]),
                          subset_size=len(calib_x),
                          model_type=nncf.ModelType.TRANSFORMER if is_transformer_like(ref) else None)
        compiled = ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                      "ENABLE_CPU_PINNING": pinned})
        req = compiled.create_infer_request()

        def one(a):
            req.infer({0: a}, share_inputs=True)
            return req.get_output_tensor(0).data.copy()

        info["note"] = "OpenVINO defaults (float parts at the CPU's preferred inference precision)"
        return _per_image(one), info
    if contender in ("ort-qdq(timm)", "fp32-ort(timm)", "fp32-ov(timm)"):
        import io

        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(ref, (x,), buf, input_names=["input"], output_names=["logits"], opset_version=17,
                              dynamo=False)
        onnx = buf.getvalue()
        if contender == "fp32-ov(timm)":
            from edgezoo.deploy.optimize import openvino_compile

            req = openvino_compile(onnx, threads, pinned).create_infer_request()

            def one(a):
                req.infer({0: a}, share_inputs=True)
                return req.get_output_tensor(0).data.copy()

            return _per_image(one), info
        import onnxruntime as ort

        if contender == "ort-qdq(timm)":
            from onnxruntime import quantization as q
            from onnxruntime.quantization.shape_inference import quant_pre_process

            class Reader(q.CalibrationDataReader):
                def __init__(self):
                    self.it = iter(calib_x[i : i + 1].numpy() for i in range(len(calib_x)))

                def get_next(self):
                    a = next(self.it, None)
                    return None if a is None else {"input": a}

            with tempfile.TemporaryDirectory() as tmp:
                src, pre, dst = (os.path.join(tmp, n) for n in ("a.onnx", "b.onnx", "c.onnx"))
                Path(src).write_bytes(onnx)
                quant_pre_process(src, pre, skip_symbolic_shape=True)
                q.quantize_static(pre, dst, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True)
                onnx = Path(dst).read_bytes()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
        return _per_image(lambda a: sess.run(None, {"input": a})[0]), info
    raise ValueError(f"unknown contender {contender!r}")


def worker(contender: str, run: str, threads: int) -> int:
    import torch

    try:
        fn, info = build(contender, run, threads)
        _, meta = _load_run(run)
        vx, vy = _digits(meta, "val")
        with torch.inference_mode():
            preds = torch.cat([fn(vx[i : i + 1]).argmax(1) for i in range(len(vx))])
        info["measured_top1"] = round(100.0 * float((preds == vy).float().mean()), 2)
        x = torch.randn(1, 3, info["img_size"], info["img_size"], generator=torch.Generator().manual_seed(0))
        for _ in range(5):
            fn(x)
    except Exception as exc:  # noqa: BLE001 - report, the parent records it
        print("ready " + json.dumps({"contender": contender, "error": f"{type(exc).__name__}: {exc}"[:400]}), flush=True)
        return 0
    print("ready " + json.dumps(info), flush=True)
    with torch.inference_mode():
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            n = int(cmd[1])
            fn(x)  # untimed: wake-up and cache refill after the pause (as edgezoo's engine_worker does)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - t) * 1e3)
            print(f"{statistics.median(times):.6f}", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------- parent side
def _python() -> str:
    return sys.executable


def train_run(model: str, out: Path, epochs: int) -> Path:
    if (out / "report.json").exists():
        return out
    print(f"training {model} for {epochs} epochs on digits into {out}", file=sys.stderr, flush=True)
    cmd = [_python(), "-m", "edgezoo", "train", "--model", model, "--epochs", str(epochs), "--out", str(out),
           "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


MIN_FREE_GIB = 3.0  # start no further worker below this much available memory


def _available_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")  # not Linux: no guard


def bench_model(run: Path, contenders, threads: int, rounds: int, block: int, gap_s: float,
                img_size: int | None = None, no_guard: bool = False, replicas: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    if img_size:
        env["EDGEZOO_BENCH_IMG"] = str(img_size)
    if no_guard:
        env["EDGEZOO_BENCH_NOGUARD"] = "1"
    procs, infos = {}, {}
    # each contender in ``replicas`` processes of its own: where the kernel places a process's threads and memory
    # moved one and the same small engine by +-25 % from process to process (BENCHMARKS.md, issue 14)
    # built round-robin, each round starting one contender later: a process's position in the build order moved
    # its figure (the first-built processes of a run measured up to 2-3x the others, BENCHMARKS.md, issue 14), so
    # every contender's replicas are spread over the order instead of one contender holding its first places
    n = len(contenders)
    keys = [(c if r == 0 else f"{c}#{r}") for r in range(replicas) for c in (contenders[(r + i) % n] for i in range(n))]
    for key in keys:  # built one at a time, so builds do not disturb each other
        c = key.split("#")[0]
        if _available_gib() < MIN_FREE_GIB:  # every worker keeps its engine (and torch) resident: ~1.2 GB at 224 px
            for p in procs.values():
                p.kill()
            raise SystemExit(f"only {_available_gib():.1f} GiB of memory left after {len(procs)} worker processes; "
                             f"{len(keys)} were asked for ({len(contenders)} contenders x {replicas} replicas): use "
                             "fewer --replicas or --contenders")
        started = time.time()
        p = subprocess.Popen([_python(), str(HERE), "--worker", c, "--run", str(run), "--threads", str(threads)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
        line = ""
        while not line.startswith("ready "):
            line = p.stdout.readline()
            if not line:
                break
        info = json.loads(line[6:]) if line.startswith("ready ") else {"contender": c, "error": "worker died"}
        infos[key] = info
        print(f"  {run.name}: {key} ready in {time.time() - started:.0f} s"
              + (f" (error: {info['error'][:120]})" if "error" in info else ""), file=sys.stderr, flush=True)
        if "error" in info:
            p.stdin.close()
            p.wait()
        else:
            procs[key] = p
    samples = {c: [] for c in procs}
    order = random.Random(0)
    for _ in range(rounds):
        for c in order.sample(list(procs), len(procs)):
            time.sleep(gap_s)
            procs[c].stdin.write(f"time {block}\n")
            procs[c].stdin.flush()
            samples[c].append(float(procs[c].stdout.readline()))
    for p in procs.values():
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    for c, s in samples.items():
        infos[c]["ms"] = statistics.median(s)
        infos[c]["rounds"] = len(s)
    if replicas > 1:  # a contender's figure: the median of its processes' medians; every process kept
        for c in contenders:
            reps = [infos.pop(f"{c}#{r}") for r in range(1, replicas)]
            ms = [i["ms"] for i in [infos[c], *reps] if i.get("ms") is not None]
            infos[c]["replica_ms"] = ms
            infos[c]["replica_variants"] = [i.get("variant") for i in [infos[c], *reps]]
            if ms:
                infos[c]["ms"] = statistics.median(ms)
    return infos


def summarize(name: str, family: str, infos: dict) -> dict:
    ms = {c: i.get("ms") for c, i in infos.items() if i.get("ms")}
    int8_peers = [ms[c] for c in INT8_PEERS if c in ms]
    fp32_peers = [ms[c] for c in FP32_PEERS if c in ms]
    ours = ms.get("edgezoo-int8")
    img = next((i["img_size"] for i in infos.values() if i.get("img_size")), None)  # every worker has it
    row = {"family": family, "model": name, "img": img,
           "fp32_top1": infos.get("edgezoo-int8", {}).get("fp32_top1"),
           "int8_top1": infos.get("edgezoo-int8", {}).get("measured_top1"),
           "int8_variant": infos.get("edgezoo-int8", {}).get("variant"),
           "guard": infos.get("edgezoo-int8", {}).get("guard"), "ms": ms,
           "int8_vs_best_int8_peer": ours / min(int8_peers) if ours and int8_peers else None,
           "speedup_vs_best_fp32_peer": min(fp32_peers) / ours if ours and fp32_peers else None,
           "fp32_vs_best_fp32_peer": ms["edgezoo-fp32"] / min(fp32_peers) if "edgezoo-fp32" in ms and fp32_peers else None,
           "bf16_top1": infos.get("edgezoo-bf16", {}).get("measured_top1"),
           # the artifacts `edgezoo optimize --out` wrote, loaded alone in a fresh process (load_optimized)
           "int8_artifact_vs_best_int8_peer": ms["edgezoo-int8(artifact)"] / min(int8_peers)
           if "edgezoo-int8(artifact)" in ms and int8_peers else None,
           "int8_artifact_variant": infos.get("edgezoo-int8(artifact)", {}).get("variant"),
           "fp32_artifact_vs_best_fp32_peer": ms["edgezoo-fp32(artifact)"] / min(fp32_peers)
           if "edgezoo-fp32(artifact)" in ms and fp32_peers else None,
           "errors": {c: i["error"] for c, i in infos.items() if "error" in i}}
    return row


def markdown(rows) -> str:
    head = ("| family | model (px) | fp32 top-1 | int8 top-1 (engine) | edgezoo int8 ms | NNCF+OV(timm) ms (pinned) | "
            "ORT QDQ(timm) ms | best fp32 peer ms | int8 ÷ best int8 peer | speed-up vs best fp32 peer | "
            "edgezoo bf16 ms (top-1) | edgezoo fp32 ÷ best fp32 peer |\n|" + "---|" * 12 + "\n")
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = head
    for r in rows:
        ms = r["ms"]
        peer = min([ms[c] for c in FP32_PEERS if c in ms], default=None)
        guard = "" if (r["guard"] or "").startswith("passed") else " ✗guard"
        out += (f"| {r['family']} | {r['model']} ({r['img']}) | {f(r['fp32_top1'], 2)} | {f(r['int8_top1'], 2)} "
                f"({r['int8_variant']}{guard}) | {f(ms.get('edgezoo-int8'))} | {f(ms.get('nncf-ov(timm)'))} "
                f"({f(ms.get('nncf-ov-pinned(timm)'))}) | "
                f"{f(ms.get('ort-qdq(timm)'))} | {f(peer)} | {f(r['int8_vs_best_int8_peer'], 2)}× | "
                f"{f(r['speedup_vs_best_fp32_peer'], 2)}× | {f(ms.get('edgezoo-bf16'))} ({f(r['bf16_top1'], 2)}) | "
                f"{f(r['fp32_vs_best_fp32_peer'], 2)}× |\n")
    extra = [r for r in rows if r.get("int8_artifact_vs_best_int8_peer") or r.get("fp32_artifact_vs_best_fp32_peer")]
    if extra:  # the written artifacts, loaded in a fresh process: what a user deploys
        out += ("\n| model (px) | edgezoo-int8(artifact) ms (engine) | ÷ best int8 peer | edgezoo-fp32(artifact) ms | "
                "÷ best fp32 peer |\n|" + "---|" * 5 + "\n")
        for r in extra:
            ms = r["ms"]
            out += (f"| {r['model']} ({r['img']}) | {f(ms.get('edgezoo-int8(artifact)'))} ({r['int8_artifact_variant']}) "
                    f"| {f(r['int8_artifact_vs_best_int8_peer'], 2)}× | {f(ms.get('edgezoo-fp32(artifact)'))} | "
                    f"{f(r['fp32_artifact_vs_best_fp32_peer'], 2)}× |\n")
    return out


def one_process(run: Path, contenders, args) -> dict:
    """Every contender built here and timed interleaved in 3 passes (edgezoo.deploy.optimize.time_interleaved)."""
    import torch

    from edgezoo.deploy.optimize import time_interleaved

    if args.img_size:
        os.environ["EDGEZOO_BENCH_IMG"] = str(args.img_size)
    if args.no_guard:
        os.environ["EDGEZOO_BENCH_NOGUARD"] = "1"
    fns, infos = {}, {}
    for c in contenders:
        started = time.time()
        fns[c], infos[c] = build(c, str(run), args.threads)
        print(f"  {run.name}: {c} built in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    size = next(iter(infos.values()))["img_size"]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    passes = []
    with torch.inference_mode():
        for _ in range(3):
            t = time_interleaved({c: (lambda f=f: f(x)) for c, f in fns.items()}, repeats=args.rounds,
                                 block=args.block)
            passes.append({c: round(v, 4) for c, v in t.items()})
            print("  " + ", ".join(f"{c} {v:.3f}" for c, v in passes[-1].items()), file=sys.stderr, flush=True)
    return {"model": run.name, "img": size, "passes_ms": passes,
            "variants": {c: i.get("variant") for c, i in infos.items() if i.get("variant")}}


def main(argv=None) -> int:
    from edgezoo.deploy.optimize import ISOLATION_GAP_S

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*", default=list(FAMILY_MODELS), help=f"of {list(FAMILY_MODELS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="digits training epochs per model (brief)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--gap", type=float, default=ISOLATION_GAP_S,
                   help="seconds of pause before each turn (optimize()'s own pause: ONNX Runtime's pool spins for "
                        "50-200 ms after a call)")
    p.add_argument("--runs", default="runs/bench_precision", help="where the digits runs are trained / reused")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--replicas", type=int, default=1,
                   help="processes per contender, built round-robin (its figure is the median of their medians)")
    p.add_argument("--img-size", type=int, default=None,
                   help="run convnets at this size instead of the run's (accuracy then measured at it too)")
    p.add_argument("--no-guard", action="store_true",
                   help="int8/bf16 without the accuracy guard (max_drop=None; top-1 still measured): latency rows "
                        "for weights not trained at --img-size")
    p.add_argument("--one-process", action="store_true",
                   help="build every contender in this process and time them interleaved (3 passes of --rounds x "
                        "--block): for the artifact contenders and peers, whose engines start alone; no process "
                        "placement in the figures, but thread pools share the process")
    p.add_argument("--out", default=None, help="folder for precision.json / precision.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.run, args.threads)
    from edgezoo.deploy.precision import bf16_support, cpu_flags, has_vnni

    contenders = [c for c in args.contenders.split(",") if c]
    if not bf16_support()[0]:
        contenders = [c for c in contenders if c != "edgezoo-bf16"]
    flags = sorted(f for f in cpu_flags() if f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"))
    rows = []
    for fam in args.families:
        name = FAMILY_MODELS.get(fam, fam)
        run = train_run(name, Path(args.runs) / name, args.epochs)
        if args.one_process:
            rows.append(one_process(run, contenders, args))
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "one_process.json").write_text(json.dumps(rows, indent=1))
            continue
        infos = bench_model(run, contenders, args.threads, args.rounds, args.block, args.gap, args.img_size,
                            args.no_guard, replicas=args.replicas)
        rows.append(summarize(name, fam, infos))
        rows[-1]["workers"] = infos
        print(markdown(rows[-1:]).split("\n\n")[0].splitlines()[-1], flush=True)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            meta = {"cpu_flags": flags, "vnni": has_vnni(), "bf16": bf16_support()[1], "threads": args.threads,
                    "rounds": args.rounds, "block": args.block, "replicas": args.replicas,
                    "command": " ".join(sys.argv)}
            (out / "precision.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            (out / "precision.md").write_text(markdown(rows))
    if args.one_process:
        for r in rows:
            print(f"{r['model']} ({r['img']} px), one process, ms per pass: " + json.dumps(r["passes_ms"]))
    else:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
