"""The HTTP layer over real sockets: a started Server on 127.0.0.1 and `requests` as the client."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import html
import ipaddress
import json
import re
import select
import shlex
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import bcrypt
import prometheus_client
import pytest
import requests

from exporter.fmgr.endpoints import NotifyEndpoint, RegistrationApi
from exporter.http.server import BODY_TOO_LARGE, Limits
from exporter.http.web import App, Server, parse_listen_address
from exporter.http.webconfig import BasicAuth, build_ssl_context, load_web_config
from exporter.vendor import signing

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE_BODY = (FIXTURES / "fmgr_notify_example.b64").read_bytes()
EXAMPLE_ID = "20105464540f197414d51a861240d921ef206"
NOTIFY_URL = "https://exporter.example.com/notify/fmgr"
ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"
EXAMPLE_AUTH = "test-access-key:ODU2ZDk2ZWQ2MTEwMzA3OWM0OWFkNzZmZmJkYmY4ZThhM2Q3ZTExNA=="
TOKEN = "register-token-123"
NOW = 1_790_000_000.0
USER_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


# --------------------------------------------------------------------------------------------------
# Test doubles of our own interfaces


class FakeSink:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.stored: list[tuple[Any, str, float]] = []
        self.calls = 0
        self.rejected: Counter[str] = Counter()

    def record_notification(self, status: Any, dedup_key: str, received_ts: float) -> bool:
        self.calls += 1
        if self.fail:
            raise RuntimeError("database is locked")
        if any(key == dedup_key for _, key, _ in self.stored):
            return False
        self.stored.append((status, dedup_key, received_ts))
        return True

    def count_notification(self, result: str) -> None:
        self.rejected[result] += 1


class FakeRegistry:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.ids: dict[str, str] = {}
        self.calls: list[tuple[list[str], str]] = []

    def register_ids(self, ids: Sequence[str], source: str) -> int:
        self.calls.append((list(ids), source))
        if self.fail:
            raise RuntimeError("disk full")
        new = [i for i in ids if i not in self.ids]
        self.ids.update(dict.fromkeys(new, source))
        return len(new)

    def list_tasks(self, state: str | None, limit: int, pending: bool | None = None) -> list[dict[str, Any]]:
        tasks = [{"persistentId": i, "state": "pending", "pending": True, "source": s} for i, s in self.ids.items()]
        return [t for t in tasks if state in (None, t["state"]) and pending in (None, t["pending"])][:limit]


# --------------------------------------------------------------------------------------------------
# Fixtures


def test_registry() -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("demo_things", "Things seen.", registry=registry)
    counter.inc(3)
    return registry


test_registry.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxies from the environment: 127.0.0.1 only
        yield s


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def start(app: App, ssl_context: ssl.SSLContext | None = None) -> Server:
        server = Server(app, "127.0.0.1:0", ssl_context=ssl_context, threads=4)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def make_app(**overrides: Any) -> App:
    kwargs: dict[str, Any] = {
        "registry": test_registry(),
        "version": "1.2.3",
        "ready": lambda: (True, ""),
        "clock": lambda: NOW,
    }
    kwargs.update(overrides)
    return App(**kwargs)


def notify_endpoint(sink: FakeSink, *, url: str = NOTIFY_URL, max_body_bytes: int = 4096) -> NotifyEndpoint:
    return NotifyEndpoint(
        path="/notify/fmgr", url=url, keys={ACCESS_KEY: SECRET_KEY}, max_body_bytes=max_body_bytes, sink=sink
    )


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (usable as its own CA and as a client cert)."""
    pytest.importorskip("cryptography", reason="the cryptography package is needed to make a test certificate")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


# --------------------------------------------------------------------------------------------------
# Listen addresses and the server


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":9891", ("", 9891)),
        ("0.0.0.0:9891", ("0.0.0.0", 9891)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9891", ("::1", 9891)),
        ("[::]:80", ("::", 80)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_listen_address(value, expected):
    assert parse_listen_address(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9891", "has no port (the colon is missing)"),
        ("abc", "has no port"),
        ("", "has no port"),
        ("::1:9891", "put an IPv6 address in brackets"),
        ("host:65536", "the port must be a number from 0 to 65535"),
        ("localhost:99999", "the port must be a number from 0 to 65535"),
        ("host:abc", "the port must be a number"),
        ("host:", "the port must be a number"),
        ("host:-1", "the port must be a number"),
        ("[::1]9891", "expected host:port, :port or [IPv6]:port"),
        ("[nope]:9891", "'nope' in brackets is not an IPv6 address"),
        ("bad host:9891", "'bad host' is not a host name or IPv4 address"),
    ],
)
def test_parse_listen_address_rejects(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_listen_address(value)


def test_server_binds_an_ephemeral_port_and_stops(session):
    server = Server(make_app(), "127.0.0.1:0")
    server.start()
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert session.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


def kernel_has_ipv6() -> bool:
    """Whether this kernel can bind the IPv6 loopback; the dual-stack tests need it and skip only without it."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not kernel_has_ipv6(), reason="the kernel has no IPv6 (cannot bind ::1)")


@needs_ipv6
@pytest.mark.parametrize("address", [":0", "[::]:0"])
def test_every_interface_means_ipv4_and_ipv6(session, address):
    # `:9891` (and `[::]:9891`) listen dual-stack, as Go exporters do: IPv4 and IPv6 clients on one port.
    server = Server(make_app(), address)
    server.start()
    try:
        for host in ("127.0.0.1", "[::1]"):
            assert session.get(f"http://{host}:{server.port}/healthz", timeout=5).status_code == 200, host
        assert server.local_url == f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@needs_ipv6
def test_an_ipv4_wildcard_is_ipv4_only(session):
    server = Server(make_app(), "0.0.0.0:0")
    server.start()
    try:
        assert session.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
        with pytest.raises(OSError), socket.create_connection(("::1", server.port), timeout=2):
            pass
    finally:
        server.stop()


def test_server_start_fails_loudly_when_the_port_is_taken(serve):
    first = serve(make_app())
    with pytest.raises(OSError, match="in use"):
        Server(make_app(), f"127.0.0.1:{first.port}").start()


# --------------------------------------------------------------------------------------------------
# Pages


def test_landing_page(serve, session):
    server = serve(make_app(notify=notify_endpoint(FakeSink()), api=RegistrationApi(TOKEN, 10, FakeRegistry())))
    r = session.get(server.url + "/", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    for fragment in ("cdnetworks-exporter", "1.2.3", 'href="/metrics"', 'href="/healthz"', 'href="/readyz"',
                     "POST /notify/fmgr", "POST /api/v1/fmgr/tasks"):
        assert fragment in r.text, fragment
    assert SECRET_KEY not in r.text and TOKEN not in r.text


def test_landing_page_in_demo_mode_shows_the_token_and_examples_that_work(serve, session):
    registry = FakeRegistry()
    server = serve(make_app(api=RegistrationApi(TOKEN, 10, registry), demo_token=TOKEN))
    page = session.get(server.url + "/", headers={"Host": f"demo.test:{server.port}"}, timeout=5).text
    assert "Demo mode" in page and "--demo" in page
    assert f"<code>{TOKEN}</code>" in page
    examples = [html.unescape(e) for e in re.findall(r"<pre>(.*?)</pre>", page, flags=re.S)]
    assert len(examples) == 2 and all(e.startswith("curl ") for e in examples)
    # The examples name the address the page was asked under, and run as they are.
    assert all(f"http://demo.test:{server.port}/api/v1/fmgr/tasks" in e for e in examples)
    for example in examples:
        argv = shlex.split(example.replace("demo.test", "127.0.0.1"))
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        data = next((argv[i + 1] for i, a in enumerate(argv) if a == "-d"), None)
        r = session.request("POST" if data else "GET", argv[-1], data=data, headers=headers, timeout=5)
        assert r.status_code == 200, (example, r.text)
    assert list(registry.ids) == ["my-job-1"]
    # A Host header cannot inject markup into the page.
    hostile = session.get(server.url + "/", headers={"Host": "<script>x</script>"}, timeout=5).text
    assert "<script>" not in hostile


def test_landing_page_without_optional_routes_escapes_version(serve, session):
    server = serve(make_app(version="<b>dev</b>"))
    r = session.get(server.url + "/", timeout=5)
    assert "&lt;b&gt;dev&lt;/b&gt;" in r.text
    assert "notify" not in r.text and "/api/v1" not in r.text
    assert "Demo" not in r.text


def test_healthz_and_head(serve, session):
    server = serve(make_app(ready=lambda: (False, "no poll yet")))
    r = session.get(server.url + "/healthz", timeout=5)
    assert (r.status_code, r.text) == (200, "ok\n")
    head = session.head(server.url + "/healthz", timeout=5)
    assert head.status_code == 200 and head.content == b""


def test_readyz_both_states(serve, session):
    state = {"ok": False}
    server = serve(make_app(ready=lambda: (state["ok"], "store not open")))
    r = session.get(server.url + "/readyz", timeout=5)
    assert (r.status_code, r.text) == (503, "store not open\n")
    state["ok"] = True
    r = session.get(server.url + "/readyz", timeout=5)
    assert (r.status_code, r.text) == (200, "ready\n")


def test_unknown_path_and_wrong_method(serve, session):
    server = serve(make_app(notify=notify_endpoint(FakeSink())))
    assert session.get(server.url + "/nope", timeout=5).status_code == 404
    r = session.post(server.url + "/metrics", data=b"x", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    r = session.get(server.url + "/notify/fmgr", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = session.delete(server.url + "/api/v1/fmgr/tasks", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, POST"
    r = session.get(server.url + "/api/v1/other", timeout=5)
    assert r.status_code == 404 and "no such API route" in r.json()["error"]


def test_exceptions_become_a_plain_500(serve, session, caplog):
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom with internal detail")

    server = serve(make_app(ready=broken))
    r = session.get(server.url + "/readyz", timeout=5)
    assert (r.status_code, r.text) == (500, "internal error\n")
    assert "boom" not in r.text and "Traceback" not in r.text
    assert "boom with internal detail" in caplog.text  # logged server-side
    assert session.get(server.url + "/healthz", timeout=5).status_code == 200


def test_configured_headers_on_every_response(serve, session):
    headers = {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
    server = serve(make_app(headers=headers, basic_auth=BasicAuth({"prom": USER_HASH})))
    for path, status in (("/nope", 401), ("/healthz", 401)):
        r = session.get(server.url + path, timeout=5)
        assert r.status_code == status
        assert r.headers["X-Frame-Options"] == "deny" and r.headers["X-Content-Type-Options"] == "nosniff"
    r = session.get(server.url + "/healthz", auth=("prom", "s3cret"), timeout=5)
    assert r.status_code == 200 and r.headers["X-Frame-Options"] == "deny"


# --------------------------------------------------------------------------------------------------
# /metrics


def test_metrics_text_format(serve, session):
    server = serve(make_app())
    r = session.get(server.url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in r.headers
    assert "demo_things_total 3.0" in r.text
    assert "# EOF" not in r.text


def test_metrics_openmetrics_by_accept(serve, session):
    server = serve(make_app())
    accept = "application/openmetrics-text; version=1.0.0, text/plain; version=0.0.4; q=0.5"
    r = session.get(server.url + "/metrics", headers={"Accept": accept, "Accept-Encoding": "identity"}, timeout=5)
    assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "demo_things_total 3.0" in r.text
    assert r.text.endswith("# EOF\n")


def test_metrics_gzip_by_accept_encoding(serve, session):
    server = serve(make_app())
    r = session.get(server.url + "/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
    assert r.headers["Content-Encoding"] == "gzip"
    raw = r.raw.read(decode_content=False)
    assert int(r.headers["Content-Length"]) == len(raw)
    assert b"demo_things_total 3.0" in gzip.decompress(raw)


def test_metrics_name_filter(serve, session):
    registry = test_registry()
    prometheus_client.Gauge("demo_other", "Other.", registry=registry).set(1)
    server = serve(make_app(registry=registry))
    r = session.get(server.url + "/metrics", params={"name[]": "demo_other"}, timeout=5)
    assert "demo_other 1.0" in r.text and "demo_things_total" not in r.text


# --------------------------------------------------------------------------------------------------
# Basic auth


def test_basic_auth(serve, session):
    sink, registry = FakeSink(), FakeRegistry()
    server = serve(
        make_app(
            basic_auth=BasicAuth({"prom": USER_HASH}),
            notify=notify_endpoint(sink),
            api=RegistrationApi(TOKEN, 10, registry),
        )
    )
    r = session.get(server.url + "/metrics", timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="cdnetworks-exporter"'
    assert "demo_things" not in r.text
    assert session.get(server.url + "/metrics", auth=("prom", "wrong"), timeout=5).status_code == 401
    assert session.get(server.url + "/metrics", auth=("nobody", "s3cret"), timeout=5).status_code == 401
    r = session.get(server.url + "/metrics", auth=("prom", "s3cret"), timeout=5)
    assert r.status_code == 200 and "demo_things_total 3.0" in r.text
    # The notify path (signature) and the API (bearer token) carry their own auth.
    r = session.post(server.url + "/notify/fmgr", data=EXAMPLE_BODY, headers={"Authorization": EXAMPLE_AUTH},
                     timeout=5)
    assert r.status_code == 200 and len(sink.stored) == 1
    r = session.post(server.url + "/api/v1/fmgr/tasks", json={"persistentIds": ["a"]},
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200 and registry.ids == {"a": "api"}


# --------------------------------------------------------------------------------------------------
# TLS


def test_tls_with_web_config(tmp_path, serve, session):
    cert, _key = make_self_signed(tmp_path)
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
    ctx = build_ssl_context(load_web_config(tmp_path / "web.yml"))
    assert ctx is not None
    server = serve(make_app(), ssl_context=ctx)
    assert server.url == f"https://127.0.0.1:{server.port}"
    r = session.get(server.url + "/metrics", verify=str(cert), timeout=5)
    assert r.status_code == 200 and "demo_things_total 3.0" in r.text
    # Plain HTTP to the TLS port gets no answer from the app.
    with pytest.raises(requests.RequestException):
        session.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    # An unknown CA is refused by the client: the server really presents this certificate.
    with pytest.raises(requests.exceptions.SSLError):
        session.get(server.url + "/metrics", verify=True, timeout=5)


def test_tls_min_version_is_enforced(tmp_path, serve):
    cert, key = make_self_signed(tmp_path)
    (tmp_path / "web.yml").write_text(
        f"tls_server_config: {{cert_file: {cert}, key_file: {key}, min_version: TLS13}}\n"
    )
    ctx = build_ssl_context(load_web_config(tmp_path / "web.yml"))
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    server = serve(make_app(), ssl_context=ctx)
    client = ssl.create_default_context(cafile=str(cert))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        client.wrap_socket(sock, server_hostname="127.0.0.1"),
    ):
        pass
    client.maximum_version = ssl.TLSVersion.TLSv1_3
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        client.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"


def test_tls_client_certificates_required(tmp_path, serve, session):
    cert, key = make_self_signed(tmp_path)
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: cert.pem\n"
    )
    ctx = build_ssl_context(load_web_config(tmp_path / "web.yml"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    server = serve(make_app(), ssl_context=ctx)
    with pytest.raises(requests.RequestException):
        session.get(server.url + "/healthz", verify=str(cert), timeout=5)
    r = session.get(server.url + "/healthz", verify=str(cert), cert=(str(cert), str(key)), timeout=5)
    assert r.status_code == 200


# --------------------------------------------------------------------------------------------------
# Fmgr notifications


def post_notify(session: requests.Session, server: Server, body: Any, authorization: str | None, **kw: Any):
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return session.post(server.url + "/notify/fmgr", data=body, headers=headers, timeout=5, **kw)


def signed(body: bytes) -> str:
    return signing.fmgr_notify_authorization(ACCESS_KEY, SECRET_KEY, NOTIFY_URL, body)


def test_notify_accepts_the_vendor_example_once(serve, session):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink)))
    r = post_notify(session, server, EXAMPLE_BODY, EXAMPLE_AUTH)
    assert (r.status_code, r.json()) == (200, {"result": "accepted"})
    assert len(sink.stored) == 1
    status, dedup_key, received = sink.stored[0]
    assert status.id == EXAMPLE_ID and status.code == 3
    assert [(i.op, i.code, i.fsize) for i in status.items] == [("resource", 3, 6437836)]
    assert dedup_key == hashlib.sha256(EXAMPLE_BODY).hexdigest()
    assert received == NOW
    # The vendor retries: a byte-identical delivery is answered 200 and not stored twice.
    r = post_notify(session, server, EXAMPLE_BODY, EXAMPLE_AUTH)
    assert (r.status_code, r.json()) == (200, {"result": "duplicate"})
    assert len(sink.stored) == 1 and sink.calls == 2
    assert not sink.rejected


@pytest.mark.parametrize(
    ("authorization", "url", "reason"),
    [
        (EXAMPLE_AUTH[:-6] + "AAAA==", NOTIFY_URL, "bad_signature"),
        ("someone-else:" + EXAMPLE_AUTH.split(":", 1)[1], NOTIFY_URL, "unknown_key"),
        (None, NOTIFY_URL, "bad_signature"),
        ("no-colon-here", NOTIFY_URL, "bad_signature"),
        (EXAMPLE_AUTH, "https://exporter.example.com/notify/other", "bad_signature"),
    ],
    ids=["forged", "unknown-key", "missing-header", "malformed-header", "wrong-url"],
)
def test_notify_rejects_bad_signatures(serve, session, caplog, authorization, url, reason):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink, url=url)))
    r = post_notify(session, server, EXAMPLE_BODY, authorization)
    assert r.status_code == 401
    assert r.json()["result"] == reason
    assert sink.rejected == Counter({reason: 1})
    assert sink.calls == 0 and not sink.stored
    assert SECRET_KEY not in r.text
    (warning,) = [rec.getMessage() for rec in caplog.records if "notification rejected" in rec.getMessage()]
    assert warning.startswith(f"Fmgr notification rejected ({reason}): ")
    if authorization and ":" in authorization:
        # bad_signature names the access key as unknown_key does: which key's secret (or notifyURL) to check.
        assert repr(authorization.split(":", 1)[0]) in warning, warning
    assert SECRET_KEY not in warning


@pytest.mark.parametrize(
    "body",
    [
        b"***not base64***",
        base64.urlsafe_b64encode(b"this is not json"),
        base64.urlsafe_b64encode(json.dumps({"no": "id"}).encode()),
        b"",
    ],
    ids=["not-base64", "not-json", "not-a-status", "empty"],
)
def test_notify_rejects_malformed_bodies_after_verifying(serve, session, body):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink)))
    r = post_notify(session, server, body, signed(body))
    assert r.status_code == 400
    assert r.json()["result"] == "malformed"
    assert sink.rejected == Counter({"malformed": 1}) and sink.calls == 0


def test_notify_checks_the_signature_before_the_body(serve, session):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink)))
    r = post_notify(session, server, b"***not base64***", EXAMPLE_AUTH)
    assert r.status_code == 401 and sink.rejected == Counter({"bad_signature": 1})


def test_notify_rejects_oversized_bodies(serve, session):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink, max_body_bytes=len(EXAMPLE_BODY))))
    # Exactly at the limit is fine.
    assert post_notify(session, server, EXAMPLE_BODY, EXAMPLE_AUTH).status_code == 200
    big = EXAMPLE_BODY + b"A"
    r = post_notify(session, server, big, signed(big))
    assert (r.status_code, r.json()["result"]) == (413, "too_large")
    # Chunked bodies have no Content-Length: the limit applies to what arrives.
    r = post_notify(session, server, iter([big[:300], big[300:]]), signed(big))
    assert r.status_code == 413
    assert sink.rejected == Counter({"too_large": 2})
    assert len(sink.stored) == 1


def test_notify_refuses_a_declared_oversize_without_waiting_for_the_body(serve):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink, max_body_bytes=4096)))
    request = (
        f"POST /notify/fmgr HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {EXAMPLE_AUTH}\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request.encode())  # and no body: the answer must not depend on it
        received = b""
        while chunk := sock.recv(4096):  # the server closes the connection after a 413
            received += chunk
    answer = received.decode()
    assert answer.startswith("HTTP/1.1 413 ")
    assert answer.endswith('"too_large", "error": "body over the size limit"}\n')
    assert sink.rejected == Counter({"too_large": 1})


def test_notify_reads_a_chunked_body_within_the_limit(serve, session):
    sink = FakeSink()
    server = serve(make_app(notify=notify_endpoint(sink)))
    r = post_notify(session, server, iter([EXAMPLE_BODY[:100], EXAMPLE_BODY[100:]]), EXAMPLE_AUTH)
    assert (r.status_code, r.json()) == (200, {"result": "accepted"})
    assert sink.stored[0][1] == hashlib.sha256(EXAMPLE_BODY).hexdigest()


def test_notify_store_failure_answers_503_so_the_vendor_retries(serve, session, caplog):
    sink = FakeSink(fail=True)
    server = serve(make_app(notify=notify_endpoint(sink)))
    r = post_notify(session, server, EXAMPLE_BODY, EXAMPLE_AUTH)
    assert r.status_code == 503
    assert r.json()["result"] == "error"
    assert "database is locked" not in r.text
    assert "database is locked" in caplog.text
    assert sink.calls == 1 and not sink.rejected


@pytest.mark.parametrize("path", ["/metrics", "notify", "/api/v1/notify"])
def test_notify_path_must_not_shadow_other_routes(path):
    endpoint = notify_endpoint(FakeSink())
    endpoint.path = path
    with pytest.raises(ValueError, match="notify path"):
        make_app(notify=endpoint)


def test_notify_disabled_means_no_route(serve, session):
    server = serve(make_app())
    assert post_notify(session, server, EXAMPLE_BODY, EXAMPLE_AUTH).status_code == 404


# --------------------------------------------------------------------------------------------------
# Registration API


@pytest.fixture
def api_server(serve) -> tuple[Server, FakeRegistry]:
    registry = FakeRegistry()
    return serve(make_app(api=RegistrationApi(TOKEN, 3, registry))), registry


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(TOKEN + "x"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "longer", "no-scheme", "basic-scheme"],
)
def test_registration_needs_the_token(api_server, session, headers):
    server, registry = api_server
    url = server.url + "/api/v1/fmgr/tasks"
    r = session.post(url, json={"persistentIds": ["a"]}, headers=headers, timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="cdnetworks-exporter"'
    assert session.get(url, headers=headers, timeout=5).status_code == 401
    assert registry.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", '"persistentIds"'),
        (b'{"ids": ["a"]}', '"persistentIds"'),
        (b'{"persistentIds": "a"}', "expected a list"),
        (b'{"persistentIds": []}', "empty"),
        (b'{"persistentIds": ["a", "b", "c", "d"]}', "at most 3"),
        (b'{"persistentIds": ["ok", "has space"]}', "persistentIds[1]"),
        (b'{"persistentIds": [123]}', "persistentIds[0]"),
        (b'{"persistentIds": ["a", "' + b"x" * 129 + b'"]}', "persistentIds[1]"),
        (b'{"persistentIds": ["a", ""]}', "persistentIds[1]"),
    ],
)
def test_registration_validation(api_server, session, body, message):
    server, registry = api_server
    r = session.post(server.url + "/api/v1/fmgr/tasks", data=body, headers=bearer(), timeout=5)
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert registry.calls == []


def test_registration_registers_and_lists(api_server, session):
    server, registry = api_server
    url = server.url + "/api/v1/fmgr/tasks"
    r = session.post(url, json={"persistentIds": ["z0.abc", "b:1", "z0.abc"]}, headers=bearer(), timeout=5)
    assert (r.status_code, r.json()) == (200, {"received": 2, "registered": 2, "already_tracked": 0})
    assert registry.calls == [(["z0.abc", "b:1"], "api")]  # deduplicated, order kept
    r = session.post(url, json={"persistentIds": ["b:1", "c_2-x"]}, headers=bearer(), timeout=5)
    assert r.json() == {"received": 2, "registered": 1, "already_tracked": 1}
    r = session.get(url, headers=bearer(), timeout=5)
    assert r.status_code == 200
    assert [t["persistentId"] for t in r.json()["tasks"]] == ["z0.abc", "b:1", "c_2-x"]
    r = session.get(url, params={"state": "pending", "limit": "2"}, headers=bearer(), timeout=5)
    assert [t["persistentId"] for t in r.json()["tasks"]] == ["z0.abc", "b:1"]
    assert session.get(url, params={"state": "notified"}, headers=bearer(), timeout=5).json() == {"tasks": []}
    r = session.get(url, params={"pending": "false"}, headers=bearer(), timeout=5)
    assert r.json() == {"tasks": []}


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "", "\u00b2", "\u0661", " 5", "1e3", "9" * 40])
def test_registration_list_bad_limit(api_server, session, limit):
    server, _ = api_server
    r = session.get(server.url + "/api/v1/fmgr/tasks", params={"limit": limit}, headers=bearer(), timeout=5)
    assert r.status_code == 400 and "limit" in r.json()["error"]


@pytest.mark.parametrize("state", ["a b", "bogus", "done", "Pending", "x" * 40])
def test_registration_list_bad_state_names_the_valid_ones(api_server, session, state):
    # A typo must not look like "no such tasks": 400, naming every state the API shows.
    server, _ = api_server
    r = session.get(server.url + "/api/v1/fmgr/tasks", params={"state": state}, headers=bearer(), timeout=5)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("state: ")
    for name in ("unknown", "pending", "processing", "completed", "notifying", "notify_failed", "notified", "other",
                 "abandoned"):
        assert name in error


@pytest.mark.parametrize("pending", ["yes", "1", "", "TRUE"])
def test_registration_list_bad_pending(api_server, session, pending):
    server, _ = api_server
    r = session.get(server.url + "/api/v1/fmgr/tasks", params={"pending": pending}, headers=bearer(), timeout=5)
    assert r.status_code == 400 and "pending: expected true or false" in r.json()["error"]


def test_registration_body_limit(api_server, session):
    server, registry = api_server
    body = b'{"persistentIds": ["a"], "pad": "' + b"x" * (1024 * 1024) + b'"}'
    r = session.post(server.url + "/api/v1/fmgr/tasks", data=body, headers=bearer(), timeout=10)
    assert r.status_code == 413
    assert registry.calls == []


def test_registration_store_failure_is_503(serve, session):
    registry = FakeRegistry(fail=True)
    server = serve(make_app(api=RegistrationApi(TOKEN, 3, registry)))
    r = session.post(server.url + "/api/v1/fmgr/tasks", json={"persistentIds": ["a"]}, headers=bearer(), timeout=5)
    assert r.status_code == 503 and "disk full" not in r.text


def test_registration_disabled(serve, session):
    server = serve(make_app())
    for method in ("GET", "POST"):
        r = session.request(method, server.url + "/api/v1/fmgr/tasks", headers=bearer(), timeout=5)
        assert r.status_code == 404
        assert "disabled" in r.json()["error"]


# --------------------------------------------------------------------------------------------------
# Deadlines: for the whole head and the whole body, not per byte


def test_a_trickled_head_is_cut_off_at_its_deadline(session):
    server = Server(make_app(), "127.0.0.1:0", limits=Limits(header_timeout=1.0))
    server.start()
    try:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            answer = b""
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                sock.send(bytes([byte]))  # one byte every 0.1 s resets no deadline
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    answer = sock.recv(4096)
                    break
            answered = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 0.9 < answered < 2.5
        assert session.get(server.url + "/metrics", timeout=5).status_code == 200
        assert server.rejects.snapshot()["timeout"] == 1
    finally:
        server.stop()


def test_an_unended_chunked_body_is_408_and_an_idle_connection_is_closed():
    server = Server(make_app(notify=notify_endpoint(FakeSink())), "127.0.0.1:0",
                    limits=Limits(body_timeout=1.0, header_timeout=1.0))
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /notify/fmgr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert sock.recv(4096) == b""  # a connection that never sends is closed, without an answer
        assert time.monotonic() - start < 3
    finally:
        server.stop()


def test_keep_alive_serves_many_requests_on_one_connection(serve):
    server = serve(make_app())
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok\n"):
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_the_server_serves_a_typed_app_and_swaps_it_on_the_same_socket():
    """A ServedApp's body limit and admission are the server's to call, typed (no attribute probing); a bare WSGI
    callable is served with the defaults; ``swap`` (a reload) serves the new app on the same socket."""
    seen: list[str] = []

    class Typed:
        def __call__(self, environ, start_response):
            seen.append(f"call too_large={bool(environ.get(BODY_TOO_LARGE))}")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"typed\n"]

        def body_limit(self, path: str) -> int:
            seen.append(f"limit {path}")
            return 10

        def admit(self, environ, slow_lane_full: bool, first_lane_full: bool):
            seen.append(f"admit {environ['PATH_INFO']}")
            return None

    def bare(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"bare\n"]

    server = Server(bare, "127.0.0.1:0")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/x"
        assert requests.post(url, data=b"y" * 2000, timeout=5).text == "bare\n"  # the default limit allows it
        server.swap(Typed())
        assert requests.get(url, timeout=5).text == "typed\n"
        assert seen == ["limit /x", "admit /x", "call too_large=False"]
        seen.clear()
        assert requests.post(url, data=b"y" * 11, timeout=5).text == "typed\n"  # over its limit: the app answers
        assert seen == ["limit /x", "call too_large=True"]  # without admission, told the body was too large
    finally:
        server.stop()
