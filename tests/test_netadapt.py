"""Channel pruning (edgezoo.models.pruned) and NetAdapt (edgezoo.search.netadapt)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import edgezoo
from edgezoo.models.pruned import (
    build_pruned,
    channel_groups,
    filter_importance,
    prunable_groups,
    prune_channels,
    shrink_group,
)

SHAPE = (1, 3, 32, 32)
CNNS = ["mobilenetv1_025", "mobilenetv2_035", "mobilenetv3_small_050", "mobilenetv4_conv_small"]


def _halve(model):
    return {name: max(1, g.size // 2) for name, g in prunable_groups(model, SHAPE).items()}


@pytest.mark.parametrize("name", CNNS)
def test_build_pruned_is_a_full_model(name):
    base = edgezoo.create_model(name, num_classes=10)
    channels = _halve(base)
    assert channels, "every MobileNet has prunable layers"
    spec = {"format": "edgezoo-arch/1", "kind": "pruned", "base": name, "base_kwargs": {}, "channels": channels}
    model = build_pruned(spec, num_classes=10, in_chans=3, img_size=32, drop_path_rate=0.0).eval()
    assert type(model) is type(base)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.num_features)
        feats = model.forward_intermediates(x, list(range(len(model.feature_info))))
    assert [f.shape[1] for f in feats] == [e["num_chs"] for e in model.feature_info]
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    # the spec's channel counts are what the built model has
    now = {g.name: g.size for g in channel_groups(model, SHAPE)}
    assert all(now[k] == v for k, v in channels.items())


def test_pruned_equals_masked_original():
    """Removing a block's expansion channels = zeroing their columns in the projection of the original."""
    torch.manual_seed(0)
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    groups = prunable_groups(model, SHAPE)
    group = groups["stages.2.1.conv_pw.conv"]  # expansion of a residual block: not tied to anything else
    assert group.depthwise == ["stages.2.1.conv_dw.conv"] and group.consumers == ["stages.2.1.conv_pwl.conv"]
    keep = filter_importance(model, group).topk(group.size // 3).indices
    drop = torch.ones(group.size, dtype=torch.bool)
    drop[keep] = False
    masked = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        masked.stages[2][1].conv_pwl.conv.weight[:, drop] = 0
    shrink_group(model, group, keep)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), rtol=1e-4, atol=1e-5)


def test_residual_tied_channels_shrink_together():
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
    tied = [g for g in prunable_groups(model, SHAPE).values() if len(g.producers) > 1]
    assert tied, "MobileNetV2 stages share their width through residual adds"
    g = tied[0]
    prune_channels(model, {g.name: g.size - 2}, SHAPE)
    for path in g.producers:
        assert model.get_submodule(path).out_channels == g.size - 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unprunable_layers_are_refused():
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10)
    with pytest.raises(ValueError, match="not a prunable channel group"):
        prune_channels(model, {"classifier": 5}, SHAPE)
    with pytest.raises(ValueError, match=r"must be an int in \[1, "):
        prune_channels(model, {"stem.conv": 0}, SHAPE)
    with pytest.raises(ValueError, match="spec kind"):
        build_pruned({"format": "edgezoo-arch/1", "kind": "mobilenetv4", "base": "x", "channels": {}})


# ------------------------------------------------------------------------------------------------ NetAdapt
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An (untrained) mobilenetv2_035 saved as `edgezoo train` would, at 32 px on digits."""
    from edgezoo.train.checkpoints import make_metadata, save_weights

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10, img_size=32)
    cfg = model.default_cfg
    md = make_metadata(model="mobilenetv2_035", classes=[str(i) for i in range(10)], img_size=32, in_chans=3,
                       model_kwargs={}, mean=cfg["mean"], std=cfg["std"], crop_pct=1.0, interpolation="bicubic",
                       weights="raw", epoch=1, top1=10.0)
    save_weights(model, run / "best.safetensors", md)
    return run


@pytest.mark.slow  # ~20 s on an idle 2-core machine (data loading, three fine-tune/eval rounds)
def test_netadapt_reduces_predicted_latency_monotonically(tiny_run, tmp_path):
    from edgezoo.search.netadapt import NetAdaptSettings, netadapt

    settings = NetAdaptSettings(finetune_steps=1, candidates=1, long_epochs=0, max_steps=3, batch_size=8,
                                decrement=0.1, max_groups=3, holdout_fraction=0.05)
    out = tmp_path / "adapted"
    report = netadapt(str(tiny_run), target_ms=0.01, hardware="phone_cpu", out=str(out), settings=settings)
    lat = [h["predicted_ms"] for h in report["history"]]
    assert len(lat) >= 3 and all(b < a for a, b in zip(lat, lat[1:]))
    assert report["predicted_latency_ms"] == pytest.approx(lat[-1])
    for key in ("hardware", "target_ms", "predicted_latency_ms", "top1", "history"):
        assert key in report
    for f in ("arch.yaml", "best.safetensors", "report.json", "pareto.png"):
        assert (out / f).is_file()
    spec = yaml.safe_load((out / "arch.yaml").read_text())
    assert spec["format"] == "edgezoo-arch/1" and spec["kind"] == "pruned" and spec["base"] == "mobilenetv2_035"
    assert spec["channels"]
    model = build_pruned(spec, num_classes=10, in_chans=3, img_size=32).eval()
    from edgezoo.checkpoint import load_state_dict_file

    model.load_state_dict(load_state_dict_file(out / "best.safetensors"))
    assert json.loads((out / "report.json").read_text())["steps"] == len(lat) - 1
    # an adapted run is an ordinary edgezoo model: the spec loads through create_model, and eval reads the run
    import edgezoo
    from edgezoo.cli import main

    loaded = edgezoo.create_model(str(out / "arch.yaml"), checkpoint=str(out / "best.safetensors")).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0


def test_netadapt_target_below_reach_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    from edgezoo.cli import main

    rc = main(["adapt", "--checkpoint", str(tiny_run), "--target-ms", "0.000001", "--hardware", "phone_cpu",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "below the smallest reachable latency" in err
    rc = main(["adapt", "--checkpoint", str(tiny_run), "--target-ms", "1", "--hardware", "tpu9",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "unknown hardware 'tpu9'" in err


# ---------------------------------------------------------------------------- NetAdapt: pieces and resume
def _phone_predictor():
    from edgezoo.search.latency import latency_predictor

    pred = latency_predictor("phone_cpu", "roofline")
    return lambda m: float(pred.predict_module_ms(m, SHAPE))


def test_propose_all_finds_the_largest_count_meeting_the_budget():
    """The lock-step binary searches return, per group, exactly what a linear scan over the counts finds."""
    from edgezoo.search.netadapt import _counts, propose_all

    torch.manual_seed(0)
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
    predict = _phone_predictor()
    groups = list(prunable_groups(model, SHAPE).values())[:6]
    budget = 0.97 * predict(model)
    rounds = []
    found = {p.group: p for p in propose_all(model, groups, budget, predict, 8, prefetch=rounds.append)}
    assert rounds and all(len(r) >= 1 for r in rounds)
    for g in groups:
        order = filter_importance(model, g).argsort(descending=True)
        best = None
        for k in _counts(g.size, 8):  # largest first: the first that meets the budget
            m = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
            m.load_state_dict(model.state_dict())
            shrink_group(m, g, order[:k])
            if predict(m) <= budget:
                best = k
                break
        if best is None:
            assert g.name not in found
        else:
            assert found[g.name].channels_to == best
            assert found[g.name].predicted_ms <= budget
            assert found[g.name].model.get_submodule(g.producers[0]).out_channels == best


def test_recalibrate_bn_sets_the_average_batch_statistics():
    from edgezoo.search.netadapt import recalibrate_bn

    torch.manual_seed(0)
    model = edgezoo.create_model("mobilenetv2_035", num_classes=10).eval()
    batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    bn = model.stem.bn if hasattr(model.stem, "bn") else next(m for m in model.modules()
                                                              if isinstance(m, torch.nn.BatchNorm2d))
    conv = model.stem.conv
    with torch.no_grad():
        want = torch.stack([conv(x).mean((0, 2, 3)) for x, _ in batches]).mean(0)
    momentum = bn.momentum
    recalibrate_bn(model, batches)
    torch.testing.assert_close(bn.running_mean, want, rtol=1e-4, atol=1e-5)
    assert bn.momentum == momentum and not model.training


def test_settings_are_checked():
    from edgezoo.search.netadapt import NetAdaptSettings

    with pytest.raises(ValueError, match="decrement must be a fraction"):
        NetAdaptSettings(decrement=1.5)
    with pytest.raises(ValueError, match="candidates must be None or an int"):
        NetAdaptSettings(candidates=0)
    with pytest.raises(ValueError, match="kd_alpha"):
        NetAdaptSettings(kd_alpha=2.0)


def test_cli_bad_settings_and_resume_are_one_line_exit_2(tiny_run, tmp_path, capsys):
    from edgezoo.cli import main

    rc = main(["adapt", "--checkpoint", str(tiny_run), "--target-ms", "1", "--hardware", "phone_cpu",
               "--out", str(tmp_path / "x"), "--decrement", "1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "decrement must be a fraction" in err
    rc = main(["adapt", "--checkpoint", str(tiny_run), "--target-ms", "1", "--hardware", "phone_cpu",
               "--out", str(tmp_path / "none"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "nothing to resume" in err
    with pytest.raises(SystemExit) as exc:  # argparse errors exit from inside main
        main(["adapt", "--checkpoint", str(tiny_run), "--target-ms", "1", "--speedup", "2", "--hardware",
              "phone_cpu", "--out", str(tmp_path / "y")])
    rc, err = exc.value.code, capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "not allowed with" in err
    rc = main(["adapt", "--checkpoint", str(tiny_run), "--speedup", "0.5", "--hardware", "phone_cpu",
               "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "speedup must be > 1" in err


@pytest.mark.slow  # ~30 s on an idle 2-core machine: three short NetAdapt runs
def test_netadapt_resume_equals_uninterrupted(tiny_run, tmp_path):
    """A run stopped after one step and resumed for a second ends with the same model as a two-step run."""
    from edgezoo.checkpoint import load_state_dict_file
    from edgezoo.search.netadapt import NetAdaptSettings, netadapt

    def settings(steps):
        return NetAdaptSettings(finetune_steps=2, bn_batches=1, candidates=2, long_epochs=0, max_steps=steps,
                                batch_size=8, decrement=0.1, max_groups=3, holdout_fraction=0.05)

    whole = netadapt(str(tiny_run), target_ms=0.01, hardware="phone_cpu", out=str(tmp_path / "a"),
                     settings=settings(2))
    first = netadapt(str(tiny_run), target_ms=0.01, hardware="phone_cpu", out=str(tmp_path / "b"),
                     settings=settings(1))
    assert first["steps"] == 1 and "max_steps" in first["stopped"]
    with pytest.raises(ValueError, match="already holds a NetAdapt run"):
        netadapt(str(tiny_run), target_ms=0.01, hardware="phone_cpu", out=str(tmp_path / "b"), settings=settings(2))
    with pytest.raises(ValueError, match="started with target_ms"):
        netadapt(str(tiny_run), target_ms=0.02, hardware="phone_cpu", out=str(tmp_path / "b"),
                 settings=settings(2), resume=True)
    resumed = netadapt(str(tiny_run), target_ms=0.01, hardware="phone_cpu", out=str(tmp_path / "b"),
                       settings=settings(2), resume=True)
    assert resumed["steps"] == whole["steps"] == 2
    assert [(h["group"], h["channels_to"]) for h in resumed["history"]] == \
        [(h["group"], h["channels_to"]) for h in whole["history"]]
    a = load_state_dict_file(tmp_path / "a" / "best.safetensors")
    b = load_state_dict_file(tmp_path / "b" / "best.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed["predicted_latency_ms"] == pytest.approx(whole["predicted_latency_ms"])


@pytest.mark.parametrize("name", ["mobilenetv2_035", "mobilenetv3_small_050"])
def test_pricer_equals_predict_module_ms_on_pruned_models(name):
    """NetAdapt rebuilds a proposal's blocks from the starting model's; the prediction must not change by it."""
    from edgezoo.search.latency import latency_predictor
    from edgezoo.search.netadapt import _Pricer

    model = edgezoo.create_model(name, num_classes=10).eval()
    pred = latency_predictor("phone_cpu", "roofline")
    pricer = _Pricer(pred, SHAPE, model)
    assert pricer.units_at is not None
    pruned = prune_channels(edgezoo.create_model(name, num_classes=10).eval(), _halve(model), SHAPE)
    for m in (model, pruned):
        assert pricer(m) == pytest.approx(pred.predict_module_ms(m, SHAPE), rel=1e-12)
    assert pricer(pruned) < pricer(model)


@pytest.mark.slow  # ~15 s: a short NetAdapt run with a stand-in host engine
def test_netadapt_retarget_prunes_on_when_the_measured_speedup_is_short(tiny_run, tmp_path, monkeypatch):
    """--retarget: the predicted target is met but the (stand-in) measurement says the model is slower than
    predicted, so the goal is lowered by the shortfall and pruning goes on until the measured speed-up is met."""
    from edgezoo.search import netadapt as na
    from edgezoo.search.latency import latency_predictor

    roofline = latency_predictor("phone_cpu", "roofline")
    monkeypatch.setattr(na, "latency_predictor", lambda *a, **k: roofline)

    def fake_measure(base, final, shape, **kw):  # the pruned model measures 20 % slower than predicted
        b = roofline.predict_module_ms(base, shape)
        f = roofline.predict_module_ms(final, shape)
        return {"base": b, "final": f if f == b else 1.2 * f}

    monkeypatch.setattr(na, "measure_pair", fake_measure)
    settings = na.NetAdaptSettings(finetune_steps=1, bn_batches=1, candidates=1, long_epochs=0, max_steps=30,
                                   batch_size=8, decrement=0.1, max_groups=3, holdout_fraction=0.05,
                                   engine="onnxruntime", retarget=2, measure=False)
    report = na.netadapt(str(tiny_run), speedup=1.15, hardware="host", out=str(tmp_path / "r"), settings=settings)
    assert report["retargets"], "the measured shortfall must lower the goal"
    first = report["retargets"][0]
    assert first["measured_ms"] > first["predicted_ms"] and first["new_goal_ms"] < report["target_ms"]
    assert report["goal_ms"] < report["target_ms"]
    lat = [h["predicted_ms"] for h in report["history"]]
    assert all(b < a for a, b in zip(lat, lat[1:]))
    assert report["predicted_latency_ms"] <= report["goal_ms"] + 1e-9
    assert report["steps"] > first["step"]  # it went on pruning after the re-target


def test_take_batches_counts_steps_across_passes_and_refuses_empty_data():
    """The step loop both fine-tunes (NetAdapt's, the search's re-ranking) share."""
    from edgezoo.train.data import take_batches

    passes: list[int] = []

    def loader(epoch: int):
        passes.append(epoch)
        return [(epoch, 0), None, (epoch, 1)]  # a batch the dataset could not read comes as None

    assert list(take_batches(loader, 5)) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert passes == [0, 1, 2]
    assert list(take_batches(loader, 0)) == []
    with pytest.raises(ValueError, match="no batches"):
        list(take_batches(lambda e: [None], 1))
