"""The ``slo:`` and ``quota:`` sections of config.yml: defaults, every problem with its key path, the example, and
the reader of the rules generator (``load_slo_config``), which validates ``slo:`` alone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from exporter import slo as slo_model
from exporter.config import ConfigError, QuotaConfig, RateLimit, load_config, load_slo_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yml"
ACCOUNTS = [{"name": "acme", "username": "acme", "api_key": "k1"},
            {"name": "globex", "username": "globex", "api_key": "k2"}]


def config(**sections: Any) -> Any:
    return parse_config({"accounts": ACCOUNTS, **sections}, environ={})


def errors(**sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"accounts": ACCOUNTS, **sections}, environ={"OBJ": "99.9", "ON": "yes"})
    return info.value.errors


# ------------------------------------------------------------------------------------------ slo


def test_every_objective_is_on_by_default_over_28_days():
    slo = config().slo
    assert [(o.name, o.enabled, o.objective, o.period, o.min_events) for o in slo.objectives] == [
        ("prefetch", True, 99.5, 28 * 86400, 20), ("purge", True, 99.5, 28 * 86400, 20),
        ("fmgr", True, 99.0, 28 * 86400, 20)]
    assert slo == slo_model.defaults()
    assert slo.get("prefetch").error_budget == 0.005


def test_objectives_as_numbers_strings_and_from_the_environment():
    slo = parse_config({"accounts": ACCOUNTS, "slo": {
        "prefetch": {"objective": "99.9%", "period": "30d", "min_events": 5},
        "purge": {"objective": 99, "enabled": False},
        "fmgr": {"objective": "${OBJ}"},
    }}, environ={"OBJ": "97.5"}).slo
    assert (slo.get("prefetch").objective, slo.get("prefetch").period, slo.get("prefetch").min_events) == (
        99.9, 30 * 86400, 5)
    assert slo.get("prefetch").error_budget == 0.001
    assert [o.name for o in slo.enabled()] == ["prefetch", "fmgr"]
    assert slo.get("fmgr").objective == 97.5


@pytest.mark.parametrize(("value", "message"), [
    (0.995, "slo.prefetch.objective: 0.995 is read as 0.995%; write the objective as a percentage (99.5 for 99.5%)"),
    (100, "slo.prefetch.objective: must be more than 0 and less than 100 (a percentage), got 100"),
    (-1, "slo.prefetch.objective: must be more than 0 and less than 100 (a percentage), got -1"),
    ("high", 'slo.prefetch.objective: "high" is not a percentage such as 99.5'),
    (True, "slo.prefetch.objective: expected a percentage such as 99.5, got boolean"),
    ([99], "slo.prefetch.objective: expected a percentage such as 99.5, got list"),
])
def test_bad_objectives(value, message):
    assert errors(slo={"prefetch": {"objective": value}}) == [message]


def test_every_slo_problem_is_reported_with_its_key_path():
    assert errors(slo={"prefech": {}, "purge": {"period": "1d", "min_events": 0, "target": 99},
                       "fmgr": {"period": "1y", "enabled": "maybe"}}) == [
        "slo.prefech: unknown key (did you mean prefetch?)",
        "slo.purge.target: unknown key (expected one of: enabled, min_events, objective, period)",
        "slo.purge.period: must be at least 3d",
        "slo.purge.min_events: must be at least 1, got 0",
        "slo.fmgr.enabled: expected a boolean (true or false), got string",
        "slo.fmgr.period: must be at most 12w6d",
    ]


def test_slo_alone_is_read_for_the_rules_generator(tmp_path):
    path = tmp_path / "config.yml"
    # Secrets that are not set and sections the generator does not need do not matter.
    path.write_text("accounts: [{name: a, username: a, api_key: '${UNSET}'}]\n"
                    "slo: {prefetch: {objective: 99.9}, fmgr: {enabled: false}}\n")
    slo = load_slo_config(path, environ={})
    assert slo.get("prefetch").objective == 99.9
    assert [o.name for o in slo.enabled()] == ["prefetch", "purge"]
    path.write_text("slo: {prefetch: {objective: 0.9, periode: 7d}}\n")
    with pytest.raises(ConfigError) as info:
        load_slo_config(path, environ={})
    assert info.value.errors == [f"{path}: slo.prefetch.periode: unknown key (did you mean period?)",
                                 f"{path}: slo.prefetch.objective: 0.9 is read as 0.9%; write the objective as a "
                                 "percentage (90 for 90%)"]
    path.write_text("slo: {prefetch: {objective: 99}\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_slo_config(path, environ={})
    path.write_text("")
    assert load_slo_config(path, environ={}) == slo_model.defaults()


# ------------------------------------------------------------------------------------------ quota


def test_quota_is_off_by_default_and_polls_every_account_once_on():
    assert config().quota == QuotaConfig()
    assert config().quota.pollers(config().accounts) == []
    on = config(quota={"enabled": True})
    assert on.quota.pollers(on.accounts) == [("acme", "prefetch"), ("acme", "purge"), ("globex", "prefetch"),
                                             ("globex", "purge")]
    assert (on.quota.poll_interval, on.quota.rate_limit, on.quota.request_timeout, on.quota.volume_unit) == (
        300.0, RateLimit(2, 300.0), 30.0, "GB")


def test_quota_for_the_accounts_that_allow_it():
    c = parse_config({"accounts": ACCOUNTS, "quota": {
        "enabled": "${ON}", "accounts": ["globex"], "kinds": ["prefetch"], "poll_interval": "1m",
        "rate_limit": {"requests": 3, "per": "1m"}, "request_timeout": "5s", "volume_unit": "GiB"}},
        environ={"ON": "true"})
    assert c.quota.pollers(c.accounts) == [("globex", "prefetch")]
    assert (c.quota.poll_interval, c.quota.rate_limit, c.quota.request_timeout, c.quota.volume_unit) == (
        60.0, RateLimit(3, 60.0), 5.0, "GiB")


def test_every_quota_problem_is_reported_with_its_key_path():
    assert errors(quota={"enabled": True, "accounts": ["acme", "initech", "acme", 7], "kinds": ["prefetch", "push"],
                         "poll_interval": "1h", "request_timeout": "45s", "volume_unit": "PB",
                         "rate_limit": {"requests": 0}, "budget": 1}) == [
        "quota.budget: unknown key (expected one of: accounts, enabled, kinds, poll_interval, rate_limit, "
        "request_timeout, volume_unit)",
        'quota.accounts[1]: "initech" is not a configured account (expected acme or globex)',
        'quota.accounts[2]: duplicate "acme" (see quota.accounts[0])',
        "quota.accounts[3]: expected a string, got integer",
        'quota.kinds[1]: "push" is not a quota kind (expected prefetch or purge)',
        "quota.poll_interval: must be at most 15m",
        "quota.request_timeout: 45s does not fit storage.lease_ttl (1m); use at most 42s",
        'quota.volume_unit: must be one of bytes, KB, MB, GB, TB, KiB, MiB, GiB, TiB, got "PB"',
        "quota.rate_limit.requests: must be at least 1, got 0",
    ]
    assert errors(quota={"kinds": []}) == ["quota.kinds: at least one of prefetch or purge is required"]
    # A longer lease makes room for a longer request.
    assert config(quota={"request_timeout": "45s"}, storage={"lease_ttl": "70s"}).quota.request_timeout == 45.0


def test_quota_needs_an_account():
    with pytest.raises(ConfigError) as info:
        parse_config({"prefetch": {"enabled": False}, "quota": {"enabled": True}}, environ={})
    assert info.value.errors == ["quota.enabled: true, but there is no account whose quotas could be polled"]


# ------------------------------------------------------------------------------------------ the example


def test_the_example_writes_out_the_defaults_of_both_sections(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "config.yml")
    (tmp_path / "secrets").mkdir()
    for name in ("globex_secret_key", "fmgr_ak2_secret_key"):
        (tmp_path / "secrets" / name).write_text("secret\n")
    example = load_config(tmp_path / "config.yml", environ={
        "ACME_API_KEY": "a", "FMGR_SECRET_KEY": "b", "EXPORTER_REGISTER_TOKEN": "c"})
    assert example.slo == slo_model.defaults()
    assert example.quota == QuotaConfig()
    assert load_slo_config(EXAMPLE, environ={}) == slo_model.defaults()
