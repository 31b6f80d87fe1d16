"""Result quality of ``edgezoo search`` on digits: the found model vs the baseline vs random architectures.

For each width ``w`` of MobileNetV4-Conv-S (the spec ``scale_config(CONV_SMALL, w)`` at 64 px), the latency target is
its predicted latency on ``--hardware`` plus ``--margin`` (5 %). Three contenders meet that limit and are retrained
from scratch with the same recipe (``edgezoo train --arch``: the MobileNetV4 digits recipe, or ``--epochs``):

* **found**: ``edgezoo search`` at that target, reusing one trained supernet for every target (``--supernet RUN``:
  a finished search run; a target equal to RUN's own reuses RUN's architecture and its seed-0 retrain);
* **baseline**: Conv-S at width ``w`` itself;
* **random**: ``--random`` architectures sampled uniformly from the search space, kept if predicted at or under
  the target (the same limit the search obeys), one retrain each; the best of them (by that retrain) is then
  retrained with the other ``--seeds``, since the best of ten noisy single retrains overstates the architecture.

Every retrain is evaluated on the held-out validation split (never seen by the supernet or the search). Results
go to ``--results`` after every retrain, so the harness resumes where it stopped; ``--minutes`` stops it from
starting new work after that long (to fit a time slot), and ``--report`` only prints the table::

    PYTHONPATH=src python benchmarks/search_quality.py --supernet runs/e2e --work runs/quality --minutes 9
    PYTHONPATH=src python benchmarks/search_quality.py --work runs/quality --report
"""
from __future__ import annotations

import argparse
import re
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from edgezoo.checkpoint import atomic_write_bytes

CONTENDERS = ("found", "baseline", "random")


def target_for(width: float, hardware: str, margin: float) -> tuple[float, float]:
    """(baseline predicted ms, target ms) for Conv-S at ``width`` on ``hardware`` at 64 px."""
    from edgezoo.models.mobilenet_v4 import CONV_SMALL
    from edgezoo.search.pipeline import make_latency_predictor, scale_config

    ms = float(make_latency_predictor(hardware).predict_ms(scale_config(CONV_SMALL, width), 64))
    return ms, round(ms * (1.0 + margin), 6)


def random_subnets(space: Any, n: int, target_ms: float, hardware: str, seed: int) -> list[tuple[Any, float]]:
    """``n`` distinct uniformly sampled subnets predicted at or under ``target_ms`` (rejection sampling)."""
    from edgezoo.search.pipeline import make_latency_predictor

    pred = make_latency_predictor(hardware)
    rng = random.Random(seed)
    found: dict[tuple, tuple[Any, float]] = {}
    for _ in range(200 * n):
        s = space.canonical(space.sample(rng))
        ms = float(pred.predict_ms(space.to_config(s), s.resolution))
        if ms <= target_ms and s.key() not in found:
            found[s.key()] = (s, ms)
            if len(found) == n:
                break
    if len(found) < n:
        raise ValueError(f"only {len(found)} of {n} random subnets met {target_ms} ms in {200 * n} samples")
    return list(found.values())


def random_seed(width: float) -> int:
    """The seed the random architectures of target ``width`` are drawn with (fixed: a lost spec can be redrawn)."""
    return 1000 + int(round(width * 100))


def same_arch(a: str, b: str) -> bool:
    """Whether two ``Subnet.describe()`` strings name the same architecture; results written before the fused
    stage's expansion was part of the description lack its ``[e…]``, so that part is ignored."""
    def bare(arch: str) -> str:
        return re.sub(r"\[[e0-9. ]*\]", "", arch, count=1)

    return bare(a) == bare(b)


def retrain(spec: Path, out: Path, seed: int, epochs: int | None) -> dict[str, Any]:
    """Train ``spec`` from scratch (resuming a killed run), evaluate the final weights on the held-out split."""
    from edgezoo.train import build_config, evaluate_checkpoint, train

    over: dict[str, Any] = {"model": str(spec), "data": "digits", "out": str(out), "seed": seed, "progress": False,
                            "resume": (out / "state.pt").is_file()}
    if epochs is not None:
        over["epochs"] = epochs
    t0 = time.perf_counter()
    rep = train(build_config(over), explicit=set())
    ev = evaluate_checkpoint(out / "last.safetensors", "digits")
    return {"top1": ev["top1"], "loss": ev["loss"], "epochs": rep["epochs"], "train_seconds": rep["train_seconds"],
            "wall_s": round(time.perf_counter() - t0, 1), "params": rep["params"], "macs": rep["macs"],
            "host_eager_ms": rep.get("latency_ms"), "seed": seed}


def plan(widths: list[float], seeds: int, n_random: int, random_seeds: int) -> list[tuple[str, float, int, int]]:
    """The retrains, most informative first: seed 0 of found and baseline for every width, then their other
    seeds, then the random architectures: (contender, width, architecture index, seed)."""
    jobs = [(c, w, 0, 0) for w in widths for c in ("found", "baseline")]
    jobs += [(c, w, 0, s) for s in range(1, seeds) for w in widths for c in ("found", "baseline")]
    jobs += [("random", w, i, s) for s in range(random_seeds) for i in range(n_random) for w in widths]
    # the best random architecture (picked by its seed-0 top-1) retrained with fresh seeds: picking the best of ten
    # noisy single-seed numbers overstates it, its other seeds do not
    jobs += [("random_best", w, -1, s) for s in range(1, seeds) for w in widths]
    return jobs


def best_random_index(t: dict[str, Any]) -> int | None:
    """Index of the random architecture with the best seed-0 top-1, once every one has its seed 0."""
    rand = t.get("random", [])
    if not rand or any("0" not in a.get("runs", {}) for a in rand):
        return None
    return max(range(len(rand)), key=lambda i: rand[i]["runs"]["0"]["top1"])


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, t in sorted(results["targets"].items(), key=lambda kv: float(kv[0])):
        row: dict[str, Any] = {"width": float(key), "target_ms": t["target_ms"], "baseline_ms": t["baseline_ms"]}
        for c in ("found", "baseline"):
            runs = [r["top1"] for r in t.get(c, {}).get("runs", {}).values()]
            row[c] = {"n": len(runs), "mean_top1": statistics.fmean(runs) if runs else None,
                      "std_top1": statistics.stdev(runs) if len(runs) > 1 else None,
                      "runs": runs, "latency_ms": t.get(c, {}).get("latency_ms"), "arch": t.get(c, {}).get("arch")}
        rand = [(a["runs"][s]["top1"], a["latency_ms"], a["arch"]) for a in t.get("random", [])
                for s in a.get("runs", {})]
        if rand:
            # every architecture by its seed-0 retrain (the one each of them has)
            per_arch = {a["arch"]: (a["runs"]["0"]["top1"], a["latency_ms"]) for a in t["random"]
                        if "0" in a.get("runs", {})}
            best = max(per_arch.items(), key=lambda kv: kv[1][0])
            row["random"] = {"n": len(per_arch), "best_top1": best[1][0], "best_latency_ms": best[1][1],
                             "best_arch": best[0], "mean_top1": statistics.fmean(v[0] for v in per_arch.values()),
                             "median_top1": statistics.median(v[0] for v in per_arch.values())}
            bi = best_random_index(t)
            fresh = [r["top1"] for k, r in t["random"][bi]["runs"].items() if k != "0"] if bi is not None else []
            if fresh:  # the selected architecture on seeds that did not select it
                row["random"]["best_fresh_top1"] = statistics.fmean(fresh)
                row["random"]["best_fresh_runs"] = fresh
        rows.append(row)
    return rows


def print_table(results: dict[str, Any]) -> None:
    def fmt(x: float | None, p: int = 2) -> str:
        return "–" if x is None else f"{x:.{p}f}"

    print("| width | target ms | found: pred ms | found top-1 (seeds) | baseline: pred ms | baseline top-1 (seeds) "
          "| random: n | best (seed 0) | best, fresh seeds | mean | found − baseline | found − random best (fresh) |")
    print("|---|--:|--:|---|--:|---|--:|--:|--:|--:|--:|--:|")
    for r in summarize(results):
        f, b, rnd = r["found"], r["baseline"], r.get("random", {})

        def cell(c: dict[str, Any]) -> str:
            if not c["n"]:
                return "–"
            sd = f" ± {c['std_top1']:.2f}" if c["std_top1"] is not None else ""
            return f"{c['mean_top1']:.2f}{sd} ({', '.join(f'{v:.2f}' for v in c['runs'])})"

        d_base = None if not (f["n"] and b["n"]) else f["mean_top1"] - b["mean_top1"]
        d_rand = None if not (f["n"] and rnd) else f["mean_top1"] - rnd["best_top1"]
        fresh = rnd.get("best_fresh_top1")
        d_fresh = None if fresh is None or not f["n"] else f["mean_top1"] - fresh
        fresh_cell = "–" if fresh is None else f"{fresh:.2f} ({', '.join(f'{v:.2f}' for v in rnd['best_fresh_runs'])})"
        print(f"| {r['width']:g} | {r['target_ms']:.4f} | {fmt(f['latency_ms'], 4)} | {cell(f)} | "
              f"{fmt(b['latency_ms'], 4)} | {cell(b)} | {rnd.get('n', 0)} | {fmt(rnd.get('best_top1'))} | "
              f"{fresh_cell} | {fmt(rnd.get('mean_top1'))} | {fmt(d_base)} | {fmt(d_rand)} ({fmt(d_fresh)}) |")
    for r in summarize(results):
        print(f"w {r['width']:g}: found {r['found']['arch']}")
        if r.get("random"):
            print(f"w {r['width']:g}: random best {r['random']['best_arch']} ({r['random']['best_latency_ms']:.4f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder for the search runs and retrains")
    ap.add_argument("--supernet", default=None, help="a finished search run whose supernet every search reuses")
    ap.add_argument("--results", default="benchmarks/results/search_quality.json")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    ap.add_argument("--hardware", default="phone_cpu")
    ap.add_argument("--margin", type=float, default=0.05, help="target = baseline latency x (1 + margin)")
    ap.add_argument("--seeds", type=int, default=3, help="retrain seeds of the found and the baseline model")
    ap.add_argument("--random", type=int, default=10, help="random architectures per target")
    ap.add_argument("--random-seeds", type=int, default=1, help="retrain seeds per random architecture")
    ap.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the digits recipe's)")
    ap.add_argument("--minutes", type=float, default=None, help="start no new work after this many minutes")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report", action="store_true", help="only print the table of the saved results")
    args = ap.parse_args()
    res_path = Path(args.results)
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if args.report:
        print_table(results)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from edgezoo.models.arch_spec import make_arch_spec, save_arch_spec
    from edgezoo.models.mobilenet_v4 import CONV_SMALL
    from edgezoo.search.pipeline import run_search, scale_config
    from edgezoo.search.space import DIGITS_SPACE as space
    from edgezoo.train import evaluate_checkpoint

    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setting = {"hardware": args.hardware, "margin": args.margin, "epochs": args.epochs, "space": space.identity()}
    if results and results.get("setting") != setting:
        raise SystemExit(f"{res_path} holds results for {results.get('setting')}, not {setting}; use --results")
    results.setdefault("setting", setting)
    results.setdefault("targets", {})
    results.setdefault("host", {"threads": torch.get_num_threads()})

    def save() -> None:
        atomic_write_bytes(res_path, (json.dumps(results, indent=1) + "\n").encode())

    def out_of_time() -> bool:
        return args.minutes is not None and time.perf_counter() - t_start > 60 * args.minutes

    # the targets, the baseline specs and the random architectures (cheap)
    for w in args.widths:
        t = results["targets"].setdefault(str(w), {})
        base_ms, target = target_for(w, args.hardware, args.margin)
        t.update(baseline_ms=base_ms, target_ms=target)
        spec = work / f"w{w}" / "baseline.yaml"
        if not spec.is_file():
            save_arch_spec(make_arch_spec(scale_config(CONV_SMALL, w), name=f"mobilenetv4_conv_small@{w}",
                                          img_size=64), spec)
        t.setdefault("baseline", {"arch": f"scale_config(CONV_SMALL, {w}) @ 64 px", "latency_ms": base_ms,
                                  "spec": str(spec), "runs": {}})
        if "random" not in t or any(not Path(a["spec"]).is_file() for a in t["random"]):
            # drawn with a fixed seed: an earlier --work's specs are rewritten here when they are gone
            old = t.setdefault("random", [])
            for i, (s, ms) in enumerate(random_subnets(space, args.random, target, args.hardware,
                                                       seed=random_seed(w))):
                rspec = work / f"w{w}" / f"random{i:02d}.yaml"
                save_arch_spec(make_arch_spec(space.to_config(s), name=f"random{i:02d}", img_size=s.resolution,
                                              space=space.identity()), rspec)
                if i < len(old):
                    if not same_arch(s.describe(), old[i]["arch"]):
                        raise SystemExit(f"w {w}: random architecture {i} is not the one in {res_path}")
                    old[i].update(arch=s.describe(), subnet=s.to_dict(), spec=str(rspec))
                    continue
                t["random"].append({"arch": s.describe(), "subnet": s.to_dict(), "latency_ms": ms,
                                    "spec": str(rspec), "runs": {}})
    save()

    # the searches (each retrains its winner with seed 0, the same recipe)
    for w in args.widths:
        t = results["targets"][str(w)]
        if "found" in t or out_of_time():
            continue
        if args.supernet is None:
            raise SystemExit("--supernet RUN is needed to search (a finished edgezoo search run)")
        donor = Path(args.supernet)
        donor_rep = json.loads((donor / "report.json").read_text()) if (donor / "report.json").is_file() else {}
        run = donor
        if not (donor_rep.get("target_ms") == t["target_ms"] and donor_rep.get("hardware") == args.hardware
                and args.epochs is None):
            run = work / f"w{w}" / "search"
            run_search(data="digits", hardware=args.hardware, target_ms=t["target_ms"], out=run, space=space,
                       supernet_from=donor, retrain_epochs=args.epochs, progress=False,
                       resume=(run / "search_run.json").is_file())
        rep = json.loads((run / "report.json").read_text())
        ev = evaluate_checkpoint(run / "best.safetensors", "digits")
        t["found"] = {"arch": rep["arch"], "subnet": rep.get("subnet"), "latency_ms": rep["predicted_latency_ms"], "spec": str(run / "arch.yaml"),
                      "run": str(run), "search_seconds": rep["seconds"], "search_top1": rep["search_top1"],
                      "runs": {"0": {"top1": ev["top1"], "loss": ev["loss"], "params": rep["params"],
                                     "macs": rep["macs"], "wall_s": rep["seconds"]["retrain"], "seed": 0,
                                     "host_eager_ms": rep.get("measured_latency_ms_host_eager")}}}
        save()
        print(f"w {w:g}: target {t['target_ms']:.4f} ms: found {rep['arch']} ({rep['predicted_latency_ms']:.4f} ms), "
              f"seed 0 top-1 {ev['top1']:.2f}% (search {rep['seconds']['search']:.0f}s)", flush=True)

    # the retrains
    for contender, w, idx, seed in plan(args.widths, args.seeds, args.random, args.random_seeds):
        t = results["targets"][str(w)]
        if contender == "random_best":
            idx = best_random_index(t)
            if idx is None:
                continue
            contender = "random"
        entry = t[contender][idx] if contender == "random" else t.get(contender)
        if entry is None or str(seed) in entry["runs"]:
            continue
        if out_of_time():
            print(f"--minutes {args.minutes:g} reached: stopping (rerun to continue)", flush=True)
            break
        name = f"{contender}{idx:02d}" if contender == "random" else contender
        r = retrain(Path(entry["spec"]), work / f"w{w}" / f"{name}-seed{seed}", seed, args.epochs)
        entry["runs"][str(seed)] = r
        save()
        print(f"w {w:g} {name} seed {seed}: top-1 {r['top1']:.2f}% loss {r['loss']:.4f} "
              f"({entry['latency_ms']:.4f} ms predicted, {r['wall_s']:.0f}s)", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
