"""What the configuration models are made of, on pydantic.

Scalar parsers (durations, time zones, URLs); the ``${ENV}`` pre-pass over the raw YAML; the annotated types and
bounds the fields are declared with; ``Section``, the base of every section (unknown keys refused, null as "not
set", ``*_file`` secrets, rules over a whole mapping); the one translator from pydantic's errors to
``key.path: message`` lines; and a YAML loader that refuses duplicate keys. It knows nothing of the exporter's
sections: ``exporter.config`` and ``exporter.http.webconfig`` declare those.

All problems are found in one run: a value that the pre-pass or a rule finds wrong is replaced by a ``Problem``
before validation, so that its key fails with that message while every other key is still checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Hashable, Iterator, Mapping
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic import model_validator as _model_validator
from pydantic.dataclasses import dataclass

MINUTE = 60.0
HOUR = 3600.0
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


def _check_http_url(text: str, *, allow_query: bool) -> str:
    """``text``; ValueError unless it is an absolute http(s) URL without credentials or fragment."""
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
    return text


# --------------------------------------------------------------------------------------------------
# Problems, and the pre-pass over the raw YAML


class Problem(ValueError):
    """What is wrong with a key, with the message(s) to report: raised by a validator, or put in place of the
    value by a rule or by the pre-pass, so that the key fails with these messages while the rest is checked.

    ``at`` reports them at another key and ``ref`` is the key ``{ref}`` in a message names, both relative to
    the key that failed: ``(n, *keys)`` is the key path less its last ``n`` parts, plus ``keys``.
    """

    def __init__(self, *messages: str, at: tuple[Any, ...] = (0,), ref: tuple[Any, ...] = (0,)):
        super().__init__(*messages)
        self.messages, self.at, self.ref = messages, at, ref


class EnvText(str):
    """A string that came from ``${VAR}``: keys that want a number or a boolean read it as YAML would."""


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


def expand(value: Any, environ: Mapping[str, str]) -> Any:
    """A copy of raw YAML data with ``${VAR}`` expanded in every string (a ``Problem`` where that fails)."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        text, used, problems = expand_env(value, environ)
        return Problem(*problems) if problems else EnvText(text) if used else text
    if isinstance(value, Mapping):
        return {k: expand(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, environ) for v in value]
    return value


_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list"), (Mapping, "mapping"),
    (type(None), "null"),
)  # fmt: skip


def type_name(value: Any) -> str:
    return next((name for typ, name in _TYPE_NAMES if isinstance(value, typ)), type(value).__name__)


# --------------------------------------------------------------------------------------------------
# Field types and bounds


def _text(value: str, info: ValidationInfo) -> str:
    # A file's value must not be blank. Outside the loader (no validation context: a section built or
    # ``dataclasses.replace``d in code, which passes every field again) an empty string is the default of an
    # optional key, e.g. ``access_key`` with auth: basic, and stays valid.
    if not value.strip() and (value or info.context is not None):
        raise ValueError("must not be empty")
    return value


def _env_bool(value: Any) -> Any:
    word = value.strip().lower() if isinstance(value, EnvText) else None
    return True if word in ("true", "yes", "on") else False if word in ("false", "no", "off") else value


def boolean(value: Any, default: bool) -> bool:
    """A raw value as a boolean key reads it, or ``default`` if it is not one (rules over raw mappings use it)."""
    value = _env_bool(value)
    return value if isinstance(value, bool) else default


def _env_int(value: Any) -> Any:
    return int(value) if isinstance(value, EnvText) and re.fullmatch(r"\s*[0-9]+\s*", value) else value


def duration_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as 5m, got {type_name(value)}")
    return parse_duration(value)


Str = Annotated[str, Strict(), AfterValidator(str)]  # a plain str, also for text from ${VAR}
Text = Annotated[Str, AfterValidator(_text)]  # a string, not blank; values are never echoed
Boolean = Annotated[bool, Strict(), BeforeValidator(_env_bool)]
Int = Annotated[int, Strict(), BeforeValidator(_env_int)]
Duration = Annotated[float, BeforeValidator(duration_value)]  # seconds, zero allowed


def between(lo: int, hi: int = MAX_INTEGER) -> AfterValidator:
    def check(value: int) -> int:
        if lo <= value <= hi:
            return value
        bound = f"at least {lo}" if hi == MAX_INTEGER and value < lo else f"from {lo} to {hi}"
        raise ValueError(f"must be {bound}, got {value}")

    return AfterValidator(check)


def seconds(minimum: float = 0.0, maximum: float | None = None, *, zero: bool = False) -> AfterValidator:
    """Bounds of a duration: greater than 0 (unless ``zero``), at least ``minimum``, at most ``maximum``."""

    def check(value: float) -> float:
        if not zero and value <= 0:
            raise ValueError("must be greater than 0")
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {format_duration(maximum)}")
        return value

    return AfterValidator(check)


PositiveDuration = Annotated[Duration, seconds()]


def check(test: Callable[[str], bool], message: Callable[[str], str]) -> AfterValidator:
    """A string ``test`` accepts; otherwise ``message(value)``."""

    def run(value: str) -> str:
        if not test(value):
            raise ValueError(message(value))
        return value

    return AfterValidator(run)


def one_of(*choices: str) -> AfterValidator:
    return check(lambda v: v in choices, lambda v: f"must be one of {', '.join(choices)}, got {quote(v)}")


def header_safe(what: str, extra: str = "") -> AfterValidator:
    """Header-bound values (user names, access keys) must not carry whitespace or ``extra`` characters."""
    bad = "whitespace" + (f" or {' '.join(extra)}" if extra else "")
    return check(lambda v: not any(c.isspace() or c in extra for c in v), lambda v: f"{what} must not contain {bad}")


def http_url(*, query: bool = False) -> AfterValidator:
    """An absolute http(s) URL without credentials or fragment (nor query string, unless ``query``)."""
    return AfterValidator(lambda value: _check_http_url(value, allow_query=query))


def _timezone_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads +8:00 or -5:30 unquoted as base-60 integers (480, -330): say so.
        raise ValueError('expected a string, got a number (quote UTC offsets, e.g. "+08:00")')
    return value


def _timezone(value: str) -> str:
    parse_timezone(value)
    return value


TimeZone = Annotated[Text, BeforeValidator(_timezone_text), AfterValidator(_timezone)]  # as written


def required() -> Any:
    """A key without a default of its own that still follows keys with one (its section's owner supplies it)."""
    return Field()


def secret(default: Any = dataclasses.MISSING) -> Any:
    """A secret key: hidden from repr, masked by ``redacted()``, and also given as ``<key>_file``."""
    return dataclasses.field(default=default, repr=False, metadata={"secret": True})


# --------------------------------------------------------------------------------------------------
# Sections

SECTION = ConfigDict(extra="forbid")
_MAX_SECRET_FILE_BYTES = 64 * 1024


@dataclass(frozen=True, config=SECTION)
class Section:
    """The base of every config section: a frozen dataclass whose unknown keys are refused (with the closest known
    one), where null means "not set", whose secrets may be given as ``<key>_file`` (read relative to the
    ``base_dir`` of the validation context), and which fills a section given in part from the default of the key
    it is under. ``prepare`` holds a section's rules over its whole raw mapping (requirements that depend on
    other keys, duplicates in lists); they put a ``Problem`` where they find one."""

    NULL_IS_UNSET: ClassVar[bool] = True  # or each key's type reads null itself

    @_model_validator(mode="before")
    @classmethod
    def _raw(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data  # not a mapping (reported as such), or the arguments of a direct construction
        keys = section_keys(cls)
        data = cls.prepare({k: v for k, v in data.items() if v is not None or k not in keys or not cls.NULL_IS_UNSET})
        fields = keys | {f.name for f in dataclasses.fields(cls) if f.init}  # prepare may fill a field
        data = {str(k): v if k in fields else Problem(cls.unknown(k, keys)) for k, v in data.items()}
        for f in dataclasses.fields(cls):
            if isinstance(f.default, Section) and f.name in data:
                data[f.name] = with_defaults(data[f.name], f.default)
            if f.metadata.get("secret") and info.context is not None:
                _secret_file(data, f, info.context["base_dir"])
        return data

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    @classmethod
    def unknown(cls, key: Any, keys: frozenset[str]) -> str:
        return unknown_key(key, keys)


def section_keys(cls: type[Section]) -> frozenset[str]:
    """The keys of a section: its fields, ``<key>_file`` for secrets, and a mapping field's ``sections`` (keys of
    the file that are entries of the mapping) in place of its name."""
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if f.init:
            keys.extend(f.metadata.get("sections", (f.name,)))
            keys.extend([f"{f.name}_file"] if f.metadata.get("secret") else [])
    return frozenset(keys)


def unknown_key(key: Any, allowed: frozenset[str]) -> str:
    candidates = sorted(allowed)
    close = difflib.get_close_matches(str(key).replace("-", "_"), candidates, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(candidates)})"


def with_defaults(value: Any, default: Section) -> Any:
    """A section given in part: the keys without a default of their own that it leaves out, from ``default``."""
    if not isinstance(value, dict):
        return value
    return {**value, **{f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init
                        and f.default is f.default_factory is dataclasses.MISSING and value.get(f.name) is None}}


def _secret_file(data: dict[str, Any], f: dataclasses.Field[Any], base_dir: Path) -> None:
    key = f"{f.name}_file"
    if key not in data:
        if f.name not in data and f.default is dataclasses.MISSING:
            data[f.name] = Problem(f"required (or {key})")
        return
    raw = data.pop(key)
    at = (1, key)
    if f.name in data:
        if not isinstance(data[f.name], Problem):
            data[f.name] = Problem(f"conflicts with {f.name}; set only one of them", at=at)
    elif isinstance(raw, Problem):
        data[f.name] = Problem(*raw.messages, at=at)
    elif not isinstance(raw, str) or not raw.strip():
        data[f.name] = Problem(f"expected a string, got {type_name(raw)}" if not isinstance(raw, str)
                               else "must not be empty", at=at)
    else:
        data[f.name] = _read_secret(Path(raw).expanduser(), base_dir, at)


def _read_secret(file: Path, base_dir: Path, at: tuple[Any, ...]) -> str | Problem:
    file = file if file.is_absolute() else base_dir / file
    try:
        with file.open("rb") as f:
            data = f.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        return Problem(f"cannot read {file}: {exc.strerror or type(exc).__name__}", at=at)
    if len(data) > _MAX_SECRET_FILE_BYTES:
        return Problem(f"{file} is larger than {_MAX_SECRET_FILE_BYTES} bytes; is it a secret file?", at=at)
    try:
        text = data.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        return Problem(f"{file} is not UTF-8 text", at=at)
    return text or Problem(f"{file} is empty", at=at)


def duplicates(items: Any, key: Callable[[Any], Hashable | None]) -> Iterator[tuple[int, int]]:
    """(index, index of the first like it) of each item of a raw list whose key (None: none) came before."""
    first: dict[Hashable, int] = {}
    for i, item in enumerate(items if isinstance(items, list) else ()):
        k = key(item)
        if k is not None and first.setdefault(k, i) != i:
            yield i, first[k]


# --------------------------------------------------------------------------------------------------
# Validation, and the translation of pydantic's errors into the exporter's problems


class ConfigError(Exception):
    """Raised with every problem found, each as ``key.path: message``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


S = TypeVar("S", bound=Section)


def validate(root: type[S], data: Any, *, environ: Mapping[str, str] | None = None, **context: Any) -> S:
    """Raw YAML ``data`` as a ``root`` section, with ``${VAR}`` expanded from ``environ`` (unless None); or
    ConfigError with every problem. ``context`` is for validators: ``base_dir`` (of ``*_file`` paths), ..."""
    try:
        return TypeAdapter(root).validate_python(data if environ is None else expand(data, environ), context=context)
    except ValidationError as exc:
        raise ConfigError(problems(exc, root)) from None


_EXPECTED = {
    "bool_type": "a boolean (true or false)", "int_type": "an integer", "string_type": "a string",
    "float_type": "a number", "tuple_type": "a list", "list_type": "a list", "dataclass_type": "a mapping",
    "dict_type": "a mapping",
}  # fmt: skip


def _move(loc: tuple[Any, ...], spec: tuple[Any, ...]) -> tuple[Any, ...]:
    return loc[: len(loc) - spec[0]] + spec[1:]


def key_path(loc: tuple[Any, ...], hidden: Mapping[str, Any] | None = None) -> str:
    """``('accounts', 1, 'name')`` as ``accounts[1].name``; a mapping field whose entries are keys of the file (see
    ``section_keys``; ``hidden`` maps it to them) is left out before one of its entries."""
    path = ""
    for part, after in zip(loc, (*loc[1:], None), strict=True):
        if after not in (hidden or {}).get(part, ()):
            path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _mapping_fields() -> dict[str, Any]:
    sections: list[type[Section]] = [Section]
    fields: dict[str, Any] = {}
    while sections:
        cls = sections.pop()
        sections.extend(cls.__subclasses__())
        fields.update((f.name, f.metadata["sections"]) for f in dataclasses.fields(cls) if "sections" in f.metadata)
    return fields


def problems(exc: ValidationError, root: type[Section]) -> list[str]:
    """Every problem in ``exc`` as ``key.path: message``, in the order of the sections and their keys, unknown
    keys first in each section; the values themselves are never shown (they may be secrets)."""
    hidden = _mapping_fields()
    found: list[tuple[tuple[Any, ...], bool, str]] = []
    for error in exc.errors(include_url=False):
        loc, kind, value = error["loc"], error["type"], error["input"]
        problem = value if isinstance(value, Problem) else error.get("ctx", {}).get("error")
        unknown = kind == "unexpected_keyword_argument"
        if isinstance(problem, Problem):
            loc = _move(loc, problem.at)
            ref = key_path(_move(loc, problem.ref), hidden)
            found.extend((loc, unknown, m.replace("{ref}", ref)) for m in problem.messages)
        elif kind != "default_factory_not_called":  # a consequence of another problem
            found.append((loc, unknown, f"expected {_EXPECTED[kind]}, got {type_name(value)}" if kind in _EXPECTED
                          else "required" if kind == "missing"
                          else str(problem) if isinstance(problem, ValueError) else error["msg"]))
    ordered: list[tuple[tuple[Any, ...], bool, str]] = []
    for item in found:  # pydantic lists a section's unknown keys after its fields: move them first
        loc, unknown, _ = item
        first = next((i for i, (other, u, _) in enumerate(ordered) if unknown and other[: len(loc) - 1] == loc[:-1]
                      and not (u and len(other) == len(loc))), len(ordered))
        ordered.insert(first, item)
    return list(dict.fromkeys(f"{key_path(loc, hidden)}: {message}" for loc, _, message in ordered))


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


def read_yaml(file: Path) -> Any:
    """The YAML document in ``file``, or ConfigError naming the file (and only the line of a syntax error)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or type(exc).__name__}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text"]) from exc
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_error(file, exc)]) from None


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    # Only the problem and its position: the YAML library's snippet of the offending line could show
    # an inline secret.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{path}: {where}: {exc.problem}{context}"
    return f"{path}: invalid YAML ({type(exc).__name__})"
