"""The page-size search (exporter/polling/pagesize.py): the vendor's undocumented cap found in few requests, kept."""

from __future__ import annotations

import pytest

from exporter.polling.pagesize import REPROBE_INTERVAL, PageSize, nice_below


def find(cap: int, want: int = 500, maximum: int = 1000, requests: int = 30) -> tuple[PageSize, list[int]]:
    """Serve full pages up to ``cap`` and refuse larger sizes, as the vendor does; the sizes asked for."""
    page = PageSize(want=want, maximum=maximum)
    asked = []
    for _ in range(requests):
        size = page.size
        asked.append(size)
        if size > cap:
            page.on_refused(size, now=0.0)
        else:
            assert page.on_served(size, rows=size, expected=size, now=0.0)
    return page, asked


def test_a_cap_of_100_is_found_in_three_requests_and_kept():
    _page, asked = find(100)
    # 500 and 200 refused, 100 served; the gap 100..200 is searched (150, 125 refused) while it could grow a
    # page by more than a quarter, then the size stays at the cap.
    assert asked[:3] == [500, 200, 100]
    assert asked[3:5] == [150, 125]
    assert set(asked[5:]) == {100}
    assert asked.count(100) == len(asked) - 4


@pytest.mark.parametrize("cap", [62, 100, 333, 1000])
def test_the_size_settles_within_a_quarter_of_any_cap(cap):
    _page, asked = find(cap, want=1000)
    settled = asked[-1]
    assert settled <= cap and settled >= 0.75 * cap, asked
    refusals = sum(1 for a in asked if a > cap)
    assert refusals <= 6, asked
    assert len(set(asked[-10:])) == 1  # it stays


def test_halving_would_have_kept_pages_a_third_empty():
    # The rule this replaces: 500 -> 250 -> 125 -> 62 for a cap of 100.
    _page, asked = find(100)
    assert asked[-1] == 100 and 62 not in asked


def test_a_larger_size_is_probed_again_only_rarely():
    page, _ = find(100)
    assert page.size == 100
    page.on_served(100, 100, 100, now=REPROBE_INTERVAL - 1)
    assert page.size == 100
    page.on_served(100, 100, 100, now=REPROBE_INTERVAL + 1)
    assert 100 < page.size < 125  # one try between what is served and what was refused
    page.on_refused(page.size, now=REPROBE_INTERVAL + 2)
    assert page.size == 100


def test_a_silent_cap_is_taken_as_the_cap():
    page = PageSize(want=500, maximum=1000)
    assert not page.on_served(500, rows=40, expected=500, now=0.0)  # short page: read the range again
    assert page.size == 40
    assert page.on_served(40, rows=40, expected=40, now=REPROBE_INTERVAL * 2)
    assert page.size == 40  # nothing between 40 and 41 to try


def test_growth_asks_for_more_until_refused_and_the_maximum_bounds_it():
    page = PageSize(want=100, maximum=300)
    page.on_served(100, 100, 100, now=0.0)
    assert page.grow() and page.size == 200
    assert page.grow() and page.size == 300  # the configured maximum
    assert not page.grow()


def test_state_survives_a_restart_and_the_old_keys_are_read():
    page, _ = find(100)
    again = PageSize.restore({"page": page.state()}, want=500, maximum=1000)
    assert (again.served, again.refused, again.size) == (page.served, page.refused, 100)
    legacy = PageSize.restore({"page_size": 62, "page_ceiling": 62}, want=500, maximum=1000)
    assert legacy.size == 62 and legacy.refused == 125  # searched again from what the old rule stopped at


def test_nice_numbers():
    assert [nice_below(n) for n in (501, 500, 250, 101, 100, 2, 1)] == [500, 200, 200, 100, 50, 1, 1]
