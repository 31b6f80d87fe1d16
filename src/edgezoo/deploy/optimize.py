"""``optimize``: the fastest fp32 inference path for one model on this machine, chosen by measurement.

Which engine is fastest depends on the model (depthwise convs vs GEMMs vs attention), the input size, the batch
and the CPU; no fixed rule gets it right, so ``backend="auto"`` builds each available candidate on the BN-folded
model, checks its outputs against eager PyTorch and times them **interleaved** (turns of back-to-back calls in a
random order each round, so load from other processes hits all candidates alike), then keeps the one with the
lowest median latency.

Candidates:

* ``eager``       — BN-folded PyTorch under ``inference_mode``; with or without ``fuse()``'s inference forms and
                    channels_last, whichever measures faster;
* ``compile``     — ``torch.compile`` (Inductor, weights frozen as constants); slow to build (tens of seconds),
                    so ``auto`` tries it only when asked (``candidates=``);
* ``onnxruntime`` — ONNX Runtime CPU with every graph optimization;
* ``openvino``    — OpenVINO CPU plugin, latency hint, fp32 precision forced (it may otherwise pick bf16), with and
                    without its worker threads pinned to cores (both measured);
* ``litert`` / ``executorch`` — the phone runtimes' CPU engines (XNNPACK) on the mobile form, when installed
                    (``pip install 'edgezoo[mobile]'``); minutes to convert, so ``auto`` tries them only when asked.

Engines other than eager are compiled for one input shape; a call with a new shape builds (and caches) the
engine for that shape, so the returned callable works at any batch and resolution the model supports.
"""
from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .engine_worker import openvino_config
from .export import onnx_bytes, ort_session, rel_diff, require
from .fuse import fuse, openvino_forms

if TYPE_CHECKING:  # precision.py imports this module; only the type is needed here
    from .precision import PrecisionEngine

BACKENDS = ("eager", "compile", "onnxruntime", "openvino", "litert", "executorch")
# litert/executorch (phone runtimes, XNNPACK on this CPU) take minutes to convert, so like compile they are
# measured by auto only when asked (candidates=[..., "litert", "executorch"]).
AUTO_CANDIDATES = ("eager", "onnxruntime", "openvino")
MOBILE_BACKENDS = ("litert", "executorch")  # engines built by edgezoo.deploy.mobile_export.engine_runner
_PER_SHAPE = ("onnxruntime", "openvino", *MOBILE_BACKENDS)  # engines compiled for one input shape
PARITY_TOL = 1e-3
TIE_MARGIN = 0.10  # candidates this close to the fastest are timed again before one is chosen
ISOLATE_MARGIN = 0.5  # candidates this close to the fastest in-process are ranked again, each in its own process
# pause before each turn in time_in_processes. It must outlast the previous engine's spin-wait: ONNX Runtime's
# pool (spinning on, its default) burns 30-40 ms of CPU within 50-200 ms after a call (measured at 2 threads on
# the 2-core host), and with a 20 ms pause OpenVINO int8 engines measured up to 1.4x slower next to it than alone.
ISOLATION_GAP_S = 0.2
PINNED_OPENVINO = "openvino/pinned"  # OpenVINO with ENABLE_CPU_PINNING, tried alongside the default configuration
Runner = Callable[[Tensor], Tensor]


def available_backends() -> list[str]:
    """Backends whose engine is installed here (eager and compile always are)."""
    import importlib.util

    found = ["eager", "compile"]
    for backend, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("litert", "litert_torch"),
                            ("executorch", "executorch")):
        if importlib.util.find_spec(module) is not None:
            found.append(backend)
    return found


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def time_interleaved(
    runners: dict[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 15,
    block: int = 1,
    gap_s: float = 0.0,
) -> dict[str, float]:
    """Median milliseconds per call of each runner, timed round-robin so that noise is shared fairly.

    Each round gives every runner one turn of ``block`` back-to-back calls and records the median call of that
    turn; the result is the median over ``repeats`` rounds. Back-to-back calls measure each engine in its steady
    state, as a deployed model runs: engines whose worker threads keep spinning after a call (OpenMP, ONNX
    Runtime, OpenVINO) tax whatever runs next on a small machine, so single interleaved calls would charge one
    engine's spinning to its neighbour. Every round visits the runners in a new (seeded) random order, so no
    runner always follows the same neighbour, and load from other processes hits all alike. ``gap_s`` sleeps
    before each turn, letting the previous runner's threads go idle.
    """
    if block < 1 or repeats < 1:
        raise ValueError(f"block and repeats must be >= 1, got block={block!r}, repeats={repeats!r}")
    keys = list(runners)
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in keys}
    order = random.Random(0)  # a fixed seed: the same schedule every time, but no fixed neighbours
    for _ in range(repeats):
        for key in order.sample(keys, len(keys)):
            if gap_s:
                time.sleep(gap_s)
            fn = runners[key]
            turn = []
            for _ in range(block):
                start = time.perf_counter()
                fn()
                turn.append((time.perf_counter() - start) * 1e3)
            samples[key].append(statistics.median(turn))
    return {k: statistics.median(v) for k, v in samples.items()}


def _write_model(model: object, folder: str, stem: str) -> str:
    """Write ONNX bytes or an ``openvino.Model`` where a worker can read it; the path."""
    if isinstance(model, (bytes, bytearray)):
        path = os.path.join(folder, stem + ".onnx")
        with open(path, "wb") as fh:
            fh.write(model)
        return path
    ov = require("openvino")
    path = os.path.join(folder, stem + ".xml")
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def time_in_processes(
    runners: dict[str, Runner],
    example: Tensor,
    *,
    threads: int,
    repeats: int = 15,
    block: int = 5,
    gap_s: float = ISOLATION_GAP_S,
    timeout_s: float = 180.0,
) -> dict[str, float] | None:
    """Median milliseconds per call of each runner, every graph engine timed **in a process of its own**.

    Runners built by this module for ONNX Runtime or OpenVINO carry an ``isolate`` description (the model and
    its settings); each of those is rebuilt by :mod:`edgezoo.deploy.engine_worker` in a fresh process. The
    others (eager, compile, the phone runtimes) are timed here, in this process, whose ONNX Runtime and OpenVINO
    pools are idle by then. Turns alternate as in :func:`time_interleaved` (``repeats`` rounds, a new seeded
    order each, one untimed call then ``block`` timed back-to-back calls a turn, median per turn, median of
    turns), with a ``gap_s`` pause before every turn so the previous engine's spinning threads have gone idle.
    Workers start together (their builds are not timed) and cost about a second each. Returns ``None`` when a
    worker cannot start (e.g. no writable temp folder): the caller then keeps its in-process measurement.
    """
    import json
    import select
    import subprocess
    import sys

    from . import engine_worker

    shape = [int(d) for d in example.shape]
    local = {k: r for k, r in runners.items() if getattr(r, "isolate", None) is None}
    procs: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def readline(proc: subprocess.Popen) -> str:
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        return proc.stdout.readline() if ready else ""

    try:
        with tempfile.TemporaryDirectory(prefix="edgezoo-timing-") as tmp:
            for i, (key, run) in enumerate(runners.items()):
                desc = getattr(run, "isolate", None)
                if desc is None:
                    continue
                spec = {"kind": desc["kind"], "path": _write_model(desc["model"], tmp, f"m{i}"), "shape": shape,
                        "threads": threads, "pinned": bool(desc.get("pinned")), "hint": desc.get("hint")}
                procs[key] = subprocess.Popen(
                    [sys.executable, engine_worker.__file__, json.dumps(spec)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            for key, proc in procs.items():
                line = readline(proc)
                if not line.startswith("ready"):
                    return None
            # the model files may go now: every worker has compiled its engine
        with torch.inference_mode():
            for run in local.values():
                for _ in range(3):
                    run(example)
            samples: dict[str, list[float]] = {k: [] for k in runners}
            order = random.Random(0)
            for _ in range(repeats):
                for key in order.sample(list(runners), len(runners)):
                    time.sleep(gap_s)
                    if key in procs:
                        procs[key].stdin.write(f"time {block}\n")
                        procs[key].stdin.flush()
                        line = readline(procs[key])
                        if not line.strip():
                            return None
                        samples[key].append(float(line))
                    else:
                        local[key](example)  # untimed, as the workers do: wake-up and cache refill
                        turn = []
                        for _ in range(block):
                            start = time.perf_counter()
                            local[key](example)
                            turn.append((time.perf_counter() - start) * 1e3)
                        samples[key].append(statistics.median(turn))
        return {k: statistics.median(v) for k, v in samples.items()}
    except OSError:
        return None
    finally:
        for proc in procs.values():
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()


# --- engines -------------------------------------------------------------------------------------------------------
def _eager_runner(model: nn.Module, channels_last: bool) -> Runner:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return model(x)

    return run


def _compile_runner(model: nn.Module, example: Tensor) -> Runner:
    import torch._inductor.config as inductor_config

    # Freezing turns weights into constants so Inductor can fold them and pre-pack them for oneDNN.
    inductor_config.freezing = True
    compiled = torch.compile(model, dynamic=False)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(x)

    run(example)  # compile now, not on the user's first call
    return run


def _ort_runner(model: nn.Module, example: Tensor, threads: int, *, onnx: bytes | None = None) -> Runner:
    data = onnx if onnx is not None else onnx_bytes(model, example)
    sess = ort_session(data, threads=threads)
    name = sess.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(sess.run(None, {name: x.detach().contiguous().numpy()})[0])

    run.isolate = {"kind": "onnxruntime", "model": data}  # type: ignore[attr-defined] # see time_in_processes
    return run


def openvino_compile(onnx, threads: int, pinned: bool = False, extra_config: dict | None = None):
    """An OpenVINO CPU ``CompiledModel`` for an ONNX export, with the settings every edgezoo OpenVINO path uses.

    ``onnx`` is the ONNX model's bytes or an ``openvino.Model`` (e.g. NNCF's int8 model, see precision.py).
    ``extra_config`` adds OpenVINO properties (e.g. ``{"PERF_COUNT": True}`` for profiling) on top of them.
    """
    ov = require("openvino")
    core = ov.Core()
    config = openvino_config(threads, pinned, extra_config)
    if not isinstance(onnx, (bytes, bytearray)):  # already an openvino.Model (precision.py)
        return core.compile_model(onnx, "CPU", config)
    with tempfile.TemporaryDirectory(prefix="edgezoo-ov-") as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        with open(onnx_path, "wb") as fh:
            fh.write(onnx)
        return core.compile_model(core.read_model(onnx_path), "CPU", config)


def _openvino_runner(
    model: nn.Module, example: Tensor, threads: int, pinned: bool = False, *, onnx: bytes | None = None
) -> Runner:
    """OpenVINO CPU engine for ``model`` at ``example``'s shape; ``onnx``: its export (of
    :func:`~edgezoo.deploy.fuse.openvino_forms` of the model), if already made."""
    data = onnx if onnx is not None else onnx_bytes(openvino_forms(model), example)
    compiled = openvino_compile(data, threads, pinned)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        request.infer({0: x.detach().contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    run.isolate = {"kind": "openvino", "model": data, "pinned": pinned}  # type: ignore[attr-defined]
    return run


def pinned_twin(runner: Runner) -> Runner | None:
    """A timing-only stand-in for an unpinned OpenVINO ``runner`` with its threads pinned to cores
    (``ENABLE_CPU_PINNING``); ``None`` for any other runner.

    Pinning changes where the threads run, not what they compute, so the twin needs no compile of its own until it
    wins: :func:`time_in_processes` compiles it pinned in its worker, and in this process it calls ``runner``
    (same graph, same outputs, so parity and accuracy carry over). A twin's in-process timing is the unpinned
    engine's, so it only means something in the separate-process ranking. Measured on the 2-core host (issue 14):
    unpinned OpenVINO ran a turn of calls either at ~1.5 or at ~2.4 ms depending on where the scheduler put its
    threads after a pause; pinned, every turn took 1.4-1.8 ms. Both ``optimize()`` paths use this.
    """
    desc = getattr(runner, "isolate", None)
    if not desc or desc.get("kind") != "openvino" or desc.get("pinned"):
        return None

    def twin(x: Tensor) -> Tensor:
        return runner(x)

    twin.isolate = {**desc, "pinned": True}  # type: ignore[attr-defined]
    twin.twin_of = runner  # type: ignore[attr-defined]
    return twin


@dataclass
class OptimizedModel:
    """Callable inference engine returned by :func:`optimize`: ``logits = engine(images)``.

    ``backend`` is the engine in use and ``variant`` its configuration (``"openvino/pinned"``: worker threads
    pinned to cores); ``timings_ms`` the measured median latency of every candidate tried at the example input; ``max_rel_diff`` the difference to eager PyTorch at the example input (relative to the output
    scale). A call with an input shape not seen before builds the engine for that shape first.
    """

    backend: str
    timings_ms: dict[str, float]
    max_rel_diff: float
    threads: int
    variant: str  # the key of ``timings_ms`` that won: the backend, or e.g. "openvino/pinned"
    _model: nn.Module = field(repr=False)
    _runners: dict[tuple[int, ...], Runner] = field(repr=False, default_factory=dict)
    _channels_last: bool = field(repr=False, default=False)
    timing: str = "in-process"  # how the final ranking was measured: "in-process" or "separate processes"

    def _build(self, example: Tensor) -> Runner:
        pinned = self.variant == PINNED_OPENVINO
        return _build_runner(self.backend, self._model, example, self.threads, self._channels_last, pinned)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        key = tuple(x.shape) if self.backend in _PER_SHAPE else ()
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = self._build(x)
        return runner(x)


def _build_runner(
    backend: str, model: nn.Module, example: Tensor, threads: int, channels_last: bool, pinned: bool = False
) -> Runner:
    if backend == "eager":
        return _eager_runner(model, channels_last)
    if backend == "compile":
        return _compile_runner(model, example)
    if backend == "onnxruntime":
        return _ort_runner(model, example, threads)
    if backend == "openvino":
        return _openvino_runner(model, example, threads, pinned)
    if backend in MOBILE_BACKENDS:
        from .mobile_export import engine_runner

        return engine_runner(backend, model, example, threads)
    raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {backend!r}")


def optimize(
    model: nn.Module,
    example_input: Tensor,
    backend: str = "auto",
    *,
    candidates: Sequence[str] | None = None,
    threads: int | None = None,
    repeats: int = 15,
    block: int = 5,
    tol: float = PARITY_TOL,
    isolate: bool = True,
    precision: str = "fp32",
    calib=None,
    val=None,
    max_drop: float | None = 0.5,
    **precision_options,
) -> OptimizedModel | PrecisionEngine:
    """The fastest fp32 inference callable for ``model`` at ``example_input``'s shape.

    ``backend`` is ``"auto"`` (measure ``candidates``, default :data:`AUTO_CANDIDATES` that are installed) or one of
    :data:`BACKENDS`. Every engine runs the BN-folded model and must reproduce eager PyTorch within ``tol`` of the
    output scale at the example input, else it is rejected (``auto``) or a ``RuntimeError`` is raised (explicit).
    Candidates are timed in ``repeats`` round-robin rounds of ``block`` back-to-back calls each (see
    :func:`time_interleaved`); those within :data:`TIE_MARGIN` of the fastest are timed once more among
    themselves and the winner of that run is kept (``timings_ms`` holds the latest measurement of each).
    With ``isolate`` (the default) the candidates within :data:`ISOLATE_MARGIN` of the fastest are instead ranked
    with every ONNX Runtime / OpenVINO engine in a process of its own (:func:`time_in_processes`, about a second
    per engine), because in one process their thread pools distort each other; ``timings_ms`` then holds only
    those separate-process medians and ``timing`` says ``"separate processes"``.

    ``precision`` ``"int8"`` / ``"bf16"`` / ``"auto"`` (or any ``calib`` / ``val``) hands over to
    :func:`edgezoo.deploy.precision.optimize_precision`: lower-precision candidates calibrated on ``calib``,
    guarded by held-out top-1 on ``val`` (at most ``max_drop`` points lost), fastest survivor kept; it returns a
    :class:`~edgezoo.deploy.precision.PrecisionEngine` reporting ``precision``, ``timings_ms`` and ``accuracy``.
    """
    # --- precision (issue 14): everything below fp32 lives in precision.py -------------------------------------
    if precision != "fp32" or calib is not None or val is not None or precision_options:
        from .precision import optimize_precision

        if backend != "auto" or candidates is not None:
            raise ValueError("backend/candidates choose among fp32 engines; with precision= they are measured by "
                             "precision.optimize_precision (use int8_engines= to restrict int8 engines)")
        return optimize_precision(model, example_input, precision, calib=calib, val=val, max_drop=max_drop,
                                  threads=threads, repeats=repeats, block=block, isolate=isolate,
                                  **precision_options)
    # --- end precision ----------------------------------------------------------------------------------------
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        raise ValueError(f"example_input must be a (B, C, H, W) tensor, got {getattr(example_input, 'shape', example_input)!r}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {backend!r}")
    if backend == "auto":
        have = available_backends()
        wanted = list(candidates) if candidates is not None else [b for b in AUTO_CANDIDATES if b in have]
        bad = [c for c in wanted if c not in BACKENDS]
        if bad or not wanted:
            raise ValueError(f"candidates must be a non-empty subset of {list(BACKENDS)}, got {candidates!r}")
    else:
        wanted = [backend]
    threads = int(threads or torch.get_num_threads())
    example_input = example_input.detach().float().contiguous()

    model = model.eval()
    with torch.inference_mode():
        expected = model(example_input)
    folded, report = fuse(model, return_report=True)

    channels_last = False
    eager_model = folded
    runners: dict[str, Runner] = {}
    for name in wanted:
        if name == "eager":
            eager_model, channels_last, runners[name] = _pick_eager(
                model, folded, bool(report.rewritten), example_input, repeats, block
            )
            continue
        try:
            if name == "openvino":  # both configurations from one export
                ov_onnx = onnx_bytes(openvino_forms(folded), example_input)
                runners[name] = _openvino_runner(folded, example_input, threads, False, onnx=ov_onnx)
                # pinned: a timing twin where the separate-process ranking can measure it, else compiled here
                runners[PINNED_OPENVINO] = (pinned_twin(runners[name]) if isolate else
                                            _openvino_runner(folded, example_input, threads, True, onnx=ov_onnx))
            else:
                runners[name] = _build_runner(name, folded, example_input, threads, False)
        except ImportError:
            if backend != "auto" or candidates is not None:
                raise
    diffs: dict[str, float] = {}
    for name in list(runners):
        diffs[name] = rel_diff(runners[name](example_input), expected)
        if not diffs[name] <= tol:
            if backend != "auto":
                raise RuntimeError(f"backend {name!r} differs from eager PyTorch by {diffs[name]:.3g} of the output scale (allowed {tol:g})")
            del runners[name]
    if not runners:
        raise RuntimeError(f"no backend among {wanted} reproduced the eager outputs: {diffs}")
    timing = "in-process"
    if len(runners) > 1:
        calls = {k: (lambda r=r: r(example_input)) for k, r in runners.items()}
        timings = time_interleaved(calls, repeats=repeats, block=block)
        # In one process the engines' thread pools tax each other, enough to reorder engines a few tens of
        # percent apart (ONNX Runtime won MobileNetV1 in-process but ran 1.32x OpenVINO once each had its own
        # process). So the contenders within ISOLATE_MARGIN of the fastest are ranked again with every graph
        # engine in a fresh process (time_in_processes); within TIE_MARGIN without isolation they are re-timed
        # on their own, since one short run can rank a near tie either way.
        fastest = min(timings.values())
        margin = ISOLATE_MARGIN if isolate else TIE_MARGIN
        close = [k for k, v in timings.items() if v <= fastest * (1 + margin)]
        isolable = any(getattr(runners[k], "isolate", None) is not None for k in close)
        if len(close) > 1 and isolate and isolable:
            separate = time_in_processes({k: runners[k] for k in close}, example_input, threads=threads,
                                         repeats=repeats, block=block)
            if separate is not None:
                timings.update(separate)
                timing = "separate processes"
        if len(close) > 1 and timing == "in-process":
            close = [k for k in close if timings[k] <= fastest * (1 + TIE_MARGIN)]
            if len(close) > 1:
                timings.update(time_interleaved({k: calls[k] for k in close}, warmup=1, repeats=repeats,
                                                block=block))
    else:
        timings = {}
    if timing != "in-process":  # rank only what was measured the same way
        timings = {k: v for k, v in timings.items() if k in separate}
    else:  # a twin's in-process time is its unpinned original's: not a measurement of pinning
        timings = {k: v for k, v in timings.items() if getattr(runners[k], "twin_of", None) is None}
        runners = {k: r for k, r in runners.items() if getattr(r, "twin_of", None) is None}
    best = min(timings, key=timings.get) if timings else next(iter(runners))
    if getattr(runners[best], "twin_of", None) is not None:  # a pinned twin won: compile it pinned for real
        runners[best] = _openvino_runner(folded, example_input, threads, True, onnx=ov_onnx)
    engine_name = best.split("/")[0]
    eager = engine_name == "eager"
    engine = OptimizedModel(
        backend=engine_name, timings_ms=timings, max_rel_diff=diffs[best], threads=threads, variant=best,
        timing=timing, _model=eager_model if eager else folded, _channels_last=channels_last and eager,
    )
    engine._runners[tuple(example_input.shape) if engine_name in _PER_SHAPE else ()] = runners[best]
    return engine


def _pick_eager(
    model: nn.Module, folded: nn.Module, has_forms: bool, example: Tensor, repeats: int, block: int
) -> tuple[nn.Module, bool, Runner]:
    """The fastest eager-PyTorch form of ``model``: ``(module, channels_last, runner)``, chosen by measurement.

    ``fuse()``'s inference forms are written for graph engines; in eager PyTorch some pay (ViT's class-token last
    block) and some cost (EdgeNeXt's channels-first blocks: 1.4× slower than its channels-last training form,
    whose LayerNorms and Linears are fast aten kernels), so when ``fuse`` rewrote anything the fold-only copy is
    a candidate too. channels_last helps oneDNN convolutions but slows token models; measured as well.
    """
    forms = {"forms": folded}
    if has_forms:
        forms["fold_only"] = fuse(model, deploy_forms=False)
    layouts = (False, True) if _has_conv(folded) else (False,)
    options: dict[str, tuple[nn.Module, bool, Runner]] = {}
    for form, module in forms.items():
        for cl in layouts:
            m = _copy(module) if cl else module
            options[f"{form}/{'nhwc' if cl else 'nchw'}"] = (m, cl, _eager_runner(m, cl))
    if len(options) == 1:
        return next(iter(options.values()))
    t = time_interleaved({k: (lambda r=o[2]: r(example)) for k, o in options.items()},
                         repeats=max(3, repeats // 2), block=block)
    return options[min(t, key=t.get)]


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
