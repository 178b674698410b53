"""Pure parts of the CDN client: time zones, chunking, clamping, classification, response parsing."""

from datetime import timedelta, timezone

import pytest

from exporter.vendor import cdn

CST = timezone(timedelta(hours=8))
EST = timezone(timedelta(hours=-5))
T0 = 1795334400.0  # 2026-11-22 08:00:00 UTC


def test_format_api_time_in_account_zone():
    assert cdn.format_api_time(T0, CST) == "2026-11-22 16:00:00"
    assert cdn.format_api_time(T0, EST) == "2026-11-22 03:00:00"
    assert cdn.format_api_time(T0, timezone.utc) == "2026-11-22 08:00:00"


def test_parse_api_time_roundtrip_and_empty():
    for tz in (CST, EST, timezone.utc):
        assert cdn.parse_api_time(cdn.format_api_time(T0 + 17, tz), tz) == T0 + 17
    assert cdn.parse_api_time("", CST) is None
    assert cdn.parse_api_time(None, CST) is None
    with pytest.raises(ValueError):
        cdn.parse_api_time("2026-13-01 00:00:00", CST)
    with pytest.raises(ValueError):
        cdn.parse_api_time(12, CST)


@pytest.mark.parametrize("span_days", [0.5, 1, 1.5, 3])
def test_chunks_cover_range_and_never_exceed_a_day(span_days):
    start, end = T0, T0 + span_days * 86400
    chunks = cdn.chunk_range(start, end)
    assert chunks[0][0] == start and chunks[-1][1] == end
    for (s, e), nxt in zip(chunks, [*chunks[1:], None], strict=True):
        assert 0 <= e - s <= 86400
        if nxt is not None:
            assert nxt[0] == e  # contiguous: nothing in between is skipped
    assert len(chunks) == max(1, int(-(-span_days // 1)))


def test_chunk_of_empty_and_reversed_range():
    assert cdn.chunk_range(T0, T0) == [(T0, T0)]
    assert cdn.chunk_range(T0 + 10, T0) == []


def test_clamp_start_never_older_than_limit():
    now = T0
    limit = 3 * 86400
    assert cdn.clamp_start(now - 5 * 86400, now, limit) > now - limit
    assert cdn.clamp_start(now - 3600, now, limit) == now - 3600


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("parse json error", "bad_request"),
        ("username is invalid", "auth"),
        ("startTime or endTime must not be empty", "bad_request"),
        ("query create time should not before 3 days", "bad_request"),
        ("query time error", "bad_request"),
        ("endTime should not before startTime", "bad_request"),
        ("page size error", "bad_request"),
        ("page no error", "bad_request"),
        ("task status error,eg: init wait run success failure", "bad_request"),
        ("rate limit exceeded", "rate_limited"),
        ("Too many requests", "rate_limited"),
        ("signature mismatch", "auth"),
        ("something nobody documented", "unknown"),
    ],
)
def test_every_seed_message_is_classified(message, kind):
    assert cdn.classify_message(message) == kind
    with pytest.raises(cdn.ApiError) as err:
        cdn.parse_response({"Code": 0, "Message": message}, CST)
    assert err.value.kind == kind


def test_page_size_and_too_old_flags():
    assert cdn.ApiError("bad_request", "page size error").page_size_error
    assert cdn.ApiError("bad_request", "query create time should not before 3 days").too_old
    assert not cdn.ApiError("bad_request", "page no error").page_size_error


def test_parse_response_accepts_both_casings_and_string_numbers():
    body = {
        "count": "2", "code": "1", "message": "success", "pageNo": "1", "pageSize": "20",
        "resultDetail": [
            {"beginTime": "2026-11-22 16:00:01", "createTime": "2026-11-22 16:00:00",
             "finishTime": "2026-11-22 16:00:31", "rate": "100", "status": "success", "url": "http://a/1"},
            {"beginTime": "", "createTime": "2026-11-22 16:00:05", "finishTime": "", "rate": "0",
             "status": "Wait", "url": "http://a/2"},
        ],
    }
    page = cdn.parse_response(body, CST)
    assert page.count == 2 and page.page_no == 1 and page.page_size == 20
    done, waiting = page.tasks
    assert done.create_ts == T0 and done.finish_ts == T0 + 31 and done.rate == 100.0 and done.final
    assert waiting.status == "wait" and waiting.begin_ts is None and waiting.finish_ts is None
    assert not waiting.final


def test_parse_response_unknown_status_is_kept_as_unknown():
    body = {"Code": 1, "count": 1, "resultDetail": [
        {"createTime": "2026-11-22 16:00:00", "status": "init", "url": "u", "rate": ""}]}
    (task,) = cdn.parse_response(body, CST).tasks
    assert task.status == "unknown" and task.rate is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"count": 1},
        {"Code": "x"},
        {"Code": 1, "count": 1, "resultDetail": "oops"},
        {"Code": 1, "count": 1, "resultDetail": [{"url": "u", "createTime": "yesterday"}]},
        {"Code": 1, "count": 1, "resultDetail": [{"createTime": "2026-11-22 16:00:00"}]},
        {"Code": 1, "count": 1, "resultDetail": [{"url": "u"}]},
        {"Code": 1, "count": 1, "resultDetail": [{"url": "u", "createTime": "2026-11-22 16:00:00", "rate": "x"}]},
    ],
)
def test_malformed_responses_are_classified_not_crashing(body):
    with pytest.raises(cdn.ApiError) as err:
        cdn.parse_response(body, CST)
    assert err.value.kind == "malformed"


def test_http_classification_and_retry_after():
    assert cdn.classify_http(401) == "auth"
    assert cdn.classify_http(403) == "auth"
    assert cdn.classify_http(429) == "rate_limited"
    assert cdn.classify_http(503) == "server_error"
    assert cdn.classify_http(400) == "bad_request"
    assert cdn.retry_after_seconds("7") == 7.0
    assert cdn.retry_after_seconds(None) is None
    assert cdn.retry_after_seconds("soon") is None


def test_one_unusable_row_is_skipped_not_the_whole_page():
    good = {"createTime": "2026-11-22 16:00:00", "status": "success", "url": "http://a/1", "rate": "100"}
    page = cdn.parse_response({"Code": 1, "count": 3, "resultDetail": [good, {"url": "u"}, dict(good, url="b")]},
                              CST)
    assert [t.url for t in page.tasks] == ["http://a/1", "b"]
    assert page.rows == 3  # the vendor sent three: paging arithmetic must not mistake this for a short page
