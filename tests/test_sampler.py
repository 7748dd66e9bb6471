"""The epoch plan: class frequencies per strategy, determinism, rank split, resume, locality.

Manifests are built directly with synthetic long-tailed labels (no images needed); the
expected class shares are computed here from the formulas, not by calling the sampler's own.
"""
from __future__ import annotations

import numpy as np
import pytest

from fishscale.config import Config, SamplerConfig
from fishscale.errors import FishscaleError
from fishscale.loader.build import build_loader
from fishscale.shards.manifest import Manifest, ShardInfo
from fishscale.loader.sampler import plan_epoch, rank_batches

COUNTS = [800, 400, 200, 120, 60, 30, 15, 8, 4, 2, 1]     # long tail, 1640 samples


def long_tailed_manifest(counts=COUNTS, per_shard: int = 100, seed: int = 0) -> Manifest:
    """Samples of `counts` per class, shuffled (as `fishscale shard` does), cut into shards."""
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    shards = []
    for number, start in enumerate(range(0, len(labels), per_shard)):
        part = labels[start:start + per_shard].tolist()
        hist = {str(c): part.count(c) for c in sorted(set(part))}
        shards.append(ShardInfo(f"train-{number:06d}.tar", f"train-{number:06d}.idx", len(part), 0, "",
                                hist, [f"k{start + i}" for i in range(len(part))], part))
    names = [f"species {c}" for c in range(len(counts))]
    return Manifest("train", names, ["family"] * len(counts), list(counts), [10, 100, 500],
                    ["ultra-rare", "minority", "neutral", "majority"], ["x"] * len(counts), shards,
                    num_samples=len(labels))


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return long_tailed_manifest()


def expected_shares(strategy: str, counts, threshold: float = 0.1) -> np.ndarray:
    n = np.asarray(counts, dtype=float)
    if strategy == "instance":
        w = n
    elif strategy == "sqrt":
        w = n ** 0.5
    elif strategy == "balanced":
        w = np.ones_like(n)
    elif strategy == "repeat-factor":
        w = n * np.maximum(1.0, np.sqrt(threshold / (n / n.sum())))
    return w / w.sum()


@pytest.mark.parametrize("strategy", ["instance", "sqrt", "balanced", "repeat-factor"])
@pytest.mark.parametrize("length", [None, 5000])
def test_class_frequencies_follow_strategy(manifest, strategy, length):
    cfg = SamplerConfig(strategy=strategy, epoch_length=length)
    total = length or manifest.num_samples
    observed = np.zeros(len(COUNTS))
    epochs = 4
    for epoch in range(epochs):
        plan = plan_epoch(manifest, cfg, seed=3, epoch=epoch)
        assert len(plan) == total
        counts = np.bincount(manifest.labels()[plan.sample_ids], minlength=len(COUNTS))
        # quotas are rounded systematically: each within 1 of its expectation, every epoch
        assert np.all(np.abs(counts - total * expected_shares(strategy, COUNTS)) < 1.0 + 1e-9), counts
        observed += counts
    # and the rounding is unbiased: averaged over epochs the shares converge
    np.testing.assert_allclose(observed / (epochs * total), expected_shares(strategy, COUNTS), atol=1.0 / total)


def test_instance_epoch_is_a_permutation(manifest):
    plan = plan_epoch(manifest, SamplerConfig(strategy="instance"), seed=0, epoch=0)
    assert sorted(plan.sample_ids.tolist()) == list(range(manifest.num_samples))


def test_repeat_factor_rounds_per_image_stochastically(manifest):
    """Every image of a class is repeated floor(r) or ceil(r) times; which ones vary by epoch."""
    labels = manifest.labels()
    cfg = SamplerConfig(strategy="repeat-factor", repeat_threshold=0.1)
    r = np.maximum(1.0, np.sqrt(0.1 / (np.asarray(COUNTS) / sum(COUNTS))))
    natural = int(round(float(np.dot(COUNTS, r))))
    cfg.epoch_length = natural                       # LVIS's own epoch: sum of repeat factors
    extra = []
    for epoch in range(3):
        plan = plan_epoch(manifest, cfg, seed=0, epoch=epoch)
        repeats = np.bincount(plan.sample_ids, minlength=len(labels))
        mean_repeat = r[labels]
        assert np.all(repeats >= np.floor(mean_repeat)) and np.all(repeats <= np.ceil(mean_repeat))
        rare = labels == 9                           # 2 images, r ~ 9.06: each 9 or 10 times
        assert set(repeats[rare].tolist()) <= {9, 10}
        frac_class = labels == 4                     # 60 images, r ~ 1.65: some twice, the rest once
        assert 1 < r[4] < 2
        extra.append(set(np.flatnonzero(frac_class & (repeats == 2)).tolist()))
        assert set(repeats[frac_class].tolist()) == {1, 2}
    assert extra[0] != extra[1] or extra[1] != extra[2]


def test_progressive_goes_from_instance_to_balanced(manifest):
    cfg = SamplerConfig(strategy="progressive", progressive_epochs=5)
    labels = manifest.labels()
    first = np.bincount(labels[plan_epoch(manifest, cfg, 0, epoch=0).sample_ids], minlength=len(COUNTS))
    middle = np.bincount(labels[plan_epoch(manifest, cfg, 0, epoch=2).sample_ids], minlength=len(COUNTS))
    last = np.bincount(labels[plan_epoch(manifest, cfg, 0, epoch=4).sample_ids], minlength=len(COUNTS))
    after = np.bincount(labels[plan_epoch(manifest, cfg, 0, epoch=9).sample_ids], minlength=len(COUNTS))
    n = manifest.num_samples
    assert first.tolist() == COUNTS
    half = n * (0.5 * expected_shares("instance", COUNTS) + 0.5 / len(COUNTS))
    assert np.all(np.abs(middle - half) < 1.0 + 1e-9)
    assert np.all(np.abs(last - n / len(COUNTS)) < 1.0 + 1e-9)
    assert after.tolist() == last.tolist() or np.all(np.abs(after - n / len(COUNTS)) < 1.0 + 1e-9)
    # without progressive_epochs it follows the run's epochs; without either it refuses
    with pytest.raises(FishscaleError, match="progressive"):
        plan_epoch(manifest, SamplerConfig(strategy="progressive"), 0, 0)
    by_run = plan_epoch(manifest, SamplerConfig(strategy="progressive"), 0, 4, num_epochs=5)
    assert np.array_equal(by_run.sample_ids, plan_epoch(manifest, cfg, 0, epoch=4).sample_ids)


def test_plan_is_deterministic_and_varies_by_epoch_and_seed(manifest):
    cfg = SamplerConfig(strategy="sqrt")
    a = plan_epoch(manifest, cfg, seed=1, epoch=2).sample_ids
    assert np.array_equal(a, plan_epoch(manifest, cfg, seed=1, epoch=2).sample_ids)
    assert not np.array_equal(a, plan_epoch(manifest, cfg, seed=1, epoch=3).sample_ids)
    assert not np.array_equal(a, plan_epoch(manifest, cfg, seed=2, epoch=2).sample_ids)


def test_unknown_strategy_and_bad_window_are_errors(manifest):
    with pytest.raises(FishscaleError, match="strategy"):
        plan_epoch(manifest, SamplerConfig(strategy="uniform"), 0, 0)
    with pytest.raises(FishscaleError, match="window_shards"):
        plan_epoch(manifest, SamplerConfig(window_shards=0), 0, 0)


@pytest.mark.parametrize("world_size,micro", [(1, 48), (2, 12), (4, 12), (8, 6)])
def test_ranks_disjoint_equal_and_world_size_independent(manifest, world_size, micro):
    plan = plan_epoch(manifest, SamplerConfig(strategy="balanced"), seed=0, epoch=1)
    global_batch = 48
    per_rank = [rank_batches(plan, global_batch, r, world_size, micro) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1                      # same number of batches
    assert all(len(batch) == micro for batches in per_rank for batch in batches)
    steps = len(plan) // global_batch
    per_step = global_batch // world_size // micro
    for step in range(steps):
        chunks = [np.concatenate(per_rank[r][step * per_step:(step + 1) * per_step]) for r in range(world_size)]
        joined = np.concatenate(chunks)
        assert len(set(joined.tolist())) == global_batch              # disjoint, nothing lost
        # the global batch is the same contiguous slice of the plan whatever the world size
        assert joined.tolist() == list(range(step * global_batch, (step + 1) * global_batch))


def _cfg(**sampler) -> Config:
    cfg = Config()
    cfg.data.backend = "torch"
    cfg.train.batch_size = 32
    cfg.sampler = SamplerConfig(**sampler)
    return cfg


@pytest.mark.parametrize("resume_world", [1, 2, 4])
def test_mid_epoch_resume_replays_the_tail(manifest, resume_world):
    """Stop after k global batches on 2 ranks; resume on `resume_world` ranks: same global tail."""
    cfg = _cfg(strategy="sqrt")
    cfg.train.grad_accum = 2
    full = [build_loader(cfg, manifest, train=True, rank=r, world_size=2, epoch=3) for r in range(2)]

    def global_order(loaders, grad_accum):
        per_step = [np.split(l.sample_ids, len(l) // grad_accum) for l in loaders]
        return np.concatenate([np.concatenate(step) for step in zip(*per_step)])

    uninterrupted = global_order(full, 2)
    consumed = 7
    cfg.train.grad_accum = 4 // resume_world               # keep the global batch at 32
    resumed = [build_loader(cfg, manifest, train=True, rank=r, world_size=resume_world, epoch=3,
                            start_batch=consumed) for r in range(resume_world)]
    tail = global_order(resumed, cfg.train.grad_accum)
    assert np.array_equal(tail, uninterrupted[consumed * 32:])
    steps_left = len(manifest.labels()) // 32 - consumed
    assert all(len(l) == steps_left * cfg.train.grad_accum for l in resumed)
    with pytest.raises(FishscaleError, match="start_batch"):
        build_loader(cfg, manifest, train=True, start_batch=10_000)


@pytest.mark.parametrize("window_shards", [1, 3])
def test_reads_stay_within_windows(manifest, window_shards):
    plan = plan_epoch(manifest, SamplerConfig(strategy="balanced", window_shards=window_shards), seed=0, epoch=0)
    shard_of, _ = manifest.shard_of_sample()
    for rank in range(4):
        positions = np.concatenate(rank_batches(plan, 32, rank, 4, 8))
        windows = plan.windows[positions]
        assert np.all(np.diff(windows) >= 0)                       # a window is finished, never revisited
        for w in np.unique(windows):
            assert len(set(shard_of[plan.sample_ids[positions[windows == w]]].tolist())) <= window_shards
    # inside a window the order is shuffled: neither shard by shard nor in tar order
    first = plan.sample_ids[plan.windows == plan.windows[0]]
    assert not np.all(np.diff(first) >= 0)
    if window_shards > 1:
        assert not np.all(np.diff(shard_of[first]) >= 0)


def test_eval_takes_every_sample_once_in_order(manifest):
    cfg = _cfg()
    loaders = [build_loader(cfg, manifest, train=False, rank=r, world_size=3, batch_size=50) for r in range(3)]
    ids = np.concatenate([l.sample_ids for l in loaders])
    assert ids.tolist() == list(range(manifest.num_samples))
    for l in loaders:
        sizes = [len(b) for _, b in l.batches]
        assert all(s == 50 for s in sizes[:-1]) and 0 < sizes[-1] <= 50 and len(l) == len(sizes)


def test_train_batch_size_must_divide(manifest):
    cfg = _cfg()
    cfg.train.batch_size = 30
    with pytest.raises(FishscaleError, match="divisible"):
        build_loader(cfg, manifest, train=True, world_size=4)
    with pytest.raises(FishscaleError, match="micro batch"):
        build_loader(cfg, manifest, train=True, world_size=3, batch_size=4)
