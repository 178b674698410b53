"""The settable clock that the simulator, the exporter, the tests and the benchmarks share."""

from __future__ import annotations


class ManualClock:
    """A settable clock to share between the simulator and the exporter (tests, benchmarks), so that hours
    of vendor behaviour pass in milliseconds and both sides agree on what "now" is."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
