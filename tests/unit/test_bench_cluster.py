"""The cluster benchmark's report: what it says about growth and cost."""

from __future__ import annotations

from benchmarks.cluster import ClusterResult, CostRow, OffloadStep


def step(listeners: int, origin_cpu: float, edge_req_s: float) -> OffloadStep:
    return OffloadStep(listeners, origin_cpu, 14_000.0, edge_req_s, 3.0, 0)


def test_the_table_gives_the_growth_ratios_and_the_cost_ratio() -> None:
    result = ClusterResult(
        offload=[step(1_000, 10.0, 8.0), step(20_000, 11.0, 8.0)],
        cost=[CostRow("edge", 5_000, 20.0), CostRow("single node", 5_000, 16.0)],
        restart_s=[2.0, 3.0, 2.5],
        restart_same_part=[True, True, False],
    )
    text = result.table()
    assert "audience x20: origin CPU x1.10, edge requests x1.00" in text
    assert "edge/single per listener: 1.25" in text
    assert "serves after 2.50 s (median of 3" in text and "2/3" in text
    assert result.to_json()["restart_s"] == [2.0, 3.0, 2.5]


def test_cost_per_thousand_listeners() -> None:
    assert CostRow("edge", 4_000, 10.0).cpu_per_1000 == 2.5
    assert CostRow("edge", 0, 10.0).cpu_per_1000 == 10_000.0
