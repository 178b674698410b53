"""The vendor's rate budget and the backoff after a failure: when the next request may go.

``RateBudget`` never lets more than ``requests`` calls into any sliding ``per`` seconds (the vendor's limit,
failed requests included) and paces them: one every ``per / requests`` seconds on average with a small burst,
so a per-minute budget is spread over the minute and every poll interval gets its share. Its state is the send
history the pollers persist, so neither a restart nor a reload can burst past the vendor's limits.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from exporter.config import RateLimit

MAX_BACKOFF = 900.0
BASE_BACKOFF = 5.0


def pace_burst(limit: RateLimit) -> int:
    """How many requests may go back to back after a quiet spell: a tenth of the budget, 1 to 5.

    Small on purpose: a burst spends the next poll intervals' share now (25 a minute sent in one second left
    a 10 s poll interval with nothing for 59 s), while a few at once let back-fill use time the newest
    tasks did not need."""
    return max(1, min(5, limit.requests // 10))


class RateBudget:
    """At most ``requests`` calls in any sliding ``per`` seconds, paced: one every ``per / requests`` seconds
    on average with a burst of ``pace_burst`` (a token bucket, kept as GCRA's theoretical arrival time and
    derived from the same send history, so nothing more is persisted). ``block_until`` honours Retry-After.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float],
                 saved: list[float] | dict[str, Any] | None = None, *, burst: int | None = None) -> None:
        """``saved`` is what ``state()`` returned before a restart (a bare list of send times is accepted too);
        ``burst`` overrides ``pace_burst`` (the whole budget: no pacing within ``per``)."""
        self.limit = limit
        self.clock = clock
        self.burst = pace_burst(limit) if burst is None else max(1, min(burst, limit.requests))
        if isinstance(saved, dict):
            history, self.blocked_until = saved.get("sent") or [], float(saved.get("blocked_until") or 0.0)
        else:
            history, self.blocked_until = saved or [], 0.0
        self.sent: deque[float] = deque(sorted(history)[-limit.requests:], maxlen=limit.requests)

    @property
    def spacing(self) -> float:
        """Seconds between two requests at the steady pace."""
        return self.limit.per / max(1, self.limit.requests)

    def wait_time(self) -> float:
        now = self.clock()
        wait = max(0.0, self.blocked_until - now)
        if len(self.sent) >= self.limit.requests:
            wait = max(wait, self.sent[0] + self.limit.per - now)
        # The token bucket: the next request conforms once the theoretical arrival time, less the burst's
        # allowance, has come. The sliding window above is the vendor's hard limit; this only spreads it.
        tat = -math.inf
        for sent in self.sent:
            tat = max(tat, sent) + self.spacing
        return max(wait, tat - (self.burst - 1) * self.spacing - now)

    def record(self, at: float | None = None) -> None:
        """A request sent now, or (``at``) one known to have arrived no later than ``at``."""
        ts = self.clock() if at is None else at
        if self.sent and ts < self.sent[-1]:  # kept in time order: the oldest is the one that expires first
            self.sent = deque(sorted([*self.sent, ts])[-self.limit.requests:], maxlen=self.limit.requests)
        else:
            self.sent.append(ts)

    def block_until(self, ts: float) -> None:
        self.blocked_until = max(self.blocked_until, ts)

    def history(self) -> list[float]:
        return list(self.sent)

    def state(self) -> dict[str, object]:
        """What must survive a restart or reload so that neither can burst past the vendor's limits."""
        return {"sent": list(self.sent), "blocked_until": self.blocked_until}


def backoff_delay(failures: int, rng: random.Random, base: float = BASE_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter in its upper half: never a hot loop, no thundering herd."""
    ceiling = min(cap, math.ldexp(base, min(max(0, failures - 1), 64)))  # base * 2**(failures-1), capped
    return ceiling / 2 + rng.random() * ceiling / 2


def after_failure(name: str, kind: str, message: str, retry_after: float | None, *, budget: RateBudget, per: float,
                  failures: int, rng: random.Random, now: float, log: logging.Logger) -> float | None:
    """What a poller does after a failed vendor request it has no rule of its own for, logged as one line on the
    poller's logger: a rate limit blocks the budget until the vendor's Retry-After (a whole period without one)
    and gives None, since the budget holds the next request back; anything else backs off (at least
    Retry-After) and gives the time to try again."""
    if kind == "rate_limited":
        wait = retry_after if retry_after is not None else per
        budget.block_until(now + wait)
        log.warning("%s: rate limited by the vendor; next request in %.0fs", name, wait)
        return None
    delay = max(backoff_delay(failures, rng), retry_after or 0.0)
    log.warning("%s: %s (%s); retrying in %.1fs", name, kind, message, delay)
    return now + delay
