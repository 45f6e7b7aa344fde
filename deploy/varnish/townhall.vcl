# Varnish 7 in front of townhall edges (or a single `townhall serve`'s audience port).
#
# LL-HLS is made to be cached: parts, segments and the init segment are immutable; a
# blocking playlist request (_HLS_msn/_HLS_part) names a fixed point, so every player
# asking for the same one gets the same bytes. Varnish coalesces identical requests on
# its waiting list and streams the single origin response to all of them, so the edge
# sees one request per playlist version and per part, however large the audience.
#
# The cache key keeps _HLS_msn and _HLS_part and drops everything else (the session id
# a web player adds, cache busters): per-listener parameters would make every request
# a miss. The endless responses (the Ogg stream, the room events) are piped, not cached.
#
# Replace the backend address with your edges (a director for several).
vcl 4.1;

backend edge {
    .host = "127.0.0.1";
    .port = "8001";
    # Above the edge's longest blocking hold (audience blocking_timeout_s, 6 s).
    .first_byte_timeout = 10s;
    .between_bytes_timeout = 10s;
    .connect_timeout = 2s;
}

sub vcl_recv {
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.url ~ "^/live/[^/?]+\.ogg" || req.url ~ "^/events/") {
        return (pipe);
    }
    if (req.url ~ "^/live/") {
        # Keep only the LL-HLS delivery directives, in a fixed order.
        set req.http.x-msn = regsub(req.url, "^.*[?&]_HLS_msn=([0-9]+).*$", "\1");
        set req.http.x-part = regsub(req.url, "^.*[?&]_HLS_part=([0-9]+).*$", "\1");
        set req.url = regsub(req.url, "\?.*$", "");
        if (req.http.x-msn ~ "^[0-9]+$") {
            set req.url = req.url + "?_HLS_msn=" + req.http.x-msn;
            if (req.http.x-part ~ "^[0-9]+$") {
                set req.url = req.url + "&_HLS_part=" + req.http.x-part;
            }
        }
        unset req.http.x-msn;
        unset req.http.x-part;
        unset req.http.cookie;
        return (hash);
    }
    return (pass);
}

sub vcl_pipe {
    # One client per backend connection: the stream is that client's alone.
    set bereq.http.connection = "close";
}

sub vcl_backend_response {
    # Stream to every waiting client as the bytes arrive (a blocking response, a part).
    set beresp.do_stream = true;
    if (beresp.status >= 500) {
        # A 503 from a busy edge is not cached, and does not turn the URL into a pass.
        set beresp.ttl = 0s;
        return (deliver);
    }
    if (beresp.status == 404) {
        # A part asked for too early: try again soon, not for the default TTL.
        set beresp.ttl = 1s;
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.x-cache = "HIT";
    } else {
        set resp.http.x-cache = "MISS";
    }
}
