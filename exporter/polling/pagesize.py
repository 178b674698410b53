"""The page size to ask the CDN status query for: the vendor's maximum is undocumented, so it is found.

A request costs one slot of a tight budget whether it carries 1 row or a full page, so every row a page
could hold and does not is lost for good: halving from a refused size (500 -> 250 -> 125 -> 62 for a cap of
100) keeps 38% of every page empty. Instead the search keeps the largest size the vendor served and the
smallest it refused, and tries:

* with nothing served yet, the next size down the 1-2-5 series (500, 200, 100, 50, ...): vendors cap at round
  numbers, so a cap of 100 is found in three requests;
* then the middle of the gap, at once while finding it could grow pages by more than a quarter, and after
  that at most every ``REPROBE_INTERVAL`` (a vendor may raise its cap; each try that is refused costs a slot);
* only while a larger page is wanted (``want``: the configured size, grown when the newest tasks of one poll
  interval no longer fit a page).

A vendor that answers fewer rows than asked without an error caps silently: that size is its cap.
Pure bookkeeping; the poller persists ``state()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

REPROBE_INTERVAL = 6 * 3600.0
NICE = (10000, 5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5, 2, 1)
EAGER_GAIN = 0.25  # search on at once while the gap could grow a page by more than this


def nice_below(size: int) -> int:
    """The largest 1-2-5 number below ``size`` (1 for sizes up to 1)."""
    return next((n for n in NICE if n < size), 1)


@dataclass
class PageSize:
    want: int  # the size the poller would like (configured, grown by need up to ``maximum``)
    maximum: int  # the configured ``max_page_size``
    served: int = 0  # the largest size the vendor answered in full (0: none yet)
    refused: int | None = None  # the smallest size it refused (or capped silently below)
    probed_at: float = 0.0  # when a size above ``served`` was last tried
    trying: int | None = None  # a size above ``served`` being tried now

    @property
    def size(self) -> int:
        """The page size for the next request."""
        if self.trying is not None:
            return self.trying
        cap = min(self.want, self.maximum)
        if self.refused is None:
            return cap  # no limit met yet: ask for what is wanted
        if self.served == 0:
            return max(1, min(cap, nice_below(self.refused)))
        return max(1, min(cap, self.served))  # sizes in the gap are tried only as ``trying``

    def _gap_worth(self) -> bool:
        return self.refused is not None and self.refused - self.served > 1 and \
            self.refused - self.served > EAGER_GAIN * self.served

    def on_refused(self, size: int, now: float) -> None:
        """The vendor said ``page size error`` for ``size``."""
        self.refused = size if self.refused is None else min(self.refused, size)
        self.served = min(self.served, size - 1)  # a cap lowered since: what was served is no longer
        self.trying = None
        self.probed_at = now
        if self.served == 0:
            self.trying = nice_below(size)
        elif self._gap_worth() and self.want > self.served:
            self.trying = (self.served + size) // 2

    def on_served(self, size: int, rows: int, expected: int, now: float) -> bool:
        """A page answered; False when it was short (a silent cap: the range must be read again)."""
        if 0 < rows < expected:
            self.served = rows
            self.refused = rows + 1
            self.trying = None
            return False
        # Accepted: the vendor refuses a size over its cap whatever the rows, so this size is served.
        self.served = max(self.served, size)
        self.trying = None
        if self.want <= self.served or self.refused is None or self.refused - self.served <= 1:
            return True
        if self._gap_worth() or now - self.probed_at >= REPROBE_INTERVAL:
            self.trying = (self.served + self.refused) // 2
            self.probed_at = now
        return True

    def grow(self) -> bool:
        """The newest tasks of a poll interval no longer fit a page: want twice the size (up to the maximum)."""
        if self.want >= self.maximum:
            return False
        self.want = min(self.maximum, self.want * 2)
        return True

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def restore(cls, saved: Any, want: int, maximum: int) -> PageSize:
        """From ``state()``, or from the keys stored before the search (``page_size``, ``page_ceiling``)."""
        page = cls(want=want, maximum=maximum)
        if not isinstance(saved, dict):
            return page
        if isinstance(saved.get("page"), dict):
            st = saved["page"]
            page.want = min(maximum, max(want, int(st.get("want") or want)))
            page.served = int(st.get("served") or 0)
            refused = st.get("refused")
            page.refused = int(refused) if refused is not None else None
            page.probed_at = float(st.get("probed_at") or 0.0)
            return page
        ceiling = saved.get("page_ceiling")
        if ceiling is not None and int(ceiling) < maximum:
            # The old rule stopped at the halved size: it was served; above it is unknown, so search again.
            page.served = int(saved.get("page_size") or ceiling)
            page.refused = min(maximum + 1, 2 * int(ceiling) + 1)
        return page

