"""Every metric the core emits, declared in one place (the plugins declare theirs in their class).

`uniobs describe`, the README's metric table and the strict-mode checks read these tuples; a
test fails if a core module builds a MetricSpec anywhere else. Names follow the OpenTelemetry
semantic conventions where one exists (`faas.*`), our `uniobs.*` namespace otherwise.
"""

from __future__ import annotations

from uniobs.model import DURATION_BUCKETS, Instrument, MetricSpec

# Attribute names the core's metrics carry.
SHRINKWRAP = "uniobs.shrinkwrap"  # unikernel, container, process
RUNTIME = "uniobs.runtime"  # qemu, solo5-hvt, runc...
PHASE = "uniobs.phase"  # a cold-start phase
RECORD_TYPE_ATTR = "uniobs.guest.record_type"  # a line-protocol record's type
REASON_ATTR = "uniobs.reason"  # why a record or sample was refused

# uniobs' own metrics, on uniobs' own resource.
SELF_METRICS = (
    MetricSpec(
        "uniobs.exporter.items",
        Instrument.COUNTER,
        "{item}",
        "Data points, log records and spans handed to an exporter, by final outcome: sent, failed (the "
        "backend refused them, or gave no retryable answer) or dropped (the buffer made room for newer data).",
        ("uniobs.exporter", "uniobs.signal", "uniobs.outcome"),
    ),
    MetricSpec(
        "uniobs.exporter.queue.depth",
        Instrument.GAUGE,
        "{batch}",
        "Batches waiting in an exporter's queue.",
        ("uniobs.exporter",),
    ),
    MetricSpec(
        "uniobs.exporter.buffer.usage",
        Instrument.GAUGE,
        "By",
        "Memory held for export (log records, spans, data points waiting in any exporter's queue), "
        "counted once however many exporters share it; bounded by [uniobs] buffer_bytes.",
    ),
    MetricSpec(
        "uniobs.exporter.buffer.limit",
        Instrument.GAUGE,
        "By",
        "The export buffer's budget ([uniobs] buffer_bytes): past it, the oldest data is dropped.",
    ),
    MetricSpec(
        "uniobs.telemetry.rejected",
        Instrument.COUNTER,
        "{item}",
        "Samples refused before export: an undeclared metric or attribute.",
        ("uniobs.reason",),
    ),
    MetricSpec(
        "uniobs.workloads",
        Instrument.GAUGE,
        "{workload}",
        "Workloads with live telemetry, by kind.",
        ("uniobs.workload.kind",),
    ),
)


PIPELINE_METRICS = (
    MetricSpec(
        "uniobs.collector.errors",
        Instrument.COUNTER,
        "{error}",
        "Failed collections, by collector and error type (vanished workloads are not errors).",
        ("uniobs.collector", "error.type"),
    ),
    MetricSpec(
        "uniobs.collector.duration",
        Instrument.GAUGE,
        "s",
        "Wall time the last scrape of all workloads took, by collector.",
        ("uniobs.collector",),
    ),
    MetricSpec(
        "uniobs.collector.samples",
        Instrument.COUNTER,
        "{sample}",
        "Samples collected, by collector.",
        ("uniobs.collector",),
    ),
)


LIFECYCLE_METRICS = (
    MetricSpec(
        "uniobs.workload.exits",
        Instrument.COUNTER,
        "{exit}",
        "Workload exits by reason: guest-exit (the guest chose its status), guest-shutdown, "
        "guest-reset, guest-panic, host-signal, signal (the VMM was killed), exit (a process ended).",
        ("uniobs.exit.reason",),
    ),
)


COLDSTART_METRICS = (
    MetricSpec(
        "faas.coldstarts",
        Instrument.COUNTER,
        "{coldstart}",
        "Cold starts observed by uniobs run, by shrink-wrap and runtime.",
        (SHRINKWRAP, RUNTIME, "error.type"),
    ),
    MetricSpec(
        "faas.init_duration",
        Instrument.HISTOGRAM,
        "s",
        "Cold start duration: from the launch command's exec to the function being ready.",
        (SHRINKWRAP, RUNTIME),
        DURATION_BUCKETS,
    ),
    MetricSpec(
        "uniobs.coldstart.phase.duration",
        Instrument.HISTOGRAM,
        "s",
        "Duration of each cold-start phase the host observed.",
        (SHRINKWRAP, RUNTIME, PHASE),
        DURATION_BUCKETS,
    ),
)


# Declared by the collector that owns the console stream (not by GuestTelemetry).
GUEST_STATS_METRICS = (
    MetricSpec(
        "uniobs.guest.records",
        Instrument.COUNTER,
        "{record}",
        "Line-protocol records the guest printed that were accepted, by record type (mark, metric, span, log).",
        (RECORD_TYPE_ATTR,),
    ),
    MetricSpec(
        "uniobs.guest.rejected",
        Instrument.COUNTER,
        "{record}",
        "Line-protocol records refused, or accepted with a field dropped or rewritten, by reason "
        "(malformed, oversized, unknown_type, bad_value, bad_name, forged, cardinality, unknown_version).",
        (REASON_ATTR,),
    ),
)


# Who emits what, for `uniobs describe` and the README table.
CORE_METRICS: tuple[tuple[str, tuple[MetricSpec, ...]], ...] = (
    ("uniobs run/attach", (*LIFECYCLE_METRICS, *COLDSTART_METRICS)),
    ("uniobs (self)", (*SELF_METRICS, *PIPELINE_METRICS)),
)
