"""How good are the latency sources of ``edgezoo.search.latency``? Measured against the engine on this host.

For random MobileNetV4 configurations (sampled from the UIB vocabulary: start/mid DW ∈ {none, 3, 5}, expansion
∈ {2, 3, 4, 6}, per-stage widths and depths, input resolution) and for zoo models, at each thread count:

1. build a latency table of every block they contain (MobileNetV4 configs by :class:`BlockItem`, zoo models by
   their sequential units) in the engine ``optimize()`` picks (or ``--engine``);
2. measure every whole model in the same engine — interleaved rounds, medians, since the host may be shared;
3. report the share of table predictions within ±10 % of the measurement, and the Spearman rank correlation of
   the corrected roofline (fitted to the table) with the measurement over the zoo models.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/latency_predictor.py --threads 1 2 --configs 50

Writes ``benchmarks/results/latency_predictor.json`` and a scatter plot next to it.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import edgezoo
from edgezoo.analysis import get_hardware
from edgezoo.analysis.zoo import model_input_shape
from edgezoo.models.mobilenet_v4 import (
    ConvSpec,
    FusedIBSpec,
    MobileNetV4,
    MobileNetV4Config,
    UIBSpec,
)
from edgezoo.search.latency import (
    CALIBRATION_MODELS,
    DEFAULT_CORRECTION_TERMS,
    CorrectedPredictor,
    ModuleItem,
    TablePredictor,
    blocks_of_config,
    build_latency_table,
    calibrate_table,
    calibration_cases,
    correction_features,
    fit_correction,
    measure_items,
    module_units,
    resolve_engine,
)

RESULTS = Path(__file__).parent / "results"
KERNELS = (None, 3, 5)
EXPANSIONS = (2.0, 3.0, 4.0, 6.0)
RESOLUTIONS = (96, 128, 160, 192, 224)
CV_FOLDS = 5


def random_config(rng: random.Random) -> MobileNetV4Config:
    """A MobileNetV4-Conv-S-like network with random UIB choices, widths and depths."""
    mult = rng.choice((0.5, 0.75, 1.0))

    def w(c: int) -> int:
        return max(8, int(round(c * mult / 8)) * 8)

    def uib(out: int, stride: int) -> UIBSpec:
        start, mid = rng.choice(KERNELS), rng.choice(KERNELS)
        if stride > 1 and start is None and mid is None:  # the FFN form has no conv to stride with
            mid = 3
        return UIBSpec(out_chs=out, start_dw_kernel=start, mid_dw_kernel=mid, expand_ratio=rng.choice(EXPANSIONS),
                       stride=stride)

    stages = [(FusedIBSpec(out_chs=w(32), kernel_size=3, expand_ratio=rng.choice((2.0, 4.0)), stride=2),)]
    for width, depth in ((48, (1, 2, 3)), (96, (2, 3, 4)), (128, (2, 3, 4, 5))):
        chs = w(width * rng.choice((0.75, 1.0, 1.25)))
        stages.append(tuple(uib(chs, 2 if i == 0 else 1) for i in range(rng.choice(depth))))
    stages.append((ConvSpec(out_chs=w(960), kernel_size=1),))
    return MobileNetV4Config(stem_chs=w(32), stages=tuple(stages), head_chs=1280)


ZOO = (
    "mobilenetv1_050", "mobilenetv1_100",
    "mobilenetv2_035", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_small_100", "mobilenetv3_large_100",
    "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium",
    "mobilevit_xxs", "mobilevit_xs",
    "edgenext_xx_small", "edgenext_small",
    "vit_tiny_patch16_224", "vit_small_patch16_224",
    "mixer_s32_224",
)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for i, j in enumerate(order):
            r[j] = float(i)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def run(threads: int, n_configs: int, zoo: list[str], engine: str, seed: int, table_path: Path,
        calibrate_on: tuple[tuple[str, int], ...] = CALIBRATION_MODELS, calibrate_random: int = 0) -> dict:
    rng = random.Random(seed)
    engine = resolve_engine(engine, threads=threads)
    print(f"[{threads} thread(s)] engine {engine}", file=sys.stderr, flush=True)
    cases = []  # (name, items, whole-model item)
    for i in range(n_configs):
        cfg = random_config(rng)
        size = rng.choice(RESOLUTIONS)
        items = blocks_of_config(cfg, size)
        model = MobileNetV4(config=cfg, default_cfg={}, num_classes=1000)
        cases.append((f"random{i}@{size}", items, ModuleItem(f"random{i}", model, (1, 3, size, size)), model))
    for name in zoo:
        model = edgezoo.create_model(name).eval()
        shape = (1, *model_input_shape(name))
        try:
            items = module_units(model, shape)
        except ValueError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        cases.append((name, items, ModuleItem(name, model, shape), model))

    t0 = time.time()
    all_items = [it for _, items, _, _ in cases for it in items]
    table = build_latency_table(all_items, engine=engine, threads=threads, out=table_path,
                                progress=lambda d, n: print(f"\r  table {d}/{n}", end="", file=sys.stderr))
    table_s = time.time() - t0
    print(f"\n  table: {len(table.entries)} entries in {table_s:.0f}s", file=sys.stderr, flush=True)
    t0 = time.time()
    calibration = calibration_cases(calibrate_on)
    # plus random configs from the evaluated space but another seed: models like the ones a search prices, none of
    # them in the evaluation set
    cal_rng = random.Random(seed + 1)
    for i in range(calibrate_random):
        cfg = random_config(cal_rng)
        size = cal_rng.choice(RESOLUTIONS)
        model = MobileNetV4(config=cfg, default_cfg={}, num_classes=1000).eval()
        calibration.append((f"calibration-random{i}@{size}", model, (1, 3, size, size), blocks_of_config(cfg, size)))
    assert not {name.split("@")[0] for name, *_ in calibration} & set(zoo), "calibration models must stay out"
    coef = calibrate_table(table, calibration) if calibration else {}
    calibrate_s = time.time() - t0
    print(f"  calibration on {len(calibration)} held-out models in {calibrate_s:.0f}s: {coef}", file=sys.stderr,
          flush=True)
    whole, fixed = measure_items([w for _, _, w, _ in cases], engine=engine, threads=threads, chunk=8)
    pred_table = TablePredictor(table, measure_missing=False)
    pred_raw = TablePredictor(table, measure_missing=False, corrected=False)
    corrected = CorrectedPredictor(get_hardware("host"), table)
    rows = []
    for name, items, w, model in cases:
        measured = whole[w.key] + fixed  # measure_items removes the per-call cost; a model call pays it
        rows.append(dict(
            name=name, zoo=not name.startswith("random"), measured_ms=measured,
            table_ms=pred_table.predict_items_ms(items), table_raw_ms=pred_raw.predict_items_ms(items),
            features=correction_features(table, [it.key for it in items]),
            corrected_ms=corrected.predict_whole_ms(model, w.input_shape),
        ))
    samples = table.meta.get("correction", {}).get("samples", [])
    res = dict(
        threads=threads, engine=engine, table_entries=len(table.entries), table_seconds=round(table_s, 1),
        fixed_ms=table.fixed_ms, models=len(rows), random_configs=n_configs, zoo_models=sum(r["zoo"] for r in rows),
        calibration_models=[name for name, *_ in calibration],
        calibration_seconds=round(calibrate_s, 1),
        calibration=[dict(name=s["name"], measured_ms=s["measured_ms"],
                          features=correction_features(table, s["keys"])) for s in samples],
        spearman_corrected_zoo=spearman([r["corrected_ms"] for r in rows if r["zoo"]],
                                        [r["measured_ms"] for r in rows if r["zoo"]])
        if sum(r["zoo"] for r in rows) > 2 else None,
        kind_scale=corrected.kind_scale, layer_ms=corrected.layer_ms, rows=rows,
    )
    return score(res, coef)


def score(res: dict, coef: dict[str, float]) -> dict:
    """(Re)compute the table predictions of ``res['rows']`` with the correction ``coef`` and the summary numbers;
    also the leave-one-out error of the correction over the calibration models (refitted without each one)."""
    rows = res["rows"]
    for r in rows:
        r["table_ms"] = r["table_raw_ms"] + sum(c * r["features"].get(t, 0.0) for t, c in coef.items())
        r["table_err"] = r["table_ms"] / r["measured_ms"] - 1
        r["table_raw_err"] = r["table_raw_ms"] / r["measured_ms"] - 1
    zoo_rows = [r for r in rows if r["zoo"]]
    rand_rows = [r for r in rows if not r["zoo"]]
    # k-fold cross-validation over the evaluated models: the correction is refitted on the calibration models plus
    # the other folds and predicts the held-out fold, so no prediction comes from a fit that saw its own model
    cal = res.get("calibration", [])
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    for fold in range(CV_FOLDS):
        test = set(order[fold::CV_FOLDS])
        train = [(c["features"], c["measured_ms"]) for c in cal] + [
            (r["features"], r["measured_ms"] - res["fixed_ms"]) for i, r in enumerate(rows) if i not in test]
        c_f = fit_correction(train)
        for i in test:
            r = rows[i]
            r["table_cv_ms"] = r["table_raw_ms"] + sum(c * r["features"].get(t, 0.0) for t, c in c_f.items())
            r["table_cv_err"] = r["table_cv_ms"] / r["measured_ms"] - 1
    loo = []
    terms = list(DEFAULT_CORRECTION_TERMS)
    for i, s in enumerate(cal):
        rest = [(c["features"], c["measured_ms"]) for j, c in enumerate(cal) if j != i]
        c_i = fit_correction(rest, terms=terms)
        pred = s["features"]["block_ms"] + sum(c * s["features"].get(t, 0.0) for t, c in c_i.items())
        loo.append(pred / s["measured_ms"] - 1)
    res.update(
        correction=coef,
        table_within_10pct=statistics.mean(abs(r["table_err"]) <= 0.10 for r in rows),
        table_within_10pct_random=statistics.mean(abs(r["table_err"]) <= 0.1 for r in rand_rows) if rand_rows else None,
        table_within_10pct_zoo=statistics.mean(abs(r["table_err"]) <= 0.1 for r in zoo_rows) if zoo_rows else None,
        table_median_abs_err=statistics.median(abs(r["table_err"]) for r in rows),
        table_cv_within_10pct=statistics.mean(abs(r["table_cv_err"]) <= 0.1 for r in rows),
        table_cv_within_10pct_random=statistics.mean(abs(r["table_cv_err"]) <= 0.1 for r in rand_rows)
        if rand_rows else None,
        table_cv_within_10pct_zoo=statistics.mean(abs(r["table_cv_err"]) <= 0.1 for r in zoo_rows)
        if zoo_rows else None,
        table_cv_median_abs_err=statistics.median(abs(r["table_cv_err"]) for r in rows),
        table_raw_within_10pct=statistics.mean(abs(r["table_raw_err"]) <= 0.1 for r in rows),
        table_raw_median_abs_err=statistics.median(abs(r["table_raw_err"]) for r in rows),
        calibration_loo_within_10pct=statistics.mean(abs(e) <= 0.1 for e in loo) if loo else None,
        calibration_loo_median_abs_err=statistics.median(abs(e) for e in loo) if loo else None,
        spearman_table_zoo=spearman([r["table_ms"] for r in zoo_rows], [r["measured_ms"] for r in zoo_rows])
        if len(zoo_rows) > 2 else None,
    )
    return res


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(results), 5))
    FigureCanvasAgg(fig)
    for i, res in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1)
        if "table_raw_ms" in res["rows"][0] and res.get("correction"):
            ax.scatter([r["measured_ms"] for r in res["rows"]], [r["table_raw_ms"] for r in res["rows"]],
                       marker="x", s=14, color="0.6", lw=0.8, label="block sums without the correction")
        key = "table_cv_ms" if "table_cv_ms" in res["rows"][0] else "table_ms"
        for zoo, marker, label in ((False, "o", "random MobileNetV4 configs"), (True, "s", "zoo models")):
            pts = [r for r in res["rows"] if r["zoo"] == zoo]
            ax.scatter([r["measured_ms"] for r in pts], [r[key] for r in pts], marker=marker, s=18,
                       label=f"{label} (table{', corrected, 5-fold CV' if key == 'table_cv_ms' else ''})")
        ms = [r["measured_ms"] for r in res["rows"]]
        lo, hi = min(ms) * 0.7, max(ms) * 1.4
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="gray", alpha=0.2, label="±10 %")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured latency, {res['engine']} (ms)")
        ax.set_ylabel("table prediction (ms)")
        if "table_cv_within_10pct" in res:
            title = (f"{res['threads']} thread(s), {res['models']} models, share within ±10 %:\n"
                     f"corrected (CV) {100 * res['table_cv_within_10pct']:.0f}%, held-out calibration only "
                     f"{100 * res['table_within_10pct']:.0f}%, uncorrected {100 * res['table_raw_within_10pct']:.0f}%")
        else:
            title = f"{res['threads']} thread(s): {100 * res['table_within_10pct']:.0f}% within ±10 %"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", type=int, default=50, help="random MobileNetV4 configurations")
    ap.add_argument("--zoo", nargs="*", default=None, help="zoo model names (default: 17 models of all families)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-calibrate", action="store_true", help="skip the whole-model correction (raw block sums)")
    ap.add_argument("--calibrate-random", type=int, default=0, metavar="N",
                    help="also calibrate on N random configs drawn with seed+1 (never evaluated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "latency_predictor.json")
    ap.add_argument("--rescore", action="store_true",
                    help="measure nothing: refit the correction of the results in --out with the library's current "
                         "default terms (from the stored calibration samples) and rewrite the JSON and PNG")
    args = ap.parse_args(argv)
    if args.rescore:
        data = json.loads(args.out.read_text())
        for res in data["results"]:
            coef = fit_correction([(c["features"], c["measured_ms"]) for c in res["calibration"]])
            score(res, coef)
            print(f"{res['threads']} thread(s): within ±10 %: corrected, 5-fold CV "
                  f"{100 * res['table_cv_within_10pct']:.0f}% (median {100 * res['table_cv_median_abs_err']:.1f}%), "
                  f"held-out calibration only {100 * res['table_within_10pct']:.0f}% (median "
                  f"{100 * res['table_median_abs_err']:.1f}%), uncorrected {100 * res['table_raw_within_10pct']:.0f}%; "
                  f"correction {coef}")
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        plot(data["results"], args.out.with_suffix(".png"))
        return 0
    zoo = list(ZOO if args.zoo is None else args.zoo)
    results = []
    for threads in args.threads:
        res = run(threads, args.configs, zoo, args.engine, args.seed,
                  args.out.with_name(f"latency_table_{threads}t.json"),
                  calibrate_on=() if args.no_calibrate else CALIBRATION_MODELS,
                  calibrate_random=0 if args.no_calibrate else args.calibrate_random)
        results.append(res)
        print(f"{threads} thread(s), {res['engine']}: {res['models']} models; table predictions within ±10 %: "
              f"{100 * res['table_within_10pct']:.0f}% (random {100 * (res['table_within_10pct_random'] or 0):.0f}%, "
              f"zoo {100 * (res['table_within_10pct_zoo'] or 0):.0f}%), median |error| "
              f"{100 * res['table_median_abs_err']:.1f}% (5-fold CV: {100 * res['table_cv_within_10pct']:.0f}% within, "
              f"median {100 * res['table_cv_median_abs_err']:.1f}%; uncorrected sums: "
              f"{100 * res['table_raw_within_10pct']:.0f}% within, median {100 * res['table_raw_median_abs_err']:.1f}%)"
              f"; Spearman over the zoo: corrected roofline "
              f"{res['spearman_corrected_zoo']}, table {res['spearman_table_zoo']}")
    import platform

    from edgezoo.search.latency import cpu_name

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_name(), "host": platform.node(), "results": results}, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
