"""The load generator: a crowd of real Ogg and LL-HLS listeners, measured.

``run_loadtest(LoadPlan(...))`` is the in-process API (the benchmarks use it);
``townhall loadtest`` is the command. See ``stats`` for what lateness and stalls mean.
"""

from townhall.loadtest.arrivals import Arrival
from townhall.loadtest.report import Report
from townhall.loadtest.runner import LoadPlan, run_loadtest
from townhall.loadtest.worker import Mix

__all__ = ["Arrival", "LoadPlan", "Mix", "Report", "run_loadtest"]
