"""Search strategies over a :class:`SearchSpace`: evolution (hard limit or soft reward), two-stage, random.

* **Objective.** With a hard latency limit (OFA, Cai et al. 2020), a candidate slower than the target is never
  admitted and the best accuracy wins. With the soft reward of MnasNet (Tan et al. 2019, Eq. 2)
  ``ACC(m) × [LAT(m) / TAR]^w`` (``w = −0.07`` in MnasNet, ``−0.15`` for MobileNetV3-Small, Howard et al. 2019),
  slower candidates are admitted but pay for it, and faster ones earn a little.
* **Evolution** (Real et al. 2019, as used over a supernet by OFA and SPOS): a population of feasible subnets; each
  generation keeps the best ``parents`` and fills up with mutations (each gene resampled with probability
  ``mutate_prob``) and uniform crossovers of two parents; accuracy and latency are cached per architecture.
* **Two-stage** (MobileNetV4, Qin et al. 2024, §5.1): a *coarse* search over resolution, widths and depths with
  every UIB fixed to an inverted bottleneck with a 3×3 depthwise conv and expansion 4, then a *fine* search with
  those fixed over each block's start/middle depthwise conv (none / 3×3 / 5×5) and expansion.
* **Random search**: the baseline every NAS result should beat (Li & Talwalkar 2019).

Everything takes callables: ``accuracy_fn(subnet) -> float`` (higher is better) and ``latency_fn(subnet) -> ms``,
so the strategies are tested on synthetic objectives and run unchanged on a supernet.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .space import BlockChoice, SearchSpace, StageChoice, Subnet

GENES = ("resolution", "fused", "width", "depth", "block", "last")
COARSE_GENES = ("resolution", "fused", "width", "depth", "last")
FINE_GENES = ("block",)
MNASNET_W = -0.07
MOBILENETV3_W = -0.15


class InfeasibleTarget(ValueError):
    """The latency target is below the fastest architecture of the space."""


@dataclass
class Candidate:
    subnet: Subnet
    latency_ms: float
    accuracy: float
    reward: float

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.subnet.describe(), "latency_ms": self.latency_ms, "accuracy": self.accuracy,
                "reward": self.reward, "subnet": self.subnet.to_dict()}


@dataclass
class SearchResult:
    best: Candidate
    history: list[Candidate] = field(default_factory=list)  # every distinct architecture evaluated, in order
    strategy: str = ""

    @property
    def pareto(self) -> list[Candidate]:
        return pareto_front(self.history)


def pareto_front(cands: Iterable[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both accuracy (higher) and latency (lower), sorted by latency."""
    out: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.latency_ms, -c.accuracy)):
        if not out or c.accuracy > out[-1].accuracy:
            out.append(c)
    return out


def top_candidates(history: Iterable[Candidate], k: int, *, feasible: Callable[[Subnet], bool]) -> list[Candidate]:
    """The ``k`` distinct feasible candidates of ``history`` with the highest reward, best first (ties: the
    earlier evaluated)."""
    seen: set[tuple] = set()
    out: list[Candidate] = []
    for c in sorted(history, key=lambda c: -c.reward):  # stable: equal rewards keep their order
        key = c.subnet.key()
        if key in seen or not feasible(c.subnet):
            continue
        seen.add(key)
        out.append(c)
        if len(out) == k:
            break
    return out


class Objective:
    """Accuracy, latency and reward of subnets, each computed once per architecture."""

    def __init__(self, space: SearchSpace, accuracy_fn: Callable[[Subnet], float],
                 latency_fn: Callable[[Subnet], float], *, target_ms: float, mode: str = "hard",
                 w: float = MNASNET_W) -> None:
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
        if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not target_ms > 0:
            raise ValueError(f"target_ms must be a positive number, got {target_ms!r}")
        self.space, self.accuracy_fn, self.latency_fn = space, accuracy_fn, latency_fn
        self.target_ms, self.mode, self.w = float(target_ms), mode, float(w)
        self._lat: dict[tuple, float] = {}
        self._acc: dict[tuple, float] = {}
        self.history: list[Candidate] = []

    def latency(self, subnet: Subnet) -> float:
        key = subnet.key()
        if key not in self._lat:
            self._lat[key] = float(self.latency_fn(subnet))
        return self._lat[key]

    def feasible(self, subnet: Subnet) -> bool:
        """Hard mode: within the target. Soft mode: anything goes (the reward pays for latency)."""
        return self.mode == "soft" or self.latency(subnet) <= self.target_ms

    def reward(self, accuracy: float, latency_ms: float) -> float:
        if self.mode == "hard":
            return accuracy
        return accuracy * (latency_ms / self.target_ms) ** self.w

    def evaluate(self, subnet: Subnet) -> Candidate:
        key = subnet.key()
        lat = self.latency(subnet)
        if key not in self._acc:
            self._acc[key] = float(self.accuracy_fn(subnet))
            cand = Candidate(subnet, lat, self._acc[key], self.reward(self._acc[key], lat))
            self.history.append(cand)
            return cand
        return Candidate(subnet, lat, self._acc[key], self.reward(self._acc[key], lat))

    @property
    def evaluations(self) -> int:
        return len(self._acc)

    def check_target(self) -> float:
        """The smallest subnet's latency; ``InfeasibleTarget`` if even it misses a hard target."""
        smallest = self.latency(self.space.smallest())
        if self.mode == "hard" and smallest > self.target_ms:
            raise InfeasibleTarget(
                f"target {self.target_ms:g} ms is below the fastest architecture of space {self.space.name!r} "
                f"(its smallest subnet: {smallest:.4g} ms)"
            )
        return smallest


# --- genetic operators -------------------------------------------------------------------------------------------
def mutate(space: SearchSpace, subnet: Subnet, rng: random.Random, *, prob: float,
           genes: Iterable[str] = GENES) -> Subnet:
    """Resample each of ``subnet``'s allowed genes with probability ``prob``."""
    genes = set(genes)
    res = rng.choice(space.resolutions) if "resolution" in genes and rng.random() < prob else subnet.resolution
    last = rng.choice(space.last_chs) if "last" in genes and rng.random() < prob else subnet.last_chs
    f = subnet.fused
    if "fused" in genes:
        f = StageChoice(
            width=rng.choice(space.fused.widths) if rng.random() < prob else f.width,
            depth=rng.choice(space.fused.depths) if rng.random() < prob else f.depth,
            blocks=tuple(BlockChoice(expand_ratio=rng.choice(space.fused.expand_ratios)) if rng.random() < prob
                         else b for b in f.blocks),
        )
    stages = []
    for c, s in zip(subnet.stages, space.stages):
        width = rng.choice(s.widths) if "width" in genes and rng.random() < prob else c.width
        depth = rng.choice(s.depths) if "depth" in genes and rng.random() < prob else c.depth
        blocks = tuple(rng.choice(s.block_options(i)) if "block" in genes and rng.random() < prob else b
                       for i, b in enumerate(c.blocks))
        stages.append(StageChoice(width=width, depth=depth, blocks=blocks))
    return Subnet(resolution=res, fused=f, stages=tuple(stages), last_chs=last)


def crossover(a: Subnet, b: Subnet, rng: random.Random, *, genes: Iterable[str] = GENES) -> Subnet:
    """Uniform crossover: each allowed gene from either parent (the rest from ``a``)."""
    genes = set(genes)

    def pick(x: Any, y: Any, gene: str) -> Any:
        return (x if rng.random() < 0.5 else y) if gene in genes else x

    f = StageChoice(width=pick(a.fused.width, b.fused.width, "fused"), depth=pick(a.fused.depth, b.fused.depth, "fused"),
                    blocks=tuple(pick(x, y, "fused") for x, y in zip(a.fused.blocks, b.fused.blocks)))
    stages = tuple(
        StageChoice(width=pick(ca.width, cb.width, "width"), depth=pick(ca.depth, cb.depth, "depth"),
                    blocks=tuple(pick(x, y, "block") for x, y in zip(ca.blocks, cb.blocks)))
        for ca, cb in zip(a.stages, b.stages)
    )
    return Subnet(resolution=pick(a.resolution, b.resolution, "resolution"), fused=f, stages=stages,
                  last_chs=pick(a.last_chs, b.last_chs, "last"))


def _feasible_sample(obj: Objective, rng: random.Random, make: Callable[[], Subnet], tries: int = 200) -> Subnet | None:
    for _ in range(tries):
        s = obj.space.canonical(make())
        if obj.feasible(s):
            return s
    return None


# --- strategies --------------------------------------------------------------------------------------------------
def random_search(obj: Objective, *, samples: int, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Best of ``samples`` random feasible architectures (the baseline)."""
    obj.check_target()
    rng = random.Random(seed)
    cands: list[Candidate] = []
    seen: set[tuple] = set()
    for i in range(samples * 20):
        if len(cands) >= samples:
            break
        s = _feasible_sample(obj, rng, lambda: obj.space.sample(rng))
        if s is None:
            break
        if s.key() in seen:
            continue
        seen.add(s.key())
        cands.append(obj.evaluate(s))
        if progress:
            progress(len(cands), samples)
    if not cands:
        s = obj.space.smallest()
        cands.append(obj.evaluate(s))
    best = max(cands, key=lambda c: c.reward)
    return SearchResult(best=best, history=list(obj.history), strategy="random")


def evolutionary_search(obj: Objective, *, population: int = 24, generations: int = 8, parents: int = 8,
                        mutate_prob: float = 0.15, crossover_fraction: float = 0.5, seed: int = 0,
                        genes: Iterable[str] = GENES, init: Iterable[Subnet] = (),
                        repair: Callable[[Subnet], Subnet] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Evolution under ``obj`` (hard limit: only feasible architectures enter the population).

    ``genes`` restricts what mutation and crossover may change; ``repair`` maps every new architecture back into
    a sub-space (the coarse stage's fixed blocks); ``init`` seeds the population.
    """
    if population < 2 or parents < 1 or parents > population or generations < 0:
        raise ValueError(f"need population >= 2, 1 <= parents <= population, generations >= 0; got "
                         f"{population}, {parents}, {generations}")
    obj.check_target()
    genes = tuple(genes)
    rng = random.Random(seed)
    space = obj.space
    pop: list[Candidate] = []
    seen: set[tuple] = set()

    def admit(s: Subnet) -> None:
        s = space.canonical(s)
        if repair is not None:
            s = repair(s)
        if s.key() in seen or not obj.feasible(s):
            return
        seen.add(s.key())
        pop.append(obj.evaluate(s))

    for s in init:
        admit(s)
    seeds = list(init)
    for _ in range(population * 20):
        if len(pop) >= population:
            break
        if seeds and genes != GENES:  # a restricted search varies its seed architectures, not random ones
            base = rng.choice(seeds)
            s = _feasible_sample(obj, rng, lambda: mutate(space, base, rng, prob=0.5, genes=genes))
        else:
            s = _feasible_sample(obj, rng, lambda: space.sample(rng))
        if s is None:
            break
        admit(s)
    if not pop:  # hard target met only by the smallest architecture
        admit(space.smallest())
    total = generations
    for gen in range(generations):
        pop.sort(key=lambda c: c.reward, reverse=True)
        elite = pop[:parents]
        pop = list(elite)
        for _ in range((population - parents) * 30):
            if len(pop) >= population:
                break
            if rng.random() < crossover_fraction and len(elite) > 1:
                a, b = rng.sample(elite, 2)
                child = mutate(space, crossover(a.subnet, b.subnet, rng, genes=genes), rng, prob=mutate_prob / 2,
                               genes=genes)
            else:
                child = mutate(space, rng.choice(elite).subnet, rng, prob=mutate_prob, genes=genes)
            admit(child)
        if progress:
            progress(gen + 1, total)
    best = max(pop + obj.history if obj.mode == "soft" else [c for c in obj.history if obj.feasible(c.subnet)],
               key=lambda c: c.reward)
    return SearchResult(best=best, history=list(obj.history), strategy="evolution")


def coarse_subnet(space: SearchSpace, subnet: Subnet) -> Subnet:
    """``subnet`` with every UIB block fixed to MobileNetV4's coarse-stage default (IB, 3×3 DW, expansion 4),
    or the nearest choice the space allows."""
    stages = []
    for c, s in zip(subnet.stages, space.stages):
        blocks = []
        for i in range(len(c.blocks)):
            opts = [b for b in s.block_options(i) if not b.mqa]

            def dist(b: BlockChoice) -> tuple:
                return ((b.start_dw_kernel is not None) != False,  # noqa: E712  prefer no start DW
                        abs((b.mid_dw_kernel or 0) - 3), abs(b.expand_ratio - 4.0))

            blocks.append(min(opts, key=dist))
        stages.append(dataclasses.replace(c, blocks=tuple(blocks)))
    return dataclasses.replace(subnet, stages=tuple(stages))


def two_stage_search(obj: Objective, *, population: int = 16, coarse_generations: int = 4,
                     fine_generations: int = 4, parents: int = 6, mutate_prob: float = 0.2, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """MobileNetV4's coarse → fine schedule as two evolutions sharing one cache."""
    obj.check_target()
    space = obj.space
    rng = random.Random(seed)
    total = coarse_generations + fine_generations

    def prog(offset: int) -> Callable[[int, int], None] | None:
        return (lambda i, _n: progress(offset + i, total)) if progress else None

    init = []
    for _ in range(population * 20):
        if len(init) >= population:
            break
        s = coarse_subnet(space, space.canonical(space.sample(rng)))
        if obj.feasible(s):
            init.append(s)
    if not init:
        init = [coarse_subnet(space, space.smallest())]
    # coarse: every block fixed, so mutations and crossovers only touch resolution, widths, depths
    coarse = evolutionary_search(obj, population=population, generations=coarse_generations, parents=parents,
                                 mutate_prob=mutate_prob, seed=seed, genes=COARSE_GENES, init=init,
                                 repair=lambda s: coarse_subnet(space, s), progress=prog(0))
    coarse_best = coarse.best.subnet
    fine = evolutionary_search(obj, population=population, generations=fine_generations, parents=parents,
                               mutate_prob=mutate_prob, seed=seed + 1, genes=FINE_GENES, init=[coarse_best],
                               progress=prog(coarse_generations))
    best = max([coarse.best, fine.best], key=lambda c: c.reward)
    return SearchResult(best=best, history=list(obj.history), strategy="two-stage")


STRATEGIES = ("evolution", "two-stage", "random")


def run_strategy(name: str, obj: Objective, *, budget: int, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Run strategy ``name`` with about ``budget`` accuracy evaluations."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {name!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 4:
        raise ValueError(f"budget must be an int >= 4, got {budget!r}")
    if name == "random":
        return random_search(obj, samples=budget, seed=seed, progress=progress)
    population = max(4, min(24, budget // 4))
    parents = max(2, population // 3)
    per_gen = population - parents
    if name == "evolution":
        gens = max(1, (budget - population) // per_gen)
        return evolutionary_search(obj, population=population, generations=gens, parents=parents, seed=seed,
                                   progress=progress)
    gens = max(2, (budget - population) // per_gen)
    return two_stage_search(obj, population=population, coarse_generations=gens // 2,
                            fine_generations=gens - gens // 2, parents=parents, seed=seed, progress=progress)
