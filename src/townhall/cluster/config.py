"""The cluster's settings: where NATS is, and how much of the program JetStream keeps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterConfig:
    # Comma-separated NATS URLs (nats://host:port,...); empty: one machine, no cluster.
    nats_urls: str = ""
    # Copies of each stream: 3 on a three-server cluster, so losing one loses nothing.
    stream_replicas: int = 3
    # How long the program stream keeps parts; an edge that starts replays all of it to
    # rebuild the LL-HLS window and the Ogg join burst. At least a minute.
    program_retention_s: float = 120.0
    # How long the last Ogg header, init segment and room of a Space are kept: longer
    # than any Space runs, so an edge started late can still open it.
    heads_retention_s: float = 7 * 24 * 3600.0
    # A publish the cluster does not acknowledge within this is retried (the part's
    # message id makes a retry that did land a no-op).
    publish_timeout_s: float = 2.0
    # Messages waiting for the cluster while it is unreachable; past this the oldest
    # are dropped (counted): the stage never waits for the cluster.
    max_pending_messages: int = 2000
    # The server's heartbeat to an edge's subscription: two missed, and the edge
    # resubscribes from the last message it has (a server it followed through is gone).
    edge_heartbeat_s: float = 0.5
    # An edge waits this long for the cluster's history before it serves anyway.
    edge_bootstrap_timeout_s: float = 10.0

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_urls.split(",") if u.strip()]

    # A node renews the lease on each Space whose stage it runs every third of this;
    # a lease not renewed for this long is gone, and so, to the cluster, is the node.
    lease_s: float = 3.0
    # This node's name in the leases; empty: its control URL.
    node_name: str = ""
    # Leases a control node remembers (one per Space in the cluster, newest kept).
    max_leases: int = 100_000

    # This node's own control URL, which the other nodes forward a Space's requests to;
    # empty: http://host:control_port. Not the public URL: behind a shared name (a load
    # balancer in front of every origin node) that name may lead back to the sender.
    node_url: str = ""
    # The secret tokens, links and listener session ids are signed with. Every origin
    # node of a cluster must share it, so a host's token or a speaker's link made on one
    # node works on the node that takes the Space over; empty: each node's own (kept in
    # its store), and no takeover can keep the links working.
    token_secret: str = ""
    # Whether this node takes over the live Spaces of an origin node whose leases lapsed.
    take_over_spaces: bool = True
    # How often this node looks for lapsed leases to take over.
    takeover_check_s: float = 0.5
    # A lapsed lease is taken over only this long after it lapsed: a holder whose
    # renewals were late (a stalled cluster) gets the time to renew before it loses.
    takeover_grace_s: float = 1.0
    # The largest room copy kept in the cluster (a room's record, compressed): within
    # the NATS servers' max_payload (1 MB by default; raise both for rooms of more than
    # about 60,000 participants).
    max_room_copy_bytes: int = 1_000_000
    # Room copies waiting to be written to the cluster (the newest per Space; past this
    # the oldest Space's is dropped, and written again at its next change).
    max_pending_copy_spaces: int = 1000
    # The largest frame relayed from the holder's stage WebSocket to a page connected to
    # another node (room snapshots; the page's own frames are bounded by the holder).
    max_relayed_ws_message_bytes: int = 1024 * 1024

    # The cluster's listener-session key: a file holding it in hex, the same on every
    # node. An origin signs listener session ids with it, an edge checks them with it,
    # and both sign their count reports with a key derived from it, so an edge without
    # the key can neither count signed listeners nor be believed. Empty on an origin:
    # the key is derived from its token secret and written to
    # ``<data_dir>/cluster-session.key`` for the edges; empty on an edge: it reports no
    # counts.
    session_key_file: str = ""
    # An edge reports its listeners of each Space this often (one NATS message each).
    counts_report_s: float = 1.0
    # A report not renewed for this long is forgotten: the edge's listeners stop counting.
    counts_timeout_s: float = 3.0
    # A count report's largest size (two compressed sketches are at most ~130 KiB); under
    # NATS's default 1 MiB payload.
    max_count_report_bytes: int = 256 * 1024
    # Spaces an edge counts at once (each at most 64 KiB of tuned-in sketch).
    max_counted_spaces: int = 10_000
    # Nodes whose reports a Space keeps (one sketch each, newest first).
    max_counted_nodes: int = 1_024
    # Count reports a control node's client holds unread; past either bound it drops
    # them (they come again next period).
    max_pending_count_report_messages: int = 10_000
    max_pending_count_report_bytes: int = 64 * 1024 * 1024
    # Spaces this node lost to another node that it remembers not to publish (their
    # stages here are closed); past this the oldest is forgotten.
    max_fenced_spaces: int = 10_000
