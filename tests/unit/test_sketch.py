"""The distinct-session estimator: fixed memory, within 2 % at a million, mergeable."""

from __future__ import annotations

import tracemalloc

from townhall.room.sketch import EXACT_BELOW, REGISTERS, DistinctSketch


def test_a_million_distinct_ids_are_estimated_within_two_percent() -> None:
    sketch = DistinctSketch()
    sketch.add_many(f"session-{i}" for i in range(1_000_000))
    assert abs(sketch.estimate() - 1_000_000) <= 20_000, sketch.estimate()


def test_repeats_do_not_count() -> None:
    sketch = DistinctSketch()
    for _ in range(3):
        sketch.add_many(f"s{i}" for i in range(50_000))
    assert abs(sketch.estimate() - 50_000) <= 1_000


def test_small_audiences_are_exact() -> None:
    sketch = DistinctSketch()
    for i in range(EXACT_BELOW - 1):
        sketch.add(f"p{i}")
        sketch.add(f"p{i}")
        assert sketch.estimate() == i + 1


def test_memory_is_constant_past_the_exact_range() -> None:
    sketch = DistinctSketch()
    sketch.add_many(f"warm-{i}" for i in range(10_000))
    assert sketch.nbytes == REGISTERS
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):
            sketch.add(f"more-{i}")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sketch.nbytes == REGISTERS
    assert grown < 4_096, f"{grown} bytes kept for 200,000 more ids"


def test_sketches_merge_into_the_union_of_their_audiences() -> None:
    edge_a, edge_b = DistinctSketch(), DistinctSketch()
    edge_a.add_many(f"s{i}" for i in range(0, 60_000))
    edge_b.add_many(f"s{i}" for i in range(40_000, 100_000))  # 20,000 heard both
    edge_a.merge(edge_b)
    assert abs(edge_a.estimate() - 100_000) <= 2_000
    # Through the wire form, and a small exact sketch into a big one.
    copy = DistinctSketch.from_registers(edge_a.registers())
    small = DistinctSketch()
    for i in range(10):
        small.add(f"s{i}")
    copy.merge(small)
    assert copy.estimate() == edge_a.estimate()
    both_small = DistinctSketch()
    both_small.add("x")
    both_small.merge(small)
    assert both_small.estimate() == 11
