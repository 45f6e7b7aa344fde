"""What the tests and the benchmarks both need to drive a real townhall.

* ``processes``: a free port, waiting for a port to answer, running a command until it
  serves, stopping a process;
* ``server``: ``townhall serve`` in a subprocess, Spaces on it and their links, and a
  Space on air with a tone bot on stage;
* ``audio``: decoding what townhall serves and finding tones in it by FFT;
* ``probe``: a live Ogg listener that keeps, per 20 ms frame, when it arrived and which
  tones it carried, across chained streams and reconnects;
* ``watch``: the host's stage WebSocket, timestamped;
* ``processes`` also lists a ``townhall serve``'s processes by role (its ``/healthz``),
  kills one and waits for its replacement.
"""
