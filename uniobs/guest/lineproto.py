"""The uniobs console line protocol, version 1: pure parsing of one console line. No I/O.

A guest (a unikernel on its serial console, a container on stdout) reports telemetry by printing
records, one per line, that start with the marker `@@uniobs/1 `:

    @@uniobs/1 mark <boot|kernel_ready|app_start|ready|exit> [t=<s>] [k=v ...]
    @@uniobs/1 metric <name> <counter|gauge|histogram> <value> [unit=<UCUM>] [t=<s>] [k=v ...]
    @@uniobs/1 span <start|end> <16 hex> [name=] [parent=<16 hex>] [status=ok|error] [t=] [trace=<32 hex>] [k=v ...]
    @@uniobs/1 log <trace|debug|info|warn|error|fatal> <free text to the end of the line>

`docs/line-protocol.md` is the user-facing specification; the guests in `examples/minikernel`
and `examples/hello-node` print it. `parse` returns a record, a `Rejected` with one reason from a
small fixed set, or None when the line is ordinary console output. What to make of a record
(namespacing, trace ids, cardinality caps) is `uniobs.guest`'s business, not this module's.

The input is hostile: whatever a guest prints reaches here (after `uniobs.console` has replaced
invalid UTF-8, escaped control bytes and cut the line). Every rule below is a bound or a
refusal to guess; nothing here raises on any input, and the work per line is linear in its
length, which `MAX_RECORD_BYTES` caps before any tokenising.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from uniobs.model import Instrument, Severity
from uniobs.plugin import Milestone

# --- limits -----------------------------------------------------------------------------------

PREFIX = "@@uniobs/"  # every protocol line, of any version, starts with this
VERSION = "1"
MARKER = PREFIX + VERSION + " "  # what a v1 record starts with
MAX_RECORD_BYTES = 4096  # UTF-8 bytes of the whole line, marker included
MAX_NAME = 128  # characters of a metric name
MAX_ATTRIBUTES = 16  # key=value pairs per record, reserved keys (t=, unit=, name=...) included
MAX_KEY = 64  # characters of an attribute key
MAX_VALUE = 256  # characters of an attribute value, after unquoting
MAX_NUMBER = 64  # characters of a numeric token (see _number)

# --- the records ------------------------------------------------------------------------------

# A record's own attributes, in the order the guest printed them, without the reserved keys that
# became fields. Values are always strings: the protocol has no typed attributes, and guessing
# ("0" as an int, "true" as a bool) would make one key change type from record to record.
GuestAttributes = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """`mark <milestone>`: the guest reached a boot milestone."""

    milestone: Milestone
    guest_time_s: float | None = None  # t=, the guest's own uptime
    attributes: GuestAttributes = ()  # e.g. cycles=, code=


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """`metric <name> <type> <value>`: one value of a guest metric (cumulative for counters)."""

    name: str  # the guest's name, without uniobs' namespace
    instrument: Instrument  # COUNTER, GAUGE or HISTOGRAM (no up-down counters in v1)
    value: int | float
    unit: str | None = None  # unit=, as printed (validated where the metric is declared)
    guest_time_s: float | None = None  # t=; never an attribute (every value would be a new series)
    attributes: GuestAttributes = ()


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """`span <start|end> <id>`: one end of a guest span; the two ends are matched by id."""

    phase: Literal["start", "end"]
    span_id: int
    name: str | None = None
    parent_id: int | None = None
    status: Literal["ok", "error"] | None = None
    guest_time_s: float | None = None
    trace_id: int | None = None  # trace=, as the guest believes it; never trusted (uniobs.guest)
    attributes: GuestAttributes = ()


@dataclass(frozen=True, slots=True)
class LogRecordLine:
    """`log <level> <text>`: a log record; the text runs to the end of the line, verbatim."""

    severity: Severity
    text: str


Record = Mark | MetricRecord | SpanRecord | LogRecordLine


class Reason(enum.StrEnum):
    """Why a record was refused. A fixed, small set: these become metric attribute values."""

    MALFORMED = "malformed"  # structure: missing fields, bad quoting, stray tokens, end without start
    OVERSIZED = "oversized"  # over a size limit: the line, a value, the number of attributes
    UNKNOWN_TYPE = "unknown_type"  # not mark/metric/span/log
    BAD_VALUE = "bad_value"  # a field that does not parse: number, id, level, milestone, type...
    BAD_NAME = "bad_name"  # a metric name or attribute key outside the naming rules
    FORGED = "forged"  # claims an identity that is the host's (set by uniobs.guest)
    CARDINALITY = "cardinality"  # over a cardinality cap (set by uniobs.guest)
    UNKNOWN_VERSION = "unknown_version"  # `@@uniobs/<not 1>`: a protocol this collector predates


@dataclass(frozen=True, slots=True)
class Rejected:
    """A protocol line that is not a valid record. `detail` is for humans (debug logs), bounded."""

    reason: Reason
    detail: str = ""


# --- lexical rules ----------------------------------------------------------------------------

# Metric names and attribute keys share the OpenTelemetry-style dotted lower-case shape that
# `uniobs.model.MetricSpec` enforces, so a name accepted here can always be declared.
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
# A decimal number, with optional fraction and exponent. Deliberately narrower than float():
# that also takes "nan", "inf", "infinity", "1_000", "0x1p3" and surrounding whitespace, none of
# which a guest should depend on. ASCII digits only ([0-9], not \d, which matches any Unicode digit).
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INTEGER = re.compile(r"[-+]?[0-9]+")
# W3C trace-context ids are lowercase hex (its HEXDIGLC); an id with any other character, or
# all zeros, is invalid there too. Same rule here, so the ids compare as the host prints them.
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# Leading separators, a word, then (after one separator) the rest of the line, kept verbatim.
_HEAD = re.compile(r"[ \t]*([^ \t]*)(?:[ \t](.*))?", re.DOTALL)
# A quoted value: `"` ... `"`, where a backslash takes the next character along. The two
# alternatives cannot both match at one position, so matching is linear (no backtracking blow-up).
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
# Only \" and \\ are escapes. Any other backslash pair is kept as it is: the console sanitiser
# itself writes `\x07` for a control byte, and that evidence should survive quoting.
_ESCAPE = re.compile(r'\\(["\\])')
# Fields are separated by spaces or tabs only. Not str.split()/isspace(): those also split on
# \x1c-\x1f, \x85, U+2028 and friends, which a guest never means as separators.
_SEPARATORS = " \t"

_INT64 = 2**63
# The five v1 milestones; not CRASH, which the host infers (a guest that can still print a
# record has not crashed, and one that says so is a panic log, not a milestone).
_MILESTONES = {m.value: m for m in Milestone if m is not Milestone.CRASH}
_INSTRUMENTS = {"counter": Instrument.COUNTER, "gauge": Instrument.GAUGE, "histogram": Instrument.HISTOGRAM}
_LEVELS = {
    "trace": Severity.TRACE,
    "debug": Severity.DEBUG,
    "info": Severity.INFO,
    "warn": Severity.WARN,
    "error": Severity.ERROR,
    "fatal": Severity.FATAL,
}


def _detail(what: str, value: str) -> str:
    """A short human description (at most 100 characters): the guest's text is cut, after repr()
    (which can make one character ten), so a rejection stays small whatever the guest printed."""
    text = f"{what}: {value[:60]!r}"
    return text if len(text) <= 100 and len(value) <= 60 else text[:97] + "..."


class _Refused(Exception):
    """Internal: carries a Rejected out of nested helpers. Never escapes `parse`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.rejected = Rejected(reason, detail)


# --- tokens -----------------------------------------------------------------------------------


def _tokenize(s: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Split record arguments into positional words and key=value attributes.

    Grammar (separators are runs of spaces or tabs):
        args  := word* attr*
        word  := one or more characters, none of them a separator, `=` or `"`
        attr  := key "=" (bare | quoted)
        bare  := one or more characters, none of them a separator or `"`   (`=` and `\\` allowed)
        quoted:= `"` (any character but `"` or `\\` | `\\` any character)* `"`, then a separator or the end
    """
    words: list[str] = []
    attrs: list[tuple[str, str]] = []
    seen: set[str] = set()
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in _SEPARATORS:
            i += 1
        if i >= n:
            return words, attrs
        j = i
        while j < n and s[j] not in ' \t="':
            j += 1
        if j < n and s[j] == '"':
            # A quote inside a word or key: `na"me` or `"quoted positional"`. Positional fields
            # are never quoted in v1; guessing where such a token ends would misread the rest.
            raise _Refused(Reason.MALFORMED, _detail("stray quote", s[i:]))
        if j >= n or s[j] != "=":
            if attrs:
                # Positional fields come first. A word after attributes is usually a value with a
                # space that should have been quoted: refusing beats silently dropping half of it.
                raise _Refused(Reason.MALFORMED, _detail("word after attributes", s[i:j]))
            words.append(s[i:j])
            i = j
            continue
        key = s[i:j]
        if not key:
            raise _Refused(Reason.MALFORMED, _detail("attribute without a key", s[i:]))
        # Counting before validating bounds the work on a line of 4096 one-letter attributes.
        if len(attrs) >= MAX_ATTRIBUTES:
            raise _Refused(Reason.OVERSIZED, f"more than {MAX_ATTRIBUTES} attributes")
        if len(key) > MAX_KEY or not _NAME.fullmatch(key):
            raise _Refused(Reason.BAD_NAME, _detail("attribute key", key))
        j += 1
        if j < n and s[j] == '"':
            m = _QUOTED.match(s, j)
            if m is None:
                # No closing quote on this line: a record never continues on the next line, so
                # the value (and everything after it) is lost. Refuse rather than guess.
                raise _Refused(Reason.MALFORMED, _detail("unterminated quote", s[j:]))
            value = _ESCAPE.sub(r"\1", m.group(1))
            j = m.end()
            if j < n and s[j] not in _SEPARATORS:
                raise _Refused(Reason.MALFORMED, _detail("text right after a closing quote", s[j:]))
        else:
            k = j
            while j < n and s[j] not in _SEPARATORS:
                if s[j] == '"':
                    raise _Refused(Reason.MALFORMED, _detail("quote inside a bare value", s[k:]))
                j += 1
            value = s[k:j]
            if not value:
                # `k=` followed by a space: an empty value is written `k=""`, so a bare `k=` is
                # most likely a guest that printed an empty variable by mistake.
                raise _Refused(Reason.MALFORMED, _detail("empty value", key))
        if len(value) > MAX_VALUE:
            raise _Refused(Reason.OVERSIZED, _detail(f"value over {MAX_VALUE} characters", key))
        if key in seen:
            # Which one would win? Refusing makes `trace=a ... trace=b` smuggling impossible.
            raise _Refused(Reason.MALFORMED, _detail("repeated attribute", key))
        seen.add(key)
        attrs.append((key, value))
        i = j


def _number(token: str) -> int | float:
    # Capped before conversion: int() of a long digit string is quadratic, and Python >= 3.11
    # refuses more than 4300 digits with a ValueError. 64 characters is ample for any int64 or
    # float a guest can mean.
    if len(token) > MAX_NUMBER or not _NUMBER.fullmatch(token):
        raise _Refused(Reason.BAD_VALUE, _detail("not a number", token))
    if _INTEGER.fullmatch(token):
        value = int(token)
        # Integers stay integers (counters print them) while they fit OTLP's int64 data points.
        return value if -_INT64 <= value < _INT64 else float(value)
    f = float(token)
    if not math.isfinite(f):  # 1e999 overflows to inf: no backend can store it
        raise _Refused(Reason.BAD_VALUE, _detail("not a finite number", token))
    return f


def _guest_time(token: str) -> float:
    """t=: seconds of guest uptime. Never negative; stored as a float."""
    value = _number(token)
    if value < 0:
        raise _Refused(Reason.BAD_VALUE, _detail("negative t=", token))
    return float(value)


def _span_id(token: str) -> int:
    if not _SPAN_ID.fullmatch(token) or token == "0" * 16:  # all-zero is W3C's "invalid span"
        raise _Refused(Reason.BAD_VALUE, _detail("span id (16 lowercase hex, not all zero)", token))
    return int(token, 16)


def _trace_id(token: str) -> int:
    if not _TRACE_ID.fullmatch(token) or token == "0" * 32:
        raise _Refused(Reason.BAD_VALUE, _detail("trace id (32 lowercase hex, not all zero)", token))
    return int(token, 16)


def _positional(words: list[str], count: int, what: str) -> None:
    # Exactly `count` words: fewer is a cut-off record, more is a value with an unquoted space.
    if len(words) != count:
        raise _Refused(Reason.MALFORMED, f"{what}: {count} positional field(s) expected, got {len(words)}")


# --- one record per type ----------------------------------------------------------------------


def _mark(args: str) -> Mark:
    words, attrs = _tokenize(args)
    _positional(words, 1, "mark")
    milestone = _MILESTONES.get(words[0])
    if milestone is None:
        # Only the five v1 milestones: an unknown name cannot be placed in a cold-start trace.
        raise _Refused(Reason.BAD_VALUE, _detail("unknown milestone", words[0]))
    t = None
    rest = []
    for key, value in attrs:
        if key == "t":
            t = _guest_time(value)
        else:
            rest.append((key, value))
    return Mark(milestone, t, tuple(rest))


def _metric(args: str) -> MetricRecord:
    words, attrs = _tokenize(args)
    _positional(words, 3, "metric")
    name, kind, raw_value = words
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise _Refused(Reason.BAD_NAME, _detail("metric name", name))
    instrument = _INSTRUMENTS.get(kind)
    if instrument is None:
        raise _Refused(Reason.BAD_VALUE, _detail("metric type", kind))
    value = _number(raw_value)
    if instrument is Instrument.COUNTER and value < 0:
        # Counters are cumulative totals: negative is never a count. A decrease is a reset,
        # which the telemetry bridge detects; a negative value is a bug in the guest.
        raise _Refused(Reason.BAD_VALUE, _detail("negative counter", raw_value))
    unit = t = None
    rest = []
    for key, v in attrs:
        if key == "unit":
            unit = v
        elif key == "t":
            t = _guest_time(v)
        else:
            rest.append((key, v))
    return MetricRecord(name, instrument, value, unit, t, tuple(rest))


def _span(args: str) -> SpanRecord:
    words, attrs = _tokenize(args)
    _positional(words, 2, "span")
    raw_phase, raw_id = words
    phase: Literal["start", "end"]
    if raw_phase == "start":
        phase = "start"
    elif raw_phase == "end":
        phase = "end"
    else:
        raise _Refused(Reason.BAD_VALUE, _detail("span phase", raw_phase))
    span_id = _span_id(raw_id)
    name: str | None = None
    parent = trace = None
    status: Literal["ok", "error"] | None = None
    t = None
    rest = []
    for key, value in attrs:
        if key == "name":
            name = value
        elif key == "parent":
            parent = _span_id(value)
        elif key == "status":
            if value == "ok":
                status = "ok"
            elif value == "error":
                status = "error"
            else:
                raise _Refused(Reason.BAD_VALUE, _detail("span status", value))
        elif key == "t":
            t = _guest_time(value)
        elif key == "trace":
            trace = _trace_id(value)
        else:
            rest.append((key, value))
    return SpanRecord(phase, span_id, name, parent, status, t, trace, tuple(rest))


def _first_word(s: str) -> tuple[str, str]:
    """The first word, and what follows the one separator after it (verbatim)."""
    m = _HEAD.match(s)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2) or ""


def _log(args: str) -> LogRecordLine:
    # No tokenising: a log's text is free-form and kept character for character, quotes, `=`
    # and repeated spaces included.
    level, text = _first_word(args)
    if not level:
        raise _Refused(Reason.MALFORMED, "log without a level")
    severity = _LEVELS.get(level)
    if severity is None:
        raise _Refused(Reason.BAD_VALUE, _detail("log level", level))
    return LogRecordLine(severity, text)


_PARSERS: dict[str, Callable[[str], Record]] = {"mark": _mark, "metric": _metric, "span": _span, "log": _log}


def parse(text: str, *, truncated: bool = False) -> Record | Rejected | None:
    """One console line: a record, a rejection, or None for ordinary output.

    `truncated` is `ConsoleLine.truncated`: the capture cut the line, so the record lost its end.
    """
    # Only a line that *starts* with the prefix is ours. Text before it (a timestamp, "junk
    # @@uniobs/1 ...") means another program formatted the line, or two writers interleaved
    # on one console: in both cases the record's integrity is unknown.
    if not text.startswith(PREFIX):
        return None
    head, sep, rest = text.partition(" ")
    version = head[len(PREFIX) :]
    if version != VERSION:
        # Any other version is counted, not guessed at: v2 may change every field's meaning.
        # A prefix followed by something that is no version number at all (`@@uniobs/x`, or a
        # tab instead of the marker's space) is a broken marker.
        if version.isdecimal() and version.isascii():
            return Rejected(Reason.UNKNOWN_VERSION, _detail("protocol version", version))
        return Rejected(Reason.MALFORMED, _detail("marker", head))
    # Size before anything else, so the work below is bounded. A cut line is oversized by
    # definition: its end (a closing quote, the last attribute) is missing.
    if truncated or len(text) > MAX_RECORD_BYTES:
        return Rejected(Reason.OVERSIZED, f"record over {MAX_RECORD_BYTES} bytes")
    if not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
        return Rejected(Reason.OVERSIZED, f"record over {MAX_RECORD_BYTES} bytes")
    if not sep:
        return Rejected(Reason.MALFORMED, "marker without a record")
    kind, args = _first_word(rest)
    if not kind:
        return Rejected(Reason.MALFORMED, "marker without a record type")
    parser = _PARSERS.get(kind)
    if parser is None:
        return Rejected(Reason.UNKNOWN_TYPE, _detail("record type", kind))
    try:
        return parser(args)
    except _Refused as refused:
        return refused.rejected


# --- writing records (the guest side, used by tests and host-side emitters) -------------------


def quote(value: str) -> str:
    """A value as a record carries it: bare when it can be, else double-quoted with escapes."""
    if "\n" in value or "\r" in value:
        raise ValueError("a record value cannot contain a line break")
    if value and not any(c in value for c in ' \t"\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)  # repr: shortest exact round trip


def _attrs(pairs: list[tuple[str, str]]) -> str:
    return "".join(f" {k}={quote(v)}" for k, v in pairs)


def format_record(record: Record) -> str:
    """The line (without newline) a guest prints for `record`; `parse` of it gives `record` back."""
    if isinstance(record, LogRecordLine):
        if "\n" in record.text or "\r" in record.text:
            raise ValueError("a log text cannot contain a line break")
        return f"{MARKER}log {record.severity.name.lower()} {record.text}"
    pairs: list[tuple[str, str]] = []
    if isinstance(record, Mark):
        head = f"mark {record.milestone.value}"
    elif isinstance(record, MetricRecord):
        head = f"metric {record.name} {record.instrument.value} {_num(record.value)}"
        if record.unit is not None:
            pairs.append(("unit", record.unit))
    else:
        head = f"span {record.phase} {record.span_id:016x}"
        if record.name is not None:
            pairs.append(("name", record.name))
        if record.parent_id is not None:
            pairs.append(("parent", f"{record.parent_id:016x}"))
        if record.status is not None:
            pairs.append(("status", record.status))
        if record.trace_id is not None:
            pairs.append(("trace", f"{record.trace_id:032x}"))
    if record.guest_time_s is not None:
        pairs.append(("t", _num(record.guest_time_s)))
    pairs.extend(record.attributes)
    return MARKER + head + _attrs(pairs)


__all__ = [
    "MARKER",
    "MAX_ATTRIBUTES",
    "MAX_KEY",
    "MAX_NAME",
    "MAX_RECORD_BYTES",
    "MAX_VALUE",
    "PREFIX",
    "LogRecordLine",
    "Mark",
    "MetricRecord",
    "Reason",
    "Record",
    "Rejected",
    "SpanRecord",
    "format_record",
    "parse",
    "quote",
]
