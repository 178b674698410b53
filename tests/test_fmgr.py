import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.fmgr import wire as fmgr
from exporter.fmgr.wire import (
    FmgrApiError,
    FmgrClient,
    FmgrItem,
    FmgrParseError,
    FmgrStatus,
    NotifyError,
    code_label,
    decode_notification_body,
    item_outcome,
    item_state,
    notification_dedup_key,
    op_of,
    parse_status,
    task_state,
    verify_notification,
)
from exporter.vendor import signing

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE_BODY = (FIXTURES / "fmgr_notify_example.b64").read_bytes()
EXAMPLE_AUTH = "test-access-key:ODU2ZDk2ZWQ2MTEwMzA3OWM0OWFkNzZmZmJkYmY4ZThhM2Q3ZTExNA=="
NOTIFY_URL = "https://exporter.example.com/notify/fmgr"
KEYS = {"test-access-key": "test-secret-key"}
REASONS = {"bad_signature", "unknown_key", "malformed"}
FUZZ = settings(max_examples=300, deadline=None)


def vendor_encode(data: Any, *, ensure_ascii: bool = True) -> bytes:
    """A notification body as the vendor builds it: urlsafe base64 of compact JSON."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=ensure_ascii)
    return base64.urlsafe_b64encode(text.encode("utf-8"))


def reason_of(authorization: str | None, body: bytes = EXAMPLE_BODY, url: str = NOTIFY_URL) -> str:
    with pytest.raises(NotifyError) as info:
        verify_notification(authorization, body, url, KEYS)
    return info.value.reason


# --------------------------------------------------------------------------------------------------
# The seed-001 example


def test_seed_example_verifies_decodes_and_parses():
    assert verify_notification(EXAMPLE_AUTH, EXAMPLE_BODY, NOTIFY_URL, KEYS) == "test-access-key"
    status = parse_status(decode_notification_body(EXAMPLE_BODY))
    assert status == FmgrStatus(
        id="20105464540f197414d51a861240d921ef206",
        code=3,
        separate=0,
        items=(FmgrItem(op="resource", code=3, fsize=6437836, error=None, key="test_src_file_1691978251166.mp4"),),
    )


def test_seed_example_with_several_keys_picks_the_right_secret():
    keys = {"other": "nope", **KEYS, "third": "x"}
    assert verify_notification(EXAMPLE_AUTH, EXAMPLE_BODY, NOTIFY_URL, keys) == "test-access-key"


# --------------------------------------------------------------------------------------------------
# Rejections


def test_forged_signature_is_bad_signature():
    forged = "test-access-key:" + signing.fmgr_notify_signature("wrong-secret", NOTIFY_URL, EXAMPLE_BODY)
    assert reason_of(forged) == "bad_signature"


def test_unknown_access_key():
    assert reason_of("someone-else:" + EXAMPLE_AUTH.split(":", 1)[1]) == "unknown_key"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header_is_bad_signature_and_says_missing(header):
    with pytest.raises(NotifyError, match="missing Authorization") as info:
        verify_notification(header, EXAMPLE_BODY, NOTIFY_URL, KEYS)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("header", ["test-access-key", "no colon at all", ":sig", "test-access-key:"])
def test_malformed_header_is_bad_signature(header):
    assert reason_of(header) == "bad_signature"


@pytest.mark.parametrize(
    "url",
    [
        "http://exporter.example.com/notify/fmgr",
        "https://exporter.example.com/notify/fmgr/",
        "https://exporter.example.com/notify/fmgr?a=1",
    ],
)
def test_wrong_url_is_bad_signature(url):
    assert reason_of(EXAMPLE_AUTH, url=url) == "bad_signature"


def test_body_altered_by_one_byte_is_bad_signature():
    altered = bytearray(EXAMPLE_BODY)
    altered[100] ^= 0x01
    assert reason_of(EXAMPLE_AUTH, body=bytes(altered)) == "bad_signature"


def test_truncated_body_is_bad_signature():
    assert reason_of(EXAMPLE_AUTH, body=EXAMPLE_BODY[:-4]) == "bad_signature"


def test_non_ascii_signature_is_bad_signature():
    assert reason_of("test-access-key:ODU2ZDk2é") == "bad_signature"


def test_signature_split_at_first_colon_only():
    # The signature may contain '=' and, in principle, ':' would belong to it, never to the key.
    assert reason_of("test-access-key:abc:def") == "bad_signature"


def test_signature_without_padding_is_accepted():
    assert verify_notification(EXAMPLE_AUTH.rstrip("="), EXAMPLE_BODY, NOTIFY_URL, KEYS) == "test-access-key"
    assert reason_of(EXAMPLE_AUTH[:-4]) == "bad_signature"
    assert reason_of(EXAMPLE_AUTH + "AA") == "bad_signature"


def test_verification_passes_for_a_body_that_does_not_decode():
    # The signature covers bytes; decoding is a separate, later step with its own error.
    body = b"!!not base64!!"
    auth = signing.fmgr_notify_authorization("test-access-key", "test-secret-key", NOTIFY_URL, body)
    assert verify_notification(auth, body, NOTIFY_URL, KEYS) == "test-access-key"
    with pytest.raises(FmgrParseError, match="not base64"):
        decode_notification_body(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"!!not base64!!", "not base64"),
        (b"eyJ*", "not base64"),
        (b"ey==J9", "not base64"),  # padding in the middle
        (b"eyJpZCI", "not JSON"),  # base64 of a cut-off object
        (b"a", "truncated"),
        (base64.urlsafe_b64encode(b"\xff\xfe\x00"), "UTF-8"),
        (base64.urlsafe_b64encode(b"hello world"), "not JSON"),
        (base64.urlsafe_b64encode(b"NaN"), "not JSON"),
        (base64.urlsafe_b64encode(b"[" * 100000), "not JSON"),
        (vendor_encode([1, 2, 3]), "expected a JSON object, got list"),
        (vendor_encode("id"), "expected a JSON object, got str"),
        (vendor_encode(None), "expected a JSON object, got NoneType"),
    ],
)
def test_bad_bodies_are_parse_errors(body, message):
    with pytest.raises(FmgrParseError, match=message):
        decode_notification_body(body)


def test_truncated_example_body_does_not_decode():
    for cut in (2, 4, 5):  # cutting 1 only drops the optional '='
        with pytest.raises(FmgrParseError):
            decode_notification_body(EXAMPLE_BODY[:-cut])


def test_encoding_variants_decode_to_the_same_object():
    expected = decode_notification_body(EXAMPLE_BODY)
    assert expected["items"][0]["fsize"] == 6437836
    text = EXAMPLE_BODY.decode()
    variants = [
        EXAMPLE_BODY.rstrip(b"="),  # missing padding
        text.replace("-", "+").replace("_", "/").encode(),  # standard alphabet
        b"\r\n  " + EXAMPLE_BODY + b"\n",  # surrounding whitespace
        b"\n".join(EXAMPLE_BODY[i : i + 76] for i in range(0, len(EXAMPLE_BODY), 76)),  # MIME line wrapping
    ]
    for body in variants:
        assert decode_notification_body(body) == expected


def test_urlsafe_characters_decode():
    # '>' and '?' at these positions encode to '-' and '_' in the urlsafe alphabet.
    data = {"id": ">>>???", "code": 0}
    body = vendor_encode(data)
    assert b"-" in body or b"_" in body
    assert decode_notification_body(body) == data


def test_dedup_key_is_stable_and_byte_sensitive():
    key = notification_dedup_key(EXAMPLE_BODY)
    assert key == notification_dedup_key(bytes(EXAMPLE_BODY))
    assert len(key) == 64 and int(key, 16) >= 0
    later = vendor_encode({**decode_notification_body(EXAMPLE_BODY), "code": 6})
    assert notification_dedup_key(later) != key


# --------------------------------------------------------------------------------------------------
# Code tables and labels


def test_task_states_cover_every_documented_code():
    assert {code: task_state(code) for code in (0, 1, 3, 4, 5, 6)} == {
        0: "pending",
        1: "processing",
        3: "completed",
        4: "notifying",
        5: "notify_failed",
        6: "notified",
    }
    # Processing is over from 3 on; only 5 and 6 are final on sight (3 after a grace period: Lifecycle).
    assert {3, 4, 5, 6} == fmgr.PROCESSED_TASK_CODES
    assert {5, 6} == fmgr.FINAL_TASK_CODES


def test_item_states_and_outcomes_cover_every_documented_code():
    expected = {
        0: ("pending", None),
        1: ("processing", None),
        2: ("failed", "failed"),
        3: ("succeeded", "succeeded"),
        4: ("succeeded_notifying", "succeeded"),
        5: ("succeeded_notify_failed", "succeeded"),
        6: ("succeeded_notified", "succeeded"),
        18: ("failed_notifying", "failed"),
        19: ("failed_notify_failed", "failed"),
        20: ("failed_notified", "failed"),
    }
    assert {code: (item_state(code), item_outcome(code)) for code in expected} == expected
    assert set(fmgr.ITEM_STATES) == set(expected)


def test_notify_failed_codes():
    assert [c for c in range(30) if fmgr.notify_failed(c, item=False)] == [5]
    assert [c for c in range(30) if fmgr.notify_failed(c, item=True)] == [5, 19]
    assert fmgr.notify_failed("19", item=True) and not fmgr.notify_failed(None, item=True)


# --------------------------------------------------------------------------------------------------
# Lifecycle: when a tracked task is polled next

LIFE = fmgr.Lifecycle(poll_interval=30.0, notify_grace=300.0, confirm_delay=20.0)


@pytest.mark.parametrize("code", [None, 0, 1, 4, 2, 7, 18])
def test_unsettled_codes_are_polled_every_interval(code):
    for notified in (False, True):
        assert LIFE.after_poll(code, 1000.0, processed_since=900.0, notified=notified) == 1030.0


@pytest.mark.parametrize("code", [5, 6])
def test_notification_outcomes_are_final_on_sight(code):
    assert LIFE.after_poll(code, 1000.0, processed_since=1000.0, notified=False) is None
    assert LIFE.after_poll(code, 1000.0, processed_since=None, notified=True) is None


def test_code_3_is_polled_through_the_grace_period_then_final():
    # First seen completed at 1000: polled every 30 s, the last poll exactly at the end of the grace period.
    assert LIFE.after_poll(3, 1000.0, processed_since=1000.0, notified=False) == 1030.0
    assert LIFE.after_poll(3, 1290.0, processed_since=1000.0, notified=False) == 1300.0
    assert LIFE.after_poll(3, 1299.9, processed_since=1000.0, notified=False) == 1300.0
    assert LIFE.after_poll(3, 1300.0, processed_since=1000.0, notified=False) is None
    assert LIFE.after_poll(3, 5000.0, processed_since=1000.0, notified=False) is None


def test_code_3_of_a_notified_task_is_never_final():
    # A notification proves a notifyURL: its 3 must move on to 4 and 5/6, however long it takes.
    assert LIFE.after_poll(3, 5000.0, processed_since=1000.0, notified=True) == 5030.0


def test_a_zero_grace_makes_3_final_at_once():
    life = fmgr.Lifecycle(poll_interval=30.0, notify_grace=0.0)
    assert life.after_poll(3, 1000.0, processed_since=1000.0, notified=False) is None


def test_a_notification_asks_for_a_confirming_poll_unless_already_notified():
    for code in (None, 0, 1, 3, 4, 5):
        assert LIFE.after_notification(code, 1000.0) == 1020.0
    assert LIFE.after_notification(6, 1000.0) is None


def test_the_confirming_poll_comes_within_a_poll_interval():
    # The vendor records the delivery as 6 within seconds: with polls every 5 s, a confirming poll 30 s
    # after the notification would show the task at 3 or 4 for 25 s after the vendor moved it to 6.
    fast = fmgr.Lifecycle(poll_interval=5.0, notify_grace=300.0, confirm_delay=30.0)
    for code in (None, 0, 1, 3, 4, 5):
        assert fast.after_notification(code, 1000.0) == 1005.0
    assert fast.after_notification(6, 1000.0) is None


def test_notifications_put_the_polls_of_a_task_off_by_at_most_one_interval():
    # A task still polled (last at 996) is polled again by 1006, two intervals after its last poll, however
    # many notifications come in (separate notifications, one per item); one overdue stays due.
    fast = fmgr.Lifecycle(poll_interval=5.0, notify_grace=300.0, confirm_delay=30.0)
    assert fast.after_notification(4, 1000.0, last_polled=999.0) == 1005.0
    assert fast.after_notification(4, 1000.0, last_polled=996.0) == 1005.0
    assert fast.after_notification(1, 1003.0, last_polled=996.0) == 1006.0
    assert fast.after_notification(1, 1020.0, last_polled=996.0) == 1020.0
    assert fast.after_notification(6, 1000.0, last_polled=996.0) is None


@pytest.mark.parametrize("code", [7, 99, -1, 2**70, None, "x", "", True, 3.5])
def test_unknown_codes_are_other(code):
    assert task_state(code) == "other"
    assert item_state(code) == "other"
    assert code_label(code) == "other"
    assert item_outcome(code) is None


def test_task_code_2_is_other_for_tasks_but_a_known_label():
    assert task_state(2) == "other"
    assert item_state(2) == "failed"
    assert code_label(2) == "2"


def test_code_label_for_every_known_code():
    for code in set(fmgr.TASK_STATES) | set(fmgr.ITEM_STATES):
        assert code_label(code) == str(code)
    assert code_label("18") == "18"


@pytest.mark.parametrize(
    ("cmd", "op"),
    [
        ("fetch/aHR0cDovL2V4YW1wbGUuY29t/bucket/YnVja2V0", "fetch"),
        ("deletePrefix/YnVja2V0OnByZWZpeA==", "deletePrefix"),
        ("deletem3u8/YnVja2V0OmEubTN1OA==/deletets/1", "deletem3u8"),
        ("setdeadline/YnVja2V0OmtleQ==/deadline/3", "setdeadline"),
        ("resource/dHJhbnNjb2Rl/bucket/Yg==", "resource"),
        ("copy", "copy"),
        ("  move/a/b", "move"),
        ("avthumb/mp4/s/640x360|saveas/YjprZXk=", "avthumb"),
        ("vframe|saveas/YjprZXk=", "vframe"),
        ("Fetch/abc", "other"),  # ops are case-sensitive on the wire
        ("imageView2/1/w/100", "other"),
        ("../etc", "other"),
        ("", "other"),
        ("/fetch", "other"),
        (None, "other"),
    ],
)
def test_op_of(cmd, op):
    assert op_of(cmd) == op


def test_known_ops_include_the_documented_ones():
    documented = {"fetch", "copy", "move", "delete", "deletePrefix", "deletem3u8", "setdeadline", "compress"}
    assert documented | {"resource", "decompress"} <= fmgr.KNOWN_OPS
    assert "other" not in fmgr.KNOWN_OPS


# --------------------------------------------------------------------------------------------------
# Status shapes


def status_with(item: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "pid-1",
        "code": 3,
        "separate": "0",
        "items": [{"cmd": "copy/x"} if item is None else item],
    }
    data.update(top)
    return data


@pytest.mark.parametrize(("raw", "code"), [(3, 3), ("3", 3), (" 6 ", 6), (0, 0), ("", None), (None, None)])
def test_task_code_as_int_or_string(raw, code):
    assert parse_status(status_with(code=raw)).code == code


@pytest.mark.parametrize(("raw", "separate"), [(0, 0), ("0", 0), (1, 1), ("1", 1), (None, None)])
def test_separate_as_int_or_string(raw, separate):
    assert parse_status(status_with(separate=raw)).separate == separate


@pytest.mark.parametrize(
    ("raw", "fsize"),
    [(123, 123), ("123", 123), (0, 0), ("", None), (None, None), (123.0, 123), (2**53, 2**53),
     (str(2**53), 2**53), (float(2**53), 2**53)],
)
def test_fsize_as_int_string_or_empty(raw, fsize):
    assert parse_status(status_with({"cmd": "fetch/x", "code": "3", "fsize": raw})).items[0].fsize == fsize


def test_missing_optional_fields():
    status = parse_status({"id": "pid-2"})
    assert status == FmgrStatus(id="pid-2", code=None, separate=None, items=())
    assert parse_status({"id": "pid-2", "items": None}).items == ()
    item = parse_status(status_with({})).items[0]
    assert item == FmgrItem(op="other", code=None, fsize=None, error=None)


def test_item_fields():
    item = parse_status(status_with({"cmd": "delete/Yjpr", "code": "2", "error": "no such key", "fsize": ""}))
    assert item.items[0] == FmgrItem(op="delete", code=2, fsize=None, error="no such key")
    assert parse_status(status_with({"error": ""})).items[0].error is None


def test_error_text_with_a_lone_surrogate_is_kept_storable():
    error = parse_status(status_with({"error": "bad \ud800 byte"})).items[0].error
    assert error is not None and error.startswith("bad ")
    error.encode("utf-8")  # would raise if the surrogate survived


def test_unknown_fields_are_ignored():
    status = parse_status(
        status_with({"cmd": "copy/a", "code": 3, "hash": "h", "key": "k", "url": "u"}, desc="d")
    )
    assert status.items[0].op == "copy"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object, got list"),
        ("pid", "expected a JSON object, got str"),
        ({}, "id: expected a non-empty string"),
        ({"id": ""}, "id: expected a non-empty string"),
        ({"id": "  "}, "id: expected a non-empty string"),
        ({"id": 123}, "id: expected a non-empty string"),
        ({"id": "a\ud800"}, "id: .* is not 1-128 characters"),
        ({"id": "a\x00b"}, "id: .* is not 1-128 characters"),
        ({"id": "a\nb"}, "id: .* is not 1-128 characters"),
        ({"id": "a b"}, "id: .* is not 1-128 characters"),
        ({"id": "x" * 129}, "id: .* is not 1-128 characters"),
        ({"id": "x" * 500_000}, "id: .* is not 1-128 characters"),
        ({"id": "job/1"}, "id: .* is not 1-128 characters"),
        ({"id": "jöb"}, "id: .* is not 1-128 characters"),
        ({"id": "p", "code": "abc"}, "code: 'abc' is not an integer"),
        ({"id": "p", "code": "3.0"}, "code: '3.0' is not an integer"),
        ({"id": "p", "code": "\u0661"}, "is not an integer"),  # a non-ASCII digit
        ({"id": "p", "code": "9" * 5000}, "is not an integer"),
        ({"id": "p", "code": True}, "code: True is not an integer"),
        ({"id": "p", "code": [3]}, "code: .* is not an integer"),
        ({"id": "p", "separate": "no"}, "separate: 'no' is not an integer"),
        ({"id": "p", "items": {}}, "items: expected a list, got dict"),
        ({"id": "p", "items": "x"}, "items: expected a list, got str"),
        ({"id": "p", "items": [{}, 3]}, r"items\[1\]: expected an object, got int"),
        ({"id": "p", "items": [{"fsize": "1.5"}]}, r"items\[0\]\.fsize: '1.5' is not an integer"),
        ({"id": "p", "items": [{"fsize": -1}]}, r"items\[0\]\.fsize: -1 is outside 0\.\.2\*\*53"),
        ({"id": "p", "items": [{"fsize": 2**53 + 1}]}, r"items\[0\]\.fsize: .* is outside 0\.\.2\*\*53"),
        ({"id": "p", "items": [{"fsize": 2**63}]}, r"items\[0\]\.fsize: .* is outside"),
        ({"id": "p", "items": [{"fsize": 2**64}]}, r"items\[0\]\.fsize: .* is outside"),
        ({"id": "p", "items": [{"fsize": str(2**63)}]}, r"items\[0\]\.fsize: .* is outside"),
        ({"id": "p", "items": [{"fsize": 10**300}]}, r"items\[0\]\.fsize: .* is outside"),
        ({"id": "p", "items": [{"fsize": 1e300}]}, r"items\[0\]\.fsize: .* is outside"),
        ({"id": "p", "items": [{"code": 2**64}]}, r"items\[0\]\.code: .* is outside"),
        ({"id": "p", "items": [{"code": -3}]}, r"items\[0\]\.code: -3 is outside"),
        ({"id": "p", "code": 2**63}, r"^code: .* is outside"),
        ({"id": "p", "code": -1}, r"^code: -1 is outside"),
        ({"id": "p", "separate": 2**70}, r"^separate: .* is outside"),
        ({"id": "p", "items": [{"fsize": 1.5}]}, r"items\[0\]\.fsize: 1.5 is not an integer"),
        ({"id": "p", "items": [{"code": "x"}]}, r"items\[0\]\.code: 'x' is not an integer"),
        ({"id": "p", "items": [{"error": 5}]}, r"items\[0\]\.error: expected a string or null"),
        ({"id": "p", "items": [{"cmd": 5}]}, r"items\[0\]\.cmd: expected a string"),
    ],
)
def test_bad_shapes_are_parse_errors(data, message):
    with pytest.raises(FmgrParseError, match=message):
        parse_status(data)


def test_parse_error_is_a_value_error_and_short():
    with pytest.raises(ValueError) as info:
        parse_status({"id": "p", "code": "z" * 10000})
    assert len(str(info.value)) < 100


# --------------------------------------------------------------------------------------------------
# Fuzzing

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
loose_field = json_scalars | st.lists(json_scalars, max_size=2) | st.sampled_from(["", "3", "-1", " 4 "])
loose_items = st.lists(
    st.dictionaries(st.sampled_from(["cmd", "code", "fsize", "error", "desc"]), loose_field, max_size=5)
    | json_values,
    max_size=3,
)
loose_status = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=8) | json_scalars,
        "code": loose_field,
        "separate": loose_field,
        "items": loose_items | json_scalars,
    },
)
headers = st.none() | st.text(max_size=80) | st.text(max_size=60).map(lambda s: "test-access-key:" + s)


@FUZZ
@given(headers, st.binary(max_size=200), st.text(max_size=40))
def test_fuzz_verify_raises_only_notify_error(header, body, url):
    with pytest.raises(NotifyError) as info:
        verify_notification(header, body, url or NOTIFY_URL, KEYS)
    assert info.value.reason in REASONS
    assert str(info.value)


@FUZZ
@given(
    st.binary(max_size=300)
    | st.binary(max_size=200).map(base64.urlsafe_b64encode)
    | json_values.map(vendor_encode)
    | loose_status.map(vendor_encode)
)
def test_fuzz_decode_and_parse_raise_only_parse_error(body):
    try:
        status = parse_status(decode_notification_body(body))
    except FmgrParseError as exc:
        assert str(exc)
    else:
        assert status.id.strip()
        assert all(item.op == "other" or item.op in fmgr.KNOWN_OPS for item in status.items)


@FUZZ
@given(json_values | loose_status)
def test_fuzz_parse_status_raises_only_parse_error(data):
    try:
        status = parse_status(data)
    except FmgrParseError as exc:
        assert str(exc)
    else:
        assert isinstance(status.items, tuple)
        assert all(item.fsize is None or item.fsize >= 0 for item in status.items)


codes = st.sampled_from(sorted(set(fmgr.TASK_STATES) | set(fmgr.ITEM_STATES))) | st.integers(0, 10**6)


def maybe_string(values: st.SearchStrategy[int]) -> st.SearchStrategy[int | str]:
    return values | values.map(str)


vendor_items = st.fixed_dictionaries(
    {
        "cmd": st.tuples(
            st.sampled_from(sorted(fmgr.KNOWN_OPS)) | st.text(max_size=6), st.text(max_size=20)
        ).map("/".join),
        "code": maybe_string(codes),
        "desc": st.text(max_size=20),
        "error": st.none() | st.text(min_size=1, max_size=20),
        "fsize": maybe_string(st.integers(0, 2**53)) | st.just("") | st.none(),
        "hash": st.text(max_size=10),
        "key": st.text(max_size=10),
    }
)
vendor_statuses = st.fixed_dictionaries(
    {
        "id": st.from_regex(fmgr.PERSISTENT_ID, fullmatch=True),
        "code": maybe_string(codes),
        "desc": st.text(max_size=20),
        "separate": maybe_string(st.sampled_from([0, 1])),
        "items": st.lists(vendor_items, max_size=3),
    }
)


def as_int(value: int | str | None) -> int | None:
    return None if value in ("", None) else int(value)


@FUZZ
@given(vendor_statuses, st.booleans())
def test_fuzz_vendor_encoding_round_trips(data, ascii_only):
    body = vendor_encode(data, ensure_ascii=ascii_only)
    auth = signing.fmgr_notify_authorization("test-access-key", "test-secret-key", NOTIFY_URL, body)
    assert verify_notification(auth, body, NOTIFY_URL, KEYS) == "test-access-key"
    decoded = decode_notification_body(body)
    assert decoded == data
    status = parse_status(decoded)
    assert status.id == data["id"]
    assert status.code == int(data["code"])
    assert status.separate == int(data["separate"])
    assert [(i.op, i.code, i.fsize, i.error) for i in status.items] == [
        (op_of(i["cmd"]), int(i["code"]), as_int(i["fsize"]), i["error"]) for i in data["items"]
    ]


# --------------------------------------------------------------------------------------------------
# FmgrClient against a real HTTP server on 127.0.0.1


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


GOOD = {
    "id": "good",
    "code": "3",
    "desc": "ok",
    "separate": "0",
    "items": [{"cmd": "fetch/x", "code": 3, "fsize": 42}],
}
ROUTES: dict[str, Reply] = {
    "good": Reply(body=json.dumps(GOOD).encode()),
    "a b/c+d&e=f": Reply(body=json.dumps({**GOOD, "id": "a b/c+d&e=f"}).encode()),
    "missing": Reply(404, json.dumps({"code": 404, "message": "persistentId not found"}).encode()),
    "soft-missing": Reply(200, json.dumps({"code": "404", "message": "no such task"}).encode()),
    "boom": Reply(500, b"<html>Internal Server Error</html>"),
    "boom-json": Reply(503, b'{"code":"503","message":"busy"}', {"Retry-After": "12"}),
    "bad-request": Reply(400, b'{"code":400,"message":"persistentId is invalid"}'),
    "throttled": Reply(429, b"slow down", {"Retry-After": "7"}),
    "throttled-date": Reply(429, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # past: retry now
    "html-404": Reply(404, b"<html>Not Found</html>"),
    "forbidden": Reply(403, b"<html>Forbidden</html>"),
    "forbidden-json": Reply(200, b'{"code":"401","message":"bad token"}'),
    "throttled-later": Reply(429, b"", {"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}),
    "garbage": Reply(200, b"this is not json"),
    "bad-shape": Reply(200, b'{"id":"bad-shape","items":"nope"}'),
    "other-id": Reply(200, json.dumps({**GOOD, "id": "someone-else"}).encode()),
    "ok-code-no-id": Reply(200, b'{"code":200,"message":"ok"}'),
    "slow": Reply(body=json.dumps({**GOOD, "id": "slow"}).encode(), delay=2.0),
}


@dataclass
class FakeMgr:
    url: str
    paths: list[str]
    release: threading.Event


@pytest.fixture(scope="module")
def mgr_server() -> Iterator[FakeMgr]:
    paths: list[str] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            parts = urlsplit(self.path)
            ids = parse_qs(parts.query).get("persistentId", [])
            reply = ROUTES.get(ids[0]) if parts.path == "/fmgr/status" and len(ids) == 1 else None
            if reply is None:
                reply = Reply(404, b'{"code":404,"message":"route"}')
            if reply.delay:
                release.wait(reply.delay)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test); nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeMgr(f"http://127.0.0.1:{server.server_address[1]}/", paths, release)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def mgr(mgr_server: FakeMgr) -> FakeMgr:
    mgr_server.paths.clear()
    return mgr_server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
    yield s
    s.close()


def client_error(client: FmgrClient, pid: str) -> FmgrApiError:
    with pytest.raises(FmgrApiError) as info:
        client.status(pid)
    return info.value


def test_client_good_status(mgr, session):
    client = FmgrClient(mgr.url, session=session)
    status = client.status("good")
    assert status == FmgrStatus(
        id="good", code=3, separate=0, items=(FmgrItem(op="fetch", code=3, fsize=42, error=None),)
    )
    assert mgr.paths == ["/fmgr/status?persistentId=good"]


def test_client_encodes_the_id_as_a_query_parameter(mgr, session):
    # Not an id the vendor issues (an answer naming it is malformed), but the query must still be encoded.
    error = client_error(FmgrClient(mgr.url, session=session), "a b/c+d&e=f")
    assert (error.kind, error.status) == ("malformed", 200)
    assert mgr.paths == ["/fmgr/status?persistentId=a+b%2Fc%2Bd%26e%3Df"]


@pytest.mark.parametrize(
    ("pid", "kind", "status", "retry_after"),
    [
        ("missing", "not_found", 404, None),
        ("soft-missing", "not_found", 404, None),
        ("boom", "server_error", 500, None),
        ("boom-json", "server_error", 503, 12.0),
        ("bad-request", "bad_request", 400, None),
        ("throttled", "rate_limited", 429, 7.0),
        ("throttled-date", "rate_limited", 429, 0.0),
        ("html-404", "malformed", 404, None),
        ("forbidden", "auth", 403, None),
        ("forbidden-json", "auth", 401, None),
        ("garbage", "malformed", 200, None),
        ("bad-shape", "malformed", 200, None),
        ("other-id", "malformed", 200, None),
        ("ok-code-no-id", "malformed", 200, None),
    ],
)
def test_client_error_kinds(mgr, session, pid, kind, status, retry_after):
    error = client_error(FmgrClient(mgr.url, session=session), pid)
    assert (error.kind, error.status, error.retry_after) == (kind, status, retry_after)
    assert str(error)


def test_client_retry_after_http_date(mgr, session):
    error = client_error(FmgrClient(mgr.url, session=session), "throttled-later")
    assert error.kind == "rate_limited"
    assert error.retry_after is not None and error.retry_after > 365 * 86400


def test_client_failure_message_is_kept(mgr, session):
    error = client_error(FmgrClient(mgr.url, session=session), "soft-missing")
    assert "no such task" in str(error)


def test_client_timeout(mgr, session):
    error = client_error(FmgrClient(mgr.url, session=session, timeout=0.2), "slow")
    assert (error.kind, error.status) == ("timeout", None)


def test_client_connection_refused(session):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = client_error(FmgrClient(f"http://127.0.0.1:{port}", session=session, timeout=2), "good")
    assert (error.kind, error.status) == ("connection", None)


def test_client_rejects_empty_id(mgr, session):
    with pytest.raises(ValueError):
        FmgrClient(mgr.url, session=session).status("")
    assert mgr.paths == []


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("0", 0.0), (" 30 ", 30.0), ("1.5", 1.5), ("-1", None), ("soon", None)],
)
def test_parse_retry_after(value, seconds):
    assert fmgr.parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, "bad_request"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (429, "rate_limited"),
        (500, "server_error"),
        (502, "server_error"),
        (200, "malformed"),
        (302, "malformed"),
    ],
)
def test_kind_for_code(code, kind):
    assert fmgr.kind_for_code(code) == kind
