"""The static memory planner on its own (pure Python: no torch needed)."""

import random

import pytest

from mlpack.lower.memory_plan import ALIGNMENT, Buffer, plan


def _live_max(buffers):
    steps = max(b.last for b in buffers) + 1
    return max(sum(b.size for b in buffers if b.first <= t <= b.last) for t in range(steps))


def _assert_valid(p):
    for i, a in enumerate(p.buffers):
        assert a.offset >= 0 and a.offset % ALIGNMENT == 0
        assert a.offset + a.size <= p.arena_bytes
        for b in p.buffers[i + 1:]:
            if a.first <= b.last and b.first <= a.last:  # alive together -> disjoint bytes
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


def test_chain_reuses_memory():
    # a -> b -> c -> d, each only feeding the next: two buffers' worth is enough
    bufs = [Buffer(1024, i, i + 1) for i in range(4)]
    p = plan(bufs)
    _assert_valid(p)
    assert p.sum_bytes == 4096
    assert p.lower_bound_bytes == 2048
    assert p.arena_bytes == 2048


def test_all_alive_needs_the_sum():
    bufs = [Buffer(64 * (i + 1), 0, 5) for i in range(5)]
    p = plan(bufs)
    _assert_valid(p)
    assert p.arena_bytes == p.sum_bytes == p.lower_bound_bytes


def test_empty_plan():
    p = plan([])
    assert p.arena_bytes == 0 and p.sum_bytes == 0 and p.buffers == []


@pytest.mark.parametrize("seed", range(20))
def test_random_lifetimes_are_valid_and_never_below_bound(seed):
    rng = random.Random(seed)
    bufs = []
    for _ in range(rng.randint(1, 60)):
        first = rng.randint(0, 100)
        bufs.append(Buffer(ALIGNMENT * rng.randint(1, 500), first, first + rng.randint(0, 30)))
    p = plan(bufs)
    _assert_valid(p)
    assert p.lower_bound_bytes == _live_max(bufs)
    assert p.lower_bound_bytes <= p.arena_bytes <= p.sum_bytes
