"""Window maths: bucket boundaries, per-group caching and pruning."""

from collections import Counter

from exporter.windows import BUCKET_SECONDS, WindowCounter, bucket_of, window_start

T0 = 1795334400.0  # on a minute boundary


def test_bucket_and_window_start():
    assert bucket_of(T0 + 59.9) == T0
    assert bucket_of(T0 + 60) == T0 + 60
    # A 15-minute window at 30 s into a minute covers 15 buckets, the current one included.
    start = window_start(T0 + 30, 900)
    assert start == T0 - 14 * BUCKET_SECONDS
    assert (bucket_of(T0 + 30) - start) / BUCKET_SECONDS + 1 == 15


def test_sums_per_window_and_label():
    wc = WindowCounter()
    wc.add_many([("g", T0 - 30 * 60, "a", 1), ("g", T0 - 5 * 60, "a", 2), ("g", T0, "b", 1), ("h", T0, "a", 9)])
    w15, w1h = wc.windows("g", T0 + 1, [900, 3600])
    assert w15 == Counter({"a": 2, "b": 1})
    assert w1h == Counter({"a": 3, "b": 1})


def test_cache_follows_writes_to_its_group_and_the_clock():
    wc = WindowCounter()
    wc.add_many([("g", T0, "a", 1)])
    assert wc.windows("g", T0, [900])[0]["a"] == 1
    wc.add_many([("g", T0, "a", 1), ("other", T0, "a", 5)])
    assert wc.windows("g", T0, [900])[0]["a"] == 2  # a write to the group invalidates its cached sum
    assert wc.windows("g", T0 + 15 * 60, [900])[0]["a"] == 0  # and so does time moving past the bucket


def test_moves_between_labels_and_zero_entries_disappear():
    wc = WindowCounter()
    wc.add_many([("g", T0, "wait", 1)])
    wc.add_many([("g", T0, "wait", -1), ("g", T0, "success", 1)])
    assert wc.windows("g", T0, [60])[0] == Counter({"success": 1})


def test_prune_forgets_old_buckets():
    wc = WindowCounter()
    wc.add_many([("g", T0 - 7200, "a", 1), ("g", T0, "a", 1)])
    wc.prune(T0 - 3600)
    assert wc.windows("g", T0, [86400])[0]["a"] == 1
