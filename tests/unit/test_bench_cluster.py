"""The cluster benchmark's report: what it says about growth and cost, and its verdicts."""

from __future__ import annotations

from benchmarks.cluster import (
    ClusterResult,
    CostRow,
    OffloadStep,
    Options,
    expected_seconds,
    main,
)


def step(
    listeners: int,
    origin_cpu: float = 15.0,
    edge_req_s: float = 8.0,
    out_b_s: float = 13_000.0,
    failed: int = 0,
) -> OffloadStep:
    hls = listeners // 10
    return OffloadStep(
        listeners=listeners,
        ogg=listeners - hls,
        hls=hls,
        origin_cpu_percent=origin_cpu,
        origin_publish_bytes_s=out_b_s,
        nats_cpu_percent=1.0,
        edge_requests_s=edge_req_s if listeners else 0.0,
        edges_cpu_percent=2.0 + listeners / 1000,
        caches_cpu_percent=listeners / 500,
        crowd_cpu_percent=listeners / 400,
        with_media=listeners - failed,
        failed=failed,
        steady_lateness_p99_s=0.5 if listeners else None,
    )


def flat() -> ClusterResult:
    return ClusterResult(
        offload=[step(0), step(1_000, 16.0), step(20_000, 16.5, 8.4, 13_400.0)],
        cost=[
            CostRow("edge", 5_000, 10.0),
            CostRow("single node", 5_000, 20.0),
            CostRow("edge", 5_000, 12.0),
            CostRow("single node", 5_000, 22.0),
        ],
        restart_s=[2.0, 3.0, 2.5],
        restart_same_part=[True, True, True],
        load_average=[1.0, 2.5],
        model_edge_requests_s=8.0,
    )


def verdicts(result: ClusterResult) -> dict[str, bool]:
    return {v.what.split(" as ")[0].split(",")[0]: v.ok for v in result.verdicts()}


def test_the_table_gives_the_growth_ratios_the_cost_medians_and_the_machine() -> None:
    text = flat().table()
    assert "audience x20: origin CPU x1.03, cache->edge requests x1.05" in text
    # Medians of the alternating rounds: edge 2.2, single node 4.2 per 1,000.
    assert "medians: edge 2.20%, single node 4.20% per 1,000 listeners" in text
    assert "edge/single per listener: 0.52" in text
    assert "2.50 s median (of 3" in text and "3/3" in text
    assert "load average (1 min) 1.00 -> 2.50" in text
    assert "FAIL" not in text


def test_a_flat_origin_passes_every_verdict() -> None:
    assert all(verdicts(flat()).values())
    assert len(flat().verdicts()) == 5


def test_an_origin_whose_cpu_grows_with_the_audience_fails() -> None:
    result = flat()
    result.offload[-1] = step(20_000, origin_cpu=25.0)
    got = verdicts(result)
    assert got["origin CPU flat"] is False and got["origin bytes out flat"] is True


def test_the_reference_is_the_mean_of_the_windows_before_and_after_the_crowds() -> None:
    result = flat()
    result.offload = [step(0, 11.5), step(1_000, 13.5), step(10_000, 14.9), step(0, 14.5)]
    assert result.reference() == (13.0, 13_000.0)
    # 14.9 against 11.5 alone would fail (bound 14.4); against both windows it holds.
    assert verdicts(result)["origin CPU flat"] is True
    assert "13.0% with no audience (11.5, 14.5)" in result.table()


def test_a_small_wobble_of_a_small_origin_is_still_flat() -> None:
    # 2 points of a core above a 4 % reference is noise, not growth.
    result = flat()
    result.offload = [step(0, 4.0), step(1_000, 5.5), step(20_000, 5.9)]
    assert verdicts(result)["origin CPU flat"] is True


def test_bytes_out_that_grow_with_the_audience_fail() -> None:
    result = flat()
    result.offload[-1] = step(20_000, out_b_s=15_000.0)
    assert verdicts(result)["origin bytes out flat"] is False


def test_cache_requests_that_grow_with_the_audience_fail() -> None:
    result = flat()
    result.offload[-1] = step(20_000, edge_req_s=40.0)
    assert verdicts(result)["cache->edge LL-HLS requests flat"] is False


def test_listeners_without_audio_fail() -> None:
    result = flat()
    result.offload[-1] = step(20_000, failed=3)
    assert verdicts(result)["every listener (Ogg and LL-HLS"] is False


def test_a_restart_that_numbers_differently_fails() -> None:
    result = flat()
    result.restart_same_part = [True, False, True]
    assert verdicts(result)["a restarted edge serves again"] is False


def test_the_json_holds_the_figures_and_the_verdicts() -> None:
    body = flat().to_json()
    assert body["restart_s"] == [2.0, 3.0, 2.5]
    assert [v["ok"] for v in body["verdicts"]] == [True] * 5  # type: ignore[union-attr]


def test_cost_per_thousand_listeners() -> None:
    assert CostRow("edge", 4_000, 10.0).cpu_per_1000 == 2.5
    assert CostRow("edge", 0, 10.0).cpu_per_1000 == 10_000.0


def test_the_full_run_fits_in_eight_minutes() -> None:
    # The defaults are the full scale the lead reruns: 1,000 to 20,000 listeners.
    assert expected_seconds(Options(steps=[1_000, 5_000, 10_000, 20_000])) <= 8 * 60


def test_a_bad_share_is_refused() -> None:
    import pytest

    with pytest.raises(SystemExit):
        main(["--hls-share", "2"])


def test_failure_reasons_are_grouped_without_the_listeners_own_urls() -> None:
    from benchmarks.cluster import reasons

    got = reasons(
        {
            "GET /live/Ek/index.m3u8?sid=lt0-777: status 504": 1,
            "GET /live/Ek/index.m3u8?sid=lt0-778: status 504": 2,
            "GET /live/Ek/p12.3.m4s?sid=lt0-9: status 404": 1,
            "no response head in time": 5,
        }
    )
    assert got == {
        "GET playlist: status 504": 3,
        "GET part: status 404": 1,
        "no response head in time": 5,
    }


def test_a_cache_carries_the_streams_its_descriptors_allow_and_the_rest_go_direct() -> None:
    from benchmarks.cluster import CACHE_FD_RESERVE, cache_nofile, split

    hls, via, direct = split(10_000, 0.1)
    assert hls == 1_000 and via + direct == 9_000
    assert 2 * via + hls + CACHE_FD_RESERVE <= cache_nofile()
    assert split(500, 0.1) == (50, 450, 0)


def test_varnish_starts_threads_for_its_share_of_the_piped_crowd() -> None:
    from benchmarks.cluster import VARNISH_SPARE_THREADS, split, varnish_threads

    _, piped, _ = split(10_000, 0.1)
    params = varnish_threads(Options(steps=[1_000, 20_000], hls_share=0.1))
    per_pool = -(-piped // 2) + VARNISH_SPARE_THREADS
    assert f"thread_pool_min={per_pool}" in params and "thread_pools=2" in params
    assert f"thread_pool_max={max(5_000, per_pool)}" in params
