import base64
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from exporter.config import ConfigError
from exporter.http.webconfig import (
    BasicAuth,
    WebConfig,
    _set_groups,
    build_ssl_context,
    load_web_config,
    parse_web_config,
)

ROOT = Path(__file__).resolve().parent.parent
# exporter-toolkit's test certificates and web configs (see its README there).
TOOLKIT = ROOT / "tests" / "fixtures" / "exporter-toolkit" / "testdata"

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
    shutil.copy(TOOLKIT / "server.crt", tmp_path / "certs" / "server.crt")
    shutil.copy(TOOLKIT / "server.key", tmp_path / "certs" / "server.key")
    shutil.copy(TOOLKIT / "client_selfsigned.pem", tmp_path / "certs" / "ca.crt")
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
  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
  curve_preferences: [X25519, CurveP256]
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
    assert cfg.cipher_suites == ("TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
    assert cfg.curve_preferences == ("X25519", "CurveP256")
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


def test_a_ca_needs_client_auth(tmp_path):
    for name in ("s.crt", "s.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    errors = errors_of(tmp_path, "tls_server_config: {cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt}\n")
    assert errors == [
        "tls_server_config.client_ca_file: set without a client_auth_type that verifies certificates"
    ]


def test_a_rule_and_the_keys_own_problem_are_both_reported(tmp_path):
    for name in ("s.crt", "s.key"):
        (tmp_path / name).write_text("x")
    assert errors_of(tmp_path, "tls_server_config: {cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt}\n") == [
        f"tls_server_config.client_ca_file: file {str(tmp_path / 'ca.crt')!r} does not exist",
        "tls_server_config.client_ca_file: set without a client_auth_type that verifies certificates",
    ]


def test_null_is_the_default_except_for_the_booleans(tmp_path):
    cfg = load_web_config(write(tmp_path, "tls_server_config:\n  cipher_suites:\n  client_auth_type:\n"
                                          "http_server_config:\n  headers:\nbasic_auth_users:\nrate_limit:\n"
                                          "  interval:\n  burst:\n"))
    assert cfg == WebConfig()
    assert errors_of(tmp_path, "tls_server_config:\n  prefer_server_cipher_suites:\nhttp_server_config:\n"
                               "  http2:\n") == [
        "tls_server_config.prefer_server_cipher_suites: expected true or false",
        "http_server_config.http2: expected true or false",
    ]


def test_the_tls_settings_read_as_settings_of_the_whole(tmp_path):
    shutil.copy(TOOLKIT / "server.crt", tmp_path / "server.crt")
    shutil.copy(TOOLKIT / "server.key", tmp_path / "server.key")
    cfg = load_web_config(write(tmp_path, "tls_server_config: {cert_file: server.crt, key_file: server.key, "
                                          "min_version: TLS13}\n"))
    assert (cfg.cert_file, cfg.min_version) == (cfg.tls_server_config.cert_file, "TLS13")
    with pytest.raises(AttributeError):
        cfg.http2  # noqa: B018 - only the TLS settings read through


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


# --------------------------------------------------------------------------------------------------
# TLS settings, as exporter-toolkit applies them (handshakes in memory: no network)

AES128 = "ECDHE-RSA-AES128-GCM-SHA256"
AES256 = "ECDHE-RSA-AES256-GCM-SHA384"


def toolkit_file(tmp_path: Path, text: str) -> Path:
    """A web config next to copies of the toolkit's server certificate and key."""
    for name in ("server.crt", "server.key", "client_selfsigned.pem", "client_selfsigned.key"):
        shutil.copy(TOOLKIT / name, tmp_path / name)
    return write(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + text)


def server_context(path: Path) -> ssl.SSLContext:
    ctx = build_ssl_context(load_web_config(path))
    assert ctx is not None
    return ctx


def client(*, ciphers: str | None = None, curve: str | None = None, tls12: bool = False,
           cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(TOOLKIT / "server.crt"))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the server certificate itself
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(TOOLKIT / f"{cert}.pem", TOOLKIT / f"{cert}.key")
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str, str]:
    """(cipher, version) of a completed handshake; ssl.SSLError when either side refuses."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    peer = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj, out, other in (("client", peer, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            other.write(out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after the client is done; exchange once more.
            try:
                peer.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
            except ssl.SSLWantReadError:
                pass
            cipher = peer.cipher()
            assert cipher is not None
            return cipher[0], cipher[1]
    raise AssertionError("handshake did not finish")


def test_cipher_suites_are_the_only_tls12_suites_and_the_files_order_wins(tmp_path):
    ctx = server_context(TOOLKIT / "web_config_noAuth_someCiphers.good.yml")  # AES128 then AES256, TLS 1.2
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert handshake(ctx, client(ciphers=AES128)) == (AES128, "TLSv1.2")
    assert handshake(ctx, client(ciphers=f"{AES256}:{AES128}")) == (AES128, "TLSv1.2")  # the server's order
    for unlisted in ("ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES256-SHA", "ECDHE-RSA-AES128-SHA"):
        with pytest.raises(ssl.SSLError):
            handshake(ctx, client(ciphers=unlisted))


def test_prefer_server_cipher_suites_false_lets_the_client_choose():
    ctx = server_context(TOOLKIT / "web_config_noAuth_someCiphers_noOrder.good.yml")  # AES256 then AES128
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert handshake(ctx, client(ciphers=f"{AES128}:{AES256}"))[0] == AES128
    assert handshake(ctx, client(ciphers=f"{AES256}:{AES128}"))[0] == AES256


def test_only_tls13_suites_listed_means_tls13_only(tmp_path):
    ctx = server_context(toolkit_file(tmp_path, "  cipher_suites: [TLS_AES_256_GCM_SHA384]\n"
                                                "http_server_config: {http2: false}\n"))
    assert handshake(ctx, client())[1] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client(tls12=True))
    errors = errors_of(tmp_path, "tls_server_config: {cert_file: server.crt, key_file: server.key, "
                                 "cipher_suites: [TLS_AES_256_GCM_SHA384], max_version: TLS12}\n"
                                 "http_server_config: {http2: false}\n")
    assert errors == ["tls_server_config.cipher_suites: lists only TLS 1.3 suites, but max_version is TLS12"]


def test_one_curve_is_the_only_curve():
    ctx = server_context(TOOLKIT / "web_config_noAuth_someCurves.good.yml")  # CurveP521, TLS 1.3
    assert handshake(ctx, client(curve="secp521r1"))[1] == "TLSv1.3"
    for other in ("secp384r1", "prime256v1", "X25519"):
        with pytest.raises(ssl.SSLError):
            handshake(ctx, client(curve=other))


def test_several_curves_are_the_only_curves(tmp_path):
    ctx = server_context(TOOLKIT / "web_config_noAuth_allCurves.good.yml")  # the toolkit's four
    for curve in ("prime256v1", "secp384r1", "secp521r1", "X25519"):
        handshake(ctx, client(curve=curve))
        handshake(ctx, client(curve=curve, tls12=True))
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client(curve="X448"))  # in OpenSSL's default list, not in the file
    ctx = server_context(toolkit_file(tmp_path, "  curve_preferences: [CurveP384, X25519]\n"))
    handshake(ctx, client(curve="X25519"))
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client(curve="prime256v1"))


def test_a_curve_list_openssl_refuses_is_reported_not_applied():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert _set_groups(ctx, "secp384r1:X25519") is None
    problem = _set_groups(ctx, "secp384r1:no-such-curve")
    assert problem is not None and "does not accept secp384r1:no-such-curve" in problem


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n",
         "tls_server_config.cipher_suites: unknown cipher 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048' (known: "),
        # In Go's tls.InsecureCipherSuites(), not in CipherSuites(): the toolkit does not know it either.
        ("  cipher_suites: [TLS_ECDHE_RSA_WITH_RC4_128_SHA]\n", "unknown cipher 'TLS_ECDHE_RSA_WITH_RC4_128_SHA'"),
        ("  cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]\n", "unknown cipher 'ECDHE-RSA-AES128-GCM-SHA256'"),
        ("  curve_preferences: [CurveP257]\n", "tls_server_config.curve_preferences: unknown curve 'CurveP257'"),
        ("  curve_preferences: [secp384r1]\n", "unknown curve 'secp384r1'"),
    ],
)
def test_unknown_cipher_suites_and_curves_are_refused_with_a_client_ca_too(tmp_path, text, error):
    ca = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client_selfsigned.pem\n"
    path = toolkit_file(tmp_path, ca + text)
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert len(info.value.errors) == 1 and error in info.value.errors[0], info.value.errors


def test_http2_needs_its_cipher_as_in_the_toolkit(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_web_config(TOOLKIT / "web_config_noAuth_noHTTP2Cipher.bad.yml")
    assert "no HTTP/2-required suite" in str(info.value)
    load_web_config(TOOLKIT / "web_config_noAuth_noHTTP2.good.yml")  # the same with http2: false
    # Go only checks when TLS 1.2 is allowed.
    load_web_config(toolkit_file(tmp_path, "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"
                                           "  min_version: TLS13\n"))


def test_verifying_client_auth_without_a_ca_uses_the_system_cas(tmp_path):
    ctx = server_context(TOOLKIT / "web_config_noAuth.good.yml")  # VerifyClientCertIfGiven, no client_ca_file
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    handshake(ctx, client())  # no certificate: fine
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client(cert="client_selfsigned"))  # a certificate no system CA signed
    ctx = server_context(TOOLKIT / "web_config_noAuth.good.blocking.yml")  # RequireAndVerifyClientCert
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client())
    # The client's own CA: accepted.
    ctx = server_context(TOOLKIT / "tls_config_noAuth.requireandverifyclientcert.good.yml")
    handshake(ctx, client(cert="client_selfsigned"))


def test_header_numbers_and_booleans_are_strings_as_written(tmp_path):
    cfg = load_web_config(write(tmp_path, "http_server_config:\n  headers:\n    X-XSS-Protection: 1\n"
                                          "    Strict-Transport-Security: 0x10\n"
                                          "    Content-Security-Policy: yes\n"))
    assert dict(cfg.headers) == {"X-XSS-Protection": "1", "Strict-Transport-Security": "0x10",
                                 "Content-Security-Policy": "yes"}
    cfg = load_web_config(TOOLKIT / "web_config_headers.good.yml")
    assert cfg.headers["X-XSS-Protection"] == "1"
    # Already decoded (no file text): Go's spelling.
    cfg = parse_web_config({"http_server_config": {"headers": {"X-XSS-Protection": 1,
                                                               "Content-Security-Policy": False}}})
    assert dict(cfg.headers) == {"X-XSS-Protection": "1", "Content-Security-Policy": "false"}
    assert errors_of(tmp_path, "http_server_config:\n  headers:\n    X-XSS-Protection: [1]\n") == [
        "http_server_config.headers.X-XSS-Protection: expected a string, got list"]


def other_rsa_key(path: Path) -> None:
    pytest.importorskip("cryptography", reason="the cryptography package is needed to make a test key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


@pytest.mark.parametrize(
    ("cert", "key", "fragment"),
    [
        ("server.crt", "other.key", "KEY_VALUES_MISMATCH"),  # an RSA key of another certificate
        ("server.crt", "client_selfsigned.key", ""),  # an EC key for an RSA certificate
        ("server.key", "server.key", ""),  # not a certificate
        ("server.crt", "server.crt", ""),  # not a key
    ],
)
def test_certificate_and_key_are_loaded_when_the_file_is(tmp_path, cert, key, fragment):
    toolkit_file(tmp_path, "")
    other_rsa_key(tmp_path / "other.key")
    errors = errors_of(tmp_path, f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n")
    assert len(errors) == 1 and errors[0].startswith("tls_server_config.cert_file: cannot load certificate and key")
    assert fragment in errors[0]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDNETWORKS_EXPORTER_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env, cwd=ROOT)


@pytest.mark.parametrize("check_only", [True, False], ids=["check-config", "start"])
def test_a_key_that_does_not_match_is_exit_2_before_starting(tmp_path, check_only):
    web = toolkit_file(tmp_path, "")
    other_rsa_key(tmp_path / "other.key")
    web.write_text("tls_server_config: {cert_file: server.crt, key_file: other.key}\n")
    result = run_cli("--demo", "--web.listen-address", "127.0.0.1:0", "--web.config.file", str(web),
                     *(["--check-config"] if check_only else []))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{web}: tls_server_config.cert_file: cannot load certificate and key" in result.stderr
    assert "Traceback" not in result.stderr and "configuration is valid" not in result.stdout


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rate_limit: {interval: 0, burst: 0}\n", None),
        ("rate_limit: {interval: 0s}\n", None),
        ("rate_limit: {interval: '0m0.000s', burst: 10}\n", None),
        ("rate_limit: {burst: 3}\n", None),
        ("rate_limit:\n", None),
        ("rate_limit: {interval: 1s, burst: 0}\n", "rate_limit: rate limiting is not supported"),
        ("rate_limit: {interval: 1}\n", "rate_limit: rate limiting is not supported"),  # 1ns, in Go
        ("rate_limit: {interval: 0, burst: many}\n", "rate_limit.burst: expected an integer"),
        ("rate_limit: {interval: 0, every: 1s}\n", "rate_limit.every: unknown key"),
    ],
)
def test_a_rate_limit_that_is_off_is_accepted(tmp_path, text, error):
    if error is None:
        load_web_config(write(tmp_path, text))
    else:
        assert any(e.startswith(error) for e in errors_of(tmp_path, text)), errors_of(tmp_path, text)


def test_empty_inline_certificate_or_key_is_absent_not_refused(tmp_path):
    toolkit_file(tmp_path, "")
    assert errors_of(tmp_path, "tls_server_config: {cert: '', key_file: server.key}\n") == [
        "tls_server_config.cert_file: required when key_file is set"]
    assert errors_of(tmp_path, "tls_server_config: {cert_file: server.crt, key: ''}\n") == [
        "tls_server_config.key_file: required when cert_file is set"]
    assert "inline keys are not supported" in "\n".join(
        errors_of(tmp_path, "tls_server_config: {cert_file: server.crt, key: 'PEM'}\n"))


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
    from exporter.storage.repository import open_repository
    from exporter.storage.store import Store

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

    from exporter.http.webconfig import NEW, VERIFIED, VERIFIED_KEPT, VERIFIED_STATE_KEY

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
