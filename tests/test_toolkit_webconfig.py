"""exporter-toolkit's own web configuration test cases, run against this exporter.

The README promises that ``--web.config.file`` takes the same file as every Go exporter built on
prometheus/exporter-toolkit, and that anything this server cannot honour is refused rather than ignored. This
file holds it to that with the toolkit's test data (``tests/fixtures/exporter-toolkit/``, vendored with its
licence) and the expectations of the toolkit's ``web/tls_config_test.go`` and ``web/handler_test.go``:

* every case of ``TestYAMLFiles`` (load-time expectations) goes through ``--check-config --web.config.file``;
* every case of ``TestServerBehaviour``, ``TestUsers``, ``TestConfigReloading`` and of ``handler_test.go``
  (handshakes and logins) runs against a live exporter on 127.0.0.1, with a client set up as the toolkit's
  Go client is (trusting ``tls-ca-chain.pem``; a client certificate, a TLS version, cipher suites or curves
  when the case sets them). Where the toolkit's server refuses the file when it starts serving (bad headers,
  no HTTP/2 cipher), the exporter must refuse it at load time.

A case either agrees with the toolkit or is a documented refusal, listed by name in ``REFUSED`` with the
message that refuses it; the README's figure is checked against this table.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.config import ConfigError, parse_config
from exporter.http.webconfig import WebConfig, load_web_config

ROOT = Path(__file__).resolve().parent.parent
TOOLKIT = ROOT / "tests" / "fixtures" / "exporter-toolkit" / "testdata"
SERVER_CERT = TOOLKIT / "server.crt"
TIMEOUT = 10

OK = 200
UNAUTHORIZED = 401
HANDSHAKE = "no TLS session"  # the handshake (or the first read, for TLS 1.3 client certificates) fails
NO_ANSWER = "no HTTP answer"  # plain HTTP to the TLS port: no 200 (the toolkit answers 400, this server closes)


@dataclass(frozen=True)
class Live:
    """A toolkit case against a live server: one or more requests and what each must get."""

    name: str
    file: str | None  # under testdata; None = no web config
    expect: int | str = OK
    tls: bool = False
    client_cert: str | None = None
    max_version: ssl.TLSVersion | None = None
    ciphers: str | None = None  # OpenSSL names, in the client's order (TLS 1.2)
    curve: str | None = None
    user: str | None = None
    password: str = ""
    cipher: str | None = None  # the suite the server must choose
    requests: int = 1


# TestYAMLFiles: each file through --check-config; None = valid, otherwise a fragment of the refusal, naming
# the same problem as the toolkit's error.
LOAD_CASES: list[tuple[str, str, str | None]] = [
    ("path to config yml invalid", "somefile", "cannot read web config"),
    ("empty config yml", "web_config_empty.yml", None),
    ("invalid config yml (invalid structure)", "web_config_junk.yml", "(top level): expected a mapping"),
    ("invalid config yml (invalid key)", "web_config_junk_key.yml", "tls_server_config.cert_filse: unknown key"),
    ("invalid config yml (cert path empty)", "web_config_noAuth_certPath_empty.bad.yml", "cert_file: required"),
    ("invalid config yml (cert empty)", "web_config_noAuth_cert_empty.bad.yml", "cert_file: required"),
    ("invalid config yml (key path empty)", "web_config_noAuth_keyPath_empty.bad.yml", "key_file: required"),
    ("invalid config yml (key empty)", "web_config_noAuth_key_empty.bad.yml", "key_file: required"),
    ("invalid config yml (cert path and key path empty)", "web_config_noAuth_certPath_keyPath_empty.bad.yml",
     "cert_file: required"),
    ("invalid config yml (cert path invalid)", "web_config_noAuth_certPath_invalid.bad.yml",
     "cert_file: file"),
    ("invalid config yml (key path invalid)", "web_config_noAuth_keyPath_invalid.bad.yml", "key_file: file"),
    ("invalid config yml (cert path and key path invalid)", "web_config_noAuth_certPath_keyPath_invalid.bad.yml",
     "cert_file: file"),
    ("invalid config yml (invalid ClientAuth)", "web_config_noAuth.bad.yml",
     "client_ca_file: set without a client_auth_type"),
    ("invalid config yml (invalid ClientCAs filepath)", "web_config_auth_clientCAs_invalid.bad.yml",
     "client_ca_file: file"),
    ("invalid config yml (invalid user list)", "web_config_auth_user_list_invalid.bad.yml",
     "basic_auth_users.john: not a bcrypt hash"),
    ("invalid config yml (bad cipher)", "web_config_noAuth_inventedCiphers.bad.yml",
     "cipher_suites: unknown cipher 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048'"),
    ("invalid config yml (bad curves)", "web_config_noAuth_inventedCurves.bad.yml",
     "curve_preferences: unknown curve 'CurveP257'"),
    ("invalid config yml (bad TLS version)", "web_config_noAuth_wrongTLSVersion.bad.yml",
     "min_version: 'TLS111' is not one of"),
]

AES128 = "ECDHE-RSA-AES128-GCM-SHA256"
AES256 = "ECDHE-RSA-AES256-GCM-SHA384"

LIVE_CASES: list[Live] = [
    # TestServerBehaviour
    Live("empty string YAMLConfigPath and default client", None),
    Live("empty string YAMLConfigPath and TLS client", None, HANDSHAKE, tls=True),
    Live("valid tls config yml and default client", "web_config_noAuth.good.yml", NO_ANSWER),
    Live("valid tls config yml and tls client", "web_config_noAuth.good.yml", tls=True),
    Live("valid tls config yml (cert and key inline) and tls client", "web_config_noAuth_tlsInline.good.yml",
         tls=True),
    Live("valid tls config yml with TLS 1.1 client", "web_config_noAuth.good.yml", HANDSHAKE, tls=True,
         max_version=ssl.TLSVersion.TLSv1_1),
    Live("valid tls config yml with all ciphers", "web_config_noAuth_allCiphers.good.yml", tls=True),
    Live("valid tls config yml with some ciphers", "web_config_noAuth_someCiphers.good.yml", tls=True,
         ciphers=AES128),
    Live("valid tls config yml with no common cipher", "web_config_noAuth_someCiphers.good.yml", HANDSHAKE,
         tls=True, ciphers="ECDHE-RSA-AES256-SHA"),
    Live("valid tls config yml with multiple client ciphers", "web_config_noAuth_someCiphers.good.yml", tls=True,
         ciphers=f"{AES128}:{AES256}", cipher=AES128),
    Live("valid tls config yml with multiple client ciphers, client chooses cipher",
         "web_config_noAuth_someCiphers_noOrder.good.yml", tls=True, ciphers=f"{AES128}:{AES256}", cipher=AES128),
    Live("valid tls config yml with all curves", "web_config_noAuth_allCurves.good.yml", tls=True),
    Live("valid tls config yml with some curves", "web_config_noAuth_someCurves.good.yml", tls=True,
         curve="secp521r1"),
    Live("valid tls config yml with no common curves", "web_config_noAuth_someCurves.good.yml", HANDSHAKE,
         tls=True, curve="secp384r1"),
    Live("valid tls config yml with non-http2 ciphers", "web_config_noAuth_noHTTP2.good.yml", tls=True),
    Live("valid tls config yml with non-http2 ciphers but http2 enabled",
         "web_config_noAuth_noHTTP2Cipher.bad.yml", "refused: cipher_suites: no HTTP/2-required", tls=True),
    Live("valid headers config", "web_config_headers.good.yml"),
    Live("invalid X-Content-Type-Options headers config", "web_config_headers_content_type_options.bad.yml",
         "refused: headers.X-Content-Type-Options: 'sniff' is not one of"),
    Live("invalid X-Frame-Options headers config", "web_config_headers_frame_options.bad.yml",
         "refused: headers.X-Frame-Options: 'foo' is not one of"),
    Live("HTTP header that can not be overridden", "web_config_headers_extra_header.bad.yml",
         "refused: headers.Content-Type: this header cannot be configured"),
    Live("valid tls config yml and tls client with RequireAnyClientCert (present certificate)",
         "tls_config_noAuth.requireanyclientcert.good.yml", tls=True, client_cert="client_selfsigned"),
    Live("valid tls config yml (cert from file, key inline) and tls client with RequireAnyClientCert "
         "(present certificate)", "tls_config_noAuth.requireanyclientcert.good.yml", tls=True,
         client_cert="client_selfsigned"),
    Live("valid tls config yml and tls client with RequireAndVerifyClientCert (present certificate)",
         "tls_config_noAuth.requireandverifyclientcert.good.yml", tls=True, client_cert="client_selfsigned"),
    Live("valid tls config yml and tls client with VerifyPeerCertificate (present good SAN DNS entry)",
         "web_config_auth_client_san.good.yaml", tls=True, client_cert="client2_selfsigned"),
    Live("valid tls config yml and tls client with VerifyPeerCertificate (present invalid SAN DNS entries)",
         "web_config_auth_client_san.bad.yaml", HANDSHAKE, tls=True, client_cert="client2_selfsigned"),
    Live("valid rate limiter (no rate limiter set up) that doesn't block",
         "web_config_rate_limiter_nonblocking.yaml", requests=11),
    Live("valid rate limiter with an interval of one second", "web_config_rate_limiter_one_second.yaml", 429,
         requests=11),
    # TestUsers
    Live("users: without basic auth", "web_config_users_noTLS.good.yml", UNAUTHORIZED),
    Live("users: with correct basic auth", "web_config_users_noTLS.good.yml", user="dave", password="dave123"),
    Live("users: without basic auth and TLS", "web_config_users.good.yml", UNAUTHORIZED, tls=True),
    Live("users: with correct basic auth and TLS", "web_config_users.good.yml", tls=True, user="dave",
         password="dave123"),
    Live("users: with another correct basic auth and TLS", "web_config_users.good.yml", tls=True, user="carol",
         password="carol123"),
    Live("users: with bad password and TLS", "web_config_users.good.yml", UNAUTHORIZED, tls=True, user="dave",
         password="bad"),
    Live("users: with bad username and TLS", "web_config_users.good.yml", UNAUTHORIZED, tls=True,
         user="nonexistent", password="nonexistent"),
    # TestConfigReloading: a client without a certificate is refused by the blocking file ...
    Live("reloading: blocking file refuses a client without a certificate", "web_config_noAuth.good.blocking.yml",
         HANDSHAKE, tls=True),
]

# ... and, once the file's contents are swapped for web_config_noAuth.good.yml, the toolkit accepts the next
# connection without a restart. Here the web config is read at start (README, "Reloading").
RELOAD_CASE = "reloading: a changed file applies to the next connection"
# handler_test.go
HANDLER_CASES = ["TestBasicAuthCache", "TestBasicAuthWithFakepassword", "TestByPassBasicAuthVuln", "TestHTTPHeaders"]

# The documented refusals (README, "TLS and basic auth"), each with the message that refuses the file.
REFUSED: dict[str, str] = {
    "valid tls config yml (cert and key inline) and tls client": "tls_server_config.cert: inline certificates",
    "valid tls config yml and tls client with RequireAnyClientCert (present certificate)":
        "'RequireAnyClientCert' (client certificate without verification) is not supported",
    "valid tls config yml (cert from file, key inline) and tls client with RequireAnyClientCert "
    "(present certificate)": "'RequireAnyClientCert' (client certificate without verification) is not supported",
    "valid tls config yml and tls client with VerifyPeerCertificate (present good SAN DNS entry)":
        "client_allowed_sans: client SAN pinning is not supported",
    "valid tls config yml and tls client with VerifyPeerCertificate (present invalid SAN DNS entries)":
        "client_allowed_sans: client SAN pinning is not supported",
    "valid rate limiter with an interval of one second": "rate_limit: rate limiting is not supported",
    RELOAD_CASE: "read at start",
}

ALL_CASES = [name for name, _, _ in LOAD_CASES] + [c.name for c in LIVE_CASES] + [RELOAD_CASE] + HANDLER_CASES


def test_the_table_names_every_case_once() -> None:
    assert len(ALL_CASES) == len(set(ALL_CASES)) == 18 + 27 + 7 + 2 + 4
    assert set(REFUSED) <= set(ALL_CASES)


# --------------------------------------------------------------------------------------------------
# Load-time expectations: --check-config


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDNETWORKS_EXPORTER_")}
    env["PYTHONPATH"] = str(ROOT)
    # --demo: no exporter configuration to check, only the web config.
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "--check-config", "--demo", "--web.config.file", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env=env, cwd=ROOT,
    )


@pytest.mark.parametrize(("name", "file", "refusal"), LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_load_time_case(name: str, file: str, refusal: str | None) -> None:
    result = check_config(TOOLKIT / file)
    if refusal is None:
        assert result.returncode == 0, result.stderr
        assert "configuration is valid" in result.stdout
        assert "not applied" not in result.stderr
    else:
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert refusal in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# Handshakes and logins: a live exporter on 127.0.0.1


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[WebConfig | None], int]]:
    """Start an exporter (its HTTP server, wired as ``cli`` does) with a web config; its port."""
    started: list[Exporter] = []

    def start(web_config: WebConfig | None) -> int:
        config = parse_config({
            "accounts": [{"name": "acme", "username": "acme", "api_key": "k", "endpoint": "http://127.0.0.1:9"}],
            "fmgr": {"enabled": False},
            "storage": {"path": str(tmp_path / f"store{len(started)}.db")},
        }, environ={})
        exporter = Exporter(config, web_config=web_config, listen_address="127.0.0.1:0")
        started.append(exporter)
        exporter.server.start()  # the HTTP server only: nothing is polled
        return exporter.server.port

    yield start
    for exporter in started:
        exporter.stop()


def client_context(case: Live) -> ssl.SSLContext:
    """The toolkit's test client, with what the case sets.

    The toolkit's client trusts its CA chain (``tls-ca-chain.pem``). OpenSSL refuses that chain for a server
    ("unsuitable certificate purpose": its CAs carry only anyExtendedKeyUsage, which Go accepts), so this
    client trusts the server certificate itself: the server is still verified, by the certificate it shows.
    """
    ctx = ssl.create_default_context(cafile=str(SERVER_CERT))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if case.client_cert:
        ctx.load_cert_chain(TOOLKIT / f"{case.client_cert}.pem", TOOLKIT / f"{case.client_cert}.key")
    if case.max_version is not None:
        # Let the client really offer the old version (OpenSSL's defaults would not even try), so that it is
        # the server that refuses it.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1 are: that is the point
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = case.max_version
    if case.ciphers:
        ctx.set_ciphers(case.ciphers)
    if case.curve:
        ctx.set_ecdh_curve(case.curve)
    return ctx


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    cipher: str | None


def get(port: int, tls: ssl.SSLContext | None = None, user: str | None = None, password: str = "") -> Answer:
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=tls)
    try:
        conn.connect()
        cipher = conn.sock.cipher()[0] if isinstance(conn.sock, ssl.SSLSocket) else None
        headers = {}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        return Answer(response.status, response.headers, cipher)
    finally:
        conn.close()


def outcome(port: int, case: Live) -> Any:
    """What one request of the case got: its status, or the failure as a string."""
    try:
        answer = get(port, client_context(case) if case.tls else None, case.user, case.password)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    if case.cipher is not None and answer.cipher != case.cipher:
        return f"cipher {answer.cipher}, not {case.cipher}"
    return answer.status


def refused_at_load(path: Path) -> str | None:
    try:
        load_web_config(path)
    except ConfigError as exc:
        return "\n".join(exc.errors)
    return None


@pytest.mark.parametrize("case", LIVE_CASES, ids=[c.name for c in LIVE_CASES])
def test_live_case(case: Live, serve: Callable[[WebConfig | None], int]) -> None:
    path = TOOLKIT / case.file if case.file else None
    if case.name in REFUSED:
        assert path is not None
        refusal = refused_at_load(path)
        assert refusal is not None and REFUSED[case.name] in refusal, refusal
        return
    if isinstance(case.expect, str) and case.expect.startswith("refused: "):
        # The toolkit's server returns this error when it starts serving the file; here it is refused at load.
        assert path is not None
        refusal = refused_at_load(path)
        assert refusal is not None and case.expect.removeprefix("refused: ") in refusal, refusal
        return
    port = serve(load_web_config(path) if path else None)
    got = [outcome(port, case) for _ in range(case.requests)]
    if case.expect == HANDSHAKE:
        assert all(isinstance(g, str) for g in got), got
    elif case.expect == NO_ANSWER:
        assert all(g != OK for g in got), got
    else:
        assert got == [case.expect] * case.requests


def test_reload_case_is_documented() -> None:
    """The toolkit re-reads the web config for every connection; this exporter reads it at start, and the
    README says so where it lists what a reload does not change."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "web configuration stay as they are (restart for those)" in readme
    assert "web config is read at start: a changed file needs a restart" in readme


# --------------------------------------------------------------------------------------------------
# handler_test.go


def login(port: int, user: str, password: str) -> int:
    return get(port, None, user, password).status


def test_handler_basic_auth_cache(serve: Callable[[WebConfig | None], int]) -> None:
    port = serve(load_web_config(TOOLKIT / "web_config_users_noTLS.good.yml"))
    assert login(port, "alice", "alice123") == 200
    assert login(port, "alice", "alice1234") == 401
    with ThreadPoolExecutor(max_workers=64) as pool:
        right = [pool.submit(login, port, "alice", "alice123") for _ in range(150)]
        wrong = [pool.submit(login, port, "alice", "alice1234") for _ in range(150)]
        assert [f.result() for f in right] == [200] * 150
        assert [f.result() for f in wrong] == [401] * 150


def test_handler_basic_auth_with_fake_password(serve: Callable[[WebConfig | None], int]) -> None:
    port = serve(load_web_config(TOOLKIT / "web_config_users_noTLS.good.yml"))
    assert login(port, "fakeuser", "fakepassword") == 401  # cold cache
    assert login(port, "fakeuser", "fakepassword") == 401  # warm


def test_handler_bypass_basic_auth_vuln(serve: Callable[[WebConfig | None], int]) -> None:
    """CVE-2022-46146: a user name ending in a hash, then a password made of a hash, must not log in."""
    port = serve(load_web_config(TOOLKIT / "web_config_users_noTLS.good.yml"))
    assert login(port, "alice$2y$12$1DpfPeqF9HzHJt.EWswy1exHluGfbhnn3yXhR7Xes6m3WJqFg0Wby", "fakepassword") == 401
    assert login(port, "alice", "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSifakepassword") == 401


def test_handler_http_headers(serve: Callable[[WebConfig | None], int]) -> None:
    port = serve(load_web_config(TOOLKIT / "web_config_headers.good.yml"))
    answer = get(port)
    assert answer.status == 200
    for name, value in {
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "1",
        "Content-Security-Policy": "default-src 'self' *.test.example.net",
    }.items():
        assert answer.headers[name] == value, name


# --------------------------------------------------------------------------------------------------
# The README's figure


def test_readme_states_the_figure() -> None:
    """The README's TLS section and its security summary give the figure of this table."""
    agree = len(ALL_CASES) - len(REFUSED)
    readme = " ".join((ROOT / "README.md").read_text().split())
    figures = re.findall(r"(\d+) of (?:the toolkit's )?(\d+) (?:test )?cases", readme)
    assert figures == [(str(agree), str(len(ALL_CASES)))] * 2, figures
    assert f"the other {len(REFUSED)} are" in readme.lower()
