"""Progressive shrinking of the supernet: the phase schedule, sampling restricted to a phase's open dimensions,
what each phase trains, and resumption across a phase boundary."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from edgezoo.search.space import FusedStageSpace, MQAOption, SearchSpace, UIBStageSpace
from edgezoo.search.supernet_train import (OPEN_DIMS, PHASES, SearchData, SupernetConfig, phase_schedule, restrict,
                                           train_supernet)

TINY = SearchSpace(
    name="tiny-ps", version=1, resolutions=(16, 24), stem_chs=8,
    fused=FusedStageSpace(widths=(8, 16), expand_ratios=(2.0, 4.0)),
    stages=(
        UIBStageSpace(widths=(8, 16), depths=(1, 2), start_dw_kernels=(None, 3, 5), mid_dw_kernels=(None, 3),
                      expand_ratios=(2.0, 4.0)),
        UIBStageSpace(widths=(16,), depths=(1, 2), start_dw_kernels=(None, 3), mid_dw_kernels=(3,),
                      expand_ratios=(2.0,), mqa=MQAOption(num_heads=2, head_dim=8, kv_stride=1)),
    ),
    last_chs=(24, 32), head_chs=32,
)


def test_phase_schedule() -> None:
    assert phase_schedule(SupernetConfig(epochs=8)) == ["full"] * 2 + ["kernel"] * 2 + ["expand"] * 2 + ["elastic"] * 2
    assert phase_schedule(SupernetConfig(epochs=6, phase_fractions=(0, 1, 1, 0))) == ["kernel"] * 3 + ["expand"] * 3
    assert phase_schedule(SupernetConfig(epochs=5, phase_fractions=(1, 0, 0, 3))) == ["full"] + ["elastic"] * 4
    assert phase_schedule(SupernetConfig(epochs=3, progressive=False)) == ["elastic"] * 3
    for epochs in range(1, 30):  # every epoch has a phase, phases come in order, the last epoch is in the last phase
        sched = phase_schedule(SupernetConfig(epochs=epochs, phase_fractions=(0.2, 0.3, 0.2, 0.3)))
        assert len(sched) == epochs and sched == sorted(sched, key=PHASES.index) and sched[-1] == "elastic"
    for bad in [(1, 1, 1), (0, 0, 0, 0), (1, -1, 1, 1), (1, "a", 1, 1)]:
        with pytest.raises(ValueError, match="phase_fractions"):
            SupernetConfig(phase_fractions=bad)
    with pytest.raises(ValueError, match="epochs"):
        SupernetConfig(epochs=0)


def test_restrict_opens_only_the_phase_dimensions() -> None:
    largest = TINY.largest()
    rng = random.Random(0)
    seen_kernels, seen_expand, seen_depth = set(), set(), set()
    for _ in range(200):
        s = TINY.sample(rng)
        full = restrict(s, largest, OPEN_DIMS["full"])
        assert full == dataclasses.replace(largest, resolution=s.resolution)
        k = restrict(s, largest, OPEN_DIMS["kernel"])
        TINY.check(k)
        assert [c.width for c in k.stages] == [c.width for c in largest.stages] and k.last_chs == largest.last_chs
        assert [c.depth for c in k.stages] == [c.depth for c in largest.stages]
        for c, cs, cl in zip(k.stages, s.stages, largest.stages):
            for b, bs, bl in zip(c.blocks, cs.blocks, cl.blocks):
                assert (b.start_dw_kernel, b.mid_dw_kernel, b.mqa) == (bs.start_dw_kernel, bs.mid_dw_kernel, bs.mqa)
                assert b.mqa or b.expand_ratio == bl.expand_ratio
                seen_kernels.add((b.start_dw_kernel, b.mid_dw_kernel, b.mqa))
        e = restrict(s, largest, OPEN_DIMS["expand"])
        TINY.check(e)
        assert e.fused.blocks == s.fused.blocks and e.fused.width == largest.fused.width
        seen_expand.update(b.expand_ratio for c in e.stages for b in c.blocks)
        assert restrict(s, largest, OPEN_DIMS["elastic"]) == s
        seen_depth.add(tuple(c.depth for c in restrict(s, largest, OPEN_DIMS["expand"]).stages))
    assert len(seen_kernels) > 3 and {2.0, 4.0} <= seen_expand and seen_depth == {(2, 2)}
    assert any(k[2] for k in seen_kernels)  # MQA is a block-type choice, open with the kernels
    with pytest.raises(ValueError, match="unknown dimensions"):
        restrict(largest, largest, {"colour"})


def _cfg(tmp: Path, name: str, **kw) -> SupernetConfig:
    return SupernetConfig(out=str(tmp / name), progress=False, calib_images=32, batch_size=64, **kw)


def test_full_phase_trains_only_the_largest(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "full", epochs=1, phase_fractions=(1, 0, 0, 0))
    net, _, summary = train_supernet(cfg, TINY, data=SearchData(cfg, TINY))
    assert summary["history"][0]["phase"] == "full"
    # the 3x3 kernel transforms serve only smaller kernels: untouched while only the largest (5x5) trains
    dw = net.stages[0][0].dw_start
    torch.testing.assert_close(dw.transforms["3"].detach(), torch.eye(9), rtol=0, atol=0)
    # MQA blocks are alternatives the largest never uses: no gradient reached them
    mqa = net.mqa[1][1]
    assert all(p.grad is None or not p.grad.any() for p in mqa.parameters())
    # one elastic epoch afterwards does move them
    cfg2 = _cfg(tmp_path, "elastic", epochs=1, phase_fractions=(0, 1, 0, 0), num_random=4)
    net2, _, summary2 = train_supernet(cfg2, TINY, data=SearchData(cfg2, TINY))
    assert summary2["history"][0]["phase"] == "kernel"
    assert not torch.equal(net2.stages[0][0].dw_start.transforms["3"].detach(), torch.eye(9))


def test_resume_across_a_phase_boundary_gives_the_same_weights(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "a", epochs=4)  # one epoch per phase: full, kernel, expand, elastic
    data = SearchData(cfg, TINY)
    ref, _, ref_summary = train_supernet(cfg, TINY, data=data)
    assert [h["phase"] for h in ref_summary["history"]] == list(PHASES)
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train_supernet(cfg_b, TINY, data=data, stop_after_epoch=2)  # killed at the kernel -> expand boundary
    # the resumed run takes its schedule from the saved config, not from the caller's
    resumed, _, summary = train_supernet(dataclasses.replace(cfg_b, phase_fractions=(1, 0, 0, 0)), TINY,
                                         resume=True, data=data)
    assert [h["phase"] for h in summary["history"]] == list(PHASES)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_each_phase_gets_its_own_learning_rate_schedule(tmp_path: Path) -> None:
    data = None
    lrs = {}
    for restart in (True, False):
        cfg = _cfg(tmp_path, f"lr{restart}", epochs=2, phase_fractions=(1, 0, 0, 1), phase_lr_restart=restart,
                   num_random=1)
        data = data or SearchData(cfg, TINY)
        _, _, summary = train_supernet(cfg, TINY, data=data)
        lrs[restart] = [h["lr"] for h in summary["history"]]
    # restarted: each phase ends at the bottom of its own cosine; one schedule: still high after the first phase
    assert lrs[True][0] == pytest.approx(lrs[True][1]) and lrs[True][0] < 0.2 * lrs[False][0]
    assert lrs[False][1] < lrs[False][0]


def test_lr_multiplier_scales_the_recipe_rate(tmp_path: Path) -> None:
    from edgezoo.search.supernet_train import _saved_config

    data, lrs = None, {}
    for mult in (1.0, 3.0):
        cfg = _cfg(tmp_path, f"m{mult}", epochs=1, phase_fractions=(1, 0, 0, 0), lr_multiplier=mult)
        data = data or SearchData(cfg, TINY)
        lrs[mult] = train_supernet(cfg, TINY, data=data)[2]["history"][0]["lr"]
    assert lrs[3.0] == pytest.approx(3 * lrs[1.0])
    # an explicit rate is used as given
    given = {}
    for mult in (1.0, 5.0):
        cfg = _cfg(tmp_path, f"given{mult}", epochs=1, phase_fractions=(1, 0, 0, 0), lr=0.002, lr_multiplier=mult)
        given[mult] = train_supernet(cfg, TINY, data=data)[2]["history"][0]["lr"]
    assert given[5.0] == pytest.approx(given[1.0])
    for bad in (0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="lr_multiplier"):
            SupernetConfig(lr_multiplier=bad)
    # a state saved before the multiplier existed resumes at the rate it was trained with
    old = SupernetConfig().to_dict()
    del old["lr_multiplier"]
    assert _saved_config(old).lr_multiplier == 1.0


def test_zero_init_residual_makes_later_blocks_the_identity() -> None:
    from edgezoo.search.supernet import Supernet

    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    for zero in (True, False):
        net = Supernet(TINY, num_classes=10, zero_init_residual=zero).eval()
        deep = dataclasses.replace(TINY.largest(), resolution=16)
        shallow = dataclasses.replace(deep, stages=tuple(dataclasses.replace(c, depth=1) for c in deep.stages))
        with torch.no_grad():
            same = torch.allclose(net(x, deep), net(x, shallow), rtol=0, atol=1e-6)
        assert same == zero
