"""The capacity model: its shape, not its numbers (those come from the benchmarks)."""

from __future__ import annotations

import pytest

from townhall.capacity import MEASURED, PlanInput, parse_mix, plan, render


def test_behind_a_cache_the_edges_see_the_same_requests_for_any_audience() -> None:
    small = plan(PlanInput(listeners=10_000, cache_nodes=4))
    huge = plan(PlanInput(listeners=8_000_000, cache_nodes=4))
    assert small.edge_hls_requests_s == huge.edge_hls_requests_s == 4 * 2 / 0.5
    assert huge.hls_requests_s == pytest.approx(small.hls_requests_s * 800)


def test_without_a_cache_the_edges_take_every_player_request() -> None:
    p = plan(PlanInput(listeners=1_000_000, ogg_share=0.0))
    assert p.edge_hls_requests_s == p.hls_requests_s == 1_000_000 * 4


def test_edge_cores_grow_linearly_with_ogg_listeners() -> None:
    one = plan(PlanInput(listeners=1_000_000, ogg_share=1.0))
    eight = plan(PlanInput(listeners=8_000_000, ogg_share=1.0))
    assert eight.edge_cores == pytest.approx(one.edge_cores * 8, rel=0.01)
    per_core = MEASURED["ogg_listeners_per_core"].value / MEASURED["ogg_core_utilisation"].value
    assert one.edge_cores == pytest.approx(1_000_000 / (per_core * 0.6), abs=1)


def test_there_are_always_two_edges_and_at_least_one_core() -> None:
    tiny = plan(PlanInput(listeners=1))
    assert tiny.edges == 2 and tiny.edge_cores == 1


def test_jetstream_carries_a_message_per_part_per_space_whatever_the_audience() -> None:
    a = plan(PlanInput(listeners=1_000, spaces=3))
    b = plan(PlanInput(listeners=5_000_000, spaces=3))
    assert a.jetstream_msgs_in_s == b.jetstream_msgs_in_s == 3 / 0.5
    assert b.jetstream_bytes_out_s / b.edges == pytest.approx(a.jetstream_bytes_out_s / a.edges)


def test_the_join_storm_rate() -> None:
    p = plan(PlanInput(listeners=1_000_000, storm_listeners=1_000_000, storm_s=60))
    assert p.storm_joins_s == pytest.approx(16_666.7, rel=1e-3)


def test_every_figure_used_is_printed_with_its_source() -> None:
    wanted = PlanInput(listeners=8_000_000, cache_nodes=40)
    text = render(plan(wanted), wanted)
    for name, figure in MEASURED.items():
        assert name in text and figure.source in text


@pytest.mark.parametrize(("mix", "ogg"), [("ogg=0.3,hls=0.7", 0.3), ("hls=1", 0.0), ("ogg=1", 1.0)])
def test_mixes(mix: str, ogg: float) -> None:
    assert parse_mix(mix) == pytest.approx(ogg)


@pytest.mark.parametrize("mix", ["ogg=0.5,hls=0.2", "ogg=2", "dash=1", "ogg", ""])
def test_bad_mixes_are_refused(mix: str) -> None:
    with pytest.raises(ValueError):
        parse_mix(mix)


def test_townhall_plan_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from townhall.cli import main

    assert main(["plan", "--listeners", "8000000", "--mix", "ogg=0.3,hls=0.7"]) == 0
    out = capsys.readouterr().out
    assert "8,000,000 (2,400,000 Ogg, 5,600,000 LL-HLS)" in out and "join storm" in out
    assert main(["plan", "--listeners", "10", "--mix", "ogg=3"]) == 2
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_every_figure_cites_a_result_file_that_exists() -> None:
    import re
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for name, figure in MEASURED.items():
        cited = re.findall(r"[\w.-]+\.txt", figure.source)
        assert cited, f"{name} cites no result file"
        for file in cited:
            assert (results / file).exists(), f"{name}: {file} is not in benchmarks/results"


def test_the_cluster_figures_are_the_ones_the_cluster_benchmark_printed() -> None:
    from pathlib import Path

    text = (
        Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "cluster-20000.txt"
    ).read_text()
    assert f"a part is {MEASURED['part_bytes'].value:,.0f} bytes" in text
    assert f"a playlist {MEASURED['playlist_bytes'].value:,.0f}" in text
    assert f"the Ogg stream {MEASURED['ogg_bits_per_s'].value / 1000:.1f} kbit/s" in text
