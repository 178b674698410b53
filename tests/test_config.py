import copy
import dataclasses
import json
import pickle
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import (
    DEFAULT_CDN_ENDPOINT,
    KNOWN_KEYS,
    SECRET_MASK,
    Account,
    Config,
    ConfigError,
    FmgrConfig,
    NotifyConfig,
    RateLimit,
    StorageConfig,
    TaskKindConfig,
    Window,
    load_config,
    parse_config,
    redacted,
)
from exporter.configschema import MAX_DURATION, expand_env, format_duration, parse_duration, parse_timezone
from exporter.kinds import KINDS, NAMES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yml"

API_KEY = "acme-api-key-Zq81"
SECRET = "fmgr-secret-Kx72"


def minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"accounts": [{"name": "acme", "username": "acme", "api_key": API_KEY}]}
    data.update(sections)
    return data


def errors_of(data: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# ------------------------------------------------------------------------------------------ defaults


def test_defaults_of_a_minimal_config():
    config = parse_config(minimal(), environ={})
    (account,) = config.accounts
    assert (account.name, account.username, account.api_key) == ("acme", "acme", API_KEY)
    assert account.endpoint == DEFAULT_CDN_ENDPOINT
    assert account.timezone == "+08:00"
    assert account.tz.utcoffset(None) == timedelta(hours=8)
    assert account.auth == "basic"

    p = config.kinds["prefetch"]
    assert p.enabled is True
    assert p.windows == (Window("15m", 900), Window("1h", 3600), Window("24h", 86400))
    assert (p.poll_interval, p.lookback, p.page_size) == (300, 86400, 500)
    assert p.rate_limit == RateLimit(requests=1, per=300)
    assert (p.max_query_age, p.overlap, p.request_timeout) == (3 * 86400, 300, 30)
    assert p.max_response_bytes == 8 * 1024 * 1024

    # purge: the same defaults except enabled and the rate budget.
    assert config.kinds["purge"].enabled is False
    assert config.kinds["purge"].rate_limit == RateLimit(requests=10, per=300)
    assert {**vars(config.kinds["purge"]), "enabled": True, "rate_limit": None} == {
        **vars(p), "rate_limit": None}
    assert config.task_kinds() == [("prefetch", p)]

    f = config.fmgr
    assert f.enabled is False
    assert f.endpoint is None
    assert f.windows == (Window("1h", 3600), Window("24h", 86400))
    assert (f.poll_interval, f.max_task_age, f.persistent_ids) == (60, 7 * 86400, ())
    assert f.register_token is None
    assert f.rate_limit == RateLimit(requests=10, per=1)
    assert (f.request_timeout, f.max_register_ids) == (10, 1000)
    assert f.max_response_bytes == 8 * 1024 * 1024
    assert (f.notify_grace, f.confirm_delay) == (300, 30)
    assert (f.notify.path, f.notify.url, f.notify.max_body_bytes, f.notify.keys) == (
        "/notify/fmgr", None, 1048576, ())
    assert config.storage.path == "./data/cdnetworks-exporter.db"


def test_null_sections_and_values_mean_defaults():
    config = parse_config(minimal(prefetch=None, purge={"page_size": None}, storage=None), environ={})
    assert config.kinds["prefetch"].page_size == 500 and config.kinds["purge"].page_size == 500
    assert config.storage.path == "./data/cdnetworks-exporter.db"


def test_partial_rate_limit_keeps_the_other_default():
    config = parse_config(minimal(purge={"rate_limit": {"requests": 3}}), environ={})
    assert config.kinds["purge"].rate_limit == RateLimit(requests=3, per=300)


def test_endpoint_trailing_slash_stripped_and_http_allowed():
    data = minimal()
    data["accounts"][0]["endpoint"] = "http://127.0.0.1:8080/cdn/"
    data["fmgr"] = {"endpoint": "https://mgr.example.com/"}
    config = parse_config(data, environ={})
    assert config.accounts[0].endpoint == "http://127.0.0.1:8080/cdn"
    assert config.fmgr.endpoint == "https://mgr.example.com"


@pytest.mark.parametrize(
    ("fmgr", "enabled"),
    [
        ({}, False),
        ({"endpoint": "http://mgr.example.com"}, True),
        ({"persistent_ids": ["z0.abc"], "endpoint": "http://mgr.example.com"}, True),
        ({"persistent_ids": []}, False),
        ({"notify": {"url": "https://e.example.com/n", "keys": [{"access_key": "AK", "secret_key": "s"}]}}, True),
        ({"endpoint": "http://mgr.example.com", "enabled": False}, False),
        ({"enabled": True, "endpoint": "http://mgr.example.com"}, True),
    ],
)
def test_fmgr_enabled_follows_what_is_configured_unless_explicit(fmgr, enabled):
    assert parse_config(minimal(fmgr=fmgr), environ={}).fmgr.enabled is enabled


def test_fmgr_enabled_with_nothing_to_watch_is_an_error():
    assert errors_of(minimal(fmgr={"enabled": True}), environ={}) == [
        "fmgr.enabled: true, but neither endpoint nor notify.keys is set: nothing to watch"]
    assert errors_of(minimal(fmgr={"persistent_ids": ["z0.abc"]}), environ={}) == [
        "fmgr.persistent_ids: need fmgr.endpoint to be polled (or notify.keys to be notified)"]


def test_accounts_are_optional_only_when_prefetch_and_purge_are_off():
    message = "accounts: at least one account is required while prefetch or purge is enabled"
    assert errors_of({"storage": {"path": "x.db"}}, environ={}) == [message]
    assert errors_of({"accounts": [], "purge": {"enabled": True}, "prefetch": {"enabled": False}},
                     environ={}) == [message]
    # Accounts that are all invalid are reported as such, not as "none given".
    assert errors_of({"accounts": ["acme"]}, environ={}) == ["accounts[0]: expected a mapping, got string"]
    config = parse_config({"prefetch": {"enabled": False}, "fmgr": {"endpoint": "http://m.example.com"}},
                          environ={})
    assert config.accounts == () and config.task_kinds() == []


def test_aksk_account():
    data = {"accounts": [{"name": "globex", "auth": "aksk", "access_key": "AK1", "secret_key": "sk"}]}
    (account,) = parse_config(data, environ={}).accounts
    assert (account.auth, account.access_key, account.secret_key) == ("aksk", "AK1", "sk")
    assert (account.username, account.api_key) == ("", "")


def test_windows_keep_their_spelling_and_numbers_mean_seconds():
    config = parse_config(minimal(prefetch={"windows": ["90m", "1h30s", 600]}), environ={})
    assert config.kinds["prefetch"].windows == (Window("90m", 5400), Window("1h30s", 3630), Window("10m", 600))


# -------------------------------------------------------------------------------------- task kinds

# Every key of a task kind's section with a valid value that is not its default.
KIND_SECTION = {
    "enabled": True, "windows": ["5m", "2h"], "poll_interval": "1m", "lookback": "12h", "page_size": 100,
    "max_page_size": 200, "rate_limit": {"requests": 2, "per": "1m"}, "max_query_age": "2d", "overlap": "1m",
    "request_timeout": "10s", "max_response_bytes": 1048576,
}


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_an_absent_task_kind_section_has_the_tables_defaults(kind):
    config = parse_config(minimal(), environ={})
    kcfg = config.kinds[kind.name]
    assert kcfg.enabled is kind.enabled
    assert kcfg.rate_limit == RateLimit(requests=kind.budget_requests, per=kind.budget_seconds)
    # The other keys have the same defaults for every kind.
    assert {**vars(kcfg), "enabled": None, "rate_limit": None} == {
        "enabled": None, "windows": (Window("15m", 900), Window("1h", 3600), Window("24h", 86400)),
        "poll_interval": 300, "lookback": 86400, "page_size": 500, "rate_limit": None, "max_page_size": 1000,
        "max_query_age": 3 * 86400, "overlap": 300, "request_timeout": 30, "max_response_bytes": 8 * 1024 * 1024}


def test_config_holds_every_task_kind_in_table_order_and_task_kinds_the_enabled_ones():
    config = parse_config(minimal(), environ={})
    assert list(config.kinds) == list(NAMES)
    assert config.task_kinds() == [(k.name, config.kinds[k.name]) for k in KINDS if k.enabled]
    every = parse_config(minimal(**{name: {"enabled": True} for name in NAMES}), environ={})
    assert [name for name, _ in every.task_kinds()] == list(NAMES)
    none = parse_config(minimal(**{name: {"enabled": False} for name in NAMES}), environ={})
    assert none.task_kinds() == [] and list(none.kinds) == list(NAMES)


@pytest.mark.parametrize("kind", NAMES)
def test_every_key_of_a_task_kind_section_is_read(kind):
    assert KNOWN_KEYS[kind] == set(KIND_SECTION)
    kcfg = parse_config(minimal(**{kind: KIND_SECTION}), environ={}).kinds[kind]
    assert (kcfg.enabled, kcfg.windows, kcfg.poll_interval, kcfg.lookback) == (
        True, (Window("5m", 300), Window("2h", 7200)), 60, 12 * 3600)
    assert (kcfg.page_size, kcfg.max_page_size, kcfg.rate_limit) == (100, 200, RateLimit(requests=2, per=60))
    assert (kcfg.max_query_age, kcfg.overlap, kcfg.request_timeout) == (2 * 86400, 60, 10)
    assert kcfg.max_response_bytes == 1048576


@pytest.mark.parametrize("kind", NAMES)
def test_a_task_kind_section_reports_its_problems_with_key_paths(kind):
    section = {"page_sise": 5, "enabled": "maybe", "windows": ["2x"], "page_size": 0,
               "rate_limit": {"requests": 0, "burst": 1}}
    assert errors_of(minimal(**{kind: section}), environ={}) == [
        f"{kind}.page_sise: unknown key (did you mean page_size?)",
        f"{kind}.page_size: must be from 1 to 10000, got 0",
        f"{kind}.enabled: expected a boolean (true or false), got string",
        f'{kind}.windows[0]: "2x" is not a duration',
        f"{kind}.rate_limit.burst: unknown key (expected one of: per, requests)",
        f"{kind}.rate_limit.requests: must be at least 1, got 0",
    ]
    assert errors_of(minimal(**{kind: ["enabled"]}), environ={}) == [f"{kind}: expected a mapping, got list"]


def test_unknown_top_level_keys_are_still_errors():
    expected = ", ".join(sorted({"accounts", "fmgr", "storage", "slo", "quota", *NAMES}))
    assert errors_of(minimal(bogus={}), environ={}) == [f"bogus: unknown key (expected one of: {expected})"]
    assert errors_of(minimal(**{NAMES[0] + "s": {}}), environ={}) == [
        f"{NAMES[0]}s: unknown key (did you mean {NAMES[0]}?)"]


@pytest.mark.parametrize("kind", NAMES)
def test_any_enabled_task_kind_needs_an_account(kind):
    data: dict[str, Any] = {name: {"enabled": name == kind} for name in NAMES}
    (error,) = errors_of(data, environ={})
    assert error.startswith("accounts: at least one account is required while ")
    assert all(name in error for name in NAMES)
    data[kind] = {"enabled": False}
    assert parse_config({**data, "fmgr": {"endpoint": "http://m.example.com"}}, environ={}).accounts == ()


def test_redacted_keeps_one_top_level_section_per_task_kind():
    config = parse_config(minimal(), environ={})
    plain = redacted(config)
    assert list(plain) == ["accounts", *NAMES, "fmgr", "storage", "slo", "quota"]
    for kind in KINDS:
        assert plain[kind.name]["enabled"] is kind.enabled
        assert plain[kind.name]["rate_limit"] == {"requests": kind.budget_requests, "per": kind.budget_seconds}


def test_a_config_with_its_task_kinds_stays_hashable_copyable_and_picklable():
    config = parse_config(minimal(), environ={})
    assert hash(config) == hash(copy.deepcopy(config))
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))


# ------------------------------------------------------------------------------------- all problems


def test_every_problem_is_reported_at_once_with_its_key_path():
    data = {
        "acounts": [],
        "accounts": [
            {"name": "acme", "username": "acme", "api_key": "k", "timezone": "Mars/Olympus"},
            {"name": "acme", "username": "other"},
            {"name": "bad name!", "auth": "aksk"},
            {"name": "x", "auth": "oauth", "username": "x", "api_key": "k", "endpoint": "ftp://x"},
            "oops",
        ],
        "prefetch": {
            "windows": ["15m", "1h", "2x", "60m", "-5m"],
            "poll_interval": "500ms",
            "lookback": "4d",
            "page_size": 0,
            "rate_limit": {"requests": 0, "per": "soon", "burst": 2},
            "max_query_age": "3d",
            "overlap": True,
            "request_timeout": "0s",
            "max_response_bytes": 10,
        },
        "purge": {"pagesize": 10, "enabled": "yes", "windows": [], "max_response_bytes": "8MiB"},
        "fmgr": {
            "endpoint": "mgr.example.com",
            "windows": "1h",
            "max_task_age": 0,
            "persistent_ids": ["z0.ok", "has space", 7, "z0.ok"],
            "register_token": "t",
            "register_token_file": "token.txt",
            "max_register_ids": 0,
            "max_response_bytes": 2**31,
            "notify": {
                "path": "/metrics",
                "max_body_bytes": 10,
                "keys": [
                    {"access_key": "AK1", "secret_key": "${FMGR_SECRET_KEY}"},
                    {"access_key": "AK1", "secret_key": "a"},
                    {"secret_key_file": "missing.key"},
                ],
            },
        },
        "storage": {"path": ""},
    }
    errors = errors_of(data, environ={}, base_dir=Path("/nonexistent-dir"))
    expected = [
        "acounts: unknown key (did you mean accounts?)",
        'accounts[0].timezone: "Mars/Olympus" is not a known time zone (use +08:00, UTC or an IANA name)',
        "accounts[1].api_key: required (or api_key_file)",
        'accounts[1].name: duplicate account name "acme" (see accounts[0])',
        'accounts[2].name: "bad name!" may only contain letters, digits, _ . and -',
        "accounts[2].access_key: required (with auth: aksk)",
        "accounts[2].secret_key: required (or secret_key_file)",
        'accounts[3].auth: must be one of basic, aksk, got "oauth"',
        'accounts[3].endpoint: "ftp://x" is not an http(s) URL',
        "accounts[4]: expected a mapping, got string",
        "prefetch.rate_limit.burst: unknown key (expected one of: per, requests)",
        "prefetch.lookback: 4d is longer than prefetch.max_query_age (3d); the API refuses older start times",
        'prefetch.windows[2]: "2x" is not a duration',
        "prefetch.windows[3]: duplicate window (same length as prefetch.windows[1])",
        'prefetch.windows[4]: "-5m" is negative; durations must not be negative',
        "prefetch.poll_interval: must be at least 1s",
        "prefetch.page_size: must be from 1 to 10000, got 0",
        "prefetch.rate_limit.requests: must be at least 1, got 0",
        'prefetch.rate_limit.per: "soon" is not a duration',
        "prefetch.overlap: expected a duration such as 5m, got boolean",
        "prefetch.request_timeout: must be greater than 0",
        "prefetch.max_response_bytes: must be from 1024 to 1073741824, got 10",
        "purge.max_response_bytes: expected an integer, got string",
        "purge.pagesize: unknown key (did you mean page_size?)",
        "purge.enabled: expected a boolean (true or false), got string",
        "purge.windows: at least one window is required",
        'fmgr.endpoint: "mgr.example.com" is not an http(s) URL',
        'fmgr.persistent_ids[1]: "has space" is not a persistentId (1 to 128 of A-Z a-z 0-9 _ . : -)',
        "fmgr.persistent_ids[2]: expected a string, got integer",
        "fmgr.persistent_ids[3]: duplicate persistentId (see fmgr.persistent_ids[0])",
        'fmgr.notify.path: "/metrics" is served by the exporter itself; choose another path',
        "fmgr.notify.keys[0].secret_key: environment variable FMGR_SECRET_KEY is not set",
        "fmgr.notify.keys[1].access_key: duplicate access key (see fmgr.notify.keys[0].access_key)",
        "fmgr.notify.keys[2].access_key: required",
        "fmgr.notify.keys[2].secret_key_file: cannot read /nonexistent-dir/missing.key: No such file or directory",
        "fmgr.notify.url: required when keys are set (the notifyURL given to the vendor, as signed)",
        "fmgr.notify.max_body_bytes: must be from 1024 to 67108864, got 10",
        "fmgr.windows: expected a list, got string",
        "fmgr.max_task_age: must be greater than 0",
        "fmgr.register_token_file: conflicts with register_token; set only one of them",
        "fmgr.max_register_ids: must be at least 1, got 0",
        "fmgr.max_response_bytes: must be from 1024 to 1073741824, got 2147483648",
        "storage.path: must not be empty",
    ]
    assert sorted(errors) == sorted(expected)
    assert len(errors) == len(set(errors))  # nothing reported twice


def test_errors_read_in_file_order_by_section():
    errors = errors_of({"storage": {"paht": "x"}, "prefetch": {"page_size": "x"}}, environ={})
    assert errors == [
        "accounts: at least one account is required while prefetch or purge is enabled",
        "prefetch.page_size: expected an integer, got string",
        "storage.paht: unknown key (did you mean path?)",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "config is empty"),
        ({}, "config is empty"),
        ([1, 2], "config must be a mapping of sections, got list"),
        ({"accounts": {"name": "acme"}}, "accounts: expected a list, got mapping"),
        (minimal(prefetch=[1]), "prefetch: expected a mapping, got list"),
        (minimal(prefetch={"page_size": 1.5}), "prefetch.page_size: expected an integer, got number"),
        (minimal(prefetch={"page_size": True}), "prefetch.page_size: expected an integer, got boolean"),
        (minimal(prefetch={"max_query_age": "8d"}), "prefetch.max_query_age: must be at most 1w"),
        (minimal(fmgr={"poll_interval": 0.5, "endpoint": "http://m"}), "fmgr.poll_interval: must be at least 1s"),
        (minimal(bogus=1),
         "bogus: unknown key (expected one of: accounts, fmgr, prefetch, purge, quota, slo, storage)"),
        (minimal(purge={"page-size": 5}), "purge.page-size: unknown key (did you mean page_size?)"),
        (minimal(fmgr={"notify": {"path": "notify"}}),
         'fmgr.notify.path: "notify" must be a URL path starting with / (no query or spaces)'),
        (minimal(fmgr={"notify": {"path": "/api/v1/notify"}}),
         'fmgr.notify.path: "/api/v1/notify" is served by the exporter itself; choose another path'),
        (minimal(fmgr={"persistent_ids": ["a" * 129]}),
         f'fmgr.persistent_ids[0]: "{"a" * 129}" is not a persistentId (1 to 128 of A-Z a-z 0-9 _ . : -)'),
        (minimal(fmgr={"notify": {"url": "https://e.example.com/n#x"}}),
         'fmgr.notify.url: "https://e.example.com/n#x" must not have a #fragment'),
        ({"accounts": [{"name": "a", "username": "u:v", "api_key": "k"}]},
         "accounts[0].username: user name must not contain whitespace or :"),
        ({"accounts": [{"name": "a", "username": "u", "api_key": "k", "access_key": "AK"}]},
         "accounts[0].access_key: only used with auth: aksk"),
        ({"accounts": [{"name": "a", "username": "u", "api_key": "k", "endpoint": "https://x/?q=1"}]},
         'accounts[0].endpoint: "https://x/?q=1" must not have a query string'),
    ],
)
def test_single_problems(data, message):
    assert errors_of(data, environ={}) == [message]


def test_notify_url_keeps_its_query_exactly():
    url = "https://exporter.example.com/notify/fmgr?team=a&x=%2F/"
    fmgr = {"notify": {"url": url, "keys": [{"access_key": "AK", "secret_key": "s"}]}}
    assert parse_config(minimal(fmgr=fmgr), environ={}).fmgr.notify.url == url


def test_url_with_credentials_is_rejected_without_echoing_them():
    data = minimal(fmgr={"endpoint": "https://user:hunter2@mgr.example.com"})
    (error,) = errors_of(data, environ={})
    assert error.startswith("fmgr.endpoint: must not contain credentials")
    assert "hunter2" not in error


def test_unquoted_yaml_offset_gets_a_hint(tmp_path):
    file = tmp_path / "config.yml"
    file.write_text("accounts:\n  - {name: a, username: u, api_key: k, timezone: +8:00}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.errors == [
        'accounts[0].timezone: expected a string, got a number (quote UTC offsets, e.g. "+08:00")']


# ------------------------------------------------------------------------------------- environment


def test_env_expansion_in_every_string_value():
    environ = {"KEY": API_KEY, "HOST": "mgr.example.com", "WIN": "2h", "PS": "250", "ON": "true", "ID": "z0.a"}
    data = {
        "accounts": [{"name": "acme", "username": "acme", "api_key": "${KEY}"}],
        "prefetch": {"windows": ["15m", "${WIN}"], "page_size": "${PS}", "poll_interval": "${WIN}"},
        "purge": {"enabled": "${ON}"},
        "fmgr": {"endpoint": "https://${HOST}:8443/", "persistent_ids": ["${ID}", "${ID}-${ID}"]},
    }
    config = parse_config(data, environ=environ)
    assert config.accounts[0].api_key == API_KEY
    assert config.kinds["prefetch"].windows[1] == Window("2h", 7200)
    assert config.kinds["prefetch"].page_size == 250
    assert config.kinds["prefetch"].poll_interval == 7200
    assert config.kinds["purge"].enabled is True
    assert config.fmgr.endpoint == "https://mgr.example.com:8443"
    assert config.fmgr.persistent_ids == ("z0.a", "z0.a-z0.a")


def test_env_values_are_typed_only_when_they_come_from_the_environment():
    # A literal string in YAML stays a type error; the same text from ${VAR} is read as YAML would.
    assert errors_of(minimal(prefetch={"page_size": "250"}), environ={}) == [
        "prefetch.page_size: expected an integer, got string"]
    assert errors_of(minimal(prefetch={"page_size": "${PS}"}), environ={"PS": "many"}) == [
        "prefetch.page_size: expected an integer, got string"]


def test_dollar_escapes_and_literal_dollars():
    environ = {"A": "x$y", "B": "${A}"}
    assert expand_env("$${A}", environ) == ("${A}", False, [])
    assert expand_env("p$ss$", environ) == ("p$ss$", False, [])
    assert expand_env("${A}-${B}", environ) == ("x$y-${A}", True, [])  # values are not re-expanded
    assert expand_env("pre${A}$$post", environ) == ("prex$y$post", True, [])


def test_missing_env_vars_are_each_reported_at_their_key_path():
    data = minimal(fmgr={"endpoint": "https://${HOST}/${PATH_PART}",
                         "notify": {"url": "https://e.example.com/n",
                                    "keys": [{"access_key": "AK1", "secret_key": "${FMGR_SECRET_KEY}"}]}})
    data["accounts"][0]["api_key"] = "${ACME_API_KEY}"
    assert errors_of(data, environ={"HOST": "mgr"}) == [
        "accounts[0].api_key: environment variable ACME_API_KEY is not set",
        "fmgr.endpoint: environment variable PATH_PART is not set",
        "fmgr.notify.keys[0].secret_key: environment variable FMGR_SECRET_KEY is not set",
    ]


@pytest.mark.parametrize("text", ["${", "abc${NAME", "${VAR:-default}", "${}", "${1X}"])
def test_malformed_references_are_errors(text):
    data = minimal()
    data["accounts"][0]["username"] = text
    (error,) = errors_of(data, environ={"VAR": "v", "NAME": "n"})
    assert error.startswith("accounts[0].username: ")
    assert "default" not in error


def test_env_var_set_but_empty():
    data = minimal()
    data["accounts"][0]["api_key"] = "${EMPTY}"
    assert errors_of(data, environ={"EMPTY": ""}) == ["accounts[0].api_key: must not be empty"]


def test_os_environ_is_the_default(monkeypatch):
    monkeypatch.setenv("CDNX_TEST_API_KEY", API_KEY)
    data = minimal()
    data["accounts"][0]["api_key"] = "${CDNX_TEST_API_KEY}"
    assert parse_config(data).accounts[0].api_key == API_KEY


# -------------------------------------------------------------------------------------- *_file keys


def test_secret_files_relative_to_base_dir_with_trailing_whitespace_stripped(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "acme").write_text(f"{API_KEY}\n\n")
    (tmp_path / "sk").write_text("  leading kept\t \n")
    (tmp_path / "token").write_text("tok-123\r\n")
    abs_file = tmp_path / "notify.key"
    abs_file.write_text(SECRET)
    data = {
        "accounts": [
            {"name": "acme", "username": "acme", "api_key_file": "secrets/acme"},
            {"name": "globex", "auth": "aksk", "access_key": "AK", "secret_key_file": "sk"},
        ],
        "fmgr": {
            "register_token_file": "${TOKEN_DIR}/token",
            "notify": {"url": "https://e.example.com/n",
                       "keys": [{"access_key": "AK1", "secret_key_file": str(abs_file)}]},
        },
    }
    config = parse_config(data, environ={"TOKEN_DIR": "."}, base_dir=tmp_path)
    assert config.accounts[0].api_key == API_KEY
    assert config.accounts[1].secret_key == "  leading kept"
    assert config.fmgr.register_token == "tok-123"
    assert config.fmgr.notify.keys[0].secret_key == SECRET


def test_unreadable_and_empty_secret_files(tmp_path):
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "dir").mkdir()
    data = {
        "accounts": [
            {"name": "a", "username": "u", "api_key_file": "nope"},
            {"name": "b", "username": "u", "api_key_file": "empty"},
            {"name": "c", "username": "u", "api_key_file": "dir"},
        ]
    }
    assert errors_of(data, environ={}, base_dir=tmp_path) == [
        f"accounts[0].api_key_file: cannot read {tmp_path / 'nope'}: No such file or directory",
        f"accounts[1].api_key_file: {tmp_path / 'empty'} is empty",
        f"accounts[2].api_key_file: cannot read {tmp_path / 'dir'}: Is a directory",
    ]


def test_both_secret_and_secret_file_is_an_error(tmp_path):
    (tmp_path / "k").write_text("from-file")
    data = {"accounts": [{"name": "a", "username": "u", "api_key": API_KEY, "api_key_file": "k"}]}
    assert errors_of(data, environ={}, base_dir=tmp_path) == [
        "accounts[0].api_key_file: conflicts with api_key; set only one of them"]


def test_load_config_resolves_secret_files_next_to_the_config(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "acme.key").write_text(API_KEY + "\n")
    (conf_dir / "config.yml").write_text(
        "accounts:\n  - name: acme\n    username: acme\n    api_key_file: acme.key\n")
    monkeypatch.chdir(tmp_path)  # not the config's directory
    config = load_config("etc/config.yml", environ={})
    assert config.accounts[0].api_key == API_KEY


# ------------------------------------------------------------------------------------------ loading


def test_yaml_syntax_error_names_file_and_line_without_the_line_itself(tmp_path):
    file = tmp_path / "config.yml"
    file.write_text(f"accounts:\n  - name: acme\n    api_key: {SECRET}: oops\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    (error,) = info.value.errors
    assert error.startswith(f"{file}: line 3, column ")
    assert "mapping values are not allowed here" in error
    assert SECRET not in error


def test_duplicate_yaml_keys_are_errors(tmp_path):
    file = tmp_path / "config.yml"
    file.write_text("prefetch:\n  enabled: true\nstorage: {}\nprefetch:\n  enabled: false\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.errors == [f'{file}: line 4, column 1: duplicate key "prefetch" (first at line 1)']


def test_yaml_merge_keys_may_override(tmp_path):
    file = tmp_path / "config.yml"
    file.write_text(
        "defaults: &d {username: acme, api_key: k, timezone: UTC}\n"
        "accounts:\n  - <<: *d\n    name: a\n    timezone: '+01:00'\n"
    )
    with pytest.raises(ConfigError) as info:  # the anchor's holder is an unknown top-level key
        load_config(file, environ={})
    assert info.value.errors == [
        "defaults: unknown key (expected one of: accounts, fmgr, prefetch, purge, quota, slo, storage)"]
    file.write_text("accounts:\n  - <<: {username: acme, api_key: k, timezone: UTC}\n    name: a\n"
                    "    timezone: '+01:00'\n")
    assert load_config(file, environ={}).accounts[0].timezone == "+01:00"


@pytest.mark.parametrize("content", ["", "# only a comment\n", "null\n", "---\n"])
def test_empty_file(tmp_path, content):
    file = tmp_path / "config.yml"
    file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.errors == ["config is empty"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yml", environ={})
    assert info.value.errors == [f"{tmp_path / 'absent.yml'}: cannot read: No such file or directory"]


def test_yaml_objects_are_not_constructed(tmp_path):
    file = tmp_path / "config.yml"
    file.write_text("storage: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    (error,) = info.value.errors
    assert error.startswith(f"{file}: line 1, column 10: could not determine a constructor")


# -------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30), ("5m", 300), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("1w", 604800),
        ("1y", 365 * 86400), ("1h30m", 5400), ("1d12h", 129600), ("500ms", 0.5), ("1m500ms", 60.5),
        ("2h0m5s", 7205), ("0s", 0), ("0", 0), ("90", 90), (" 15m ", 900), (300, 300), (1.5, 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("  ", "empty duration"),
        ("2x", '"2x" is not a duration'),
        ("5", None),
        ("1.5h", '"1.5h" is not a duration'),
        ("m", '"m" is not a duration'),
        ("5m1h", '"5m1h" is not a duration'),
        ("5m5m", '"5m5m" is not a duration'),
        ("1 h", '"1 h" is not a duration'),
        ("5M", '"5M" is not a duration'),
        ("-5m", '"-5m" is negative; durations must not be negative'),
        ("\uff11m", '"\uff11m" is not a duration'),  # a full-width digit one
        (-1, "-1 is not a duration (must be a finite number of seconds >= 0)"),
        (float("nan"), "nan is not a duration (must be a finite number of seconds >= 0)"),
        (True, "expected a duration, got boolean"),
    ],
)
def test_bad_durations(text, message):
    if message is None:  # a control row: plain digits are seconds
        assert parse_duration(text) == 5
        return
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d"), (604800, "1w"), (691200, "1w1d")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=round(MAX_DURATION * 1000)))
def test_format_then_parse_roundtrips_milliseconds(ms):
    assert round(parse_duration(format_duration(ms / 1000)) * 1000) == ms


@pytest.mark.parametrize("text", ["1000000y", "11y", "3651d", 10**12, "99999999999999999999s"])
def test_absurd_durations_are_refused(text):
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration(text)


# -------------------------------------------------------------------------------------- time zones


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("+08:00", timedelta(hours=8)),
        ("-05:30", -timedelta(hours=5, minutes=30)),
        ("+0800", timedelta(hours=8)),
        ("+0545", timedelta(hours=5, minutes=45)),
        ("+8:00", timedelta(hours=8)),
        ("+09", timedelta(hours=9)),
        ("-3", -timedelta(hours=3)),
        ("+14:00", timedelta(hours=14)),
        ("UTC", timedelta(0)),
        ("Z", timedelta(0)),
        ("utc", timedelta(0)),
    ],
)
def test_fixed_offsets(text, offset):
    assert parse_timezone(text).utcoffset(None) == offset


def test_iana_names_follow_daylight_saving():
    shanghai = parse_timezone("Asia/Shanghai")
    assert datetime(2024, 7, 1, tzinfo=shanghai).utcoffset() == timedelta(hours=8)
    new_york = parse_timezone("America/New_York")
    assert datetime(2024, 1, 15, tzinfo=new_york).utcoffset() == timedelta(hours=-5)
    assert datetime(2024, 7, 15, tzinfo=new_york).utcoffset() == timedelta(hours=-4)


@pytest.mark.parametrize(
    "text", ["", "+15:00", "+08:60", "+800", "08:00", "UTC+8", "Mars/Olympus", "../etc/passwd", "Asia", "+08:00:00"]
)
def test_bad_time_zones(text):
    with pytest.raises(ValueError, match=r"time zone|UTC offset"):
        parse_timezone(text)


def test_account_timezone_keeps_its_spelling():
    data = minimal()
    data["accounts"][0]["timezone"] = "Asia/Shanghai"
    account = parse_config(data, environ={}).accounts[0]
    assert account.timezone == "Asia/Shanghai"
    assert datetime(2024, 1, 1, tzinfo=account.tz).utcoffset() == timedelta(hours=8)


# ------------------------------------------------------------------------------- lookback, budgets


def test_lookback_longer_than_max_query_age_is_rejected():
    assert errors_of(minimal(purge={"lookback": "2d", "max_query_age": "1d"}), environ={}) == [
        "purge.lookback: 2d is longer than purge.max_query_age (1d); the API refuses older start times"]
    config = parse_config(minimal(prefetch={"lookback": "6d", "max_query_age": "7d"}), environ={})
    assert (config.kinds["prefetch"].lookback, config.kinds["prefetch"].max_query_age) == (6 * 86400, 7 * 86400)


def test_lookback_is_not_compared_with_an_invalid_max_query_age():
    assert errors_of(minimal(prefetch={"lookback": "1d", "max_query_age": "later"}), environ={}) == [
        'prefetch.max_query_age: "later" is not a duration']


def test_overlap_may_be_zero_but_intervals_may_not():
    config = parse_config(minimal(prefetch={"overlap": 0}), environ={})
    assert config.kinds["prefetch"].overlap == 0
    assert errors_of(minimal(prefetch={"lookback": "0s"}), environ={}) == [
        "prefetch.lookback: must be greater than 0"]


# ------------------------------------------------------------------------------------------ secrets


def _secretive_config(tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    (tmp_path / "sk").write_text("aksk-secret-Pw55\n")
    data = {
        "accounts": [
            {"name": "acme", "username": "acme", "api_key": "${ACME_API_KEY}"},
            {"name": "globex", "auth": "aksk", "access_key": "AKG", "secret_key_file": "sk"},
        ],
        "fmgr": {
            "register_token": "register-token-Yt31",
            "notify": {"url": "https://e.example.com/n",
                       "keys": [{"access_key": "AK1", "secret_key": "${FMGR_SECRET_KEY}"}]},
        },
    }
    return data, {"ACME_API_KEY": API_KEY, "FMGR_SECRET_KEY": SECRET}


SECRETS = (API_KEY, SECRET, "aksk-secret-Pw55", "register-token-Yt31")


def test_secrets_are_not_in_repr_and_are_masked_by_redacted(tmp_path):
    data, environ = _secretive_config(tmp_path)
    config = parse_config(data, environ=environ, base_dir=tmp_path)
    assert config.accounts[1].secret_key == "aksk-secret-Pw55"  # loaded, just hidden
    text = repr(config) + str(config)
    dump = json.dumps(redacted(config))  # plain data: JSON can serialise it
    for secret in SECRETS:
        assert secret not in text
        assert secret not in dump
    plain = redacted(config)
    assert plain["accounts"][0]["api_key"] == SECRET_MASK
    assert plain["accounts"][0]["secret_key"] == ""  # unset secrets stay visibly unset
    assert plain["accounts"][1]["secret_key"] == SECRET_MASK
    assert plain["fmgr"]["register_token"] == SECRET_MASK
    assert plain["fmgr"]["notify"]["keys"] == [{"access_key": "AK1", "secret_key": SECRET_MASK}]
    assert plain["accounts"][1]["tz"] == "UTC+08:00"
    assert plain["prefetch"]["windows"][0] == {"name": "15m", "seconds": 900.0}


def test_secrets_are_not_in_error_messages(tmp_path):
    data, environ = _secretive_config(tmp_path)
    # Break everything around the secrets, and the secrets' own keys too.
    data["accounts"][0].update({"api_key_file": "sk", "name": "bad name", "endpoint": "x"})
    data["accounts"][1].update({"secret_key": "aksk-secret-Pw55", "api_kee": API_KEY})
    data["fmgr"].update({"register_token": ["register-token-Yt31"], "register_tokn": "register-token-Yt31"})
    data["fmgr"]["notify"]["keys"].append({"access_key": "AK1", "secret_key": SECRET, "secret": SECRET})
    data["fmgr"]["notify"]["keys"].append({"secret_key": 12345678})
    errors = errors_of(data, environ=environ, base_dir=tmp_path)
    assert len(errors) >= 8
    text = "\n".join(errors)
    for secret in SECRETS:
        assert secret not in text
    assert "12345678" not in text
    assert "fmgr.register_token: expected a string, got list" in errors
    assert "fmgr.notify.keys[2].secret_key: expected a string, got integer" in errors


def test_every_secret_field_is_hidden_from_repr():
    import dataclasses

    from exporter import config as module

    for cls in (module.Account, module.NotifyKey, module.FmgrConfig):
        for f in dataclasses.fields(cls):
            assert f.repr == (not f.metadata.get("secret", False)), (cls.__name__, f.name)


# ----------------------------------------------------------------------------------------- example


def _example_env() -> dict[str, str]:
    return {"ACME_API_KEY": API_KEY, "FMGR_SECRET_KEY": SECRET, "EXPORTER_REGISTER_TOKEN": "register-token-Yt31"}


def _load_example(tmp_path: Path) -> Config:
    shutil.copy(EXAMPLE, tmp_path / "config.yml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "globex_secret_key").write_text("aksk-secret-Pw55\n")
    (tmp_path / "secrets" / "fmgr_ak2_secret_key").write_text("ak2-secret\n")
    return load_config(tmp_path / "config.yml", environ=_example_env())


def test_example_config_loads(tmp_path):
    config = _load_example(tmp_path)
    acme, globex = config.accounts
    assert (acme.name, acme.auth, acme.api_key) == ("acme", "basic", API_KEY)
    assert (globex.name, globex.auth, globex.access_key, globex.secret_key) == (
        "globex", "aksk", "AKGLOBEX0001", "aksk-secret-Pw55")
    assert globex.timezone == "Asia/Shanghai"
    assert config.kinds["purge"].enabled is False
    assert config.fmgr.enabled is True
    assert config.fmgr.register_token == "register-token-Yt31"
    assert [(k.access_key, k.secret_key) for k in config.fmgr.notify.keys] == [
        ("AK1", SECRET), ("AK2", "ak2-secret")]
    assert config.fmgr.notify.url == "https://exporter.example.com/notify/fmgr"


def test_example_config_without_its_environment_names_what_is_missing(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "config.yml")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yml", environ={})
    text = "\n".join(info.value.errors)
    for name in ("ACME_API_KEY", "FMGR_SECRET_KEY", "EXPORTER_REGISTER_TOKEN"):
        assert f"environment variable {name} is not set" in text
    assert "secrets/globex_secret_key" in text


def test_example_documents_the_real_defaults(tmp_path):
    # The example writes the defaults out for these sections; they must agree with the code.
    example = _load_example(tmp_path)
    defaults = parse_config(minimal(fmgr={"endpoint": "http://mgr.example.com"}), environ={})
    assert example.kinds["prefetch"] == defaults.kinds["prefetch"]
    assert example.kinds["purge"] == defaults.kinds["purge"]
    assert example.storage == defaults.storage
    for name in ("windows", "poll_interval", "max_task_age", "persistent_ids", "rate_limit",
                 "request_timeout", "max_response_bytes", "max_register_ids"):
        assert getattr(example.fmgr, name) == getattr(defaults.fmgr, name), name
    assert (example.fmgr.notify.path, example.fmgr.notify.max_body_bytes) == (
        defaults.fmgr.notify.path, defaults.fmgr.notify.max_body_bytes)
    assert example.accounts[0].endpoint == DEFAULT_CDN_ENDPOINT
    assert example.accounts[0].timezone == "+08:00"


def test_example_mentions_every_key():
    text = EXAMPLE.read_text()
    missing = [key for keys in KNOWN_KEYS.values() for key in keys if not re.search(rf"\b{key}:", text)]
    assert missing == []


# ------------------------------------------------------------------------------------------- the models


def test_every_default_is_the_one_on_its_field():
    # Nothing on the way from YAML to the model has a default of its own: an empty section is the section's
    # fields at their defaults (a task kind takes `enabled` and the rate budget from its entry in KINDS).
    config = parse_config(minimal(fmgr={"endpoint": "http://m.example.com"}), environ={})
    assert config.accounts == (Account(name="acme", username="acme", api_key=API_KEY),)
    for kind in KINDS:
        assert config.kinds[kind.name] == TaskKindConfig(
            enabled=kind.enabled, rate_limit=RateLimit(kind.budget_requests, kind.budget_seconds))
    assert config.fmgr == FmgrConfig(endpoint="http://m.example.com", enabled=True)
    assert config.fmgr.notify == NotifyConfig()
    assert config.storage == StorageConfig()


def test_the_keys_are_the_fields():
    for cls, section in ((Account, "accounts[]"), (FmgrConfig, "fmgr"), (StorageConfig, "storage")):
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        secrets = {f"{f.name}_file" for f in dataclasses.fields(cls) if f.metadata.get("secret")}
        assert KNOWN_KEYS[section] == fields | secrets, section


def _file_data(value: Any) -> Any:
    """A validated config back in the shape of config.yml, secrets included, keys at their default left out (an
    account's unused credentials are empty, which the file cannot say)."""
    if isinstance(value, Window):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if "sections" in f.metadata:
                out.update(_file_data(item))
            elif f.init and item != f.default:
                out[f.name] = _file_data(item)
        return out
    if isinstance(value, tuple):
        return [_file_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _file_data(v) for k, v in value.items()}
    return value


def test_the_example_round_trips(tmp_path):
    # What validation makes of the example, written out again, is valid and validates to the same config.
    example = _load_example(tmp_path)
    (tmp_path / "again.yml").write_text(yaml.safe_dump(_file_data(example)))
    assert load_config(tmp_path / "again.yml", environ={}) == example
    changed = parse_config(minimal(**dict.fromkeys(NAMES, KIND_SECTION), storage={"lease_ttl": "2m"}), environ={})
    assert parse_config(_file_data(changed), environ={}) == changed


def test_an_unknown_key_deep_in_a_list_is_named_with_its_path_and_the_closest_key():
    data = minimal(fmgr={"notify": {"url": "https://e.example.com/n", "keys": [
        {"access_key": "AK1", "secret_key": "s1"}, {"access_key": "AK2", "secret_kye": "s2"}]}})
    data["accounts"].append({"name": "b", "username": "b", "api_key": "k", "timezon": "UTC", "rate_limit": {}})
    assert errors_of(data, environ={}) == [
        "accounts[1].timezon: unknown key (did you mean timezone?)",
        "accounts[1].rate_limit: unknown key (expected one of: access_key, api_key, api_key_file, auth, endpoint, "
        "name, secret_key, secret_key_file, timezone, username)",
        "fmgr.notify.keys[1].secret_kye: unknown key (did you mean secret_key?)",
        "fmgr.notify.keys[1].secret_key: required (or secret_key_file)",
    ]


def test_slo_and_quota_sections_on_the_models():
    # An slo: entry that is null is the default, one that is not a mapping is refused.
    assert parse_config(minimal(slo={"prefetch": None, "fmgr": {"objective": None}}), environ={}).slo == (
        parse_config(minimal(), environ={}).slo)
    assert errors_of(minimal(slo={"prefetch": []}), environ={}) == ["slo.prefetch: expected a mapping, got list"]
    # A list with no valid entry left is reported with the problems of its entries.
    assert errors_of(minimal(quota={"kinds": ["push", 7]}), environ={}) == [
        'quota.kinds[0]: "push" is not a quota kind (expected prefetch or purge)',
        "quota.kinds[1]: expected a string, got integer",
        "quota.kinds: at least one of prefetch or purge is required",
    ]
    # A lease already too short for the pollers is not compared with the quota queries again.
    assert errors_of(minimal(quota={"enabled": True}, storage={"lease_ttl": "40s"}), environ={}) == [
        "storage.lease_ttl: 40s is too short for a request_timeout of 30s; use at least 43s"]


@pytest.mark.parametrize("key", ["bogus", "kinds", "tz"])
def test_a_key_that_is_not_one_is_unknown_whatever_its_value(key):
    assert errors_of(minimal(**{key: None}), environ={})[0].startswith(f"{key}: unknown key")
    data = minimal()
    data["accounts"][0][key] = None
    assert errors_of(data, environ={})[0].startswith(f"accounts[0].{key}: unknown key")


def test_fixed_offset_tz_is_a_timezone():
    # Consumers format API times with the zone; a fixed offset is a plain datetime.timezone.
    assert parse_timezone("+08:00") == timezone(timedelta(hours=8))


def test_windows_shorter_than_a_minute_are_rejected():
    import pytest as _pytest

    from exporter.config import ConfigError as _ConfigError
    from exporter.config import parse_config as _parse

    with _pytest.raises(_ConfigError) as err:
        _parse({"accounts": [{"name": "a", "username": "u", "api_key": "k"}], "prefetch": {"windows": ["30s", "1h"]}},
               environ={})
    assert any(e.startswith("prefetch.windows[0]:") and "1m" in e for e in err.value.errors)


def test_fmgr_lifecycle_keys_are_durations_with_bounds():
    ok = parse_config(minimal(fmgr={"endpoint": "http://m.example.com", "notify_grace": "0s",
                                    "confirm_delay": "1m"}), environ={})
    assert (ok.fmgr.notify_grace, ok.fmgr.confirm_delay) == (0, 60)
    bad = minimal(fmgr={"endpoint": "http://m.example.com", "notify_grace": "2d", "confirm_delay": "0s"})
    assert sorted(errors_of(bad, environ={})) == [
        "fmgr.confirm_delay: must be greater than 0",
        "fmgr.notify_grace: must be at most 1d",
    ]
    assert errors_of(minimal(fmgr={"endpoint": "http://m.example.com", "notify_grace": "soon"}), environ={}) == [
        'fmgr.notify_grace: "soon" is not a duration']


# ------------------------------------------------------------------ storage: SQLite path or PostgreSQL URL

def test_storage_defaults_to_the_sqlite_path():
    storage = parse_config(minimal()).storage
    assert storage.url is None and storage.target() == storage.path == "./data/cdnetworks-exporter.db"


def test_storage_url_from_the_environment_or_a_file_with_the_password_apart(tmp_path):
    url = "postgresql://exporter@db.example:5432/cdn"
    cfg = parse_config(minimal(storage={"url": "${PG_URL}", "password": "${PG_PASSWORD}"}),
                       environ={"PG_URL": url, "PG_PASSWORD": "s3cret"})
    assert (cfg.storage.target(), cfg.storage.password) == (url, "s3cret")
    (tmp_path / "url").write_text(url + "\n")
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = parse_config(minimal(storage={"url_file": "url", "password_file": "pw"}), environ={}, base_dir=tmp_path)
    assert (cfg.storage.url, cfg.storage.password) == (url, "s3cret")
    shown = redacted(cfg)["storage"]
    assert "s3cret" not in str(shown) and url not in str(shown)


def test_storage_url_mistakes_are_named_by_key_path_without_echoing_the_url():
    assert errors_of(minimal(storage={"url": "mysql://u:hunter2@h/db"})) == [
        "storage.url: must be a PostgreSQL URL (postgresql://user@host:5432/database)"]
    assert errors_of(minimal(storage={"url": "postgresql://h/db", "path": "x.db"})) == [
        "storage.path: conflicts with url; set only one of them (url: PostgreSQL, path: SQLite)"]
    assert errors_of(minimal(storage={"password": "x"})) == [
        "storage.password: only used with url (a PostgreSQL database)"]
    assert errors_of(minimal(storage={"url": "postgresql://h/db", "url_file": "f"})) == [
        "storage.url_file: conflicts with url; set only one of them"]


def test_a_lease_must_outlast_the_longest_request():
    # prefetch's request_timeout defaults to 30s: a request must end within 3/4 of the lease, less margins.
    assert errors_of(minimal(storage={"url": "postgresql://h/db", "lease_ttl": "40s"})) == [
        "storage.lease_ttl: 40s is too short for a request_timeout of 30s; use at least 43s"]
    cfg = parse_config(minimal(storage={"url": "postgresql://h/db", "lease_ttl": "44s"}))
    assert cfg.storage.lease_ttl == 44.0
    cfg = parse_config(minimal(prefetch={"request_timeout": "2s"}, storage={"lease_ttl": "6s"}))
    assert cfg.storage.lease_ttl == 6.0
    # The default lease too, next to the other problems of the sections involved; the key named is the one the
    # file set: the timeout when the lease is the default, the lease when both were set.
    default_lease = ("prefetch.request_timeout: 50s does not fit storage.lease_ttl (1m, the default); use at most 42s, "
                     "or set storage.lease_ttl to at least 1m10s")
    assert errors_of(minimal(prefetch={"request_timeout": "50s"})) == [default_lease]
    assert errors_of(minimal(prefetch={"request_timeout": "43s"})) == [default_lease.replace("50s", "43s").replace(
        "1m10s", "1m1s")]
    assert errors_of(minimal(prefetch={"request_timeout": "50s", "page_size": 0}, storage={"path": ""})) == [
        "prefetch.page_size: must be from 1 to 10000, got 0",
        default_lease,
        "storage.path: must not be empty"]
    assert errors_of(minimal(prefetch={"request_timeout": "50s"}, storage={"lease_ttl": "1m"})) == [
        "storage.lease_ttl: 1m is too short for a request_timeout of 50s; use at least 1m10s"]


def test_sections_built_or_replaced_in_code_keep_their_empty_defaults() -> None:
    # dataclasses.replace passes every field again, the empty defaults of the keys an auth does not use too;
    # only a file's value must not be blank.
    account = parse_config(minimal()).accounts[0]
    assert account.auth == "basic" and account.access_key == ""
    wrong = dataclasses.replace(account, api_key="wrong")
    assert wrong.api_key == "wrong" and wrong.access_key == "" and wrong.tz == account.tz
    with pytest.raises(ValueError, match="must not be empty"):
        dataclasses.replace(account, api_key="   ")
