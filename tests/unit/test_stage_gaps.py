from townhall.stage.gaps import RecentMaximum


def test_the_longest_gap_of_the_window_and_only_of_it() -> None:
    gaps = RecentMaximum(window_s=10.0)
    gaps.add(0.020, 100.0)
    gaps.add(0.150, 100.5)  # a stall
    gaps.add(0.021, 101.0)
    assert gaps.value(101.0) == 0.150
    assert gaps.value(110.9) == 0.150  # still within ten seconds
    assert gaps.value(111.1) == 0.021
    assert gaps.value(112.1) == 0.0


def test_bounded_by_the_window_whatever_the_rate() -> None:
    gaps = RecentMaximum(window_s=5.0)
    for i in range(100_000):
        gaps.add(0.02, 1000.0 + i * 0.02)
    assert len(gaps._buckets) <= 7
