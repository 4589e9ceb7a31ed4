"""Cold starts as traces: one trace per launch, a root span and one child span per observed phase.

Pure: the runner records *when* things happened (monotonic nanoseconds, taken as the bytes or
events arrived); this module turns those marks into spans and metrics. A phase whose markers are
missing is absent, never invented; a launch that fails before it is ready ends the trace with an
error status and the reason.

Phases, as each runtime declares them (`Runtime.coldstart_phases`; start mark -> end mark):

    unikernel  vmm_spawn    exec -> QMP ready (QEMU) / first console byte (hvt)
               guest_boot   first console byte -> kernel_ready milestone
               app_init     app_start milestone -> ready milestone
               readiness    ready milestone (or the end of app_init) -> first successful probe
               first_request  request sent -> response received
    container  runtime_create  exec -> container created (state written, cgroup exists)
               runtime_start   created -> the init process exec'd the function
               app_init        started (or app_start) -> ready milestone
               readiness, first_request as above
    process    as container (only app_init, readiness and first_request can be marked)

The W3C `traceparent` the host passes to the function carries the root span's id, so spans the
guest reports (line protocol) become its children in the same trace.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from uniobs.metrics import PHASE, RUNTIME, SHRINKWRAP
from uniobs.model import Attributes, Sample, SpanEvent
from uniobs.plugin import CONTAINER_PHASES, UNIKERNEL_PHASES, Phase

__all__ = ["CONTAINER_PHASES", "UNIKERNEL_PHASES", "ColdStart", "Phase", "new_span_id", "new_trace_id", "traceparent"]


def new_trace_id() -> int:
    return secrets.randbits(128) or 1


def new_span_id() -> int:
    return secrets.randbits(64) or 1


def traceparent(trace_id: int, span_id: int) -> str:
    """W3C trace context, sampled."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@dataclass
class ColdStart:
    """The marks of one launch, and the trace they make."""

    shrinkwrap: str  # "unikernel", "container" or "process": the runtime's kind
    runtime: str
    trace_id: int = field(default_factory=new_trace_id)
    root_span_id: int = field(default_factory=new_span_id)
    marks: dict[str, int] = field(default_factory=dict)  # mark -> monotonic ns (first occurrence)
    guest_times: dict[str, float] = field(default_factory=dict)  # milestone -> guest-reported uptime (s)
    failure: str | None = None  # why it never became ready
    # in order; the first available start mark of a phase is used (the runtime's coldstart_phases)
    phases_spec: tuple[Phase, ...] = UNIKERNEL_PHASES

    @property
    def traceparent(self) -> str:
        return traceparent(self.trace_id, self.root_span_id)

    def mark(self, name: str, time_ns: int) -> None:
        """Record when something happened; only the first occurrence of a mark counts."""
        self.marks.setdefault(name, time_ns)

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def ready_ns(self) -> int | None:
        """When the function was ready: the first successful probe, else its ready milestone."""
        for mark in ("probe_ok", "ready"):
            if mark in self.marks:
                return self.marks[mark]
        return None

    def phases(self) -> list[tuple[str, int, int]]:
        """(phase, start ns, end ns) for every phase whose markers were both seen, in order."""
        out = []
        for phase, starts, ends in self.phases_spec:
            start = next((self.marks[m] for m in starts if m in self.marks), None)
            end = next((self.marks[m] for m in ends if m in self.marks), None)
            if start is None or end is None:
                continue
            if phase == "readiness" and end < start:
                end = start  # the probe got through before the "ready" line arrived: nothing to wait for
            if end >= start:
                out.append((phase, start, end))
        return out

    def spans(self, end_ns: int, resource_attrs: Mapping[str, object] | None = None) -> list[SpanEvent]:
        """The root span (exec to ready, or to `end_ns` with an error) and one child per phase."""
        start = self.marks.get("exec")
        if start is None:
            return []
        ready = self.ready_ns()
        last = max((self.marks.get(m, 0) for m in ("ready", "probe_ok", "request_done")), default=0)
        root_end = max(last, ready) if ready is not None else end_ns
        error = None if ready is not None else (self.failure or "the function never became ready")
        base: Attributes = (("faas.coldstart", True), (SHRINKWRAP, self.shrinkwrap), (RUNTIME, self.runtime))
        guest: Attributes = tuple(
            (f"uniobs.guest.{name}_s", round(value, 6)) for name, value in sorted(self.guest_times.items())
        )
        spans = [
            SpanEvent(
                "coldstart",
                self.trace_id,
                self.root_span_id,
                0,
                start,
                max(root_end, start),
                base + guest,
                error=error,
            )
        ]
        for phase, p_start, p_end in self.phases():
            spans.append(
                SpanEvent(
                    f"coldstart.{phase}",
                    self.trace_id,
                    new_span_id(),
                    self.root_span_id,
                    p_start,
                    p_end,
                    ((PHASE, phase), (SHRINKWRAP, self.shrinkwrap), (RUNTIME, self.runtime)),
                )
            )
        return spans

    def samples(self) -> list[Sample]:
        labels: Attributes = ((SHRINKWRAP, self.shrinkwrap), (RUNTIME, self.runtime))
        ready = self.ready_ns()
        start = self.marks.get("exec")
        out = []
        if ready is not None and start is not None:
            out.append(Sample("faas.coldstarts", 1, labels))
            out.append(Sample("faas.init_duration", (ready - start) / 1e9, labels))
        elif start is not None:
            out.append(Sample("faas.coldstarts", 1, (*labels, ("error.type", "not_ready"))))
        for phase, p_start, p_end in self.phases():
            out.append(Sample("uniobs.coldstart.phase.duration", (p_end - p_start) / 1e9, (*labels, (PHASE, phase))))
        return out
