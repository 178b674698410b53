"""The simulator's tunables, one object that every part reads when it needs a value.

They are public attributes of ``Simulator`` (``sim.timeout_fault_seconds = 1.0`` in a test), kept here and
read at request time, so that assigning one on a running simulator changes what the next request sees.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    seed: int
    # The zone as given; the CDN's times are rendered in the offset parsed from it once, at construction.
    timezone: str
    max_query_age: float
    max_page_size: int
    date_skew: float
    rate_limits: dict[str, tuple[int, float]]
    string_numbers: bool
    # Some APIs cap the page size without an error: they answer fewer rows and echo the smaller size.
    silent_page_cap: int | None
    # Seed 002 does not say how rows are ordered; the exporter must not depend on it, so both are served.
    order: str
    # The vendor's SDK documents the answer's pageNo as the total number of pages, the seed's example as the page
    # asked for: with this set, the answer says the total, so a client that reads it as its position goes wrong.
    page_no_total: bool = False
    # The "timeout" fault sleeps this long (real time) before answering normally.
    timeout_fault_seconds: float = 3.0
    # The paced faults ("trickle", "trickle_headers") send a byte every this many seconds (real time); none
    # of them, "stall" included, lasts longer than pace_fault_limit unless the client hangs up first.
    pace_fault_interval: float = 1.0
    pace_fault_limit: float = 600.0
    # The "huge" faults answer at least this many bytes.
    huge_fault_bytes: int = 400 * 2**20
    notify_timeout: float = 5.0
    # The vendor records a delivery (code 4 -> 6) or a give-up (4 -> 5) this long after it happened, so a
    # poll right after a notification still sees 4.
    notify_record_delay: float = 2.0
    # The quota answers state their volume figures in this many bytes (rounded down): 10**9, GB.
    quota_volume_unit: int = 10**9
