"""The exporter-toolkit web configuration file (``--web.config.file``): TLS and basic auth.

Same format as every Go exporter built on prometheus/exporter-toolkit, so an operator can reuse
the file they already have, checked the way the toolkit checks it (cipher suite and curve names against
Go's, the certificate and key loaded). Keys that would change security behaviour but that this server
cannot honour (inline PEM, SAN pinning, rate limiting, non-verifying client-cert modes) are refused with a
clear error instead of being ignored: silently dropping a security setting is worse than failing.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import hmac
import importlib
import logging
import re
import secrets
import ssl
import threading
import time
from array import array
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Protocol, cast

import bcrypt
import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.dataclasses import dataclass

from exporter.configschema import SECTION, ConfigError, Problem, Section, validate

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Accepted by the Go toolkit but without a Python ssl equivalent: OpenSSL verifies whatever
# certificate it asks for, so "ask but do not verify" cannot be expressed.
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)

# The names of Go's tls.CipherSuites(), the only ones the toolkit accepts, with OpenSSL's name for each
# TLS 1.0-1.2 suite. Go does not let a configuration choose the TLS 1.3 suites (it ignores them in the
# list), and neither does this server: they map to None.
CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    }
)
# With HTTP/2 on (the toolkit's default) and a cipher list that allows TLS 1.2, Go's HTTP server refuses to
# serve unless the list has one of these. This server does not speak HTTP/2, but it refuses the same files.
_HTTP2_REQUIRED_SUITES = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")

# The toolkit's curve names, with OpenSSL's.
CURVES: Mapping[str, str] = MappingProxyType(
    {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
)

# The toolkit allows only these response headers, some with enumerated values; we keep the same
# rule so a file that works there works here and vice versa.
ALLOWED_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

# Refused when set to anything but an empty value (empty is the same as absent, in the toolkit too).
_TLS_REFUSED = MappingProxyType(
    {
        "cert": "inline certificates are not supported; use cert_file",
        "key": "inline keys are not supported; use key_file",
        "client_ca": "inline CA certificates are not supported; use client_ca_file",
        "client_allowed_sans": "client SAN pinning is not supported by this exporter",
    }
)
# A Go duration (time.ParseDuration): "0", or numbers with units, such as "1m30s".
_GO_DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")

# $2a$/$2b$/$2y$, two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


# --------------------------------------------------------------------------------------------------
# The file, as the toolkit reads it


def _mapping(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _string(default: str | None = None) -> BeforeValidator:
    """A string; empty is no value (``default``), as in the toolkit."""

    def read(value: Any) -> str | None:
        if value is None or value == "":
            return default
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value

    return BeforeValidator(read)


def _version(value: str | None) -> str | None:
    if value is not None and value not in TLS_VERSIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
    return value


def _existing_file(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    # Relative paths are relative to the web config file, as in the toolkit.
    path = Path(value) if Path(value).is_absolute() else (info.context or {}).get("base_dir", Path()) / value
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    return str(path)


def _names(known: Mapping[str, Any], what: str) -> BeforeValidator:
    """A list of names from ``known`` (Go's cipher suite or curve names), as the toolkit checks it."""

    def read(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        unknown = [f"unknown {what} {v!r} (known: {', '.join(known)})" for v in value if v not in known]
        if unknown:
            raise Problem(*unknown)
        return tuple(dict.fromkeys(value))

    return BeforeValidator(read)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


File = Annotated[str | None, _string(), AfterValidator(_existing_file)]
Version = Annotated[str | None, _string(), AfterValidator(_version)]
Flag = Annotated[bool, BeforeValidator(_flag)]
_A_MAPPING = BeforeValidator(_mapping)  # a section that is not one is named as before


@dataclass(frozen=True, config=SECTION)
class _WebSection(Section):
    NULL_IS_UNSET = False  # as in the toolkit, null is the default for most keys, not all (see each type)

    @classmethod
    def unknown(cls, key: Any, keys: frozenset[str]) -> str:
        return "unknown key"


def _client_auth(value: str) -> str:
    if value in _UNSUPPORTED_CLIENT_AUTH:
        raise ValueError(f"{value!r} (client certificate without verification) is not supported; use one of "
                         f"{', '.join(CLIENT_AUTH_TYPES)}")
    if value not in CLIENT_AUTH_TYPES:
        raise ValueError(f"{value!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
    return value


@dataclass(frozen=True, config=SECTION)
class TLSServerConfig(_WebSection):
    cert_file: File = None
    key_file: File = None
    client_auth_type: Annotated[str, _string("NoClientCert"), AfterValidator(_client_auth)] = "NoClientCert"
    client_ca_file: File = None  # without it, client certificates are verified against the system's CAs, as in Go
    min_version: Version = None  # None = the toolkit's default, TLS12
    max_version: Version = None  # None = the newest the ssl module offers
    cipher_suites: Annotated[tuple[str, ...], _names(CIPHER_SUITES, "cipher")] = ()  # Go's names, in the file's order
    curve_preferences: Annotated[tuple[str, ...], _names(CURVES, "curve")] = ()  # the toolkit's names, in its order
    prefer_server_cipher_suites: Flag = True

    @classmethod
    def unknown(cls, key: Any, keys: frozenset[str]) -> str:
        return _TLS_REFUSED.get(key, "unknown key")

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        for inline in ("cert", "key", "client_ca"):  # an empty inline certificate or key is none, as in the toolkit
            if data.get(inline, 0) in (None, ""):
                del data[inline]
        cert, key, ca, auth = (data.get(k) for k in ("cert_file", "key_file", "client_ca_file", "client_auth_type"))
        auth = auth if isinstance(auth, str) and auth else "NoClientCert"
        # A rule puts its problem where a key is missing or empty; a key of the wrong type gets its own.
        if cert and key in (None, ""):
            data["key_file"] = Problem("required when cert_file is set")
        if cert in (None, ""):
            needed = (["required when key_file is set"] if key else []) + (
                ["required for TLS"] if data and (auth != "NoClientCert" or ca) else [])
            data.update({"cert_file": Problem(*needed)} if needed else {})
        return data

    @field_validator("client_ca_file", mode="wrap")
    @classmethod
    def _verified(cls, value: Any, check: ValidatorFunctionWrapHandler, info: ValidationInfo) -> str | None:
        if not value or info.data.get("client_auth_type") != "NoClientCert":
            return cast(str | None, check(value))
        try:
            check(value)
            own = []
        except ValidationError as exc:  # reported as well
            own = [str(e.get("ctx", {}).get("error", e["msg"])) for e in exc.errors()]
        raise Problem(*own, "set without a client_auth_type that verifies certificates")

    @field_validator("max_version")
    @classmethod
    def _not_below_min_version(cls, value: str | None, info: ValidationInfo) -> str | None:
        low = info.data.get("min_version")
        if value and low and TLS_VERSIONS[low] > TLS_VERSIONS[value]:
            raise Problem(f"{low} is above max_version {value}", at=(1, "min_version"))
        return value


def _header_value(value: Any, text: str | None) -> Any:
    """A header value as Go's YAML decoder reads it into a string: a number or a boolean is taken as written
    (``X-XSS-Protection: 1`` is "1"). ``text`` is the value as written in the file, when it is known."""
    if isinstance(value, str) or value is None:
        return value
    if text is not None:
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _headers(value: Any, info: ValidationInfo) -> dict[str, Any]:
    """The configured headers; blank means unset, as in the toolkit. ``header_texts`` (of the validation context)
    are the values as written in the file (see ``_header_value``)."""
    texts = info.context.get("header_texts", {}) if info.context else {}
    headers: dict[str, Any] = {}
    for name, raw in _mapping(value).items():
        if name not in ALLOWED_HEADERS:
            headers[str(name)] = Problem(f"this header cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})")
            continue
        text = _header_value(raw, texts.get(name))
        allowed = ALLOWED_HEADERS[name]
        if text is None or text == "":
            continue
        if not isinstance(text, str):
            headers[name] = Problem(f"expected a string, got {type(text).__name__}")
        elif "\r" in text or "\n" in text:
            headers[name] = Problem("must be a single line")
        else:
            headers[name] = text if not allowed or text in allowed else \
                Problem(f"{text!r} is not one of {', '.join(allowed)}")
    return headers


@dataclass(frozen=True, config=SECTION)
class HTTPServerConfig(_WebSection):
    # HTTP/2 is not spoken by this server; the key is accepted so toolkit files load unchanged (and its default,
    # true, makes the same cipher lists refused as in the toolkit).
    http2: Flag = True
    headers: Annotated[Mapping[str, str], BeforeValidator(_headers), AfterValidator(MappingProxyType)] = field(
        default_factory=dict)


def _zero_duration(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == 0
    return isinstance(value, str) and bool(_GO_DURATION.fullmatch(value)) and not re.search(r"[1-9]", value)


def _integer(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


@dataclass(frozen=True, config=SECTION)
class RateLimitConfig(_WebSection):
    """The toolkit rate-limits only when ``interval`` is not zero; a zero interval (or none) is accepted."""

    burst: Annotated[int, BeforeValidator(_integer)] = 0
    interval: Any = 0  # off; anything else is refused

    @field_validator("interval")
    @classmethod
    def _off(cls, value: Any) -> int:
        if not _zero_duration(value):
            raise Problem("rate limiting is not supported by this exporter (only interval: 0, which turns it off, "
                          "is accepted)", at=(1,))
        return 0


def _users(value: Any) -> dict[str, Any]:
    users: dict[str, Any] = {}
    for user, hashed in _mapping(value).items():
        if not isinstance(user, str) or not user or ":" in user:
            users[str(user)] = Problem("user names must be non-empty strings without ':'")
        elif not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):  # never shown: a password verifier
            users[user] = Problem("not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost 04-31, 60 characters)")
        else:
            users[user] = hashed
    return users


@dataclass(frozen=True, config=SECTION)
class WebConfig(_WebSection):
    """The web config file; its TLS settings also read as settings of the whole (``cfg.cert_file``)."""

    tls_server_config: Annotated[TLSServerConfig, _A_MAPPING] = TLSServerConfig()
    http_server_config: Annotated[HTTPServerConfig, _A_MAPPING] = HTTPServerConfig()
    rate_limit: Annotated[RateLimitConfig, _A_MAPPING] = RateLimitConfig()
    basic_auth_users: Annotated[Mapping[str, str], BeforeValidator(_users), AfterValidator(MappingProxyType)] = (
        field(default_factory=dict, repr=False))

    @property
    def tls_enabled(self) -> bool:
        return self.tls_server_config.cert_file is not None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.http_server_config.headers

    def __getattr__(self, name: str) -> Any:
        if name in TLSServerConfig.__dataclass_fields__:
            return getattr(self.tls_server_config, name)
        raise AttributeError(name)

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        tls, http = data.get("tls_server_config"), data.get("http_server_config")
        if isinstance(tls, dict) and _http2_refused(tls, http.get("http2", True) if isinstance(http, dict) else True):
            data["tls_server_config"] = {**tls, "cipher_suites": Problem(
                f"no HTTP/2-required suite ({' or '.join(_HTTP2_REQUIRED_SUITES)}) while http_server_config.http2 is "
                "true, which exporter-toolkit refuses to serve; add one, or set http2: false (this server does not "
                "speak HTTP/2)")}
        return data


def _http2_refused(tls: dict[str, Any], http2: Any) -> bool:
    """Whether Go's HTTP server would refuse to serve (see _HTTP2_REQUIRED_SUITES): HTTP/2 on, and a cipher list
    without a required suite that allows TLS 1.2."""
    suites, low = tls.get("cipher_suites"), tls.get("min_version")
    return (http2 is True and isinstance(suites, list) and bool(suites)
            and all(isinstance(s, str) and s in CIPHER_SUITES for s in suites)
            and not set(suites) & set(_HTTP2_REQUIRED_SUITES)
            and TLS_VERSIONS.get(low if isinstance(low, str) else "", ssl.TLSVersion.TLSv1_2) < ssl.TLSVersion.TLSv1_3)


def parse_web_config(
    data: Any, base_dir: str | Path = ".", header_texts: Mapping[str, str] | None = None
) -> WebConfig:
    """The validated form of an already-decoded web config document; raises ConfigError.

    As the toolkit's Validate does, the certificate, key and CA files are loaded and the TLS settings applied
    to a context, so that a file that cannot be served is refused here. ``header_texts`` are the header values
    as written in the file (see ``_header_value``).
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(data).__name__}"])
    cfg = validate(WebConfig, data or {}, base_dir=Path(base_dir), header_texts=header_texts or {})
    build_ssl_context(cfg)  # raises ConfigError when it cannot be served
    return cfg


def _header_texts(root: yaml.Node | None) -> dict[str, str]:
    """The scalar values of ``http_server_config.headers`` as written in the file (before YAML typing)."""
    node = root
    for key in ("http_server_config", "headers"):
        if not isinstance(node, yaml.MappingNode):
            return {}
        node = next((v for k, v in reversed(node.value) if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        k.value: v.value for k, v in node.value if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)
    }


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file; every problem is reported as ``key.path: message``.

    Messages do not repeat the file name: callers print it in front of each one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read web config: {exc}"]) from exc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
        return parse_web_config(data, path.parent, _header_texts(root))
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError(["nested too deeply"]) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------------
# TLS


def build_ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    """The server-side TLS context the config describes, or None when TLS is off.

    Raises ConfigError when the certificate, key or CA file cannot be loaded, or when a setting cannot be
    applied as the file says.
    """
    if not cfg.tls_enabled:
        return None
    tls = cfg.tls_server_config
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version or "TLS12"]
    if tls.max_version:
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    # Python turns server preference on for every context; the file decides (true unless it says false).
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    errors: list[str] = []
    _apply_cipher_suites(ctx, tls, errors)
    _apply_curves(ctx, tls.curve_preferences, errors)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)  # type: ignore[arg-type]
    except (ssl.SSLError, OSError) as exc:
        errors.append(f"tls_server_config.cert_file: cannot load certificate and key: {exc}")
    if tls.client_auth_type != "NoClientCert":
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            else:  # as Go does without ClientCAs: the system's CAs
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"tls_server_config.client_ca_file: cannot load CA certificates: {exc}")
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth_type == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
        )
    if errors:
        raise ConfigError(errors)
    return ctx


def _apply_cipher_suites(ctx: ssl.SSLContext, tls: TLSServerConfig, errors: list[str]) -> None:
    """Only the listed TLS 1.0-1.2 suites, in the file's order (which decides with server preference on);
    TLS 1.3 suites are left to OpenSSL, as Go leaves them to itself."""
    if not tls.cipher_suites:
        return
    where = "tls_server_config.cipher_suites"
    wanted = [name for name in (CIPHER_SUITES[s] for s in tls.cipher_suites) if name is not None]
    if not wanted:
        # Only TLS 1.3 suites listed: Go has no TLS 1.2 suite left, so only TLS 1.3 can be negotiated.
        if tls.max_version and TLS_VERSIONS[tls.max_version] < ssl.TLSVersion.TLSv1_3:
            errors.append(f"{where}: lists only TLS 1.3 suites, but max_version is {tls.max_version}")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    try:
        # Keep the security level Python chose: replacing the cipher string would reset it to OpenSSL's.
        ctx.set_ciphers(f"@SECLEVEL={ctx.security_level}:" + ":".join(wanted))
    except ssl.SSLError as exc:
        errors.append(f"{where}: cannot be applied: {exc}")
        return
    have = {c["name"] for c in ctx.get_ciphers()}
    missing = [go for go in tls.cipher_suites if CIPHER_SUITES[go] not in have | {None}]
    if missing:
        errors.append(f"{where}: {', '.join(missing)} not available in {ssl.OPENSSL_VERSION}")


def _apply_curves(ctx: ssl.SSLContext, curves: tuple[str, ...], errors: list[str]) -> None:
    """Only the listed curves (key exchange groups, TLS 1.2 and 1.3), in the file's order."""
    if not curves:
        return
    names = [CURVES[c] for c in curves]
    try:
        if len(names) == 1:
            ctx.set_ecdh_curve(names[0])
            return
        problem = _set_groups(ctx, ":".join(names))
    except (ValueError, ssl.SSLError) as exc:
        problem = str(exc)
    if problem:
        errors.append(f"tls_server_config.curve_preferences: {', '.join(curves)} cannot be applied ({problem})"
                      + ("; list one curve" if len(names) > 1 else ""))


_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's SSL_CTX_set1_groups_list(), a macro over SSL_CTX_ctrl()


def _set_groups(ctx: ssl.SSLContext, groups: str) -> str | None:
    """SSL_CTX_set1_groups_list() on the context: the ssl module sets one curve only (set_ecdh_curve).

    The call goes to the libssl the ssl module uses, with the SSL_CTX pointer that CPython keeps right after
    the object header; the pointer is first checked by reading the context's options through it. None when
    applied, otherwise why not (then nothing was changed).
    """
    try:
        libssl = ctypes.CDLL(getattr(importlib.import_module("_ssl"), "__file__", None))
        get_options = libssl.SSL_CTX_get_options
        ctrl = libssl.SSL_CTX_ctrl
    except (OSError, AttributeError, ImportError, TypeError) as exc:
        return f"OpenSSL is not reachable from Python here: {exc}"
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64 if ssl.OPENSSL_VERSION_INFO[0] >= 3 else ctypes.c_ulong
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or get_options(pointer) != int(ctx.options):
        return "this Python's SSL context layout is not the one expected"
    if ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        return f"{ssl.OPENSSL_VERSION} does not accept {groups}"
    return None


# --------------------------------------------------------------------------------------------------
# Basic auth

# bcrypt("not-a-real-password", cost 10): checked for unknown users so that a wrong user name takes as
# long as a wrong password and does not reveal which user names exist.
_DUMMY_HASH = b"$2b$10$wSIvf/5TQ8kXVRkZFqQZ8.AFJOjgZ1ubg80V5MxD0Dal7ByUD5cdG"


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, or None if there is none."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


# Why a basic-auth check failed: the label values of cdnetworks_web_auth_failures_total.
AUTH_FAILURE_REASONS = ("missing", "wrong", "throttled")
# bcrypt checks of new candidates running or waiting at once; past that such a check fails at once.
BCRYPT_RUNNING = 1
BCRYPT_WAITING = 3
# Checks of repeated candidates (a password refused unchecked before) running or waiting at once. They go to
# bcrypt ahead of new candidates.
REPEATED_WAITING = 2
# The fingerprints of candidates refused unchecked or found wrong: a fixed table of 64-bit entries (1 MiB), each
# candidate in one slot, so a flood overwrites entries at random rather than growing it.
SEEN_SLOTS = 1 << 17
# Where verified passwords are remembered across restarts (Store.get_state/set_state), and how many at most.
VERIFIED_STATE_KEY = "web:verified_passwords"
VERIFIED_KEPT = 64

# What assess() says about a candidate without running bcrypt.
VERIFIED = "verified"  # a remembered password: let it in
MISSING = "missing"  # no usable credentials
KNOWN_WRONG = "wrong"  # checked before and wrong: refuse without bcrypt
REPEATED = "repeated"  # refused unchecked before: bcrypt, ahead of new candidates
NEW = "new"  # never seen: bcrypt, if there is room


class StateStore(Protocol):
    """Where verified passwords are remembered across restarts: the exporter's store (exporter/store.py)."""

    def get_state(self, key: str) -> Any: ...

    def set_state(self, key: str, value: Any) -> None: ...


class AuthFailures:
    """Failed basic-auth checks by reason; kept for the life of the process (across reloads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(AUTH_FAILURE_REASONS, 0)

    def inc(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _entry_ts(entry: dict[str, Any]) -> float:
    ts = entry.get("ts")
    return float(ts) if isinstance(ts, (int, float)) else 0.0


def verified_digest(hashed: bytes, salt: bytes, user: str, password: bytes) -> bytes:
    """What is remembered of a verified password: HMAC-SHA256 keyed with the user's bcrypt hash (it lives in the
    web config file, not in the store) over a random salt, the user name and the password. A copy of the store
    alone therefore allows no guessing, and no two entries (users, salts, hashes) share a digest."""
    return hmac.new(hashed, salt + user.encode("utf-8") + b"\0" + password, hashlib.sha256).digest()


class BasicAuth:
    """Checks HTTP Basic credentials against the bcrypt hashes of ``basic_auth_users``.

    bcrypt is deliberately slow (tens of ms at cost 10) and Prometheus scrapes every few seconds, so a password
    that passed bcrypt is remembered, per user, as a salted digest keyed with the user's hash
    (``verified_digest``); later requests compare that digest in constant time. With a store attached
    (``attach``), the digests are also kept there (``VERIFIED_STATE_KEY``, at most ``VERIFIED_KEPT``), so a
    restart does not forget them.

    A flood of wrong passwords cannot take the CPU or the server's workers: one bcrypt runs at a time, a few
    more wait for it, and a check that would have to wait behind more than that fails at once ("throttled").
    A password never verified (the first scrape with a new password, on a new store) can be throttled during
    such a flood; it is then remembered as a fingerprint (``SEEN_SLOTS``), and when it comes again (the next
    scrape) it goes to bcrypt ahead of every new candidate. A password found wrong is remembered the same way
    and refused without bcrypt when it comes again, so each guess pays the bcrypt cost once at most, and
    guesses that repeat cannot crowd out the one that is right.
    """

    def __init__(self, users: Mapping[str, str], failures: AuthFailures | None = None) -> None:
        self._users = {user: hashed.encode("ascii") for user, hashed in users.items()}
        self._verified: dict[str, tuple[bytes, bytes]] = {}  # user -> (salt, digest) of its verified password
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)  # bcrypt: one at a time, repeated candidates first
        self._bcrypt_busy = False
        self._queued = [0, 0]  # waiting for bcrypt: new candidates, repeated ones
        self._in_bcrypt = [0, 0]  # running or waiting: new candidates, repeated ones
        self._key = secrets.token_bytes(32)  # for the fingerprints; never leaves the process
        self._seen = array("Q", bytes(8 * SEEN_SLOTS))
        self._state: StateStore | None = None
        self.failures = failures or AuthFailures()

    # -- remembering verified passwords across restarts

    def attach(self, state: StateStore | None) -> None:
        """Remember verified passwords in ``state`` from now on, and take up those it remembers of the configured
        users (their digests only match while a user's hash is the one they were made with)."""
        self._state = state
        if state is None:
            return
        try:
            saved = state.get_state(VERIFIED_STATE_KEY)
        except Exception as exc:  # the store cannot be read: start with the memory of this process
            log.warning("basic auth: cannot read the remembered passwords: %s", exc)
            return
        entries = saved.get("entries") if isinstance(saved, dict) else None
        with self._lock:
            for entry in entries if isinstance(entries, list) else []:
                try:
                    user, salt, digest = entry["user"], bytes.fromhex(entry["salt"]), bytes.fromhex(entry["digest"])
                except (KeyError, TypeError, ValueError):
                    continue
                if user in self._users and user not in self._verified and len(digest) == hashlib.sha256().digest_size:
                    self._verified[user] = (salt, digest)

    def _remember(self, user: str, hashed: bytes, password: bytes) -> None:
        salt = secrets.token_bytes(16)
        digest = verified_digest(hashed, salt, user, password)
        with self._lock:
            self._verified[user] = (salt, digest)
        state = self._state
        if state is None:
            return
        entry = {"user": user, "salt": salt.hex(), "digest": digest.hex(), "ts": time.time()}
        try:
            saved = state.get_state(VERIFIED_STATE_KEY)
            entries = saved.get("entries") if isinstance(saved, dict) else None
            others = [e for e in (entries if isinstance(entries, list) else [])
                      if isinstance(e, dict) and e.get("user") != user]
            others.sort(key=_entry_ts)
            state.set_state(VERIFIED_STATE_KEY, {"entries": [*others[-(VERIFIED_KEPT - 1):], entry]})
        except Exception as exc:  # remembered in memory all the same; the next start checks it again
            log.warning("basic auth: cannot store the verified password of %r: %s", user, exc)

    # -- checking

    def _is_verified(self, user: str, hashed: bytes | None, password: bytes) -> bool:
        if hashed is None:
            return False
        with self._lock:
            remembered = self._verified.get(user)
        return remembered is not None and hmac.compare_digest(
            remembered[1], verified_digest(hashed, remembered[0], user, password))

    def _fingerprint(self, user: str, hashed: bytes | None, password: bytes) -> tuple[int, int]:
        """(slot, fingerprint) of a candidate, for the table of those seen; the fingerprint's lowest bit is
        clear (set in the table: found wrong) and it is never 0 (an empty slot)."""
        mac = hmac.new(self._key, user.encode("utf-8") + b"\0" + (hashed or b"") + b"\0" + password, hashlib.sha256)
        value = int.from_bytes(mac.digest()[:8], "big")
        return (value >> 1) % SEEN_SLOTS, (value & ~1) or 2

    def assess(self, header: str | None) -> str:
        """What is known of these credentials without bcrypt: VERIFIED, MISSING, KNOWN_WRONG, REPEATED or NEW."""
        creds = _parse_basic(header)
        if creds is None:
            return MISSING
        user, password = creds
        return self._known(user, password.encode("utf-8"), self._users.get(user))[0]

    def _known(self, user: str, pw: bytes, hashed: bytes | None) -> tuple[str, int, int]:
        """VERIFIED, KNOWN_WRONG, REPEATED or NEW for parsed credentials, with their slot and fingerprint in the
        table of candidates seen (0, 0 when verified)."""
        if self._is_verified(user, hashed, pw):
            return VERIFIED, 0, 0
        slot, fingerprint = self._fingerprint(user, hashed, pw)
        seen = self._seen[slot]
        if seen == fingerprint | 1:
            return KNOWN_WRONG, slot, fingerprint
        return (REPEATED if seen == fingerprint else NEW), slot, fingerprint

    def throttled(self, header: str | None) -> None:
        """Count a candidate refused unchecked (the server had no room for its check), and remember it: when it
        comes again, it is checked ahead of new candidates."""
        creds = _parse_basic(header)
        if creds is not None:
            user, password = creds
            pw = password.encode("utf-8")
            slot, fingerprint = self._fingerprint(user, self._users.get(user), pw)
            if self._seen[slot] != fingerprint | 1:
                self._seen[slot] = fingerprint
        self.failures.inc("throttled")

    def check(self, header: str | None) -> bool:
        creds = _parse_basic(header)
        if creds is None:
            self.failures.inc("missing")
            return False
        user, password = creds
        pw = password.encode("utf-8")
        hashed = self._users.get(user)
        known, slot, fingerprint = self._known(user, pw, hashed)
        if known == VERIFIED:
            return True
        if known == KNOWN_WRONG:
            self.failures.inc("wrong")  # found wrong before: no bcrypt again
            return False
        lane = 1 if known == REPEATED else 0
        with self._lock:
            if self._in_bcrypt[lane] >= (REPEATED_WAITING if lane else BCRYPT_RUNNING + BCRYPT_WAITING):
                if known == NEW:
                    self._seen[slot] = fingerprint
                self.failures.inc("throttled")
                return False
            self._in_bcrypt[lane] += 1
        try:
            ok = self._bcrypt(pw, hashed if hashed is not None else _DUMMY_HASH, lane) and hashed is not None
        finally:
            with self._lock:
                self._in_bcrypt[lane] -= 1
        if ok:
            assert hashed is not None
            self._remember(user, hashed, pw)
        else:
            self._seen[slot] = fingerprint | 1
            self.failures.inc("wrong")
        return ok

    def _bcrypt(self, password: bytes, hashed: bytes, lane: int) -> bool:
        """One bcrypt check at a time; a repeated candidate (lane 1) goes before every new one (lane 0)."""
        with self._turn:
            self._queued[lane] += 1
            while self._bcrypt_busy or (lane == 0 and self._queued[1]):
                self._turn.wait()
            self._queued[lane] -= 1
            self._bcrypt_busy = True
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError as exc:
            # bcrypt refuses passwords over 72 bytes; no configured password can be that long.
            log.debug("basic auth: password rejected by bcrypt: %s", exc)
            return False
        finally:
            with self._turn:
                self._bcrypt_busy = False
                self._turn.notify_all()
