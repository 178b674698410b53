"""The small validation framework under the configuration model.

Scalar parsers (durations, time zones, URLs), ``${ENV}`` expansion, ``*_file`` secrets, a YAML loader that
refuses duplicate keys, and ``Section``: a reader of one mapping of raw YAML whose typed getters report every
problem with its key path to a shared ``Context`` and fall back to the default, so one run finds them all.
It knows nothing of the exporter's sections; ``exporter.config`` describes those with it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

DAY = 86400.0


# --------------------------------------------------------------------------------------------------
# Scalars: durations, time zones, URLs

_DURATION_RE = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_DURATION_UNITS = (365 * DAY, 7 * DAY, DAY, 3600.0, 60.0, 1.0, 0.001)
# Longer than anything the exporter waits for or keeps; far beyond it, clocks and timers overflow.
MAX_DURATION = 10 * 365 * DAY
MAX_INTEGER = 1_000_000_000  # for counts without a tighter bound of their own


def quote(text: str) -> str:
    """``text`` as messages show a value: double-quoted and JSON-escaped, so blanks and control characters show."""
    return json.dumps(text, ensure_ascii=False)


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Prometheus-style duration: ``30s``, ``5m``, ``1h30m``, ``7d``, ``1w``, ``500ms``.

    Units go from largest to smallest, each at most once (``y`` = 365d, ``w`` = 7d). A bare number
    (YAML ``300`` or the string ``"300"``, e.g. from an environment variable) means seconds. Zero is
    a valid duration here; keys that need a positive one check that themselves.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got {type_name(text)}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text} is not a duration (must be a finite number of seconds >= 0)")
        return _bounded(float(text), str(text))
    if not isinstance(text, str):
        raise ValueError(f"expected a duration, got {type_name(text)}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s.startswith("-"):
        raise ValueError(f"{quote(text)} is negative; durations must not be negative")
    if re.fullmatch(r"[0-9]+", s):
        return _bounded(float(s), text)
    m = _DURATION_RE.fullmatch(s)
    if m is None or not any(m.groups()):
        raise ValueError(f"{quote(text)} is not a duration")
    seconds = sum(int(n) * unit for n, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if n)
    return _bounded(seconds, text)


def _bounded(seconds: float, text: str) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"{quote(text)} is too long a duration (at most 10y)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling of ``seconds`` (``5400`` -> ``1h30m``), to the ms."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds} as a duration")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


# +08:00, -05:30, +0800, +08, and +8:00 (as people write it when quoting the YAML base-60 trap).
_OFFSET_RE = re.compile(r"([+-])([0-9]{1,2})(?::([0-9]{2}))?|([+-])([0-9]{2})([0-9]{2})")
_MAX_OFFSET = timedelta(hours=14)  # the widest offset in use anywhere (Pacific/Kiritimati)


def parse_timezone(text: str) -> tzinfo:
    """A fixed UTC offset (``+08:00``, ``-05:30``, ``+0800``), ``UTC``/``Z``, or an IANA name.

    IANA names (``Asia/Shanghai``) come from the system's zoneinfo database.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a time zone string, got {type_name(text)}")
    s = text.strip()
    if s.upper() in ("UTC", "Z"):
        return timezone.utc
    m = _OFFSET_RE.fullmatch(s)
    if m:
        sign, hours, minutes = (m.group(1), m.group(2), m.group(3)) if m.group(1) else m.group(4, 5, 6)
        h, mi = int(hours), int(minutes or 0)
        offset = timedelta(hours=h, minutes=mi)
        if mi >= 60 or offset > _MAX_OFFSET:
            raise ValueError(f"{quote(text)} is not a valid UTC offset (from -14:00 to +14:00)")
        return timezone(-offset if sign == "-" else offset)
    if not s or s[0] in "+-" or s[0].isdigit():
        raise ValueError(f"{quote(text)} is not a time zone (use +08:00, UTC or an IANA name)")
    try:
        return ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ZoneInfo also raises ValueError for keys that are not normalised relative paths.
        message = f"{quote(text)} is not a known time zone (use +08:00, UTC or an IANA name)"
        raise ValueError(message) from exc


def _check_http_url(text: str, *, allow_query: bool) -> None:
    """Raise ValueError unless ``text`` is an absolute http(s) URL without credentials or fragment."""
    if any(c.isspace() for c in text):
        raise ValueError(f"{quote(text)} is not an http(s) URL (contains whitespace)")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{quote(text)} is not an http(s) URL")
    if "@" in parts.netloc:
        # Do not echo it: the user-info part is a credential.
        raise ValueError("must not contain credentials (user:password@); use the auth keys instead")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as exc:
        raise ValueError(f"{quote(text)} has an invalid port") from exc
    if parts.fragment or text.endswith("#"):
        raise ValueError(f"{quote(text)} must not have a #fragment")
    if parts.query and not allow_query:
        raise ValueError(f"{quote(text)} must not have a query string")


# --------------------------------------------------------------------------------------------------
# ${VAR} expansion

_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE_RE = re.compile(r"\$\$|\$\{([^}]*)(\})?")


def expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, bool, list[str]]:
    """Expand ``${VAR}`` references and ``$$`` escapes in ``text``.

    Returns (expanded text, whether any variable was used, problems). A ``$`` not followed by ``{`` or
    ``$`` is literal, so secrets that merely contain a dollar sign need no escaping. Values taken from
    the environment are not expanded again.
    """
    out: list[str] = []
    problems: list[str] = []
    used = False
    pos = 0
    for m in _REFERENCE_RE.finditer(text):
        out.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == "$$":
            out.append("$")
            continue
        name, closed = m.group(1), m.group(2)
        if not closed:
            problems.append("unterminated ${ (write $$ for a literal $)")
            continue
        if not _VAR_NAME_RE.fullmatch(name):
            # The text between the braces is not echoed: it may be part of an inline secret.
            problems.append("invalid ${...} reference: only ${NAME} is supported (write $$ for a literal $)")
            continue
        used = True
        value = environ.get(name)
        if value is None:
            problems.append(f"environment variable {name} is not set")
        else:
            out.append(value)
    out.append(text[pos:])
    return "".join(out), used, problems


# --------------------------------------------------------------------------------------------------
# The reader: walks the raw YAML data, collecting every problem with its key path

_MISSING: Any = object()  # key absent or null: use the default
BAD: Any = object()  # value already reported as a problem (e.g. an unset environment variable)

_MAX_SECRET_FILE_BYTES = 64 * 1024

_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "mapping",
    type(None): "null",
}


def type_name(value: Any) -> str:
    for typ, name in _TYPE_NAMES.items():
        if type(value) is typ:
            return name
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key_message(key: Any, allowed: Iterable[str]) -> str:
    candidates = sorted(allowed)
    close = difflib.get_close_matches(str(key).replace("-", "_"), candidates, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(candidates)})"


class Context:
    """Shared state of one validation run: the problems found so far and where secrets come from."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path):
        self.environ = environ
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.failed: set[str] = set()

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")
        self.failed.add(path)

    def ok(self, *paths: str) -> bool:
        """True when none of ``paths`` has a problem (so cross-key checks do not pile up noise)."""
        return not any(p in self.failed for p in paths)

    def expand(self, value: Any, path: str) -> tuple[Any, bool]:
        """``value`` with ``${VAR}`` expanded if it is a string, and whether it came from the environment."""
        if not isinstance(value, str) or "$" not in value:
            return value, False
        expanded, used, problems = expand_env(value, self.environ)
        for problem in problems:
            self.error(path, problem)
        return (BAD if problems else expanded), used

    def read_secret_file(self, raw_path: str, path: str) -> str | None:
        file = Path(raw_path).expanduser()
        if not file.is_absolute():
            file = self.base_dir / file
        try:
            with file.open("rb") as f:
                data = f.read(_MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            self.error(path, f"cannot read {file}: {exc.strerror or type(exc).__name__}")
            return None
        if len(data) > _MAX_SECRET_FILE_BYTES:
            self.error(path, f"{file} is larger than {_MAX_SECRET_FILE_BYTES} bytes; is it a secret file?")
            return None
        try:
            text = data.decode("utf-8").rstrip()
        except UnicodeDecodeError:
            self.error(path, f"{file} is not UTF-8 text")
            return None
        if not text:
            self.error(path, f"{file} is empty")
            return None
        return text


class Section:
    """One mapping of the config at ``path``; typed getters report problems and fall back to defaults."""

    def __init__(self, ctx: Context, path: str, raw: Any, allowed: Iterable[str]):
        self.ctx = ctx
        self.path = path
        self.data: Mapping[Any, Any] = {}
        if raw is BAD or raw is _MISSING or raw is None:
            return
        if not isinstance(raw, Mapping):
            ctx.error(path, f"expected a mapping, got {type_name(raw)}")
            return
        self.data = raw
        allowed = frozenset(allowed)
        for key in raw:
            if key not in allowed:
                ctx.error(self.sub(key), _unknown_key_message(key, allowed))

    def sub(self, key: Any) -> str:
        return _join(self.path, key)

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> tuple[Any, bool]:
        """The value at ``key`` after env expansion (``_MISSING``/``BAD`` sentinels) and its env origin."""
        value = self.data.get(key)
        if value is None:
            return _MISSING, False
        return self.ctx.expand(value, self.sub(key))

    def section(self, key: str, allowed: Iterable[str]) -> Section:
        return Section(self.ctx, self.sub(key), self.data.get(key), allowed)

    def _type_error(self, key: str, expected: str, value: Any) -> None:
        self.ctx.error(self.sub(key), f"expected {expected}, got {type_name(value)}")

    def string(self, key: str, default: str | None = None, *, required: str | None = None) -> str | None:
        """A string; ``required`` is the message when it is absent. Values are never echoed here."""
        value, _ = self.get(key)
        if value is BAD:
            return default
        if value is _MISSING:
            if required is not None:
                self.ctx.error(self.sub(key), required)
            return default
        if not isinstance(value, str):
            self._type_error(key, "a string", value)
            return default
        if not value.strip():
            self.ctx.error(self.sub(key), "must not be empty")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value, from_env = self.get(key)
        if value is _MISSING or value is BAD:
            return default
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            # ${VAR} always yields a string; read it the way YAML would have read the literal.
            word = value.strip().lower()
            if word in ("true", "yes", "on"):
                return True
            if word in ("false", "no", "off"):
                return False
        self._type_error(key, "a boolean (true or false)", value)
        return default

    def integer(self, key: str, default: int, *, lo: int, hi: int = MAX_INTEGER) -> int:
        value, from_env = self.get(key)
        if value is _MISSING or value is BAD:
            return default
        if from_env and isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self._type_error(key, "an integer", value)
            return default
        if value < lo or value > hi:
            bound = f"at least {lo}" if hi == MAX_INTEGER and value < lo else f"from {lo} to {hi}"
            self.ctx.error(self.sub(key), f"must be {bound}, got {value}")
            return default
        return value

    def duration(
        self,
        key: str,
        default: str,
        *,
        minimum: float = 0.0,
        positive: bool = True,
        maximum: float | None = None,
    ) -> float:
        fallback = parse_duration(default)
        value, _ = self.get(key)
        if value is _MISSING or value is BAD:
            return fallback
        seconds = self.duration_value(self.sub(key), value)
        if seconds is None:
            return fallback
        if positive and seconds <= 0:
            self.ctx.error(self.sub(key), "must be greater than 0")
        elif seconds < minimum:
            self.ctx.error(self.sub(key), f"must be at least {format_duration(minimum)}")
        elif maximum is not None and seconds > maximum:
            self.ctx.error(self.sub(key), f"must be at most {format_duration(maximum)}")
        else:
            return seconds
        return fallback

    def duration_value(self, path: str, value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.ctx.error(path, f"expected a duration such as 5m, got {type_name(value)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.ctx.error(path, str(exc))
            return None

    def items(self, key: str) -> list[tuple[str, Any]] | None:
        """(path, expanded value) for each element of the list at ``key``; None when absent or invalid."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self._type_error(key, "a list", value)
            return None
        out = []
        for i, item in enumerate(value):
            path = f"{self.sub(key)}[{i}]"
            expanded, _ = self.ctx.expand(item, path)
            out.append((path, expanded))
        return out

    def url(self, key: str, *, allow_query: bool = False) -> str | None:
        text = self.string(key)
        if text is None:
            return None
        try:
            _check_http_url(text, allow_query=allow_query)
        except ValueError as exc:
            self.ctx.error(self.sub(key), str(exc))
            return None
        return text

    def secret(self, key: str, *, required: bool) -> str | None:
        """A secret given inline (``key``, maybe ``${VAR}``) or as a file (``key_file``); never echoed."""
        file_key = f"{key}_file"
        if self.present(key) and self.present(file_key):
            self.ctx.error(self.sub(file_key), f"conflicts with {key}; set only one of them")
            return None
        if self.present(file_key):
            file_path = self.string(file_key)
            return None if file_path is None else self.ctx.read_secret_file(file_path, self.sub(file_key))
        return self.string(key, required=f"required (or {file_key})" if required else None)


# --------------------------------------------------------------------------------------------------
# Strict YAML: duplicate keys are errors, and messages never show the file's text


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML resolves silently (the last one wins)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may legitimately be overridden
        key = loader.construct_object(key_node, deep=False)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {quote(str(key))} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    # Only the problem and its position: the YAML library's snippet of the offending line could show
    # an inline secret.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{path}: {where}: {exc.problem}{context}"
    return f"{path}: invalid YAML ({type(exc).__name__})"

