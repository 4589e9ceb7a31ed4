"""Property tests of the QMP reply parsers (uniobs.runtimes.qmp), with hypothesis.

Replies are built after QEMU's schema (qapi/*.json: CpuInfoFast, MemoryInfo, BalloonInfo,
BlockStats/BlockDeviceStats, StatsResult, StatsSchema; QEMU 7.2) and then varied the ways a peer
can: unknown members, members missing, members of another JSON type, integers far past int64,
elements that are not objects, and any JSON at all. Whatever arrives, a parser returns or raises
`QmpError`, nothing else; in a list, what is well formed is returned and the rest left out.
The recorded replies of real QEMU are checked in test_qmp.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniobs.runtimes.qmp import (
    BlockStats,
    MemorySummary,
    MessageFramer,
    QmpError,
    QmpEvent,
    QmpGreeting,
    StatSchema,
    StatsResult,
    Vcpu,
    VmStatus,
    decode_message,
    parse_balloon,
    parse_blockstats,
    parse_cpus_fast,
    parse_event,
    parse_greeting,
    parse_memory_size_summary,
    parse_stats,
    parse_stats_schemas,
    parse_status,
)

PROPERTIES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# integers as JSON carries them: any size (QEMU's are int64/uint64; a peer's need not be)
HUGE = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400, -(10**400)])
INTS = st.integers() | HUGE
NAMES = st.text(min_size=1, max_size=12)
SCALARS = st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=12)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
NOT_INT = st.none() | st.booleans() | st.floats() | st.text(max_size=8) | st.lists(INTS, max_size=2)
NOT_STR = st.none() | st.booleans() | INTS | st.floats() | st.lists(st.text(max_size=4), max_size=2)
NOT_OBJECT = st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=8) | st.lists(INTS, max_size=2)


def unknown_members(known: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Members a later QEMU (or another peer) may add: ignored."""
    return st.dictionaries(st.text(max_size=10).filter(lambda k: k not in known), JSON, max_size=3)


@st.composite
def broken(draw: st.DrawFn, valid: dict[str, Any], mandatory: dict[str, st.SearchStrategy[Any]]) -> Any:
    """`valid` made malformed one way: not an object, a mandatory member missing, or of a wrong type."""
    how = draw(st.sampled_from(["not an object", "missing", "wrong type"]))
    if how == "not an object":
        return draw(NOT_OBJECT)
    key = draw(st.sampled_from(sorted(mandatory)))
    out = dict(valid)
    if how == "missing":
        del out[key]
    else:
        out[key] = draw(mandatory[key])
    return out


def mixed(good: st.SearchStrategy[tuple[Any, Any]], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A list reply: (element, what it parses to), the malformed ones with None."""
    return st.lists(good | bad.map(lambda element: (element, None)), max_size=6)


# --- any JSON at all --------------------------------------------------------------------------

SHAPES = {
    parse_status: lambda v: isinstance(v, VmStatus) and isinstance(v.status, str) and isinstance(v.running, bool),
    parse_cpus_fast: lambda v: isinstance(v, tuple) and all(isinstance(c, Vcpu) for c in v),
    parse_memory_size_summary: lambda v: isinstance(v, MemorySummary) and isinstance(v.total, int),
    parse_balloon: lambda v: isinstance(v, int) and not isinstance(v, bool),
    parse_blockstats: lambda v: isinstance(v, tuple) and all(isinstance(d, BlockStats) for d in v),
    parse_stats_schemas: lambda v: isinstance(v, tuple) and all(isinstance(s, StatSchema) for s in v),
    parse_stats: lambda v: isinstance(v, tuple) and all(isinstance(r, StatsResult) for r in v),
}


@PROPERTIES
@given(st.sampled_from(list(SHAPES)), JSON)
def test_any_json_is_parsed_or_refused_with_qmp_error(parser: Any, reply: Any) -> None:
    try:
        value = parser(reply)
    except QmpError:
        return
    assert SHAPES[parser](value)


@PROPERTIES
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=4) | st.fixed_dictionaries({"QMP": JSON}))
def test_any_greeting_is_parsed_or_refused_with_qmp_error(message: dict[str, Any]) -> None:
    try:
        greeting = parse_greeting(message)
    except QmpError:
        return
    assert isinstance(greeting, QmpGreeting) and all(isinstance(n, int) for n in greeting.version)


# --- list replies: what is well formed comes back, exact, in order ----------------------------


@st.composite
def vcpu(draw: st.DrawFn) -> tuple[dict[str, Any], Vcpu]:
    index, thread = draw(INTS), draw(INTS)
    element: dict[str, Any] = {**draw(unknown_members({"cpu-index", "thread-id", "qom-path"})),
                               "cpu-index": index, "thread-id": thread}  # fmt: skip
    qom = draw(st.none() | st.text(max_size=30))
    if qom is not None:
        element["qom-path"] = qom
    return element, Vcpu(index, thread, qom or "")


VALID_CPU = {"cpu-index": 0, "thread-id": 1, "qom-path": "/machine/unattached/device[0]"}
BROKEN_CPU = broken(VALID_CPU, {"cpu-index": NOT_INT, "thread-id": NOT_INT, "qom-path": NOT_STR}).filter(
    lambda e: not (isinstance(e, dict) and "qom-path" not in e and {"cpu-index", "thread-id"} <= set(e))
)  # qom-path alone missing is well formed (it reads as "")


@PROPERTIES
@given(mixed(vcpu(), BROKEN_CPU))
def test_query_cpus_fast_keeps_every_well_formed_vcpu(reply: list[tuple[Any, Vcpu | None]]) -> None:
    assert parse_cpus_fast([e for e, _ in reply]) == tuple(v for _, v in reply if v is not None)


COUNTERS = ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations")
NAMING = ("device", "qdev", "node-name")


@st.composite
def block_entry(draw: st.DrawFn) -> dict[str, Any]:
    stats = {**draw(unknown_members(set(COUNTERS))), **{k: draw(INTS) for k in COUNTERS}}
    names = {k: draw(st.text(max_size=20)) for k in NAMING if draw(st.booleans())}
    return {**draw(unknown_members({*NAMING, "stats"})), **names, "stats": stats}


def block_device(position: int, entry: dict[str, Any]) -> BlockStats:
    """What a well-formed entry at `position` of the reply reads as (named as query-blockstats' doc says)."""
    name = next((entry[k] for k in NAMING if entry.get(k)), f"#{position}")
    return BlockStats(name, *(entry["stats"][k] for k in COUNTERS))


@st.composite
def broken_block_entry(draw: st.DrawFn) -> Any:
    entry = draw(block_entry())
    how = draw(st.sampled_from(["not an object", "no stats", "stats not an object", "counter"]))
    if how == "not an object":
        return draw(NOT_OBJECT)
    if how == "no stats":
        del entry["stats"]
    elif how == "stats not an object":
        entry["stats"] = draw(NOT_OBJECT)
    else:  # a counter missing (it must not read as 0: a false reset) or of another type
        counter = draw(st.sampled_from(COUNTERS))
        if draw(st.booleans()):
            del entry["stats"][counter]
        else:
            entry["stats"][counter] = draw(NOT_INT)
    return entry


@PROPERTIES
@given(st.lists(st.tuples(st.booleans(), block_entry(), broken_block_entry()), max_size=6))
def test_query_blockstats_keeps_every_device_with_all_its_counters(picks: list[tuple[bool, Any, Any]]) -> None:
    reply = [good if ok else bad for ok, good, bad in picks]
    expected = tuple(block_device(i, good) for i, (ok, good, _) in enumerate(picks) if ok)
    assert parse_blockstats(reply) == expected


@st.composite
def stat_value(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, int | tuple[int, ...]] | None]:
    name = draw(NAMES)
    kind = draw(st.sampled_from(["int", "bool", "histogram", "other", "bad histogram", "no name"]))
    if kind == "int":
        value = draw(INTS)
        return {"name": name, "value": value}, (name, value)
    if kind == "bool":  # StatsValue 'boolean' (QEMU 7.2): read as 0/1
        flag = draw(st.booleans())
        return {"name": name, "value": flag}, (name, int(flag))
    if kind == "histogram":
        buckets = draw(st.lists(INTS, max_size=5))
        return {"name": name, "value": buckets}, (name, tuple(buckets))
    if kind == "other":
        return {"name": name, "value": draw(st.none() | st.floats() | st.text(max_size=5) | st.dictionaries(
            st.text(max_size=3), INTS, max_size=2))}, None  # fmt: skip
    if kind == "bad histogram":
        return {"name": name, "value": [*draw(st.lists(INTS, max_size=2)), draw(NOT_INT)]}, None
    return {"value": draw(INTS)}, None


@st.composite
def stats_result(draw: st.DrawFn) -> tuple[Any, StatsResult | None]:
    stats = draw(st.lists(stat_value(), max_size=5))
    provider = draw(NAMES)
    qom = draw(st.none() | st.text(max_size=20))
    element = {**draw(unknown_members({"provider", "qom-path", "stats"})), "provider": provider,
               "stats": [s for s, _ in stats]}  # fmt: skip
    if qom is not None:
        element["qom-path"] = qom
    parsed = StatsResult(provider, qom, tuple(v for _, v in stats if v is not None))
    how = draw(st.sampled_from(["well formed"] * 3 + ["no provider", "not an object", "stats not a list"]))
    if how == "no provider":
        del element["provider"]
    elif how == "not an object":
        return draw(NOT_OBJECT), None
    elif how == "stats not a list":
        element["stats"] = draw(NOT_OBJECT.filter(lambda v: not isinstance(v, list)))
    return element, (parsed if how == "well formed" else None)


@PROPERTIES
@given(st.lists(stats_result(), max_size=5))
def test_query_stats_keeps_every_well_formed_value(reply: list[tuple[Any, StatsResult | None]]) -> None:
    assert parse_stats([e for e, _ in reply]) == tuple(r for _, r in reply if r is not None)


@st.composite
def schema_group(draw: st.DrawFn) -> tuple[Any, list[StatSchema]]:
    provider, target = draw(NAMES), draw(st.sampled_from(["vm", "vcpu"]) | NAMES)
    stats: list[Any] = []
    expected: list[StatSchema] = []
    for _ in range(draw(st.integers(0, 4))):
        name, kind = draw(NAMES), draw(st.sampled_from(["cumulative", "instant", "peak", "log2-histogram"]))
        unit = draw(st.none() | st.sampled_from(["bytes", "seconds", "cycles", "boolean"]))
        base, exponent = draw(st.none() | INTS), draw(st.none() | INTS)
        stat: dict[str, Any] = {**draw(unknown_members({"name", "type", "unit", "base", "exponent"})),
                                "name": name, "type": kind}  # fmt: skip
        for key, value in (("unit", unit), ("base", base), ("exponent", exponent)):
            if value is not None:
                stat[key] = value
        if draw(st.booleans()):
            stats.append(stat)
            expected.append(StatSchema(provider, target, name, kind, unit, 10 if base is None else base, exponent or 0))
        else:
            stats.append(draw(broken(stat, {"name": NOT_STR, "type": NOT_STR})))
    group = {"provider": provider, "target": target, "stats": stats}
    if draw(st.integers(0, 3)) == 0:
        return draw(broken(group, {"provider": NOT_STR, "target": NOT_STR})), []
    return group, expected


@PROPERTIES
@given(st.lists(schema_group(), max_size=4))
def test_query_stats_schemas_keeps_every_well_formed_schema(reply: list[tuple[Any, list[StatSchema]]]) -> None:
    assert parse_stats_schemas([g for g, _ in reply]) == tuple(s for _, found in reply for s in found)


# --- one-object replies: exact, or QmpError when a mandatory member is not there ---------------


@PROPERTIES
@given(st.text(max_size=16), JSON, unknown_members({"status", "running", "singlestep"}))
def test_query_status(status: str, running: Any, extra: dict[str, Any]) -> None:
    assert parse_status({**extra, "status": status, "running": running}) == VmStatus(status, running is True)
    for bad in ({**extra, "running": True}, {**extra, "status": 7}):
        with pytest.raises(QmpError):
            parse_status(bad)


@PROPERTIES
@given(INTS, st.none() | INTS, unknown_members({"base-memory", "plugged-memory"}), NOT_INT)
def test_query_memory_size_summary(base: int, plugged: int | None, extra: dict[str, Any], bad: Any) -> None:
    reply = {**extra, "base-memory": base, **({} if plugged is None else {"plugged-memory": plugged})}
    summary = parse_memory_size_summary(reply)
    assert summary == MemorySummary(base, plugged or 0) and summary.total == base + (plugged or 0)
    for broken_reply in ({**reply, "base-memory": bad}, {k: v for k, v in reply.items() if k != "base-memory"}):
        with pytest.raises(QmpError):
            parse_memory_size_summary(broken_reply)


@PROPERTIES
@given(INTS, unknown_members({"actual"}), NOT_INT)
def test_query_balloon(actual: int, extra: dict[str, Any], bad: Any) -> None:
    assert parse_balloon({**extra, "actual": actual}) == actual
    with pytest.raises(QmpError):
        parse_balloon({**extra, "actual": bad})


# --- events and the wire ----------------------------------------------------------------------


@PROPERTIES
@given(st.text(max_size=12), JSON, JSON, JSON | st.fixed_dictionaries({"seconds": JSON, "microseconds": JSON}))
def test_an_event_never_raises_but_for_its_name(name: str, data: Any, stamp_member: Any, stamp: Any) -> None:
    event = parse_event({"event": name, "data": data, "timestamp": stamp, "x": stamp_member}, 5)
    assert isinstance(event, QmpEvent) and event.name == name and event.arrival_monotonic_ns == 5
    assert isinstance(event.qemu_timestamp_s, float) and isinstance(event.data, dict)
    with pytest.raises(QmpError):
        parse_event({"data": data, "timestamp": stamp}, 5)


@PROPERTIES
@given(HUGE | INTS, HUGE | INTS)
def test_an_event_with_a_huge_timestamp_reads_without_overflow(seconds: int, microseconds: int) -> None:
    event = parse_event({"event": "STOP", "timestamp": {"seconds": seconds, "microseconds": microseconds}}, 0)
    assert math.isfinite(event.qemu_timestamp_s)
    if max(abs(seconds), abs(microseconds)) < 2**63:  # what QEMU can send (int64): exact to the microsecond
        assert event.qemu_timestamp_s == seconds + microseconds / 1e6


@PROPERTIES
@given(st.lists(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode() + b"\r\n"), max_size=8))
def test_any_bytes_frame_and_decode_to_objects_or_qmp_error(chunks: list[bytes]) -> None:
    framer = MessageFramer(max_message=512)
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                try:
                    assert isinstance(decode_message(message), dict)
                except QmpError:
                    pass
    except QmpError:
        pass
