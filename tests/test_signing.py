import base64
from pathlib import Path

from exporter.vendor import signing

FIXTURES = Path(__file__).parent / "fixtures"


def test_basic_password_vector():
    # Vector from the issue: apiKey "apiKey", the Date header below.
    assert signing.basic_password("apiKey", "Sun, 22 Nov 2026 08:00:00 GMT") == "KX8CTk57QxYb+5x8X+fl7qybiik="


def test_basic_authorization_is_user_colon_password():
    header = signing.basic_authorization("user", "apiKey", "Sun, 22 Nov 2026 08:00:00 GMT")
    assert header.startswith("Basic ")
    assert base64.b64decode(header[6:]).decode() == "user:KX8CTk57QxYb+5x8X+fl7qybiik="


def test_http_date_is_rfc1123_gmt():
    # 2026-11-22T08:00:00Z
    assert signing.http_date(1795334400) == "Sun, 22 Nov 2026 08:00:00 GMT"


def test_aksk_signature_changes_with_every_input():
    base = dict(method="POST", path="/ccm/fetch/ItemIdQuery", query="", host="api.example.com",
                content_type="application/json", body=b"{}", timestamp="1795334400")
    sig = signing.aksk_signature("sk", **base)
    assert len(sig) == 64 and sig == sig.lower()
    for key, other in [("method", "GET"), ("path", "/x"), ("host", "h"), ("body", b"[]"), ("timestamp", "1")]:
        assert signing.aksk_signature("sk", **{**base, key: other}) != sig
    assert signing.aksk_signature("other", **base) != sig


def test_aksk_header_roundtrip():
    header = signing.aksk_authorization("AK", "abc")
    assert signing.parse_aksk_authorization(header) == {
        "Credential": "AK", "SignedHeaders": "content-type;host", "Signature": "abc"}
    assert signing.parse_aksk_authorization("Basic xyz") is None


def test_fmgr_notify_vector():
    # The example notification body of seed 001, byte for byte.
    body = (FIXTURES / "fmgr_notify_example.b64").read_bytes()
    auth = signing.fmgr_notify_authorization(
        "test-access-key", "test-secret-key", "https://exporter.example.com/notify/fmgr", body)
    assert auth == "test-access-key:ODU2ZDk2ZWQ2MTEwMzA3OWM0OWFkNzZmZmJkYmY4ZThhM2Q3ZTExNA=="


def test_constant_time_equals():
    assert signing.constant_time_equals("abc", "abc")
    assert not signing.constant_time_equals("abc", "abd")
