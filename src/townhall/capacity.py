"""What an event of N listeners needs: edges, cores, egress, JetStream, the cache tier.

Pure arithmetic over figures this project measured on its own benchmarks (each one is
named in ``MEASURED`` with the command and result file it comes from); docs/capacity.md
explains the model. The model is deliberately linear: per-core figures times a target
utilisation, because the benchmarks show the costs are per listener (Ogg) or per request
(LL-HLS) and nothing in between grows faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measured:
    value: float
    unit: str
    source: str


# Figures from benchmarks/results (2-core machines, noisy: medians of alternating runs).
MEASURED: dict[str, Measured] = {
    "ogg_listeners_per_core": Measured(
        30_000,
        "Ogg listeners on one core at 75% mean CPU, lateness p99 0.165 s, 0 failed",
        "python -m benchmarks fanout --listeners 30000 (fanout-30000-3workers-session3.txt)",
    ),
    "ogg_core_utilisation": Measured(
        0.75,
        "mean CPU of that core at that load",
        "fanout-30000-3workers-session3.txt",
    ),
    "hls_requests_per_core": Measured(
        33_496,
        "LL-HLS playlist requests a second on one core (parts: 44,136)",
        "python -m benchmarks fanout, wrk -c200 (fanout-30000-3workers-session3.txt)",
    ),
    "cache_requests_per_core": Measured(
        31_558,
        "requests a second nginx serves on one core (the cache tier's kind of server)",
        "python -m benchmarks fanout, nginx playlist (fanout-30000-3workers-session3.txt)",
    ),
    "joins_per_core_s": Measured(
        2_000,
        "Ogg joins a second on one core: 20,000 over 10 s, first audio p99 0.78 s",
        "python -m benchmarks flash (flash-20000-over-10s-session3.txt)",
    ),
    "part_bytes": Measured(
        3_270,
        "bytes of one 0.5 s LL-HLS part (48 kbit/s Opus in fMP4)",
        "a part of the 440 Hz program at an edge (python -m benchmarks cluster, cluster-20000.txt)",
    ),
    "ogg_bits_per_s": Measured(
        50_600,
        "Ogg/Opus stream bit rate on the wire (48 kbit/s Opus + Ogg pages)",
        "one Ogg listener's stream at an edge (python -m benchmarks cluster, cluster-20000.txt)",
    ),
    "playlist_bytes": Measured(
        1_332,
        "bytes of an LL-HLS playlist (its window of 0.5 s parts and 2 s segments)",
        "GET /live/{id}/index.m3u8 at an edge (python -m benchmarks cluster, cluster-20000.txt)",
    ),
    "cache_edge_requests_per_part": Measured(
        2.0,
        "LL-HLS requests one cache node sends an edge per part and per Space, whatever the "
        "audience (a blocking playlist and a part): two caches sent their edges 8.0/s with "
        "1,000 listeners and 7.3/s with 20,000",
        "python -m benchmarks cluster (cluster-20000.txt)",
    ),
}


@dataclass(frozen=True)
class PlanInput:
    listeners: int
    ogg_share: float = 0.3
    # Cores are planned to this share of their measured capacity: headroom for a join
    # storm and for the machine's own noise.
    target_utilisation: float = 0.6
    cores_per_edge: int = 8
    part_s: float = 0.5
    # Spaces the cluster carries at once (each is one program in JetStream).
    spaces: int = 1
    # The join storm the plan must absorb: this many listeners arriving in this long.
    storm_listeners: int = 1_000_000
    storm_s: float = 60.0
    # Cache nodes requests go through before an edge (0: players hit the edges).
    cache_nodes: int = 0
    measured: dict[str, Measured] = field(default_factory=lambda: dict(MEASURED))

    def figure(self, name: str) -> float:
        return self.measured[name].value


@dataclass(frozen=True)
class Plan:
    ogg_listeners: int
    hls_listeners: int
    edge_cores: int
    edges: int
    egress_bits_s: float
    hls_requests_s: float  # what the players send
    edge_hls_requests_s: float  # what reaches the edges (all of it without a cache tier)
    cache_cores: int
    jetstream_msgs_in_s: float
    jetstream_bytes_out_s: float
    storm_joins_s: float
    storm_cores: int


def plan(p: PlanInput) -> Plan:
    if p.listeners < 0 or not 0.0 <= p.ogg_share <= 1.0:
        raise ValueError("listeners must be >= 0 and the Ogg share between 0 and 1")
    ogg = round(p.listeners * p.ogg_share)
    hls = p.listeners - ogg
    u = p.target_utilisation
    per_core_ogg = p.figure("ogg_listeners_per_core") / p.figure("ogg_core_utilisation") * u
    # A low-latency HLS player asks for one blocking playlist and one part per part.
    hls_req_s = hls * 2 / p.part_s
    edge_hls_req_s = edge_hls_requests(p) if p.cache_nodes else hls_req_s
    hls_cores = edge_hls_req_s / (p.figure("hls_requests_per_core") * u)
    edge_cores = max(1, math.ceil(ogg / per_core_ogg + hls_cores))
    edges = max(2, math.ceil(edge_cores / p.cores_per_edge))  # two: one may fail
    cache_cores = (
        math.ceil(hls_req_s / (p.figure("cache_requests_per_core") * u)) if p.cache_nodes else 0
    )
    hls_bits_s = (p.figure("part_bytes") + p.figure("playlist_bytes")) * 8 / p.part_s
    # JetStream: each Space's program is one message per part (with its Ogg pages),
    # published once and read once by each edge.
    message_bytes = p.figure("part_bytes") + p.figure("ogg_bits_per_s") / 8 * p.part_s
    msgs_in_s = p.spaces / p.part_s
    storm = p.storm_listeners / p.storm_s
    return Plan(
        ogg_listeners=ogg,
        hls_listeners=hls,
        edge_cores=edge_cores,
        edges=edges,
        egress_bits_s=ogg * p.figure("ogg_bits_per_s") + hls * hls_bits_s,
        hls_requests_s=hls_req_s,
        edge_hls_requests_s=edge_hls_req_s,
        cache_cores=cache_cores,
        jetstream_msgs_in_s=msgs_in_s,
        jetstream_bytes_out_s=msgs_in_s * message_bytes * edges,
        storm_joins_s=storm,
        storm_cores=math.ceil(storm / (p.figure("joins_per_core_s") * u)),
    )


def edge_hls_requests(p: PlanInput) -> float:
    """Behind a cache with request collapsing, the edges see one blocking playlist and one
    part per part and per cache node, whatever the audience: the point of the tier."""
    return p.spaces * p.cache_nodes * p.figure("cache_edge_requests_per_part") / p.part_s


def lines(r: Plan, p: PlanInput) -> list[tuple[str, str, str]]:
    """(what, how much, from which measured figures)."""
    cache = f"behind {p.cache_nodes} cache nodes" if p.cache_nodes else "no cache tier"
    return [
        ("listeners", f"{p.listeners:,} ({r.ogg_listeners:,} Ogg, {r.hls_listeners:,} LL-HLS)",
         "input"),
        ("edge cores", f"{r.edge_cores:,} at {p.target_utilisation:.0%} of measured capacity",
         "ogg_listeners_per_core, hls_requests_per_core"),
        ("edges", f"{r.edges:,} of {p.cores_per_edge} cores (at least 2)", "edge cores"),
        ("egress", f"{r.egress_bits_s / 1e9:,.1f} Gbit/s",
         "ogg_bits_per_s, part_bytes, playlist_bytes"),
        ("LL-HLS requests", f"{r.hls_requests_s:,.0f}/s from players", "2 per part per player"),
        ("at the edges", f"{r.edge_hls_requests_s:,.0f}/s ({cache})",
         "cache_edge_requests_per_part"),
        ("cache tier", f"{r.cache_cores:,} cores" if p.cache_nodes else "none",
         "cache_requests_per_core"),
        ("JetStream", f"{r.jetstream_msgs_in_s:,.0f} msgs/s in, "
         f"{r.jetstream_bytes_out_s / 1e6:,.2f} MB/s out to {r.edges} edges",
         "one message per part per Space, part_bytes + ogg_bits_per_s"),
        ("join storm", f"{r.storm_joins_s:,.0f} joins/s ({p.storm_listeners:,} in "
         f"{p.storm_s:.0f} s) needs {r.storm_cores:,} edge cores", "joins_per_core_s"),
    ]  # fmt: skip


def render(result: Plan, p: PlanInput) -> str:
    rows = lines(result, p)
    width = max(len(what) for what, _, _ in rows)
    out = [f"{what:<{width}}  {amount}   [{basis}]" for what, amount, basis in rows]
    out.append("")
    out.append("measured figures (benchmarks/results):")
    used = sorted(p.measured)
    out += [f"  {name} = {p.measured[name].value:,.6g}: {p.measured[name].unit}; "
            f"{p.measured[name].source}" for name in used]  # fmt: skip
    return "\n".join(out)


def parse_mix(text: str) -> float:
    """``ogg=0.3,hls=0.7`` → the Ogg share (0.3). The shares must add up to 1."""
    shares: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in ("ogg", "hls") or not value:
            raise ValueError(f"a mix is ogg=SHARE,hls=SHARE, not {text!r}")
        shares[name.strip()] = float(value)
    ogg = shares.get("ogg", 1.0 - shares.get("hls", 0.0))
    hls = shares.get("hls", 1.0 - ogg)
    if not (0.0 <= ogg <= 1.0 and math.isclose(ogg + hls, 1.0, abs_tol=1e-6)):
        raise ValueError(f"the shares of {text!r} must be between 0 and 1 and add up to 1")
    return ogg
