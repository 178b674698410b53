import base64
import time
from pathlib import Path

import bcrypt
import pytest

from exporter.config import ConfigError
from exporter.webconfig import BasicAuth, WebConfig, build_ssl_context, load_web_config, parse_web_config

# Cost 4 keeps the tests fast; the format is what production hashes look like.
ALICE_HASH = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, text))
    return info.value.errors


# --------------------------------------------------------------------------------------------------
# Loading


def test_empty_file_means_defaults(tmp_path):
    cfg = load_web_config(write(tmp_path, ""))
    assert cfg == WebConfig()
    assert not cfg.tls_enabled
    assert build_ssl_context(cfg) is None


def test_full_toolkit_file_loads(tmp_path):
    (tmp_path / "certs").mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (tmp_path / "certs" / name).write_text("placeholder")
    cfg = load_web_config(
        write(
            tmp_path,
            f"""
tls_server_config:
  cert_file: certs/server.crt
  key_file: certs/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: certs/ca.crt
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_AES_128_GCM_SHA256]
  curve_preferences: [X25519]
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Content-Security-Policy: ""
basic_auth_users:
  alice: {ALICE_HASH}
""",
        )
    )
    # Relative paths are resolved against the web config's directory, as exporter-toolkit does.
    assert cfg.cert_file == str(tmp_path / "certs" / "server.crt")
    assert cfg.key_file == str(tmp_path / "certs" / "server.key")
    assert cfg.client_ca_file == str(tmp_path / "certs" / "ca.crt")
    assert cfg.client_auth_type == "RequireAndVerifyClientCert"
    assert (cfg.min_version, cfg.max_version) == ("TLS13", "TLS13")
    assert cfg.prefer_server_cipher_suites is False
    # A blank header value means "unset".
    assert dict(cfg.headers) == {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
    assert dict(cfg.basic_auth_users) == {"alice": ALICE_HASH}
    assert cfg.tls_enabled


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    errors = errors_of(
        tmp_path,
        """
tls_server_config:
  cert_file: missing.crt
  client_auth_type: Sometimes
  min_version: SSL3
  cert: inline
  bogus: 1
http_server_config:
  headers:
    X-Frame-Options: allow-all
    Server: nginx
  speed: fast
basic_auth_users:
  bob: plaintext-password
rate_limit: {interval: 1s, burst: 5}
extra: true
""",
    )
    text = "\n".join(errors)
    expected = [
        "tls_server_config.cert_file: file",
        "tls_server_config.key_file: required when cert_file is set",
        "tls_server_config.client_auth_type: 'Sometimes' is not one of",
        "tls_server_config.min_version: 'SSL3' is not one of",
        "tls_server_config.cert: inline certificates are not supported",
        "tls_server_config.bogus: unknown key",
        "http_server_config.headers.X-Frame-Options: 'allow-all' is not one of deny, sameorigin",
        "http_server_config.headers.Server: this header cannot be configured",
        "http_server_config.speed: unknown key",
        "basic_auth_users.bob: not a bcrypt hash",
        "rate_limit: rate limiting is not supported",
        "extra: unknown key",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    # The bad hash is a password verifier (here even a password): never echoed.
    assert "plaintext-password" not in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tls_server_config:\n  key_file: k.pem\n", "tls_server_config.cert_file: required when key_file is set"),
        ("tls_server_config: [1]\n", "tls_server_config: expected a mapping"),
        ("- a\n- b\n", "(top level): expected a mapping"),
        ("basic_auth_users:\n  'a:b': x\n", "basic_auth_users.a:b: user names"),
        (
            "tls_server_config:\n  client_auth_type: RequireAnyClientCert\n",
            "client_auth_type: 'RequireAnyClientCert' (client certificate without verification) is not supported",
        ),
        ("tls_server_config:\n  min_version: TLS13\n  max_version: TLS12\n", "min_version: TLS13 is above"),
        ("tls_server_config:\n  cipher_suites: TLS_AES_128_GCM_SHA256\n", "cipher_suites: expected a list"),
        ("http_server_config:\n  http2: maybe\n", "http_server_config.http2: expected true or false"),
        (
            "http_server_config:\n  headers:\n    Strict-Transport-Security: \"a\\r\\nSet-Cookie: x\"\n",
            "Strict-Transport-Security: must be a single line",
        ),
        ("tls_server_config: {cert_file: [\n", "not valid YAML"),
    ],
)
def test_single_problems(tmp_path, text, fragment):
    assert any(fragment in e for e in errors_of(tmp_path, text)), errors_of(tmp_path, text)


def test_client_auth_needs_a_ca_and_a_ca_needs_client_auth(tmp_path):
    for name in ("s.crt", "s.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    errors = errors_of(
        tmp_path,
        "tls_server_config: {cert_file: s.crt, key_file: s.key, client_auth_type: VerifyClientCertIfGiven}\n",
    )
    assert errors == ["tls_server_config.client_ca_file: required when client_auth_type is VerifyClientCertIfGiven"]
    errors = errors_of(tmp_path, "tls_server_config: {cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt}\n")
    assert errors == [
        "tls_server_config.client_ca_file: set without a client_auth_type that verifies certificates"
    ]


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_web_config(tmp_path / "absent.yml")
    assert "cannot read web config" in str(info.value)


def test_bcrypt_variants_are_accepted():
    h = ALICE_HASH[4:]  # after "$2b$"
    cfg = parse_web_config({"basic_auth_users": {f"u{v}": f"$2{v}${h}" for v in "aby"}})
    assert sorted(cfg.basic_auth_users) == ["ua", "ub", "uy"]
    with pytest.raises(ConfigError):
        parse_web_config({"basic_auth_users": {"u": f"$2x${h}"}})


def test_garbage_certificate_fails_when_building_the_context(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    cfg = load_web_config(write(tmp_path, "tls_server_config: {cert_file: c.pem, key_file: k.pem}\n"))
    with pytest.raises(ConfigError) as info:
        build_ssl_context(cfg)
    assert info.value.errors[0].startswith("tls_server_config.cert_file: cannot load certificate and key")


# --------------------------------------------------------------------------------------------------
# Basic auth


def test_basic_auth_accepts_only_the_right_password():
    auth = BasicAuth({"alice": ALICE_HASH})
    assert auth.check(basic("alice", "wonderland"))
    assert not auth.check(basic("alice", "wonderlan"))
    assert not auth.check(basic("mallory", "wonderland"))
    assert not auth.check(None)
    assert not auth.check("")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"alice:\xff").decode(),
        basic("alice", "x" * 100),  # over bcrypt's 72-byte limit: rejected, not an error
    ],
)
def test_basic_auth_rejects_malformed_headers(header):
    assert not BasicAuth({"alice": ALICE_HASH}).check(header)


def test_basic_auth_scheme_is_case_insensitive():
    assert BasicAuth({"alice": ALICE_HASH}).check(basic("alice", "wonderland").replace("Basic", "basic"))


def test_basic_auth_caches_success_but_not_failure():
    auth = BasicAuth({"alice": ALICE_HASH})
    assert auth.check(basic("alice", "wonderland"))
    assert set(auth._verified) == {"alice"}
    # A cached user with a wrong password is still refused (and still pays bcrypt).
    assert not auth.check(basic("alice", "guess"))
    assert auth.check(basic("alice", "wonderland"))
    assert not auth.check(basic("mallory", "guess"))
    assert set(auth._verified) == {"alice"}
    assert auth.failures.snapshot() == {"missing": 0, "wrong": 2, "throttled": 0}


def test_basic_auth_cache_makes_repeat_checks_cheap():
    # Cost 12 takes a couple of hundred ms per bcrypt; a cached check must not pay that again.
    auth = BasicAuth({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(12)).decode()})
    start = time.perf_counter()
    assert auth.check(basic("alice", "pw"))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(20):
        assert auth.check(basic("alice", "pw"))
    repeats = time.perf_counter() - start
    assert repeats < first


# --------------------------------------------------------------------------------------------------
# Basic auth under a flood of wrong passwords, and across restarts


def test_a_password_throttled_once_goes_ahead_of_the_flood_the_next_time():
    """Issue 23, item 6: wrong passwords (each new) fill bcrypt's queue, so the right one, never verified, is
    throttled. When it comes again it is checked ahead of every new candidate; a wrong one that comes again is
    refused without bcrypt."""
    import threading

    auth = BasicAuth({"alice": bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode()})
    stop = threading.Event()
    sent = [0]

    def flood(i: int) -> None:
        while not stop.is_set():
            sent[0] += 1
            auth.check(basic("alice", f"guess-{i}-{sent[0]}"))

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while auth.failures.snapshot()["throttled"] < 20:  # the queue is full, over and over
            assert time.monotonic() < deadline
            time.sleep(0.01)
        attempts = []
        while not attempts or not attempts[-1]:
            attempts.append(auth.check(basic("alice", "wonderland")))
            assert len(attempts) < 5, attempts
        assert attempts == [False, True]  # throttled the first time, verified the next
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # A guess that comes again costs no bcrypt: it is known to be wrong.
    assert not auth.check(basic("alice", "guess-once"))
    wrong = auth.failures.snapshot()["wrong"]
    started = time.perf_counter()
    assert not auth.check(basic("alice", "guess-once"))
    assert time.perf_counter() - started < 0.01
    assert auth.failures.snapshot()["wrong"] == wrong + 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_store(request, tmp_path):
    from exporter.repository import open_repository
    from exporter.store import Store

    target = str(tmp_path / "auth.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = []

    def open_store():
        opened.append(Store(target, repository=open_repository(target)))
        assert opened[-1].shared == (request.param == "postgres")
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


def test_verified_passwords_are_remembered_in_the_store_as_salted_keyed_digests(state_store):
    import hashlib
    import json

    from exporter.webconfig import NEW, VERIFIED, VERIFIED_KEPT, VERIFIED_STATE_KEY

    bob_hash = bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode()
    store = state_store()
    auth = BasicAuth({"alice": ALICE_HASH, "bob": bob_hash})
    auth.attach(store)
    assert auth.check(basic("alice", "wonderland"))
    store.close()

    # A restart: a new process's memory, the same store. No bcrypt needed for alice, and only for her.
    store = state_store()
    restarted = BasicAuth({"alice": ALICE_HASH, "bob": bob_hash})
    restarted.attach(store)
    assert restarted.assess(basic("alice", "wonderland")) == VERIFIED
    assert restarted.assess(basic("alice", "wonderlan")) == NEW
    assert restarted.assess(basic("bob", "builder")) == NEW
    # What is stored: a salt and an HMAC keyed with the hash, never the password nor what bcrypt was given.
    saved = store.get_state(VERIFIED_STATE_KEY)
    text = json.dumps(saved)
    assert "wonderland" not in text and ALICE_HASH not in text
    assert hashlib.sha256(b"wonderland").hexdigest() not in text
    (entry,) = saved["entries"]
    assert set(entry) == {"user", "salt", "digest", "ts"} and entry["user"] == "alice"
    # Another salt each time a password is verified.
    assert restarted.check(basic("bob", "builder"))
    assert BasicAuth({"alice": ALICE_HASH}).check(basic("alice", "wonderland"))  # a process without the store
    # A changed hash (a new password) makes the old digest useless.
    new_hash = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()
    changed = BasicAuth({"alice": new_hash})
    changed.attach(store)
    assert changed.assess(basic("alice", "wonderland")) == NEW
    # Bounded: at most VERIFIED_KEPT entries, the newest kept.
    for i in range(VERIFIED_KEPT + 5):
        many = BasicAuth({f"user{i}": ALICE_HASH})
        many.attach(store)
        assert many.check(basic(f"user{i}", "wonderland"))
    entries = store.get_state(VERIFIED_STATE_KEY)["entries"]
    assert len(entries) == VERIFIED_KEPT
    assert entries[-1]["user"] == f"user{VERIFIED_KEPT + 4}"
