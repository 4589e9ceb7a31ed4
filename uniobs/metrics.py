"""Every metric the core emits, declared in one place (the plugins declare theirs in their class).

`uniobs describe`, the README's metric table and the strict-mode checks read these tuples; a
test fails if a core module builds a MetricSpec anywhere else. Names follow the OpenTelemetry
semantic conventions where one exists (`faas.*`), our `uniobs.*` namespace otherwise.
"""

from __future__ import annotations

from uniobs.model import DURATION_BUCKETS, Instrument, MetricSpec

# faas.mem_usage's buckets, bytes: 16 MiB to 8 GiB, doubling (a function's memory sizes).
MEMORY_BUCKETS = tuple(float(16 << 20 << i) for i in range(10))

# Attribute names the core's metrics carry.
SHRINKWRAP = "uniobs.shrinkwrap"  # unikernel, container, process
RUNTIME = "uniobs.runtime"  # qemu, solo5-hvt, runc...
PHASE = "uniobs.phase"  # a cold-start phase
RECORD_TYPE_ATTR = "uniobs.guest.record_type"  # a line-protocol record's type
REASON_ATTR = "uniobs.reason"  # why a record or sample was refused
CPU_MODE = "cpu.mode"  # user, system
# The kind counted by uniobs.workloads. Not uniobs.workload.kind: that is a resource attribute (uniobs'
# own resource has it too), and a data point attribute of the same name would be the same label in
# Prometheus once the resource attribute is promoted.
WORKLOADS_KIND = "uniobs.kind"  # unikernel, container, cgroup, process

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
        "Workloads with live telemetry, by kind (uniobs.kind: the uniobs.workload.kind of the workloads counted).",
        (WORKLOADS_KIND,),
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
        "Workload exits by reason: exit (a status of its own; a guest's in uniobs.guest.exit_code), crash "
        "(panic, abort, trap, fatal signal), tender-error (the tender or VMM failed, no guest status), signal "
        "(the VMM, tender or process was killed), host-signal, guest-shutdown, guest-reset, oom-killed.",
        ("uniobs.exit.reason",),
    ),
)


# The process collector scrapes it from /proc; `uniobs run` records its exact value at the exit.
PROCESS_CPU_TIME = MetricSpec(
    "process.cpu.time",
    Instrument.COUNTER,
    "s",
    "CPU time of the process, by mode: scraped from /proc, and under `uniobs run` exactly at its exit (wait4 "
    "rusage: the process and the descendants it waited for).",
    (CPU_MODE,),
)

# What `uniobs run` reads from its command's exit (wait4 rusage), on the workload's resource (a
# container's: on one of the runtime CLI's own, whose process it is).
EXIT_USAGE_METRICS = (
    PROCESS_CPU_TIME,
    MetricSpec(
        "uniobs.process.memory.peak",
        Instrument.GAUGE,
        "By",
        "Peak resident set size of the command `uniobs run` launched (the VMM or tender, a plain process; for a "
        "container the runtime CLI and the processes it waited for), from its exit's rusage (ru_maxrss). Not "
        "recorded when not above uniobs' own peak, which the kernel counts in it until the exec.",
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
        "Duration of each cold-start phase the host observed (`unattributed`: a stretch no observed phase "
        "explains); a cold start's phases add up to its faas.init_duration.",
        (SHRINKWRAP, RUNTIME, PHASE),
        DURATION_BUCKETS,
    ),
)


# Per invocation observed at the function's port (uniobs/invoke/record.py), on the instance's resource.
FAAS_TRIGGER = "faas.trigger"  # http, other (a plain TCP connection)
ERROR_TYPE = "error.type"  # timeout, connection_reset, connection_refused, unavailable, or a 5xx status code
INVOCATION_METRICS = (
    MetricSpec(
        "faas.invocations",
        Instrument.COUNTER,
        "{invocation}",
        "Invocations observed at the function's port: HTTP requests, or TCP connections (protocol = tcp).",
        (FAAS_TRIGGER,),
    ),
    MetricSpec(
        "faas.errors",
        Instrument.COUNTER,
        "{error}",
        "Invocations that failed: a 5xx answer (error.type: its status code), the upstream refusing or resetting "
        "the connection, a timeout, or no instance available (unavailable).",
        (FAAS_TRIGGER, ERROR_TYPE),
    ),
    MetricSpec(
        "faas.timeouts",
        Instrument.COUNTER,
        "{timeout}",
        "Invocations with no first response byte within the request timeout (answered 504 by uniobs).",
        (FAAS_TRIGGER,),
    ),
    MetricSpec(
        "faas.invoke_duration",
        Instrument.HISTOGRAM,
        "s",
        "Invocation duration seen at the port: from the request's arrival to its response's last byte "
        "(a request held for a cold start or a resume includes it).",
        (FAAS_TRIGGER,),
        DURATION_BUCKETS,
    ),
    MetricSpec(
        "faas.mem_usage",
        Instrument.HISTOGRAM,
        "By",
        "The instance's peak memory so far, read as each invocation ends (Lambda's Max Memory Used): the "
        "container's cgroup memory.peak (v1: memory.max_usage_in_bytes), or the VMM process's VmHWM.",
        (FAAS_TRIGGER,),
        MEMORY_BUCKETS,
    ),
    MetricSpec(
        "uniobs.invocation.unrecorded",
        Instrument.COUNTER,
        "{invocation}",
        "Invocations proxied but not recorded: the recorder's queue was full (the proxy never waits for it).",
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
    ("uniobs run", EXIT_USAGE_METRICS[1:]),  # process.cpu.time is listed with the process collector
    ("uniobs run/compare/serve (invocations)", INVOCATION_METRICS),
    ("uniobs (self)", (*SELF_METRICS, *PIPELINE_METRICS)),
)
