"""Proxy quality of the supernet: do inherited accuracies rank architectures like training them from scratch?

Picks ``--n`` architectures of the search space spanning its predicted-latency range (random subnets sorted by
latency, taken at evenly spaced quantiles), retrains each from scratch with ``edgezoo train --arch`` (the digits
recipe, ``--epochs``), evaluates the final weights on the held-out split, and compares with the same
architectures' accuracy and loss on the search split with weights inherited from a trained supernet (BatchNorm
re-estimated), reporting Kendall's tau. With ``--seeds N`` every architecture is retrained with seeds 0..N-1 and
the ground truth is the mean over seeds (one 8-epoch retrain varies by several points from seed to seed).
Retraining is resumable (results are saved after every retrain; ``--minutes`` stops starting new ones after that
long), and does not need the supernet, so it can run while the supernet trains:

    PYTHONPATH=src python benchmarks/search_proxy.py --work /tmp/proxy --retrain           # phase 1
    PYTHONPATH=src python benchmarks/search_proxy.py --work /tmp/proxy --supernet RUN      # phase 2 (RUN: a search run)
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def pick_subnets(space, n: int, seed: int, hardware: str):
    from edgezoo.search.pipeline import make_latency_predictor

    pred = make_latency_predictor(hardware)
    rng = random.Random(seed)
    pool = {}
    for _ in range(40 * n):
        s = space.canonical(space.sample(rng))
        pool[s.key()] = s
    ranked = sorted(pool.values(), key=lambda s: pred.predict_ms(space.to_config(s), s.resolution))
    idx = [round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)]
    return [(ranked[i], pred.predict_ms(space.to_config(ranked[i]), ranked[i].resolution)) for i in idx]


def _mean_over_seeds(a: dict) -> None:
    """The ground truth of one architecture: top-1 and loss averaged over its retrain seeds."""
    runs = list(a.get("retrained_runs", {}).values())
    if runs:
        a.update(retrained_top1=sum(r["top1"] for r in runs) / len(runs),
                 retrained_loss=sum(r["loss"] for r in runs) / len(runs), retrained_seeds=len(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8, help="retraining epochs per architecture")
    ap.add_argument("--seeds", type=int, default=1, help="retraining seeds per architecture (ground truth: their mean)")
    ap.add_argument("--minutes", type=float, default=None, help="phase 1: start no retrain after this many minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hardware", default="phone_cpu")
    ap.add_argument("--retrain", action="store_true", help="phase 1: retrain the architectures from scratch")
    ap.add_argument("--supernet", default=None, help="phase 2: a search run dir with supernet.safetensors")
    ap.add_argument("--train-supernet", action="store_true",
                    help="first train (or resume) the supernet into --supernet with SupernetConfig defaults and --set")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="SupernetConfig override for --train-supernet (YAML value), e.g. epochs=16")
    ap.add_argument("--random", type=int, default=0, help="phase 2: also score this many random subnets")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from edgezoo.checkpoint import atomic_write_bytes
    from edgezoo.models.arch_spec import make_arch_spec, save_arch_spec
    from edgezoo.search.space import DIGITS_SPACE as space
    from edgezoo.search.space import Subnet

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "proxy.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"archs": []}
    if not results["archs"]:
        for s, lat in pick_subnets(space, args.n, args.seed, args.hardware):
            results["archs"].append({"subnet": s.to_dict(), "arch": s.describe(), "latency_ms": lat})
        atomic_write_bytes(res_path, json.dumps(results, indent=1).encode())

    for a in results["archs"]:  # results saved before --seeds: their one retrain was seed 0
        if "retrained_top1" in a and "retrained_runs" not in a:
            a["retrained_runs"] = {"0": {"top1": a["retrained_top1"], "loss": a["retrained_loss"],
                                         "seconds": a.get("retrain_s")}}

    if args.retrain:
        from edgezoo.train import build_config, evaluate_checkpoint, train

        t_start = time.perf_counter()
        jobs = [(seed, i) for seed in range(args.seeds) for i in range(len(results["archs"]))]  # seed-major
        for seed, i in jobs:
            a = results["archs"][i]
            runs = a.setdefault("retrained_runs", {})
            if str(seed) in runs:
                continue
            if args.minutes is not None and time.perf_counter() - t_start > 60 * args.minutes:
                print(f"--minutes {args.minutes:g} reached: stopping (rerun to continue)", flush=True)
                break
            s = Subnet.from_dict(a["subnet"])
            spec = make_arch_spec(space.to_config(s), name=f"proxy-{i}", img_size=s.resolution,
                                  space=space.identity())
            d = work / f"arch{i:02d}"
            save_arch_spec(spec, d / "arch.yaml")
            run = d / ("run" if seed == 0 else f"run-seed{seed}")
            t0 = time.perf_counter()
            resume = (run / "state.pt").is_file()
            train(build_config({"model": str(d / "arch.yaml"), "out": str(run), "epochs": args.epochs,
                                "progress": False, "resume": resume, "seed": seed}))
            ev = evaluate_checkpoint(run / "last.safetensors", "digits")
            runs[str(seed)] = {"top1": ev["top1"], "loss": ev["loss"], "seconds": time.perf_counter() - t0}
            _mean_over_seeds(a)
            atomic_write_bytes(res_path, json.dumps(results, indent=1).encode())
            print(f"{i} seed {seed}: {a['arch']}  {a['latency_ms']:.3f} ms  retrained top-1 {ev['top1']:.2f}% loss "
                  f"{ev['loss']:.4f}  ({runs[str(seed)]['seconds']:.0f}s)", flush=True)
    for a in results["archs"]:
        _mean_over_seeds(a)

    if args.supernet:
        import yaml
        from scipy.stats import kendalltau

        from edgezoo.search.supernet_train import (SearchData, SupernetConfig, evaluate_subnet, load_supernet,
                                                    train_supernet)

        data = SearchData(SupernetConfig(), space)
        if args.train_supernet:
            over = {}
            for kv in args.set:
                k, _, v = kv.partition("=")
                over[k] = yaml.safe_load(v)
            cfg = SupernetConfig(out=args.supernet, **over)
            t0 = time.perf_counter()
            _, _, summary = train_supernet(cfg, space, data=data,
                                           resume=(Path(args.supernet) / "supernet_state.pt").is_file())
            results["supernet"] = {"config": cfg.to_dict(), "seconds": summary["seconds"],
                                   "wall_s": time.perf_counter() - t0, "history": summary["history"]}
        net = load_supernet(args.supernet, space, len(data.classes), kernel_transform=True)
        for a in results["archs"]:
            r = evaluate_subnet(net, data, Subnet.from_dict(a["subnet"]))
            a.update(inherited_top1=r["top1"], inherited_loss=r["loss"])
        if args.random:
            rng = random.Random(12345)
            rand = [evaluate_subnet(net, data, space.sample(rng))["top1"] for _ in range(args.random)]
            results["random_subnets_top1"] = rand
            for name, sub in (("largest", space.largest()), ("smallest", space.smallest())):
                results[f"{name}_top1"] = evaluate_subnet(net, data, sub)["top1"]
            print(f"random subnets (search split top-1): mean {sum(rand) / len(rand):.2f}% range "
                  f"{min(rand):.2f}-{max(rand):.2f}%; largest {results['largest_top1']:.2f}% smallest "
                  f"{results['smallest_top1']:.2f}%", flush=True)
        done = [a for a in results["archs"] if "retrained_top1" in a]
        if len(done) >= 3:
            t_acc = kendalltau([a["inherited_top1"] for a in done], [a["retrained_top1"] for a in done])
            t_loss = kendalltau([a["inherited_loss"] for a in done], [a["retrained_loss"] for a in done])
            t_lat = kendalltau([a["latency_ms"] for a in done], [a["retrained_top1"] for a in done])
            results["kendall_tau"] = {"top1": t_acc.statistic, "top1_p": t_acc.pvalue, "loss": t_loss.statistic,
                                      "loss_p": t_loss.pvalue, "latency_vs_retrained_top1": t_lat.statistic,
                                      "n": len(done), "seeds": sorted({a["retrained_seeds"] for a in done}),
                                      "supernet": str(args.supernet)}
            print(json.dumps(results["kendall_tau"]))
        atomic_write_bytes(res_path, json.dumps(results, indent=1).encode())
        for a in results["archs"]:
            print(f"| {a['arch']} | {a['latency_ms']:.3f} | {a.get('inherited_top1', float('nan')):.2f} | "
                  f"{a.get('inherited_loss', float('nan')):.4f} | {a.get('retrained_top1', float('nan')):.2f} | "
                  f"{a.get('retrained_loss', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
