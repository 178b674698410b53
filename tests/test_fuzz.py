"""Property-based fuzzing (hypothesis) of every parser that reads outside input.

* the config loader: any YAML-shaped structure is a Config or a ConfigError; a bad value put into a valid
  config at a known key gives an error that names that key's path;
* the CDN response parser: any decoded JSON is a page or a classified ApiError;
* the notification decoder, signature check and status parser: any bytes and header are accepted or refused
  with their own error types;
* the registration API, over HTTP against a running exporter: no request is ever answered 5xx.

Example counts are kept modest so that the file runs in seconds; a failure prints the smallest input found.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.config import KNOWN_KEYS, Config, ConfigError, parse_config
from exporter.fmgr import wire as fmgr
from exporter.metrics.health import RESULTS
from exporter.vendor.cdn import ApiError, QueryPage, parse_response

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["15m", "1h", "24h", "0s", "-1m", "1000000y", "5m", "${UNSET}", "", " ", "+08:00",
                     "http://127.0.0.1:1", "aksk", "basic", "yes", "1e400"]),
)
every_key = sorted({k for keys in KNOWN_KEYS.values() for k in keys})
keys = st.one_of(st.sampled_from(every_key), st.text(max_size=12))


def yamlish(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


# ------------------------------------------------------------------------------------------- config loader


@FAST
@given(yamlish())
def test_any_structure_is_a_config_or_a_config_error(data):
    try:
        result = parse_config(data, environ={})
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e.strip() for e in exc.errors)
    else:
        assert isinstance(result, Config)


VALID: dict[str, Any] = {
    "accounts": [{"name": "acme", "username": "acme", "api_key": "k", "endpoint": "http://127.0.0.1:1"}],
    "prefetch": {"windows": ["15m", "1h"], "poll_interval": "5m", "lookback": "1h", "page_size": 100,
                 "rate_limit": {"requests": 1, "per": "5m"}, "request_timeout": "30s"},
    "purge": {"enabled": False},
    "fmgr": {"enabled": True, "endpoint": "http://127.0.0.1:1", "windows": ["1h"], "register_token": "t",
             "notify": {"url": "https://x.example/notify/fmgr", "keys": [{"access_key": "a", "secret_key": "s"}]}},
    "storage": {"path": "x.db"},
}
# (where in VALID, the path an error about it must start with); *_file keys are left out (they read files).
LEAVES = [
    (("accounts", 0, k), f"accounts[0].{k}") for k in sorted(KNOWN_KEYS["accounts[]"]) if not k.endswith("_file")
] + [
    (("prefetch", k), f"prefetch.{k}") for k in sorted(KNOWN_KEYS["prefetch"])
] + [
    (("prefetch", "rate_limit", k), f"prefetch.rate_limit.{k}") for k in sorted(KNOWN_KEYS["rate_limit"])
] + [
    (("fmgr", k), f"fmgr.{k}") for k in sorted(KNOWN_KEYS["fmgr"]) if not k.endswith("_file")
] + [
    (("fmgr", "notify", k), f"fmgr.notify.{k}") for k in sorted(KNOWN_KEYS["fmgr.notify"])
] + [
    (("storage", "path"), "storage.path"),
]


def test_the_base_config_is_valid(tmp_path):
    assert isinstance(parse_config(copy.deepcopy(VALID), environ={}, base_dir=tmp_path), Config)


@FAST
@given(st.sampled_from(LEAVES), yamlish())
def test_a_bad_value_is_named_by_its_key_path(leaf, value):
    (where, path) = leaf
    data = copy.deepcopy(VALID)
    node: Any = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    try:
        parse_config(data, environ={})
    except ConfigError as exc:
        # Every problem is about the changed key (or what it conflicts with, e.g. windows vs lookback), and
        # at least one error names its path.
        assert any(e.startswith(path) or path in e for e in exc.errors), (path, exc.errors)


# --------------------------------------------------------------------------------------- CDN response parser

TZ = timezone(timedelta(hours=8))
row_values = st.one_of(scalars, st.sampled_from(["2026-11-22 16:00:00", "2026-02-30 25:61:61", "success",
                                                   "failure", "wait", "run", "100%", "-5", "NaN"]))
rows = st.one_of(scalars, st.dictionaries(
    st.sampled_from(["url", "createTime", "beginTime", "finishTime", "status", "rate", "itemId", "x"]),
    row_values, max_size=8))
cdn_pages = st.one_of(yamlish(), st.fixed_dictionaries({}, optional={
    "Code": st.one_of(scalars, st.sampled_from([0, 1, "1", "0", True])),
    "code": scalars,
    "Message": st.one_of(scalars, st.sampled_from(["success", "username is invalid", "page size error"])),
    "count": scalars, "pageNo": scalars, "pageSize": scalars,
    "resultDetail": st.one_of(scalars, st.lists(rows, max_size=4)),
}))


@FAST
@given(cdn_pages)
def test_any_cdn_answer_is_a_page_or_a_classified_api_error(data):
    try:
        page = parse_response(data, TZ)
    except ApiError as exc:
        assert exc.kind in RESULTS, exc.kind
    else:
        assert isinstance(page, QueryPage)
        assert page.rows >= len(page.tasks)


# -------------------------------------------------------------------------------------- notification decoder

statuses = st.fixed_dictionaries({}, optional={
    "id": st.one_of(scalars, st.from_regex(r"[A-Za-z0-9_.:-]{1,140}", fullmatch=True)),
    "code": st.one_of(scalars, st.integers(-3, 30)), "desc": scalars, "separate": scalars,
    "items": st.one_of(scalars, st.lists(st.one_of(scalars, st.dictionaries(
        st.sampled_from(["cmd", "code", "desc", "error", "hash", "fsize", "key", "url"]),
        st.one_of(scalars, st.sampled_from(["fetch/aGk=", "copy/x/bucket/y", "resource/%%%"]))
        , max_size=8)), max_size=4)),
})


def as_body(value: Any) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value).encode())


bodies = st.one_of(st.binary(max_size=300), statuses.map(as_body), yamlish().map(as_body),
                   st.text(max_size=200).map(lambda t: t.encode()))


@FAST
@given(bodies)
def test_any_notification_body_decodes_to_a_status_or_a_parse_error(raw):
    try:
        status = fmgr.parse_status(fmgr.decode_notification_body(raw))
    except fmgr.FmgrParseError as exc:
        assert str(exc)
    else:
        assert isinstance(status, fmgr.FmgrStatus)


@FAST
@given(st.one_of(st.none(), st.text(max_size=120), st.sampled_from(["AK1:", ":sig", "AK1:abc", "AK1:\u00e9\u00e9"])),
       st.binary(max_size=100))
def test_any_authorization_header_verifies_or_is_a_notify_error(header, raw):
    try:
        assert fmgr.verify_notification(header, raw, "https://x.example/n", {"AK1": "SK1"}) == "AK1"
    except fmgr.NotifyError as exc:
        assert exc.reason in ("bad_signature", "unknown_key")


# ------------------------------------------------------------------------------------------ registration API

TOKEN = "fuzz-register-token"


@pytest.fixture(scope="module")
def api_url(tmp_path_factory) -> Iterator[str]:
    cfg = copy.deepcopy(VALID)
    cfg["fmgr"] = {"enabled": True, "endpoint": "http://127.0.0.1:1", "windows": ["1h"], "register_token": TOKEN,
                   "max_register_ids": 50}
    cfg["storage"] = {"path": str(tmp_path_factory.mktemp("fuzz") / "api.db")}
    exporter = Exporter(parse_config(cfg, environ={}), listen_address="127.0.0.1:0")
    exporter.server.start()
    yield exporter.server.url
    exporter.stop()


json_bodies = st.one_of(
    yamlish().map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"persistentIds": st.one_of(scalars, st.lists(
        st.one_of(scalars, st.from_regex(r"[A-Za-z0-9_.:-]{1,130}", fullmatch=True)), max_size=60))}).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
queries = st.dictionaries(st.sampled_from(["state", "limit", "x"]),
                          st.one_of(st.text(max_size=12), st.sampled_from(["1", "0", "²", "-1", "99999999999999999999",
                                                                           "pending", "final", "1e3"])), max_size=3)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
       path=st.sampled_from(["/api/v1/fmgr/tasks", "/api/v1/fmgr/tasks/", "/api/v1/", "/api/v1/fmgr/x",
                             "/api/v1/fmgr/tasks%00", "/api/v2/fmgr/tasks"]),
       query=queries, body=json_bodies,
       auth=st.one_of(st.none(), st.just(f"Bearer {TOKEN}"), st.just(f"bearer  {TOKEN} "), st.text(max_size=30),
                      st.just("Bearer " + TOKEN[:-1])),
       content_type=st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_the_registration_api_never_answers_5xx(api_url, method, path, query, body, auth, content_type):
    headers = {}
    # Only header values an HTTP client sends at all (requests refuses leading whitespace and line breaks).
    if auth is not None and auth.isascii() and re.fullmatch(r"\S[^\r\n]*|", auth):
        headers["Authorization"] = auth
    if content_type:
        headers["Content-Type"] = content_type
    r = requests.request(method, api_url + path, params=query, data=body, headers=headers, timeout=10)
    assert r.status_code < 500, (r.status_code, r.text[:200])
