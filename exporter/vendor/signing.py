"""Pure signing functions for the vendor's three schemes.

Kept free of I/O so that the client, the simulator and the notify receiver share one audited
implementation, and the test vectors pin it down without a network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate

AKSK_ALGORITHM = "CNC-HMAC-SHA256"
AKSK_SIGNED_HEADERS = "content-type;host"


def http_date(ts: float) -> str:
    """RFC 1123 date in GMT, as the CDN API wants in the ``Date`` header."""
    return formatdate(ts, usegmt=True)


def basic_password(api_key: str, date: str) -> str:
    """HTTP Basic password of the CDN API: base64(raw HMAC-SHA1(apiKey, Date header))."""
    digest = hmac.new(api_key.encode(), date.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def basic_authorization(username: str, api_key: str, date: str) -> str:
    """The full ``Authorization`` header value for the Date + HTTP Basic scheme."""
    token = f"{username}:{basic_password(api_key, date)}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


def aksk_signature(
    secret_key: str,
    *,
    method: str,
    path: str,
    query: str,
    host: str,
    content_type: str,
    body: bytes,
    timestamp: str,
) -> str:
    """Lower-case hex signature of the vendor's CNC-HMAC-SHA256 (AK/SK) scheme.

    CanonicalRequest = METHOD \\n path \\n query \\n "content-type:<ct>\\nhost:<host>\\n" \\n
    SignedHeaders \\n hex(sha256(body)); StringToSign = algorithm \\n timestamp \\n hex(sha256(CR)).
    """
    canonical_headers = f"content-type:{content_type.strip().lower()}\nhost:{host.strip().lower()}\n"
    canonical_request = "\n".join(
        [
            method.upper(),
            path,
            query,
            canonical_headers,
            AKSK_SIGNED_HEADERS,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    string_to_sign = "\n".join(
        [AKSK_ALGORITHM, timestamp, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def aksk_authorization(access_key: str, signature: str) -> str:
    return (
        f"{AKSK_ALGORITHM} Credential={access_key}, "
        f"SignedHeaders={AKSK_SIGNED_HEADERS}, Signature={signature}"
    )


def parse_aksk_authorization(value: str) -> dict[str, str] | None:
    """Split ``CNC-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``; None if malformed."""
    prefix = AKSK_ALGORITHM + " "
    if not value.startswith(prefix):
        return None
    fields: dict[str, str] = {}
    for part in value[len(prefix) :].split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            return None
        fields[key] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def fmgr_notify_signature(secret_key: str, url: str, raw_body: bytes) -> str:
    """Signature of an Fmgr notification (seed 001).

    urlsafe_b64(hex(hmac_sha1(SecretKey, notifyURLWithQuery + "\\n" + body))) where body is the raw,
    already urlsafe-base64 request body exactly as received.
    """
    mac = hmac.new(secret_key.encode(), url.encode() + b"\n" + raw_body, hashlib.sha1).hexdigest()
    return base64.urlsafe_b64encode(mac.encode("ascii")).decode("ascii")


def fmgr_notify_authorization(access_key: str, secret_key: str, url: str, raw_body: bytes) -> str:
    return f"{access_key}:{fmgr_notify_signature(secret_key, url, raw_body)}"


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
