"""``edgezoo search`` end to end: supernet → search under a latency target → re-rank its best few after a short
fine-tune → retrain the winner → a plain model.

Outputs in the run directory::

    arch.yaml             the found architecture (edgezoo-arch/1 spec), loadable without this package
    best.safetensors      its retrained weights (self-describing: ``edgezoo eval --checkpoint RUN`` works)
    report.json           hardware, target_ms, predicted_latency_ms, top1 (percent, held-out split), costs, ...
    pareto.png            search accuracy vs predicted latency, the Pareto front, the choice and zoo models
    search.json           every architecture evaluated (inherited search-split accuracy/loss, latency)
    rerank.json           the best few re-scored after a short fine-tune each (``rerank``; absent when it is 0)
    supernet.safetensors  the trained supernet; supernet_state.pt its resumable state (absent when the run reuses
                          another run's supernet: ``supernet_from``, ``edgezoo search --supernet RUN``)
    retrain-<id>/         the winner's training run (edgezoo train layout), one folder per architecture

Every phase resumes: the supernet from its last finished epoch, the search from ``search.json`` (it is cheap and
deterministic given the supernet), the re-ranking from ``rerank.json``, the retraining through the training
engine's own resumption.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_bytes
from ..models.arch_spec import load_arch_spec, make_arch_spec, save_arch_spec
from .space import DIGITS_SPACE, SearchSpace, Subnet
from .strategies import (MNASNET_W, STRATEGIES, Candidate, Objective, SearchResult, pareto_front, run_strategy,
                         top_candidates)

RUN_FILE = "search_run.json"
# Re-ranking of the search's best few by a fine-tuned proxy (run_search's ``rerank`` / ``rerank_steps``). 48 steps
# (3 epochs of the digits search's training split) is where the proxy ranked 3-seed retrains at tau 0.55 (16 steps:
# 0.38, as the inherited weights); 4 candidates keep the search within its minute on 2 cores (~10 s each).
RERANK_TOP = 4
RERANK_STEPS = 48
LATENCY_SOURCES = ("roofline", "table", "corrected")


def make_latency_predictor(hardware: str, source: str = "roofline", table: str | None = None,
                           num_classes: int = 10) -> Any:
    """An object with ``predict_ms(config, img_size)`` and ``.source`` for ``hardware``.

    Wraps :func:`edgezoo.search.latency.latency_predictor` with the run's number of classes.
    """
    from ..analysis import PRESETS

    if hardware not in PRESETS and hardware != "host":
        raise ValueError(f"unknown hardware {hardware!r}; allowed: {', '.join([*PRESETS, 'host'])}")
    if source not in LATENCY_SOURCES:
        raise ValueError(f"latency source must be one of {list(LATENCY_SOURCES)}, got {source!r}")
    from .latency import latency_predictor

    predictor = latency_predictor(hardware, source=source, table=table)

    class _ForClasses:
        """The predictor, pricing the head for this run's classes (the search's models are not 1000-way)."""

        source = predictor.source

        @staticmethod
        def predict_ms(config: Any, img_size: int) -> float:
            return predictor.predict_ms(config, img_size, num_classes=num_classes)

    return _ForClasses()


def _search_score(r: dict[str, float]) -> float:
    """The accuracy a search ranks by: the search split saturates on easy data, so equal top-1 is broken by the
    loss (0.1 point per unit of loss). The re-ranking scores its fine-tuned subnets the same way."""
    return r["top1"] - 0.1 * r["loss"]


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, default=float) + "\n").encode()


def _estimate_epochs(space: SearchSpace, minutes: float, batch: int, n_train: int, num_random: int,
                     default: int) -> int:
    """Supernet epochs that fit about half of ``minutes``, from a timed sandwich step on random data."""
    import torch.nn.functional as F

    from .supernet import Supernet, resize_to

    net = Supernet(space, num_classes=10).train()
    x = torch.randn(batch, 3, max(space.resolutions), max(space.resolutions))
    y = torch.randint(0, 10, (batch,))
    subs = [space.largest(), space.smallest()] + [space.sample(random.Random(i)) for i in range(num_random)]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        for s in subs:
            F.cross_entropy(net(resize_to(x, s.resolution), s), y).backward()
        times.append(time.perf_counter() - t0)
    epoch_s = min(times) * math.ceil(n_train / batch) * 1.15  # + data loading and optimiser
    return max(2, min(default, int(0.5 * minutes * 60 / epoch_s)))


def run_search(*, data: str = "digits", hardware: str, target_ms: float, out: str | Path,
               minutes: float | None = None, resume: bool = False, space: SearchSpace = DIGITS_SPACE,
               strategy: str = "two-stage", budget: int = 96, supernet_epochs: int = 24,
               retrain_epochs: int | None = None, latency_source: str = "roofline", table: str | None = None,
               reward: str = "hard", w: float = MNASNET_W, num_random: int = 2, seed: int = 0, progress: bool = True,
               teacher_checkpoint: str | None = None, supernet_from: str | Path | None = None,
               latency_fn: Callable[[Any, int], float] | None = None, rerank: int = RERANK_TOP,
               rerank_steps: int = RERANK_STEPS,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole search; returns the report written to ``out/report.json``.

    ``rerank``: the search's best ``rerank`` distinct architectures (by reward on inherited weights) are scored
    again after ``rerank_steps`` steps of fine-tuning each (:func:`~edgezoo.search.supernet_train.finetune_and_evaluate`)
    and the winner is the best of them by that score; 0 keeps the search's own pick.

    ``latency_fn(config, img_size) -> ms`` replaces the hardware's predictor when given (any callable works);
    ``teacher_checkpoint`` (a run trained on the same data) teaches the supernet's largest subnet.
    ``supernet_from`` (another finished search run of the same space and data) reuses that run's trained supernet
    and its search split instead of training one: one supernet serves searches for many targets and devices.
    """
    from .supernet_train import (SearchData, SupernetConfig, evaluate_subnet, finetune_and_evaluate, load_supernet,
                                 read_supernet_run, train_supernet)

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not math.isfinite(target_ms) \
            or target_ms <= 0:
        raise ValueError(f"target_ms must be a positive number, got {target_ms!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes must be > 0, got {minutes!r}")
    for arg, value in (("rerank", rerank), ("rerank_steps", rerank_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} must be a non-negative integer, got {value!r}")

    donor_cfg = None
    if supernet_from is not None:
        if teacher_checkpoint is not None:
            raise ValueError("supernet_from reuses a trained supernet and teacher_checkpoint teaches one being trained; "
                             "pass one of them, not both")
        if Path(supernet_from).resolve() == out.resolve():
            raise ValueError(f"supernet_from {str(supernet_from)!r} is the run's own --out; to continue a run use "
                             "resume")
        donor_cfg, donor_summary = read_supernet_run(supernet_from, space)
        if donor_cfg.data != data:
            raise ValueError(f"the supernet in {str(supernet_from)!r} was trained on data {donor_cfg.data!r}, not "
                             f"{data!r}")
    predictor = make_latency_predictor(hardware, latency_source, table)
    if latency_fn is not None:
        class _Given:
            source = "given"
            predict_ms = staticmethod(latency_fn)

        predictor = _Given()

    def latency_fn(subnet: Subnet) -> float:
        return float(predictor.predict_ms(space.to_config(subnet), subnet.resolution))

    # the target and reward without accuracy: the cheap checks first (an impossible target must fail before minutes
    # of training), and later the re-ranking's limit and reward
    goal = Objective(space, lambda s: 0.0, latency_fn, target_ms=target_ms, mode=reward, w=w)
    smallest_ms = goal.check_target()
    largest_ms = latency_fn(space.largest())

    run_path = out / RUN_FILE
    settings = {"data": data, "space": space.identity(), "seed": seed, "num_random": num_random}
    if supernet_from is not None:
        settings["supernet_from"] = str(Path(supernet_from).resolve())
    if resume and run_path.is_file():
        saved = json.loads(run_path.read_text())
        if saved["settings"]["space"] != settings["space"]:
            old = saved["settings"]["space"]
            raise ValueError(f"the run in {str(out)!r} searched space {old['name']!r} version {old['version']} "
                             f"(hash {old['hash']}), not {space.name!r} version {space.version} (hash {space.hash})")
        if saved["settings"]["data"] != data:
            raise ValueError(f"the run in {str(out)!r} searched on data {saved['settings']['data']!r}, not {data!r}")
        if saved["settings"].get("supernet_from") != settings.get("supernet_from"):
            raise ValueError(f"the run in {str(out)!r} used the supernet of "
                             f"{saved['settings'].get('supernet_from') or 'its own training'}, not "
                             f"{settings.get('supernet_from') or 'its own training'}; resume it as it was started")
        supernet_epochs = int(saved["supernet_epochs"])
    elif not resume and run_path.is_file():
        raise ValueError(f"--out {str(out)!r} already holds a search run; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "arch.yaml").is_file():
        _check_spec_space(out / "arch.yaml", space)

    if donor_cfg is not None:  # the donor's split and calibration images: scored on images it never trained on
        sn_cfg = dataclasses.replace(donor_cfg, out=str(out), progress=progress)
        supernet_epochs = donor_cfg.epochs
    else:
        sn_cfg = SupernetConfig(data=data, out=str(out), epochs=supernet_epochs, num_random=num_random, seed=seed,
                                progress=progress, teacher_checkpoint=teacher_checkpoint)
    sdata = SearchData(sn_cfg, space)
    if not run_path.is_file():
        if minutes is not None and donor_cfg is None:
            supernet_epochs = _estimate_epochs(space, minutes, sn_cfg.batch_size, len(sdata.train), num_random,
                                               supernet_epochs)
            sn_cfg.epochs = supernet_epochs
            log(f"--minutes {minutes:g}: {supernet_epochs} supernet epochs fit in about half of it")
        atomic_write_bytes(run_path, _json({"settings": settings, "supernet_epochs": supernet_epochs}))
    log(f"search space {space.name!r} v{space.version} ({space.hash}): {hardware} predicted latency "
        f"{smallest_ms:.3f}-{largest_ms:.3f} ms (smallest-largest subnet, {predictor.source}); target {target_ms:g} ms")

    # 1. supernet
    t0 = time.perf_counter()
    if donor_cfg is not None:
        net = load_supernet(supernet_from, space, len(sdata.classes), kernel_transform=donor_cfg.kernel_transform)
        sn_summary = {**donor_summary, "train_images": len(sdata.train), "search_images": sdata.num_search,
                      "params": sum(p.numel() for p in net.parameters()), "from": settings["supernet_from"]}
        log(f"supernet: reusing {settings['supernet_from']} ({donor_cfg.epochs} epochs, trained in "
            f"{donor_summary['seconds']:.0f}s)")
    else:
        net, sdata, sn_summary = train_supernet(sn_cfg, space, resume=resume, data=sdata, log=log)
    supernet_s = time.perf_counter() - t0

    # 2. search (cached in search.json for this target / hardware / source / strategy)
    t0 = time.perf_counter()
    search_key = {"hardware": hardware, "target_ms": float(target_ms), "source": predictor.source,
                  "strategy": strategy, "budget": budget, "reward": reward, "w": w}
    search_path = out / "search.json"
    evals: dict[tuple, dict[str, float]] = {}

    def accuracy_fn(subnet: Subnet) -> float:
        r = evaluate_subnet(net, sdata, subnet)
        evals[subnet.key()] = r
        return _search_score(r)

    result: SearchResult | None = None
    if resume and search_path.is_file():
        cached = json.loads(search_path.read_text())
        if cached.get("key") == search_key:
            hist = [Candidate(Subnet.from_dict(h["subnet"]), h["latency_ms"], h["accuracy"], h["reward"])
                    for h in cached["history"]]
            best = Candidate(Subnet.from_dict(cached["best"]["subnet"]), cached["best"]["latency_ms"],
                             cached["best"]["accuracy"], cached["best"]["reward"])
            result = SearchResult(best=best, history=hist, strategy=strategy)
            for h in cached["history"]:
                evals[Subnet.from_dict(h["subnet"]).key()] = {"top1": h["top1"], "loss": h["loss"]}
            log(f"search: reusing {len(hist)} evaluated architectures from {search_path}")
    if result is None:
        obj = Objective(space, accuracy_fn, latency_fn, target_ms=target_ms, mode=reward, w=w)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=None, desc=f"search ({strategy})", leave=False, dynamic_ncols=True)

        def prog(i: int, n: int) -> None:
            if bar is not None:
                bar.total = n
                bar.n = i
                bar.set_postfix(evaluated=obj.evaluations, refresh=True)

        result = run_strategy(strategy, obj, budget=budget, seed=seed, progress=prog)
        if bar is not None:
            bar.close()
        atomic_write_bytes(search_path, _json({
            "key": search_key,
            "best": result.best.to_dict(),
            "history": [{**c.to_dict(), **evals[c.subnet.key()]} for c in result.history],
        }))
    best = result.best
    log(f"search: {len(result.history)} architectures evaluated in {time.perf_counter() - t0:.1f}s; best "
        f"{best.subnet.describe()} at {best.latency_ms:.3f} ms, search-split top-1 "
        f"{evals[best.subnet.key()]['top1']:.2f}%")

    # 2b. re-rank the best few after a short fine-tune each: the inherited weights rank them too coarsely
    reranked: list[dict[str, Any]] = []
    if rerank and rerank_steps:
        rr_key = {**search_key, "rerank": rerank, "rerank_steps": rerank_steps}
        rr_path = out / "rerank.json"
        cached = json.loads(rr_path.read_text()) if resume and rr_path.is_file() else {}
        done = ({json.dumps(r["subnet"], sort_keys=True): r for r in cached["rows"]}
                if cached.get("key") == rr_key else {})
        top = top_candidates(result.history, rerank, feasible=goal.feasible)
        for i, c in enumerate(top):
            key = json.dumps(c.subnet.to_dict(), sort_keys=True)
            row = done.get(key)
            if row is None:
                ft = finetune_and_evaluate(net, sdata, c.subnet, steps=rerank_steps, seed=seed)
                row = {"arch": c.subnet.describe(), "subnet": c.subnet.to_dict(), "latency_ms": c.latency_ms,
                       "inherited_top1": evals[c.subnet.key()]["top1"], "inherited_reward": c.reward,
                       "finetuned_top1": ft["top1"], "finetuned_loss": ft["loss"],
                       "reward": goal.reward(_search_score(ft), c.latency_ms)}
                done[key] = row
                atomic_write_bytes(rr_path, _json({"key": rr_key, "rows": list(done.values())}))
            reranked.append(row)
            if progress:
                log(f"re-rank {i + 1}/{len(top)}: {row['arch']} fine-tuned top-1 {row['finetuned_top1']:.2f}% "
                    f"(inherited {row['inherited_top1']:.2f}%)")
        if reranked:
            win = max(range(len(reranked)), key=lambda i: reranked[i]["reward"])
            if top[win].subnet.key() != best.subnet.key():
                w0, b0 = reranked[win], reranked[0]
                log(f"re-rank: {top[win].subnet.describe()} replaces the search's pick (fine-tuned top-1 "
                    f"{w0['finetuned_top1']:.2f}% / loss {w0['finetuned_loss']:.3f} vs {b0['finetuned_top1']:.2f}% / "
                    f"{b0['finetuned_loss']:.3f})")
            best = top[win]
    search_s = time.perf_counter() - t0

    # 3. the spec
    config = space.to_config(best.subnet)
    spec = make_arch_spec(config, name=f"{space.name}-{hardware}-{target_ms:g}ms", img_size=best.subnet.resolution,
                          space=space.identity(),
                          latency={"hardware": hardware, "source": predictor.source,
                                   "predicted_ms": round(best.latency_ms, 5), "target_ms": float(target_ms)})
    save_arch_spec(spec, out / "arch.yaml")

    # 4. retrain the winner from scratch with the standard recipe, on the full training split
    t0 = time.perf_counter()
    from ..train import build_config, train

    # one retraining folder per architecture: resuming a run whose search found another one must not mix them
    arch_id = hashlib.sha1(json.dumps(spec["config"], sort_keys=True).encode()).hexdigest()[:8]
    retrain_dir = out / f"retrain-{arch_id}"
    overrides: dict[str, Any] = {"model": str(out / "arch.yaml"), "data": data, "out": str(retrain_dir),
                                 "seed": seed, "progress": progress}
    if retrain_epochs is not None:
        overrides["epochs"] = retrain_epochs
    if resume and (retrain_dir / "state.pt").is_file():
        overrides["resume"] = True
    train_report = train(build_config(overrides), explicit=set())
    retrain_s = time.perf_counter() - t0
    # the deliverable is the final (EMA) weights: picking the best epoch would select on the test split
    atomic_write_bytes(out / "best.safetensors", (retrain_dir / "last.safetensors").read_bytes())

    # 5. report, Pareto plot
    zoo = zoo_points(predictor, hardware)
    report = {
        "hardware": hardware,
        "target_ms": float(target_ms),
        "predicted_latency_ms": round(best.latency_ms, 5),
        "latency_source": predictor.source,
        "top1": train_report["final_top1"],
        "top1_split": "held-out validation split of the data (never seen by the search)",
        "search_top1": evals[best.subnet.key()]["top1"],
        "search_loss": evals[best.subnet.key()]["loss"],
        "rerank": reranked,
        "arch": best.subnet.describe(),
        "subnet": best.subnet.to_dict(),
        "img_size": best.subnet.resolution,
        "params": train_report["params"],
        "macs": train_report["macs"],
        "measured_latency_ms_host_eager": train_report.get("latency_ms"),
        "space": space.identity(),
        "strategy": strategy,
        "reward": reward,
        "evaluated": len(result.history),
        "smallest_ms": round(smallest_ms, 5),
        "largest_ms": round(largest_ms, 5),
        "seconds": {"supernet": round(supernet_s, 1), "search": round(search_s, 1), "retrain": round(retrain_s, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "retrain_dir": retrain_dir.name,
        "supernet": {k: sn_summary[k] for k in ("epochs", "seconds", "train_images", "search_images", "params", "from")
                     if k in sn_summary},
        "pareto": [{"arch": c.subnet.describe(), "latency_ms": round(c.latency_ms, 5),
                    "search_top1": evals[c.subnet.key()]["top1"]} for c in pareto_front(result.history)],
        "zoo": zoo,
        "threads": torch.get_num_threads(),
    }
    atomic_write_bytes(out / "report.json", _json(report))
    write_pareto_png(out / "pareto.png", result, evals, best, report, zoo)
    return report


def _check_spec_space(path: Path, space: SearchSpace) -> None:
    spec = load_arch_spec(path)
    got = spec.get("space")
    if got is not None and (got.get("hash") != space.hash or got.get("version") != space.version):
        raise ValueError(f"spec {str(path)!r} comes from search space {got.get('name')!r} version "
                         f"{got.get('version')} (hash {got.get('hash')}), not {space.name!r} version {space.version} "
                         f"(hash {space.hash})")


def zoo_points(predictor: Any, hardware: str, img_size: int = 64) -> list[dict[str, Any]]:
    """Predicted latency of zoo models on the same predictor, at the digits resolution.

    MobileNetV4 configs go through the predictor itself (any source); Conv-S at width 0.5 / 0.75 is Conv-S with
    every block's width scaled (rounded to multiples of 8), since MobileNetV4 has no width multiplier.
    """
    from ..models.mobilenet_v4 import CONV_MEDIUM, CONV_SMALL

    points = []
    for name, cfg in (("mobilenetv4_conv_small@0.5", scale_config(CONV_SMALL, 0.5)),
                      ("mobilenetv4_conv_small@0.75", scale_config(CONV_SMALL, 0.75)),
                      ("mobilenetv4_conv_small", CONV_SMALL), ("mobilenetv4_conv_medium", CONV_MEDIUM)):
        points.append({"name": name, "latency_ms": round(float(predictor.predict_ms(cfg, img_size)), 5),
                       "img_size": img_size})
    return points


def scale_config(config: Any, width: float) -> Any:
    """``config`` with every block's output width (and the stem) scaled by ``width`` (multiples of 8); the
    1×1 conv to 960 and the head keep their widths, as MobileNetV3's width multiplier leaves its last layers."""
    from ..layers.helpers import make_divisible

    stages = []
    for si, stage in enumerate(config.stages):
        if si == len(config.stages) - 1:
            stages.append(stage)
            continue
        stages.append(tuple(dataclasses.replace(b, out_chs=make_divisible(b.out_chs * width)) for b in stage))
    return dataclasses.replace(config, stem_chs=make_divisible(config.stem_chs * width), stages=tuple(stages))


def write_pareto_png(path: Path, result: SearchResult, evals: dict[tuple, dict[str, float]], best: Candidate,
                     report: dict[str, Any], zoo: list[dict[str, Any]]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.2))
    lat = [c.latency_ms for c in result.history]
    acc = [evals[c.subnet.key()]["top1"] for c in result.history]
    ax.scatter(lat, acc, s=12, c="0.6", label=f"evaluated ({len(lat)}, supernet weights, search split)")
    front = pareto_front(result.history)
    ax.plot([c.latency_ms for c in front], [evals[c.subnet.key()]["top1"] for c in front], "-o", c="tab:blue",
            ms=4, label="Pareto front")
    ax.scatter([best.latency_ms], [evals[best.subnet.key()]["top1"]], marker="*", s=220, c="tab:red", zorder=5,
               label="chosen (search split)")
    ax.scatter([best.latency_ms], [report["top1"]], marker="D", s=60, c="tab:green", zorder=5,
               label=f"chosen, retrained: {report['top1']:.2f}% (held-out split)")
    ax.axvline(report["target_ms"], c="tab:red", ls="--", lw=1, label=f"target {report['target_ms']:g} ms")
    y_lo, y_hi = ax.get_ylim()
    for z in zoo:
        ax.axvline(z["latency_ms"], c="tab:purple", ls=":", lw=1)
        ax.text(z["latency_ms"], y_hi - 0.02 * (y_hi - y_lo), z["name"] + " ", rotation=90, va="top", ha="right",
                fontsize=7, color="tab:purple")
    ax.plot([], [], c="tab:purple", ls=":", label=f"zoo models at {zoo[0]['img_size'] if zoo else 64} px "
                                                       "(latency only: not trained here)")
    ax.set_xscale("log")
    ax.set_xlabel(f"predicted latency on {report['hardware']} (ms, {report['latency_source']}, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Architecture search: {report['space']['name']} on {report['hardware']}, "
                 f"target {report['target_ms']:g} ms")
    ax.set_ylim(y_lo, y_hi)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
