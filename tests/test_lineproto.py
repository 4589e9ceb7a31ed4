"""The uniobs/1 console line protocol: the parser (uniobs.lineproto) and what a guest's records
become (uniobs.guest), on exact records, every rejection, the real minikernel under QEMU, the
emitters in docs/line-protocol.md, hostile cardinality, and fuzzing."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT, missing, requires_gcc, requires_node

from uniobs.guest.lineproto import (
    MARKER,
    MAX_ATTRIBUTES,
    MAX_RECORD_BYTES,
    LogRecordLine,
    Mark,
    MetricRecord,
    Reason,
    Record,
    Rejected,
    SpanRecord,
    format_record,
    parse,
    quote,
)
from uniobs.guest.lines import LineSplitter
from uniobs.guest.reported import (
    DEFAULT_SPAN_NAME,
    MAX_KNOWN_SPANS,
    MAX_METRIC_ATTRIBUTES,
    MAX_METRICS,
    MAX_OPEN_SPANS,
    MAX_SERIES_PER_METRIC,
    MAX_SPAN_NAME,
    MAX_VALUES_PER_KEY,
    OVERFLOW_VALUE,
    VALUE_BUCKETS,
    GuestOutput,
    GuestTelemetry,
)
from uniobs.metrics import GUEST_STATS_METRICS
from uniobs.model import DURATION_BUCKETS, Instrument, Kind, MetricSpec, Severity, Workload
from uniobs.plugin import ConsoleLine, Milestone
from uniobs.telemetry.bridge import Telemetry

KERNEL_DIR = ROOT / "examples" / "minikernel"
KERNEL = KERNEL_DIR / "build" / "minikernel.elf"
QEMU = shutil.which("qemu-system-x86_64")
GCC = shutil.which("gcc")
NODE = shutil.which("node")
BUILD_TOOLS_MISSING = missing("gcc", "ld", "make")

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_HEX = "00f067aa0ba902b7"
TRACE = int(TRACE_HEX, 16)
PARENT = int(PARENT_HEX, 16)
TRACEPARENT = f"00-{TRACE_HEX}-{PARENT_HEX}-01"
MILESTONES = [Milestone.BOOT, Milestone.KERNEL_READY, Milestone.APP_START, Milestone.READY, Milestone.EXIT]
WORKLOAD = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="qemu-4242", name="minikernel")


# --- helpers ------------------------------------------------------------------------------------


class Declared:
    """The declare callback: remembers every spec and how often each name was declared."""

    def __init__(self) -> None:
        self.specs: dict[str, MetricSpec] = {}
        self.calls: dict[str, int] = defaultdict(int)

    def __call__(self, specs: Sequence[MetricSpec]) -> None:
        for spec in specs:
            self.calls[spec.name] += 1
            self.specs[spec.name] = spec


def guest(parent: int | None = PARENT, declare: Callable[[Sequence[MetricSpec]], None] | None = None) -> GuestTelemetry:
    return GuestTelemetry(TRACE, parent, declare if declare is not None else Declared())


def lines(*texts: str, start_ns: int = 1000) -> list[ConsoleLine]:
    return [ConsoleLine(start_ns + i, text, i + 1) for i, text in enumerate(texts)]


def feed(g: GuestTelemetry, *texts: str, start_ns: int = 1000) -> GuestOutput:
    return g.feed_lines(lines(*texts, start_ns=start_ns))


def nonzero(counts: dict[Reason, int]) -> dict[str, int]:
    return {reason.value: n for reason, n in counts.items() if n}


def strict_telemetry() -> tuple[Telemetry, Callable[[Sequence[MetricSpec]], None]]:
    """A strict bridge with the stats metrics declared, and the declare callback a collector would pass."""
    tel = Telemetry(strict=True)
    tel.declare(GUEST_STATS_METRICS, scope="console")
    return tel, lambda specs: tel.declare(specs, scope="uniobs.guest")


def deliver(tel: Telemetry, g: GuestTelemetry, out: GuestOutput) -> None:
    """What the console collector does with an output: strict mode raises on anything undeclared."""
    tel.record(WORKLOAD, out.samples)
    tel.record(WORKLOAD, g.stats_samples())
    tel.log_batch(WORKLOAD, out.logs)
    for span in out.spans:
        tel.span(WORKLOAD, span)


def points(tel: Telemetry) -> dict[str, list[Any]]:
    """Exported data points by metric name, for the test workload."""
    data, _ = tel.metrics_data()
    out: dict[str, list[Any]] = defaultdict(list)
    for rm in data.resource_metrics:
        if rm.resource.attributes.get("faas.instance") != WORKLOAD.id:
            continue
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name].extend(metric.data.data_points)
    return out


# --- records: exact values, round trips ----------------------------------------------------------

EXACT = [
    ("@@uniobs/1 mark boot cycles=2343068", Mark(Milestone.BOOT, None, (("cycles", "2343068"),))),
    ("@@uniobs/1 mark exit t=0.037816 code=0", Mark(Milestone.EXIT, 0.037816, (("code", "0"),))),
    (
        "@@uniobs/1 metric minikernel.tsc.frequency gauge 2614981 unit=kHz source=pit",
        MetricRecord("minikernel.tsc.frequency", Instrument.GAUGE, 2614981, "kHz", None, (("source", "pit"),)),
    ),
    (
        "@@uniobs/1 metric minikernel.heartbeat counter 3 t=0.312001",
        MetricRecord("minikernel.heartbeat", Instrument.COUNTER, 3, None, 0.312001),
    ),
    ("@@uniobs/1 metric lat histogram -1.5e-3 unit=s", MetricRecord("lat", Instrument.HISTOGRAM, -0.0015, "s")),
    ("@@uniobs/1 metric big gauge 9223372036854775808", MetricRecord("big", Instrument.GAUGE, 9.223372036854776e18)),
    (
        f"@@uniobs/1 span end b3253b6943ac2058 name=work parent=b34782ecc72fa41f trace={TRACE_HEX} status=ok "
        't=0.033943 error="EADDR \\"IN\\" USE \\\\ \\x07" path=a=b\\c',
        SpanRecord(
            "end",
            0xB3253B6943AC2058,
            "work",
            0xB34782ECC72FA41F,
            "ok",
            0.033943,
            TRACE,
            (("error", 'EADDR "IN" USE \\ \\x07'), ("path", "a=b\\c")),
        ),
    ),
    ("@@uniobs/1 span start 0000000000000001", SpanRecord("start", 1)),
    (
        "@@uniobs/1 log fatal panic: requested by mode=panic",
        LogRecordLine(Severity.FATAL, "panic: requested by mode=panic"),
    ),
    ('@@uniobs/1 log warn  two  spaces, "quotes" k=v ', LogRecordLine(Severity.WARN, ' two  spaces, "quotes" k=v ')),
    ("@@uniobs/1 log info", LogRecordLine(Severity.INFO, "")),
    ("@@uniobs/1 mark\tready\tt=1", Mark(Milestone.READY, 1.0)),  # tabs separate fields too (not the marker)
]


@pytest.mark.parametrize(("text", "expected"), EXACT, ids=[t[11:40] for t, _ in EXACT])
def test_records_parse_to_exact_values_and_round_trip(text: str, expected: Record) -> None:
    record = parse(text)
    assert record == expected
    assert isinstance(record, Mark | MetricRecord | SpanRecord | LogRecordLine)
    assert parse(format_record(record)) == record
    if isinstance(record, MetricRecord):  # integers stay integers, floats stay floats
        assert type(record.value) is type(expected.value)  # type: ignore[union-attr]


def test_each_severity_maps_to_its_opentelemetry_number() -> None:
    levels = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
    for level, number in levels.items():
        record = parse(f"@@uniobs/1 log {level} x")
        assert isinstance(record, LogRecordLine) and record.severity == number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "minikernel 0.1",
        " @@uniobs/1 mark boot",
        "junk @@uniobs/1 mark ready",
        "@@uniobs",
        "@@UNIOBS/1 mark boot",
    ],
)
def test_ordinary_output_is_not_a_record(text: str) -> None:
    assert parse(text) is None


def test_quote_round_trips_and_refuses_line_breaks() -> None:
    for value in ["plain", "a b", 'say "hi"', "back\\slash", "", "=", "tab\there", "ünï"]:
        record = Mark(Milestone.READY, None, (("v", value),))
        assert parse(format_record(record)) == record
    assert quote("plain") == "plain" and quote("a b") == '"a b"' and quote("") == '""'
    with pytest.raises(ValueError):
        quote("two\nlines")


# --- every rejection reason ------------------------------------------------------------------------

LONG = "x" * MAX_RECORD_BYTES
PARSE_REJECTIONS = [
    # malformed
    ("@@uniobs/1", Reason.MALFORMED),
    ("@@uniobs/1 ", Reason.MALFORMED),
    ("@@uniobs/1 mark", Reason.MALFORMED),
    ("@@uniobs/1 mark ready extra", Reason.MALFORMED),
    ("@@uniobs/1 metric broken", Reason.MALFORMED),
    ('@@uniobs/1 metric q gauge 1 note="unterminated \\" quote', Reason.MALFORMED),
    ('@@uniobs/1 mark ready a="x"y', Reason.MALFORMED),
    ('@@uniobs/1 mark ready a=x"y', Reason.MALFORMED),
    ('@@uniobs/1 mark "ready"', Reason.MALFORMED),
    ("@@uniobs/1 mark ready a=1 a=2", Reason.MALFORMED),
    ("@@uniobs/1 mark ready a= b=1", Reason.MALFORMED),
    ("@@uniobs/1 mark ready =1", Reason.MALFORMED),
    ("@@uniobs/1 mark ready a=1 stray", Reason.MALFORMED),
    ("@@uniobs/1 span start 0123456789abcdef", None),  # valid (control)
    ("@@uniobs/1 log", Reason.MALFORMED),
    ("@@uniobs/x mark ready", Reason.MALFORMED),
    # oversized
    (f"@@uniobs/1 log info {LONG}", Reason.OVERSIZED),
    ("@@uniobs/1 log info " + "é" * 2040, Reason.OVERSIZED),  # 4,100 bytes in only 2,060 characters
    ("@@uniobs/1 mark ready " + " ".join(f"k{i}=v" for i in range(MAX_ATTRIBUTES + 1)), Reason.OVERSIZED),
    ("@@uniobs/1 mark ready note=" + "v" * 257, Reason.OVERSIZED),
    # unknown_type
    ("@@uniobs/1 nosuchtype a b c", Reason.UNKNOWN_TYPE),
    ("@@uniobs/1 MARK ready", Reason.UNKNOWN_TYPE),
    # bad_value
    ("@@uniobs/1 metric broken counter notanumber", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge nan", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge inf", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge 1e999", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge 0x10", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge 1_000", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m gauge " + "1" * 65, Reason.BAD_VALUE),
    ("@@uniobs/1 metric m counter -1", Reason.BAD_VALUE),
    ("@@uniobs/1 metric m updowncounter 1", Reason.BAD_VALUE),
    ("@@uniobs/1 span start nothex name=x", Reason.BAD_VALUE),
    ("@@uniobs/1 span start 0123456789ABCDEF", Reason.BAD_VALUE),
    ("@@uniobs/1 span start 0000000000000000", Reason.BAD_VALUE),
    ("@@uniobs/1 span start 0123456789abcdef parent=00", Reason.BAD_VALUE),
    ("@@uniobs/1 span start 0123456789abcdef trace=" + "0" * 32, Reason.BAD_VALUE),
    ("@@uniobs/1 span end 0123456789abcdef status=maybe", Reason.BAD_VALUE),
    ("@@uniobs/1 span middle 0123456789abcdef", Reason.BAD_VALUE),
    ("@@uniobs/1 log loud not a level", Reason.BAD_VALUE),
    ("@@uniobs/1 mark garbage_test", Reason.BAD_VALUE),
    ("@@uniobs/1 mark crash", Reason.BAD_VALUE),
    ("@@uniobs/1 mark ready t=notanumber", Reason.BAD_VALUE),
    ("@@uniobs/1 mark ready t=-1", Reason.BAD_VALUE),
    ("@@uniobs/1 mark ready t=\ufffd\ufffd", Reason.BAD_VALUE),
    # bad_name
    ("@@uniobs/1 metric Bad.Name gauge 1", Reason.BAD_NAME),
    ("@@uniobs/1 metric a..b gauge 1", Reason.BAD_NAME),
    ("@@uniobs/1 metric " + "a" * 129 + " gauge 1", Reason.BAD_NAME),
    ("@@uniobs/1 mark ready Code=1", Reason.BAD_NAME),
    ("@@uniobs/1 mark ready " + "k" * 65 + "=1", Reason.BAD_NAME),
    # unknown_version
    ("@@uniobs/2 mark from_a_future_version", Reason.UNKNOWN_VERSION),
    ("@@uniobs/10 mark ready", Reason.UNKNOWN_VERSION),
]


@pytest.mark.parametrize(("text", "reason"), PARSE_REJECTIONS, ids=[f"{r}:{t[11:35]}" for t, r in PARSE_REJECTIONS])
def test_parse_rejections(text: str, reason: Reason | None) -> None:
    result = parse(text)
    if reason is None:
        assert not isinstance(result, Rejected)
        return
    assert isinstance(result, Rejected) and result.reason is reason, result
    assert len(result.detail) < 120  # the guest's text is cut in details


def test_a_line_the_capture_cut_is_oversized_and_limits_are_inclusive() -> None:
    cut = parse("@@uniobs/1 mark ready", truncated=True)
    assert isinstance(cut, Rejected) and cut.reason is Reason.OVERSIZED
    exact = "@@uniobs/1 log info "
    exact += "x" * (MAX_RECORD_BYTES - len(exact))
    assert isinstance(parse(exact), LogRecordLine)
    assert isinstance(parse("@@uniobs/1 mark ready note=" + "v" * 256), Mark)
    sixteen = " ".join(f"k{i}=v" for i in range(MAX_ATTRIBUTES))
    assert isinstance(parse(f"@@uniobs/1 mark ready {sixteen}"), Mark)


def test_every_reason_has_a_rejection_test() -> None:
    covered = {reason for _, reason in PARSE_REJECTIONS if reason is not None}
    # forged and cardinality are decided with the host's context, in uniobs.guest (tests below).
    assert covered | {Reason.FORGED, Reason.CARDINALITY} == set(Reason)


def test_guest_rejections_forged() -> None:
    g = guest()
    out = feed(
        g,
        f"@@uniobs/1 span start {PARENT_HEX} name=hijack",  # the host's own span id: refused
        f"@@uniobs/1 span end {PARENT_HEX}",  # ending the host's span: refused
        "@@uniobs/1 span start 1111111111111111 trace=" + "ab" * 16,  # foreign trace: kept, counted
        "@@uniobs/1 span start 2222222222222222 parent=9999999999999999",  # unknown parent: re-parented
        "@@uniobs/1 span start 3333333333333333 parent=1111111111111111",  # a span of this guest: fine
        "@@uniobs/1 mark ready uniobs.guest_reported=false",  # the host's attribute namespace
        "@@uniobs/1 metric records counter 1",  # would be uniobs.guest.records, ours
        "@@uniobs/1 metric rejected.total gauge 1",
        "@@uniobs/1 span end 3333333333333333",
        "@@uniobs/1 span end 2222222222222222",
        "@@uniobs/1 span end 1111111111111111 uniobs.guest.end_s=0",  # forged attribute dropped
    )
    assert nonzero(g.rejected) == {"forged": 8}
    assert g.accepted == {"mark": 1, "metric": 0, "span": 6, "log": 0}
    spans = {s.span_id: s for s in out.spans}
    assert set(spans) == {0x1111111111111111, 0x2222222222222222, 0x3333333333333333}
    assert all(s.trace_id == TRACE for s in out.spans)
    assert spans[0x1111111111111111].parent_span_id == PARENT
    assert spans[0x2222222222222222].parent_span_id == PARENT  # re-parented
    assert spans[0x3333333333333333].parent_span_id == 0x1111111111111111
    assert "uniobs.guest.end_s" not in dict(spans[0x1111111111111111].attributes)
    assert dict(out.events[0].attributes) == {"uniobs.guest_reported": True}


def test_guest_rejections_malformed_bad_value_and_declaration_conflicts() -> None:
    declared = Declared()
    g = guest(declare=declared)
    out = feed(
        g,
        "@@uniobs/1 span end 0123456789abcdef",  # end without start
        "@@uniobs/1 span start 0123456789abcdef",
        "@@uniobs/1 span start 0123456789abcdef",  # id reused
        "@@uniobs/1 metric m counter 1 unit=By",
        "@@uniobs/1 metric m gauge 1 unit=By",  # another type
        "@@uniobs/1 metric m counter 2 unit=KiBy",  # another unit
        "@@uniobs/1 metric m counter 3",  # no unit is unit 1: another unit
        "@@uniobs/1 metric m counter 4 unit=By",
    )
    assert nonzero(g.rejected) == {"malformed": 2, "bad_value": 3}
    assert [s.value for s in out.samples] == [1, 4]
    assert declared.calls == {"uniobs.guest.m": 1}  # declared once, on first sight

    def refuse(specs: Sequence[MetricSpec]) -> None:
        raise ValueError("metric uniobs.guest.m is declared twice, differently")

    g = guest(declare=refuse)  # another guest declared the name first, differently
    assert not feed(g, "@@uniobs/1 metric m gauge 1", "@@uniobs/1 metric m gauge 2")
    assert nonzero(g.rejected) == {"bad_value": 2}


# --- what records become ---------------------------------------------------------------------------


def test_metrics_are_namespaced_declared_once_and_get_their_buckets() -> None:
    declared = Declared()
    g = guest(declare=declared)
    out = feed(
        g,
        "@@uniobs/1 metric fn.latency histogram 0.25 unit=s route=/a",
        "@@uniobs/1 metric fn.size histogram 512 unit=By",
        "@@uniobs/1 metric fn.weird gauge 1 unit=not/a/unit",
        "@@uniobs/1 metric fn.latency histogram 0.5 unit=s route=/b",
        "@@uniobs/1 metric fn.weird gauge 2 unit=not/a/unit",
    )
    specs = declared.specs
    assert list(specs) == ["uniobs.guest.fn.latency", "uniobs.guest.fn.size", "uniobs.guest.fn.weird"]
    latency = specs["uniobs.guest.fn.latency"]
    assert (latency.instrument, latency.unit, latency.attributes) == (Instrument.HISTOGRAM, "s", ("route",))
    assert latency.buckets == DURATION_BUCKETS and latency.description == "Reported by the guest"
    assert specs["uniobs.guest.fn.size"].buckets == VALUE_BUCKETS
    assert specs["uniobs.guest.fn.weird"].unit == "1"  # not UCUM: declared unitless, still accepted
    assert [(s.metric, s.value, s.attributes) for s in out.samples] == [
        ("uniobs.guest.fn.latency", 0.25, (("route", "/a"),)),
        ("uniobs.guest.fn.size", 512, ()),
        ("uniobs.guest.fn.weird", 1, ()),
        ("uniobs.guest.fn.latency", 0.5, (("route", "/b"),)),
        ("uniobs.guest.fn.weird", 2, ()),
    ]
    assert nonzero(g.rejected) == {}


def test_metric_attributes_are_sorted_capped_at_eight_keys_and_fixed_by_the_first_record() -> None:
    declared = Declared()
    g = guest(declare=declared)
    twelve = " ".join(f"k{i:02d}=v" for i in reversed(range(12)))
    out = feed(g, f"@@uniobs/1 metric m gauge 1 {twelve}", "@@uniobs/1 metric m gauge 2 k11=w zz=new")
    assert declared.specs["uniobs.guest.m"].attributes == tuple(f"k{i:02d}" for i in reversed(range(4, 12)))
    assert len(declared.specs["uniobs.guest.m"].attributes) == MAX_METRIC_ATTRIBUTES
    first, second = out.samples
    assert [k for k, _ in first.attributes] == sorted(f"k{i:02d}" for i in range(4, 12))
    assert second.attributes == (("k11", "w"),)  # zz was not among the first record's keys
    assert nonzero(g.rejected) == {"cardinality": 2}


def test_spans_use_arrival_times_host_trace_and_keep_guest_times() -> None:
    g = guest()
    out = g.feed_lines(
        [
            ConsoleLine(5_000, f"@@uniobs/1 span start aaaaaaaaaaaaaaaa name=init parent={PARENT_HEX} t=0.5 k=s"),
            ConsoleLine(6_000, "@@uniobs/1 span start bbbbbbbbbbbbbbbb name=child parent=aaaaaaaaaaaaaaaa"),
            ConsoleLine(7_000, "@@uniobs/1 span end bbbbbbbbbbbbbbbb name=ignored status=error"),
            ConsoleLine(9_000, "@@uniobs/1 span end aaaaaaaaaaaaaaaa status=ok t=0.75 k=e extra=1"),
            ConsoleLine(9_500, "@@uniobs/1 span start cccccccccccccccc"),
            ConsoleLine(9_600, "@@uniobs/1 span start dddddddddddddddd name=" + "n" * 200),
        ]
    )
    child, root = out.spans
    assert (root.name, root.trace_id, root.span_id, root.parent_span_id) == ("init", TRACE, 0xAAAAAAAAAAAAAAAA, PARENT)
    assert (root.start_ns, root.end_ns, root.error) == (5_000, 9_000, None)
    assert dict(root.attributes) == {
        "k": "e", "extra": "1", "uniobs.guest.start_s": 0.5, "uniobs.guest.end_s": 0.75, "uniobs.guest_reported": True,
    }  # fmt: skip
    assert (child.name, child.parent_span_id, child.error) == ("child", 0xAAAAAAAAAAAAAAAA, "guest reported error")
    assert g.open_spans == 2
    unfinished = g.close(10_000).spans
    assert [(s.name, s.start_ns, s.end_ns, s.error) for s in unfinished] == [
        (DEFAULT_SPAN_NAME, 9_500, 10_000, "unfinished"),
        ("n" * MAX_SPAN_NAME, 9_600, 10_000, "unfinished"),
    ]
    assert g.open_spans == 0 and nonzero(g.rejected) == {}


def test_without_a_host_span_guest_roots_are_roots_of_the_host_trace() -> None:
    g = guest(parent=None)
    out = feed(
        g,
        "@@uniobs/1 span start aaaaaaaaaaaaaaaa parent=1234567812345678",
        "@@uniobs/1 span end aaaaaaaaaaaaaaaa",
        "@@uniobs/1 log info hello",
    )
    assert out.spans[0].parent_span_id == 0 and out.spans[0].trace_id == TRACE
    assert (out.logs[0].trace_id, out.logs[0].span_id) == (TRACE, 0)
    assert nonzero(g.rejected) == {"forged": 1}
    with pytest.raises(ValueError):
        GuestTelemetry(0, None, Declared())


def test_open_spans_are_bounded_the_oldest_evicted_and_counted() -> None:
    g = guest()
    out = feed(g, *(f"@@uniobs/1 span start {i:016x}" for i in range(1, MAX_OPEN_SPANS + 11)))
    assert g.open_spans == MAX_OPEN_SPANS
    assert [s.span_id for s in out.spans] == list(range(1, 11))  # the ten oldest, ended at eviction
    assert all(s.error == "evicted: too many open spans" for s in out.spans)
    assert nonzero(g.rejected) == {"cardinality": 10}
    feed(g, "@@uniobs/1 span end 0000000000000001")  # its end is now an end without a start
    assert nonzero(g.rejected) == {"cardinality": 10, "malformed": 1}


def test_logs_and_marks() -> None:
    g = guest()
    out = g.feed_lines(
        [
            ConsoleLine(10, "@@uniobs/1 log warn disk 91% full"),
            ConsoleLine(20, "@@uniobs/1 mark boot cycles=2089776"),
            ConsoleLine(30, "@@uniobs/1 mark exit t=0.064359 code=3"),
            ConsoleLine(40, "ordinary output"),
        ]
    )
    (log,) = out.logs
    assert (log.time_ns, log.body, log.severity, log.event_name) == (
        10,
        "disk 91% full",
        Severity.WARN,
        "uniobs.guest.log",
    )
    assert (log.trace_id, log.span_id) == (TRACE, PARENT)
    boot, exit_ = out.events
    assert (boot.time_ns, boot.name, boot.milestone, boot.guest_time_s) == (
        20,
        "uniobs.guest.mark.boot",
        Milestone.BOOT,
        None,
    )
    assert boot.attributes == (("cycles", "2089776"), ("uniobs.guest_reported", True))
    assert (exit_.milestone, exit_.guest_time_s, dict(exit_.attributes)["code"]) == (Milestone.EXIT, 0.064359, "3")
    assert g.accepted == {"mark": 2, "metric": 0, "span": 0, "log": 1}


# --- cardinality -------------------------------------------------------------------------------------


def test_ten_thousand_metric_names_declare_exactly_the_cap() -> None:
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    out = feed(g, *(f"@@uniobs/1 metric name{i} gauge {i}" for i in range(10_000)))
    deliver(tel, g, out)
    assert len(g.metric_names) == MAX_METRICS == 64
    guest_metrics = [name for name in points(tel) if name not in ("uniobs.guest.records", "uniobs.guest.rejected")]
    assert len(guest_metrics) == MAX_METRICS
    assert nonzero(g.rejected) == {"cardinality": 10_000 - MAX_METRICS}
    assert g.accepted["metric"] == MAX_METRICS


def test_ten_thousand_attribute_values_make_exactly_33_series_and_count_the_overflow() -> None:
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    out = feed(g, *(f"@@uniobs/1 metric hits counter {i} user=u{i}" for i in range(10_000)))
    deliver(tel, g, out)
    series = points(tel)["uniobs.guest.hits"]
    assert len(series) == MAX_VALUES_PER_KEY + 1 == 33
    users = {p.attributes["user"] for p in series}
    assert users == {f"u{i}" for i in range(MAX_VALUES_PER_KEY)} | {OVERFLOW_VALUE}
    overflow = next(p for p in series if p.attributes["user"] == OVERFLOW_VALUE)
    assert overflow.value == 9_999  # the overflow series carries the latest total
    assert nonzero(g.rejected) == {"cardinality": 10_000 - MAX_VALUES_PER_KEY}
    (rejected,) = [p for p in points(tel)["uniobs.guest.rejected"] if p.attributes["uniobs.reason"] == "cardinality"]
    assert rejected.value == 10_000 - MAX_VALUES_PER_KEY


def test_combinations_of_values_are_capped_per_metric() -> None:
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    out = feed(g, *(f"@@uniobs/1 metric combos gauge 1 a={i % 100} b={i // 100}" for i in range(10_000)))
    deliver(tel, g, out)
    series = points(tel)["uniobs.guest.combos"]
    assert len(series) == MAX_SERIES_PER_METRIC + 1 == 129
    assert {"a": OVERFLOW_VALUE, "b": OVERFLOW_VALUE} in [dict(p.attributes) for p in series]
    for key in ("a", "b"):
        assert len({p.attributes[key] for p in series}) <= MAX_VALUES_PER_KEY + 1


# --- strict telemetry ------------------------------------------------------------------------------


def test_everything_a_guest_reports_is_declared_for_the_strict_bridge() -> None:
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    out = feed(
        g,
        "@@uniobs/1 mark app_start t=0.1",
        "@@uniobs/1 metric fn.requests counter 5 unit={request} route=/ method=GET",
        "@@uniobs/1 metric fn.requests counter 9 unit={request} method=POST route=/x",
        "@@uniobs/1 metric fn.latency histogram 0.003 unit=s",
        "@@uniobs/1 metric fn.temp gauge 36.6 unit=Cel",
        "@@uniobs/1 span start 0123456789abcdef name=handler http.route=/",
        "@@uniobs/1 span end 0123456789abcdef status=ok",
        "@@uniobs/1 log error boom",
        "@@uniobs/1 metric fn.requests gauge 1",  # refused, counted
    )
    out.extend(g.close(99_999))
    deliver(tel, g, out)
    assert tel.flush(timeout=1)  # builds the SDK log records and spans too
    got = points(tel)
    assert sorted(got) == [
        "uniobs.guest.fn.latency", "uniobs.guest.fn.requests", "uniobs.guest.fn.temp",
        "uniobs.guest.records", "uniobs.guest.rejected",
    ]  # fmt: skip
    assert {p.attributes["uniobs.guest.record_type"]: p.value for p in got["uniobs.guest.records"]} == {
        "mark": 1, "metric": 4, "span": 2, "log": 1,
    }  # fmt: skip
    assert {p.attributes["uniobs.reason"] for p in got["uniobs.guest.rejected"]} == {r.value for r in Reason}


# --- the real minikernel under QEMU --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minikernel() -> Path:
    if BUILD_TOOLS_MISSING:
        pytest.skip(f"cannot build the minikernel: {', '.join(BUILD_TOOLS_MISSING)} not on PATH")
    proc = subprocess.run(["make", "-C", str(KERNEL_DIR)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"make -C {KERNEL_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
    return KERNEL


def boot_minikernel(kernel: Path, append: str) -> tuple[int, list[ConsoleLine]]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH")
    command = [
        QEMU, "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic", "-no-reboot",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel),
        "-append", append,
    ]  # fmt: skip
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    splitter = LineSplitter()  # what the console capture does before any parser sees a line
    return proc.returncode, splitter.feed(proc.stdout, 1) + splitter.flush()


@pytest.mark.qemu
def test_real_minikernel_output_parses_without_rejections_under_the_host_trace(minikernel: Path) -> None:
    status, console = boot_minikernel(minikernel, f"mode=ok work_ms=20 traceparent={TRACEPARENT}")
    assert status == 1, "the guest did not exit cleanly"
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    out = g.feed_lines(console)
    out.extend(g.close(10**18))
    deliver(tel, g, out)

    assert nonzero(g.rejected) == {}
    assert g.accepted == {"mark": 5, "metric": 6, "span": 4, "log": 1}
    assert [e.milestone for e in out.events] == MILESTONES
    times = [e.guest_time_s for e in out.events[1:]]
    assert all(t is not None for t in times) and times == sorted(times)  # type: ignore[type-var]
    spans = {s.name: s for s in out.spans}
    assert set(spans) == {"init", "work"}
    assert all(s.trace_id == TRACE and s.error is None for s in out.spans)
    assert spans["init"].parent_span_id == PARENT  # the guest's root hangs under the host's span
    assert spans["work"].parent_span_id == spans["init"].span_id
    assert spans["init"].start_ns <= spans["work"].start_ns <= spans["work"].end_ns <= spans["init"].end_ns
    work = dict(spans["work"].attributes)
    assert float(work["uniobs.guest.end_s"]) - float(work["uniobs.guest.start_s"]) >= 0.02
    assert [(log.body, log.trace_id, log.span_id) for log in out.logs] == [("traceparent received", TRACE, PARENT)]
    got = points(tel)
    assert {name for name in got if not name.startswith(("uniobs.guest.records", "uniobs.guest.rejected"))} == {
        "uniobs.guest.minikernel.tsc.frequency", "uniobs.guest.minikernel.memory.available",
        "uniobs.guest.minikernel.work.iterations", "uniobs.guest.minikernel.work.checksum",
        "uniobs.guest.minikernel.work.duration", "uniobs.guest.minikernel.init.duration",
    }  # fmt: skip
    assert got["uniobs.guest.minikernel.tsc.frequency"][0].attributes == {"source": "pit"}
    assert got["uniobs.guest.minikernel.work.iterations"][0].value > 0


@pytest.mark.qemu
def test_real_minikernel_garbage_is_counted_not_raised(minikernel: Path) -> None:
    status, console = boot_minikernel(minikernel, "mode=garbage longline_kb=64")
    assert status == 1
    g = guest()
    out = g.feed_lines(console)
    # The malformed records README.md lists, one by one: a bare marker, a marker and a space,
    # mark without a milestone, a truncated metric and an unterminated quote (malformed); an
    # unknown type; a non-numeric value, a non-hex span id, an unknown phase, an unknown level
    # and two unknown milestones (bad_value); @@uniobs/2. The NUL and the CRLF records are valid
    # logs once the capture has escaped the NUL and dropped the CR; the mid-line marker and the
    # 64 KiB line are ordinary output.
    assert nonzero(g.rejected) == {"malformed": 5, "unknown_type": 1, "bad_value": 6, "unknown_version": 1}
    assert [e.milestone for e in out.events] == MILESTONES
    assert [log.body for log in out.logs] == ["nul\\x00inside a record", "crlf-terminated record"]


# --- the emitters in docs/line-protocol.md and the example guests ----------------------------------


def doc_block(language: str, index: int = 0) -> str:
    text = (ROOT / "docs" / "line-protocol.md").read_text()
    return str(re.findall(rf"```{language}\n(.*?)```", text, re.S)[index])


def assert_clean_guest_output(stdout: str, expect_spans: int) -> GuestOutput:
    g = guest()
    out = g.feed_lines(lines(*stdout.splitlines()))
    assert nonzero(g.rejected) == {}, stdout
    assert len(out.spans) == expect_spans
    roots = [s for s in out.spans if s.parent_span_id == PARENT]
    assert roots and all(s.trace_id == TRACE for s in out.spans)
    return out


@requires_gcc
def test_the_c_emitter_in_the_docs_compiles_freestanding_and_prints_valid_records(tmp_path: Path) -> None:
    assert GCC is not None
    (tmp_path / "uniobs.h").write_text(doc_block("c"))
    # Freestanding, 32-bit, no headers at all: what a unikernel like the minikernel has.
    (tmp_path / "kernel.c").write_text(
        'int kprintf(const char *fmt, ...);\n#define UNIOBS_PRINTF kprintf\n#include "uniobs.h"\n'
        'void use(void) { struct uniobs_span s = { 1, "x", 0 }; uniobs_mark("boot"); uniobs_span("start", &s, 0);'
        ' uniobs_metric("a", "counter", 1, "1"); uniobs_seconds("b", 0, 5); uniobs_log("info", "x"); }\n'
    )
    flags = ["-m32", "-ffreestanding", "-nostdinc", "-fno-builtin", "-Wall", "-Wextra", "-Werror", "-c"]
    proc = subprocess.run([GCC, *flags, "kernel.c", "-o", "kernel.o"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Hosted, with printf, run: every record it prints is valid.
    (tmp_path / "main.c").write_text(
        '#include "uniobs.h"\n'
        "void uniobs_now(unsigned *s, unsigned *us) { *s = 1; *us = 2345; }\n"
        "int main(void) {\n"
        f'    uniobs_trace_id = "{TRACE_HEX}"; uniobs_parent_id = "{PARENT_HEX}";\n'
        '    struct uniobs_span init = { 0x0123456789abcdefULL, "init", 0 };\n'
        '    struct uniobs_span work = { 0xfedcba9876543210ULL, "work", &init };\n'
        '    uniobs_mark("app_start"); uniobs_span("start", &init, 0); uniobs_span("start", &work, 0);\n'
        '    uniobs_span("end", &work, "ok"); uniobs_metric("fn.items", "counter", 12345678901ULL, "{item}");\n'
        '    uniobs_seconds("fn.init.duration", 0, 42); uniobs_span("end", &init, "error");\n'
        '    uniobs_log("warn", "almost \\"full\\" k=v"); uniobs_mark("ready"); return 0;\n'
        "}\n"
    )
    proc = subprocess.run(
        [GCC, "-std=c11", "-Wall", "-Wextra", "-Werror", "main.c", "-o", "main"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    stdout = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True).stdout
    out = assert_clean_guest_output(stdout, expect_spans=2)
    work, init = out.spans
    assert (init.name, init.parent_span_id, init.error) == ("init", PARENT, "guest reported error")
    assert (work.parent_span_id, dict(work.attributes)["uniobs.guest.start_s"]) == (0x0123456789ABCDEF, 1.002345)
    assert [s.value for s in out.samples] == [12345678901, 0.000042]
    assert [e.milestone for e in out.events] == [Milestone.APP_START, Milestone.READY]


@requires_node
def test_the_nodejs_module_in_the_docs_prints_valid_records(tmp_path: Path) -> None:
    assert NODE is not None
    (tmp_path / "uniobs.js").write_text(doc_block("js"))
    (tmp_path / "main.js").write_text(
        'const u = require("./uniobs");\n'
        'u.mark("app_start", { pid: 1 });\n'
        'const root = u.span("handler", null, { "http.route": "/a b" });\n'
        'const child = u.span("db", root.id);\n'
        'child.end("error", { error: "ECONNRESET \\"x\\"" });\n'
        'u.metric("hello.requests", "counter", 3, "{request}", { method: "GET" });\n'
        'u.metric("hello.latency", "histogram", 0.0123, "s");\n'
        "root.end();\n"
        'u.log("info", "multi\\nline text");\n'
        'u.mark("ready", { port: 8002 });\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "TRACEPARENT": TRACEPARENT}
    proc = subprocess.run([NODE, "main.js"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = assert_clean_guest_output(proc.stdout, expect_spans=2)
    db, handler = out.spans
    assert (handler.parent_span_id, dict(handler.attributes)["http.route"]) == (PARENT, "/a b")
    assert (db.parent_span_id, db.error, dict(db.attributes)["error"]) == (
        handler.span_id,
        "guest reported error",
        'ECONNRESET "x"',
    )
    assert [log.body for log in out.logs] == ["multi line text"]
    assert [s.value for s in out.samples] == [3, 0.0123]


@requires_node
def test_hello_node_app_prints_valid_records_under_the_host_trace() -> None:
    assert NODE is not None
    env = {"PATH": os.environ.get("PATH", ""), "TRACEPARENT": TRACEPARENT, "PORT": "0"}
    app = ROOT / "examples" / "hello-node" / "app.js"
    proc = subprocess.Popen([NODE, str(app)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    received = []
    for line in proc.stdout:
        received.append(line)
        if line.startswith("@@uniobs/1 mark ready"):
            break
    proc.send_signal(signal.SIGTERM)
    rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    out = assert_clean_guest_output("".join(received) + rest, expect_spans=1)
    assert out.spans[0].name == "app.listen"
    assert [e.milestone for e in out.events] == [Milestone.APP_START, Milestone.READY, Milestone.EXIT]


# --- fuzzing --------------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=40)
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z0-9_]{1,6}){0,3}", fullmatch=True)
_RESERVED = {"t", "unit", "name", "parent", "status", "trace"}
_ATTRS = st.lists(st.tuples(_NAMES.filter(lambda k: k not in _RESERVED), _TEXT), max_size=8, unique_by=lambda kv: kv[0])
_TIME = st.none() | st.floats(min_value=0, allow_infinity=False)
_SPAN = st.integers(1, 2**64 - 1)


@st.composite
def records(draw: st.DrawFn) -> Record:
    kind = draw(st.sampled_from(["mark", "metric", "span", "log"]))
    attrs = tuple(draw(_ATTRS))
    if kind == "mark":
        return Mark(draw(st.sampled_from(MILESTONES)), draw(_TIME), attrs)
    if kind == "metric":
        instrument = draw(st.sampled_from([Instrument.COUNTER, Instrument.GAUGE, Instrument.HISTOGRAM]))
        value = draw(st.integers(-(2**63) + 1, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False))
        if instrument is Instrument.COUNTER:
            value = abs(value)
        unit = draw(st.none() | st.sampled_from(["s", "By", "1", "{request}", "kHz"]))
        return MetricRecord(draw(_NAMES), instrument, value, unit, draw(_TIME), attrs)
    if kind == "span":
        return SpanRecord(
            draw(st.sampled_from(["start", "end"])), draw(_SPAN), draw(st.none() | _TEXT), draw(st.none() | _SPAN),
            draw(st.sampled_from([None, "ok", "error"])), draw(_TIME), draw(st.none() | st.integers(1, 2**128 - 1)),
            attrs,
        )  # fmt: skip
    return LogRecordLine(draw(st.sampled_from(list(Severity))), draw(_TEXT))


@settings(max_examples=500, deadline=None)
@given(records())
def test_fuzz_any_valid_record_round_trips(record: Record) -> None:
    text = format_record(record)
    assert parse(text) == record
    assert format_record(parse(text)) == text  # type: ignore[arg-type]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = format_record(draw(records()))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "cut"]))
        if op == "insert":
            text = (
                text[:pos]
                + draw(st.sampled_from(['"', "\\", " ", "=", "\t", "\x00", "é", "@@uniobs/1 "]) | _TEXT)
                + text[pos:]
            )
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)) :]
        elif op == "duplicate":
            text = text[:pos] + text[pos : pos + 50] * draw(st.integers(2, 200)) + text[pos:]
        else:
            text = text[:pos]
    return text


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.text().map(lambda s: MARKER + s), st.text().map(lambda s: "@@uniobs/" + s), mutated()), st.booleans()
)
def test_fuzz_parse_never_raises(text: str, truncated: bool) -> None:
    result = parse(text, truncated=truncated)
    if not text.startswith("@@uniobs/"):  # a mutation can break the marker
        assert result is None
        return
    assert isinstance(result, Mark | MetricRecord | SpanRecord | LogRecordLine | Rejected)
    if isinstance(result, Rejected):
        assert result.reason in set(Reason) and len(result.detail) < 120
    if truncated or len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
        assert isinstance(result, Rejected)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 200_000), st.sampled_from(["log info ", "metric m gauge 1 k=", "span start ", 'mark ready a="']))
def test_fuzz_long_lines_are_oversized(length: int, head: str) -> None:
    text = MARKER + head + "x" * length
    result = parse(text)
    if len(text) > MAX_RECORD_BYTES:
        assert result == Rejected(Reason.OVERSIZED, f"record over {MAX_RECORD_BYTES} bytes")


def hostile_line(rng: random.Random) -> str:
    """One line of a hostile guest: mostly valid-looking records designed to grow state."""
    roll = rng.random()
    span = f"{rng.randrange(1, 2**64):016x}"
    if roll < 0.25:
        kind = rng.choice(["counter", "gauge", "histogram"])
        return f"@@uniobs/1 metric n{rng.randrange(10**6)}.x {kind} {rng.random()}"
    if roll < 0.45:
        keys = " ".join(f"k{rng.randrange(20)}=v{rng.randrange(10**6)}" for _ in range(rng.randrange(12)))
        return f"@@uniobs/1 metric m{rng.randrange(8)} gauge {rng.randrange(100)} {keys}"
    if roll < 0.65:
        return f"@@uniobs/1 span start {span} parent={rng.randrange(1, 2**64):016x} name=s{rng.random()}"
    if roll < 0.7:
        return f"@@uniobs/1 span end {span}"
    if roll < 0.8:
        return f"@@uniobs/1 log {rng.choice(['info', 'loud', 'error'])} {'x' * rng.randrange(5000)}"
    if roll < 0.9:
        return f"@@uniobs/1 mark {rng.choice(['ready', 'boot', 'nope'])} t={rng.random()} uniobs.x=1"
    text = format_record(Mark(Milestone.READY))
    cut = rng.randrange(len(text))
    return text[:cut] + rng.choice(['"', "\\", " ", "=", "@@uniobs/1"]) + text[cut:]


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))  # a seed: drawing 5,000 lines through hypothesis itself is too slow
def test_fuzz_5000_hostile_records_keep_state_bounded(seed: int) -> None:
    rng = random.Random(seed)
    tel, declare = strict_telemetry()
    g = GuestTelemetry(TRACE, PARENT, declare)
    console = [ConsoleLine(i, hostile_line(rng), i) for i in range(5_000)]
    out = g.feed_lines(console)
    deliver(tel, g, out)  # strict: nothing undeclared reaches the bridge
    assert len(g.metric_names) <= MAX_METRICS
    assert g.open_spans <= MAX_OPEN_SPANS
    assert len(g._known) <= MAX_KNOWN_SPANS
    series: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for sample in out.samples:
        series[sample.metric].add(sample.attributes)
        assert not math.isnan(sample.value)
    assert all(len(s) <= MAX_SERIES_PER_METRIC + 1 for s in series.values())
    # Every protocol line is accounted for (an accepted record with a dropped field counts twice).
    protocol_lines = sum(1 for line in console if line.text.startswith("@@uniobs/"))
    assert protocol_lines > 4_500
    assert sum(g.accepted.values()) + sum(g.rejected.values()) >= protocol_lines
    g.close(10**9)
    assert g.open_spans == 0


def test_a_long_lived_root_stays_a_valid_parent_after_many_children() -> None:
    g = guest()
    feed(g, "@@uniobs/1 span start 00000000000000ff name=root")
    for i in range(MAX_KNOWN_SPANS + 10):  # more children than the remembered ids
        feed(
            g,
            f"@@uniobs/1 span start {i + 0x1000:016x} parent=00000000000000ff",
            f"@@uniobs/1 span end {i + 0x1000:016x}",
        )
    out = feed(
        g, "@@uniobs/1 span start 0000000000000abc parent=00000000000000ff", "@@uniobs/1 span end 0000000000000abc"
    )
    assert out.spans[0].parent_span_id == 0xFF
    assert nonzero(g.rejected) == {}
