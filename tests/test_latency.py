"""Latency sources of edgezoo.search.latency: block keys, the measured table, the corrected roofline, the CLI."""
from __future__ import annotations

import json

import pytest
import torch

import edgezoo
from edgezoo.analysis import get_hardware, profile, roofline
from edgezoo.models.mobilenet_v4 import CONV_SMALL, HYBRID_MEDIUM, IB, ConvSpec, MobileNetV4, MobileNetV4Config
from edgezoo.search.latency import (
    FIT_KINDS,
    BlockItem,
    CorrectedPredictor,
    LatencyTable,
    TablePredictor,
    blocks_of_config,
    build_latency_table,
    host_fingerprint,
    latency_predictor,
    load_or_build_table,
    module_units,
)

TINY = MobileNetV4Config(
    stem_chs=8,
    stages=(
        (IB(out_chs=8, mid_dw_kernel=3, expand_ratio=2.0, stride=2),),
        (ConvSpec(out_chs=16, kernel_size=1),),
    ),
    head_chs=32,
)


@pytest.mark.parametrize("config", [CONV_SMALL, HYBRID_MEDIUM], ids=["conv_small", "hybrid_medium"])
def test_blocks_of_config_chain_like_the_model(config):
    items = blocks_of_config(config, 64, num_classes=10)
    assert items[0].kind == "stem" and items[-1].kind == "head"
    assert len(items) == 2 + sum(spec.repeats for stage in config.stages for spec in stage)
    x = torch.randn(items[0].input_shape)
    with torch.no_grad():
        for item in items:
            assert tuple(x.shape) == item.input_shape, item.key
            x = item.build().eval()(x)
    assert x.shape == (1, 10)
    # the blocks are exactly the model's: same parameter count
    model = MobileNetV4(config=config, default_cfg={}, num_classes=10)
    assert sum(sum(p.numel() for p in it.build().parameters()) for it in items) == sum(
        p.numel() for p in model.parameters())


def test_keys_name_spec_shape_and_act():
    a, b = blocks_of_config(CONV_SMALL, 224)[3], blocks_of_config(CONV_SMALL, 256)[3]
    assert a.key != b.key and a.key.startswith("mnv4:") and "@" in a.key
    assert a.key == blocks_of_config(CONV_SMALL, 224)[3].key
    hybrid = blocks_of_config(HYBRID_MEDIUM, 256)
    assert any("MQASpec" in it.key and "+ls@" in it.key for it in hybrid)  # layer scale is part of the key
    assert all("+ls" not in it.key for it in blocks_of_config(CONV_SMALL, 224))
    assert len({it.key for it in hybrid}) < len(hybrid)  # repeated identical blocks share a key


def test_roofline_source_sums_the_model(monkeypatch):
    pred = latency_predictor("phone_cpu", "roofline")
    assert pred.source == "roofline"
    model = MobileNetV4(config=CONV_SMALL, default_cfg={}, num_classes=1000)
    whole = roofline(profile(model, (1, 3, 224, 224)), get_hardware("phone_cpu")).latency_ms
    assert pred.predict_ms(CONV_SMALL, 224) == pytest.approx(whole, rel=0.01)


def test_table_covers_items_and_round_trips(tmp_path):
    items = blocks_of_config(TINY, 32, num_classes=4)
    path = tmp_path / "t.json"
    table = build_latency_table(items, engine="eager", threads=1, out=path)
    data = json.loads(path.read_text())
    assert data["format"] == "edgezoo-latency-table/1"
    for field in ("host", "cpu", "engine", "threads", "versions", "fixed_ms"):
        assert field in data
    assert {it.key for it in items} <= set(data["entries"])
    assert all(e["ms"] >= 0 and e["layers"] for e in data["entries"].values())
    again = LatencyTable.load(path)
    assert again.stale_reason() is None and again.entries == table.entries
    pred = TablePredictor(again, measure_missing=False)
    assert pred.predict_ms(TINY, 32, num_classes=4) == pytest.approx(
        sum(again.ms(it.key) for it in items) + again.fixed_ms)
    # a missing key is measured and stored
    more = blocks_of_config(TINY, 48, num_classes=4)
    TablePredictor(again).predict_ms(TINY, 48, num_classes=4)
    assert {it.key for it in more} <= set(LatencyTable.load(path).entries)


def test_table_from_another_host_is_refused(tmp_path):
    table = LatencyTable(meta={**host_fingerprint("eager", 1), "host": "elsewhere"}, fixed_ms=0.01)
    table.save(tmp_path / "t.json")
    with pytest.raises(ValueError, match="measured elsewhere"):
        load_or_build_table(tmp_path / "t.json")
    with pytest.raises(ValueError, match="not an edgezoo-latency-table"):
        (tmp_path / "bad.json").write_text("{}")
        LatencyTable.load(tmp_path / "bad.json")


def test_corrected_fit_recovers_known_scales():
    """Entries generated from known per-kind multipliers and a per-layer cost: the fit must find them."""
    hw = get_hardware("phone_cpu")
    truth = {"conv": 3.0, "dwconv": 7.0, "elementwise": 0.5}
    per_layer = 0.004
    gen = torch.Generator().manual_seed(0)
    entries = {}
    from edgezoo.search.latency import _layer_times

    for i in range(40):
        layers = []
        for kind in truth:
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                layers.append([kind, int(torch.randint(10**5, 10**7, (1,), generator=gen)),
                               int(torch.randint(10**4, 10**6, (1,), generator=gen))])
        ms = sum(truth[k] * t for k, t in _layer_times(layers, hw)) + per_layer * len(layers)
        entries[f"k{i}"] = {"ms": ms, "layers": layers}
    table = LatencyTable(meta=host_fingerprint("eager", 1), fixed_ms=0.02, entries=entries)
    c = CorrectedPredictor(hw, table)
    for kind, scale in truth.items():
        assert c.kind_scale[kind] == pytest.approx(scale, rel=1e-3)
    assert c.layer_ms == pytest.approx(per_layer, rel=1e-3)
    assert set(c.kind_scale) == set(FIT_KINDS)


def test_module_units_cover_a_cnn():
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10)
    units = module_units(model, (1, 3, 32, 32))
    assert units[0].name == "stem" and units[-1].name == "classifier"
    assert sum(sum(p.numel() for p in u.module.parameters()) for u in units) == sum(
        p.numel() for p in model.parameters())
    assert units[1].input_shape == (1, model.stem.conv.out_channels, 16, 16)


def test_bad_hardware_and_source():
    with pytest.raises(ValueError, match="unknown hardware 'nope'"):
        latency_predictor("nope")
    with pytest.raises(ValueError, match="hardware='host'"):
        latency_predictor("phone_cpu", "table")
    with pytest.raises(ValueError, match="source must be one of"):
        latency_predictor("phone_cpu", "guess")


def test_cli_latency_table_bad_input(capsys, tmp_path):
    from edgezoo.cli import main

    assert main(["latency-table", "--hardware", "phone_cpu", "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgezoo: error: --hardware 'phone_cpu'") and "\n" not in err
    assert main(["latency-table", "--engine", "tpu", "--out", str(tmp_path / "t.json")]) == 2
    assert "--engine" in capsys.readouterr().err


def test_block_item_builds_stem_and_head():
    stem = BlockItem(kind="stem", in_chs=3, height=33, width=20, act="relu", out_chs=8)
    assert stem.out_hw == (17, 10)
    assert stem.build()(torch.randn(stem.input_shape)).shape == (1, 8, 17, 10)


def _synthetic_table(n_blocks: int = 12) -> LatencyTable:
    gen = torch.Generator().manual_seed(1)
    entries = {}
    kinds = ("conv", "dwconv", "elementwise", "linear")
    for i in range(n_blocks):
        layers = [[kinds[int(torch.randint(0, 4, (1,), generator=gen))], 1000, 1000]
                  for _ in range(int(torch.randint(1, 6, (1,), generator=gen)))]
        entries[f"b{i}"] = {"ms": 0.05 + float(torch.rand(1, generator=gen)), "layers": layers}
    return LatencyTable(meta=host_fingerprint("eager", 2), fixed_ms=0.01, entries=entries)


def test_fit_correction_recovers_a_known_thread_overhead():
    """Whole models built from a table with a known in-graph overhead (a multiplier on the block sum, a cost per
    block and a per-conv split/join cost): the fit must find the three numbers and nothing for other kinds."""
    from edgezoo.search.latency import CORRECTION_TERMS, correction_features, fit_correction

    table = _synthetic_table()
    truth = {"block_ms": -0.08, "unit": 0.003, "layer:conv": 0.011}
    gen = torch.Generator().manual_seed(2)
    samples = []
    for _ in range(30):
        keys = [f"b{int(torch.randint(0, 12, (1,), generator=gen))}" for _ in range(int(torch.randint(3, 20, (1,),
                                                                                                  generator=gen)))]
        f = correction_features(table, keys)
        samples.append((f, f["block_ms"] + sum(c * f[t] for t, c in truth.items())))
    coef = fit_correction(samples, ridge=0.0, terms=CORRECTION_TERMS)
    for term, c in truth.items():
        assert coef[term] == pytest.approx(c, rel=1e-6, abs=1e-9)
    assert all(abs(c) < 1e-9 for t, c in coef.items() if t not in truth)
    assert "layer:attention" not in coef  # no sample has one: no coefficient
    # a bad term or ridge is named
    with pytest.raises(ValueError, match="unknown correction term 'threads'"):
        fit_correction(samples, terms=("threads",))
    with pytest.raises(ValueError, match="ridge must be"):
        fit_correction(samples, ridge=-1)


def test_calibrated_table_keeps_its_keys_and_applies_the_correction(tmp_path):
    """calibrate_table measures whole models, stores samples + coefficients in the file and changes no entry."""
    from edgezoo.search.latency import calibrate_table, correction_features

    path = tmp_path / "t.json"
    items = blocks_of_config(TINY, 32, num_classes=4)
    table = build_latency_table(items, engine="eager", threads=1, out=path)
    before = {k: dict(v) for k, v in table.entries.items()}
    tiny2 = MobileNetV4Config(stem_chs=8, stages=((IB(out_chs=16, mid_dw_kernel=5, expand_ratio=3.0, stride=2),),),
                              head_chs=16)
    cases = []
    for cfg, size in ((TINY, 32), (TINY, 40), (tiny2, 32)):
        model = MobileNetV4(config=cfg, default_cfg={}, num_classes=4).eval()
        cases.append((f"tiny{len(cases)}", model, (1, 3, size, size), blocks_of_config(cfg, size, num_classes=4)))
    coef = calibrate_table(table, cases, terms=("block_ms", "unit"))
    assert set(coef) == {"block_ms", "unit"}
    again = LatencyTable.load(path)
    assert {k: again.entries[k] for k in before} == before  # the measured entries are untouched
    assert again.correction == pytest.approx(coef)
    assert [s["name"] for s in again.meta["correction"]["samples"]] == ["tiny0", "tiny1", "tiny2"]
    keys = [it.key for it in items]
    f = correction_features(again, keys)
    raw = TablePredictor(again, measure_missing=False, corrected=False).predict_ms(TINY, 32, num_classes=4)
    fixed = TablePredictor(again, measure_missing=False).predict_ms(TINY, 32, num_classes=4)
    assert raw == pytest.approx(sum(again.ms(k) for k in keys) + again.fixed_ms)
    assert fixed - raw == pytest.approx(coef["block_ms"] * f["block_ms"] + coef["unit"] * f["unit"])


def test_table_measured_with_another_protocol_is_stale(tmp_path):
    """A table timed another way (e.g. ONNX Runtime with spin-waiting on) is rebuilt, not mixed with new entries."""
    table = LatencyTable(meta={**host_fingerprint("onnxruntime", 2), "protocol": "interleaved-medians"}, fixed_ms=0.01)
    table.save(tmp_path / "t.json")
    assert "protocol differs" in LatencyTable.load(tmp_path / "t.json").stale_reason()
    fresh = LatencyTable(meta=host_fingerprint("onnxruntime", 2), fixed_ms=0.01)
    assert fresh.stale_reason() is None


def test_entries_record_weight_and_io_bytes(tmp_path):
    items = blocks_of_config(TINY, 32, num_classes=4)
    table = build_latency_table(items[:2], engine="eager", threads=1, out=tmp_path / "t.json")
    stem = table.entries[items[0].key]
    assert stem["weight_bytes"] >= 4 * sum(p.numel() for p in items[0].build().parameters())  # + BN statistics
    assert stem["io_bytes"] == 4 * (3 * 32 * 32 + 8 * 16 * 16)


def test_measure_items_keeps_each_items_lowest_pass(monkeypatch):
    """A burst of load that slows one whole chunk must not stay in the table: every item is timed in two passes,
    in other chunks, and keeps the lower time."""
    import importlib

    from edgezoo.search import latency

    opt = importlib.import_module("edgezoo.deploy.optimize")  # the package re-exports a function of that name

    items = blocks_of_config(TINY, 32, num_classes=4)
    calls: list[list[str]] = []

    def fake(runners, **kw):
        keys = [k for k in runners if k != "__fixed__"]
        calls.append(keys)
        slow = 5.0 if len(calls) == 1 else 1.0  # the first chunk of the first pass ran beside a burst of load
        return {"__fixed__": 0.01, **{k: slow * (1 + i) for i, k in enumerate(sorted(keys))}}

    monkeypatch.setattr(opt, "time_interleaved", fake)
    times, fixed = latency.measure_items(items, engine="eager", threads=1, chunk=2, passes=2)
    keys = {it.key for it in items}
    assert set(times) == keys and fixed == pytest.approx(0.01)
    assert sum(len(c) for c in calls) == 2 * len(keys)  # every item timed in both passes
    assert all(v < 4.0 for v in times.values())  # the burst of the first chunk was dropped
    with pytest.raises(ValueError, match="passes"):
        latency.measure_items(items, engine="eager", threads=1, passes=0)
