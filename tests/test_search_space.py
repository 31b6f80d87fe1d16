"""Search space as data, and the search strategies on synthetic objectives (no training involved)."""
from __future__ import annotations

import random

import pytest

import edgezoo
from edgezoo.models.mobilenet_v4 import MQASpec, UIBSpec
from edgezoo.search.space import (
    DIGITS_HYBRID_SPACE,
    DIGITS_SPACE,
    FusedStageSpace,
    SearchSpace,
    Subnet,
    UIBStageSpace,
)
from edgezoo.search.strategies import (
    InfeasibleTarget,
    Objective,
    evolutionary_search,
    random_search,
    run_strategy,
    two_stage_search,
)

SMALL = SearchSpace(
    name="small", resolutions=(32, 48), stem_chs=8,
    fused=FusedStageSpace(widths=(8, 16), expand_ratios=(2.0, 4.0)),
    stages=(
        UIBStageSpace(widths=(16, 24), depths=(1, 2), start_dw_kernels=(None, 3), mid_dw_kernels=(None, 5),
                      expand_ratios=(2.0, 4.0)),
        UIBStageSpace(widths=(24, 32), depths=(1, 2), start_dw_kernels=(None,), mid_dw_kernels=(None, 3),
                      expand_ratios=(2.0, 4.0)),
    ),
    last_chs=(32, 64), head_chs=64,
)


def _params(space: SearchSpace, subnet: Subnet) -> int:
    from edgezoo.models.arch_spec import build_arch, make_arch_spec

    model = build_arch(make_arch_spec(space.to_config(subnet), name="x", img_size=subnet.resolution), num_classes=10)
    return sum(p.numel() for p in model.parameters())


def test_largest_and_smallest_parameter_counts_follow_from_the_space() -> None:
    import dataclasses

    from edgezoo.layers.helpers import make_divisible

    big, small = DIGITS_SPACE.largest(), DIGITS_SPACE.smallest()
    n_big, n_small = _params(DIGITS_SPACE, big), _params(DIGITS_SPACE, small)
    conv_s = sum(p.numel() for p in edgezoo.create_model("mobilenetv4_conv_small", num_classes=10).parameters())
    assert 0.8 * conv_s < n_big < 1.6 * conv_s  # "about MobileNetV4-Conv-S"
    assert n_small < 0.4 * n_big  # "a fraction of it"
    # the count by hand, for the smallest subnet's first UIB block: dw_start 3x3 + BN, pw_exp, pw_proj (+ BNs)
    cfg = DIGITS_SPACE.to_config(small)
    blk = cfg.stages[1][0]
    assert isinstance(blk, UIBSpec) and blk.start_dw_kernel == 3 and blk.mid_dw_kernel is None
    cin = small.fused.width
    mid = make_divisible(cin * blk.expand_ratio)
    expected = cin * 9 + 2 * cin + cin * mid + 2 * mid + mid * blk.out_chs + 2 * blk.out_chs
    from edgezoo.models.arch_spec import build_arch, make_arch_spec

    model = build_arch(make_arch_spec(cfg, name="x", img_size=32), num_classes=10)
    assert sum(p.numel() for p in model.blocks[1][0].parameters()) == expected
    # every choice at its maximum is the largest: it has more parameters than any random subnet
    rng = random.Random(0)
    for _ in range(5):
        s = DIGITS_SPACE.sample(rng)
        assert n_small <= _params(DIGITS_SPACE, s) <= n_big
    assert dataclasses.replace(big) == big


def test_space_yaml_round_trip_and_hash(tmp_path) -> None:
    for space in (DIGITS_SPACE, DIGITS_HYBRID_SPACE, SMALL):
        path = space.save(tmp_path / f"{space.name}.yaml")
        again = SearchSpace.load(path)
        assert again == space and again.hash == space.hash
    assert DIGITS_SPACE.hash != DIGITS_HYBRID_SPACE.hash
    import dataclasses

    assert dataclasses.replace(DIGITS_SPACE, version=2).hash != DIGITS_SPACE.hash
    assert dataclasses.replace(DIGITS_SPACE, name="other").hash == DIGITS_SPACE.hash  # the name is a label
    (tmp_path / "bad.yaml").write_text("name: x\nresolutions: [32]\nfused: {widths: [8]}\nstages: []\n")
    with pytest.raises(ValueError, match="at least one UIB stage"):
        SearchSpace.load(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="widths"):
        UIBStageSpace(widths=(), depths=(1,))


def test_sampling_stays_in_the_space_and_strided_blocks_have_a_depthwise_conv() -> None:
    rng = random.Random(0)
    for _ in range(200):
        s = DIGITS_HYBRID_SPACE.sample(rng)
        DIGITS_HYBRID_SPACE.check(s)
        cfg = DIGITS_HYBRID_SPACE.to_config(s)
        for stage in cfg.stages[1:-1]:
            first = stage[0]
            assert isinstance(first, UIBSpec) and first.stride == 2
            assert first.start_dw_kernel is not None or first.mid_dw_kernel is not None
    assert SMALL.num_subnets() == len({s.key() for s in SMALL.enumerate()})


def test_block_items_cover_every_block_of_sampled_subnets() -> None:
    from edgezoo.layers.conv import same_padding

    items = set(DIGITS_HYBRID_SPACE.block_items())
    assert any(isinstance(i[0], MQASpec) for i in items)
    rng = random.Random(1)
    for _ in range(50):
        s = DIGITS_HYBRID_SPACE.sample(rng)
        cfg = DIGITS_HYBRID_SPACE.to_config(s)
        size = (s.resolution + 2 * same_padding(3, 2) - 3) // 2 + 1
        chs = cfg.stem_chs
        for stage in cfg.stages:
            for spec in stage:
                assert (spec, chs, size, size, cfg.act) in items, spec
                stride = getattr(spec, "stride", 1)
                size = (size + 2 * same_padding(3, stride) - 3) // stride + 1
                chs = spec.out_chs


# --- strategies on synthetic objectives ------------------------------------------------------------------------
def _synthetic(space: SearchSpace):
    """A latency that grows with widths, depths and resolution, and an accuracy that prefers particular choices."""
    def latency(s: Subnet) -> float:
        lat = s.resolution / 16 + s.fused.width / 8 + s.last_chs / 32
        for c in s.stages:
            for b in c.blocks[:c.depth]:
                lat += c.width / 8 * (1 + b.expand_ratio / 4 + (b.mid_dw_kernel or 0) / 5)
        return lat

    def accuracy(s: Subnet) -> float:
        acc = s.resolution / 48 + s.fused.width / 16 + (s.fused.blocks[0].expand_ratio == 4.0)
        for c in s.stages:
            acc += c.width / 16 + c.depth
            for b in c.blocks[:c.depth]:
                acc += (b.mid_dw_kernel == 5) * 0.5 + (b.start_dw_kernel == 3) * 0.3 + b.expand_ratio / 8
        return acc + s.last_chs / 64

    return accuracy, latency


@pytest.mark.parametrize("target", [22.0, 28.0])
def test_evolution_respects_the_hard_limit_and_finds_the_optimum(target: float) -> None:
    acc, lat = _synthetic(SMALL)
    feasible = [s for s in SMALL.enumerate() if lat(s) <= target]
    optimum = max(acc(s) for s in feasible)
    obj = Objective(SMALL, acc, lat, target_ms=target)
    res = evolutionary_search(obj, population=24, generations=30, parents=8, mutate_prob=0.2, seed=0)
    assert all(c.latency_ms <= target for c in res.history)
    assert res.best.latency_ms <= target
    assert res.best.accuracy == pytest.approx(optimum)
    assert obj.evaluations < len(feasible)  # it did not simply enumerate
    # the random baseline with a similar budget is no better
    base = random_search(Objective(SMALL, acc, lat, target_ms=target), samples=obj.evaluations, seed=0)
    assert base.best.accuracy <= res.best.accuracy


def test_soft_reward_trades_accuracy_for_latency() -> None:
    acc, lat = _synthetic(SMALL)
    obj = Objective(SMALL, acc, lat, target_ms=25.0, mode="soft", w=-0.07)
    c = obj.evaluate(SMALL.largest())
    assert c.reward == pytest.approx(c.accuracy * (c.latency_ms / 25.0) ** -0.07)
    res = evolutionary_search(obj, population=16, generations=10, parents=6, seed=0)
    best_soft = max((s for s in SMALL.enumerate()), key=lambda s: acc(s) * (lat(s) / 25.0) ** -0.07)
    assert res.best.reward >= 0.97 * acc(best_soft) * (lat(best_soft) / 25.0) ** -0.07
    assert any(h.latency_ms > 25.0 for h in res.history)  # soft: slower candidates are admitted


def test_two_stage_fixes_blocks_first_and_respects_the_limit() -> None:
    acc, lat = _synthetic(SMALL)
    obj = Objective(SMALL, acc, lat, target_ms=26.0)
    res = two_stage_search(obj, population=12, coarse_generations=6, fine_generations=10, parents=4, seed=0)
    assert all(c.latency_ms <= 26.0 for c in res.history)
    coarse = [c.subnet for c in res.history[:12]]  # the coarse stage's first population
    for sub in coarse:  # IB with the 3x3 DW nearest to what the space allows, expansion 4
        assert all(b.expand_ratio == 4.0 and b.start_dw_kernel is None and b.mid_dw_kernel == (5, 3)[si]
                   for si, c in enumerate(sub.stages) for b in c.blocks)
    assert len({tuple(b for c in h.subnet.stages for b in c.blocks[:c.depth]) for h in res.history}) > 5  # fine
    feasible_best = max(acc(s) for s in SMALL.enumerate() if lat(s) <= 26.0)
    assert res.best.accuracy >= 0.95 * feasible_best
    assert run_strategy("random", Objective(SMALL, acc, lat, target_ms=26.0), budget=10).best.latency_ms <= 26.0


def test_target_below_the_smallest_subnet_is_refused_with_its_latency() -> None:
    acc, lat = _synthetic(SMALL)
    smallest = lat(SMALL.smallest())
    with pytest.raises(InfeasibleTarget, match=f"{smallest:.4g} ms"):
        evolutionary_search(Objective(SMALL, acc, lat, target_ms=smallest * 0.9))
