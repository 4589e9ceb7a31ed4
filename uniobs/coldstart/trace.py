"""Cold starts as traces: one trace per launch, a root span and one child span per phase.

Pure: the runner records *when* things happened (monotonic nanoseconds, taken as the bytes or
events arrived); this module turns those marks into spans and metrics.

The phases of a launch are one chain (its runtime's `coldstart_phases`), cut at the marks that
were observed, from the exec to the end of the cold start. They follow one another with no gap
and no overlap, so their durations add up to the cold start exactly:

    unikernel  vmm_spawn     exec -> the VMM's own ready mark (QEMU: its QMP socket answers)
               guest_load    vmm_spawn's end (or the exec) -> the guest's start: when its clock read 0,
                             from its uptime-stamped lines; else its first console byte
               guest_boot    the guest's start -> kernel_ready milestone
               runtime_load  kernel_ready -> app_start (the program, its libraries, its runtime loading)
               app_init      app_start -> ready milestone (else the first successful probe)
               readiness     ready milestone -> first successful probe (--ready)
    container  runtime_create  exec -> container created (state written, cgroup exists)
               runtime_start   created -> the init process exec'd the function
               runtime_load, app_init, readiness as above
    process    runtime_load (exec -> app_start), app_init, readiness
    all        first_request  request sent -> response received (after the cold start, not in it)

Rules: a phase ends at the first of its end marks that was observed (and fits: the marks must
follow one another in time; one that does not, e.g. a QMP socket that answered only after the
guest had started, is not used). A phase whose end was not observed, or that would last 0 ns
(two marks from the same console line or chunk), is absent, never a fabricated 0. A phase starts
where the one before it ended; if that is not one of its own start marks (a phase in between was
absent), the stretch is `unattributed`, with the phases it may hold (`uniobs.coldstart.covers`),
and the root span says how much time that is.

Where the cold start ends: the first successful probe (`--ready`), else the `ready` milestone.
A function that runs to completion (it exits cleanly before it was ever ready) completed its
cold start at its last boot milestone (ready, app_start, kernel_ready), else at its own exit
milestone, else at the command's exit (`complete`). Anything else that ends a launch before it is
ready ends the trace with an error status and the reason, its phases cut up to the last mark seen.

The W3C `traceparent` the host passes to the function carries the root span's id, so spans the
guest reports (line protocol) become its children in the same trace.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from uniobs.metrics import PHASE, RUNTIME, SHRINKWRAP
from uniobs.model import Attributes, Sample, SpanEvent
from uniobs.plugin import CONTAINER_PHASES, PROCESS_PHASES, UNIKERNEL_PHASES, Phase

__all__ = [
    "CONTAINER_PHASES",
    "PROCESS_PHASES",
    "UNATTRIBUTED",
    "UNIKERNEL_PHASES",
    "ColdStart",
    "Phase",
    "PhaseTime",
    "new_span_id",
    "new_trace_id",
    "traceparent",
]

UNATTRIBUTED = "unattributed"  # a stretch of the cold start no observed phase explains
FIRST_REQUEST = "first_request"  # after the cold start: not one of its chain
GUEST_START = "guest_start"  # when the guest's clock read 0, on the host's clock
# A run-to-completion function's cold start ends at the first of these that was marked, else at
# the command's exit (`exited`).
COMPLETION_MARKS = ("ready", "app_start", "kernel_ready", "exit")
EXITED = "exited"


def new_trace_id() -> int:
    return secrets.randbits(128) or 1


def new_span_id() -> int:
    return secrets.randbits(64) or 1


def traceparent(trace_id: int, span_id: int) -> str:
    """W3C trace context, sampled."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"


class PhaseTime(NamedTuple):
    """One cut of the cold start: a phase (or an `unattributed` stretch) between two marks."""

    phase: str
    start_ns: int
    end_ns: int
    start_mark: str
    end_mark: str
    covers: tuple[str, ...] = ()  # for an unattributed stretch: the phases it may hold

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


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
    # in order; the runtime's coldstart_phases (see the module's docstring)
    phases_spec: tuple[Phase, ...] = UNIKERNEL_PHASES
    probe: bool = False  # readiness is a probe's first success (--ready), not the `ready` milestone
    # When the guest's clock read 0, on the host's monotonic clock: the earliest (arrival - uptime)
    # of its uptime-stamped lines (a line arrives after it was printed, never before).
    guest_zero_ns: int | None = None
    completed: str | None = None  # the mark a run-to-completion function's cold start ended at
    parent_span_id: int = 0  # the span this cold start is part of (the invocation that launched it); 0: a root
    # set the moment the instance is ready (the probe's first success, else the `ready` milestone):
    # what `uniobs serve` holds a request on
    ready_event: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    # called once, with the mark's time (monotonic ns), on the thread that marked it ready (the
    # I/O thread, a probe's): so a waiter can also wake at a failure, which `ready_event` never says
    on_ready: Callable[[int], None] | None = field(default=None, compare=False, repr=False)
    _ready_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def traceparent(self) -> str:
        return traceparent(self.trace_id, self.root_span_id)

    def mark(self, name: str, time_ns: int) -> None:
        """Record when something happened; only the first occurrence of a mark counts."""
        self.marks.setdefault(name, time_ns)
        if name == "probe_ok" or (name == "ready" and not self.probe):
            with self._ready_lock:  # a probe's thread and the I/O thread may both get here
                first = not self.ready_event.is_set()
                self.ready_event.set()
            if first and self.on_ready is not None:
                self.on_ready(self.marks[name])

    def guest_clock(self, time_ns: int, guest_s: float) -> None:
        """A console line that arrived at `time_ns` carried the guest's uptime `guest_s`."""
        if not math.isfinite(guest_s) or guest_s < 0:
            return
        zero = time_ns - round(guest_s * 1e9)
        if self.guest_zero_ns is None or zero < self.guest_zero_ns:
            self.guest_zero_ns = zero

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def complete(self, exit_ns: int) -> str:
        """The function ran to completion (it ended cleanly before it was ever ready): its cold
        start ended at its last boot milestone (`COMPLETION_MARKS`), else at the command's exit.
        Returns that mark."""
        self.mark(EXITED, exit_ns)
        self.completed = next((m for m in COMPLETION_MARKS if m in self.marks), EXITED)
        return self.completed

    def end(self) -> tuple[str, int] | None:
        """(mark, ns) where the cold start ended: the first successful probe when readiness is
        probed, else the `ready` milestone; for a run-to-completion function, its `completed`
        mark. None while (or if) it never became ready."""
        names = ("probe_ok",) if self.probe else ("probe_ok", "ready")
        for name in (*names, *((self.completed,) if self.completed else ())):
            if name in self.marks:
                return name, self.marks[name]
        return None

    def ready_ns(self) -> int | None:
        """When the cold start ended (see `end`)."""
        end = self.end()
        return end[1] if end is not None else None

    def times(self) -> dict[str, int]:
        """The marks, with `guest_start` when the guest's clock places it after the exec."""
        times = dict(self.marks)
        exec_ns = self.marks.get("exec")
        if self.guest_zero_ns is not None and exec_ns is not None and self.guest_zero_ns >= exec_ns:
            times.setdefault(GUEST_START, self.guest_zero_ns)
        return times

    def timeline(self, until_ns: int | None = None) -> list[PhaseTime]:
        """The chain of phases from the exec to the end of the cold start, contiguous; for a
        launch that never became ready, up to the last mark seen before `until_ns`."""
        times = self.times()
        exec_ns = times.get("exec")
        if exec_ns is None:
            return []
        end = self.end()
        if end is not None:
            bound = end[1]
        elif until_ns is not None:
            bound = until_ns
        else:
            bound = max(times.values())
        chain = [p for p in self.phases_spec if p.name != FIRST_REQUEST]
        if not self.probe:  # no probe, no readiness phase: an unattributed stretch cannot hold one
            chain = [p for p in chain if p.name != "readiness"]
        # Backwards from the end: each phase ends at the first of its end marks that is no later
        # than where the next phase ended (marks that contradict a later one are not used).
        picked: list[tuple[str, int] | None] = [None] * len(chain)
        for i in range(len(chain) - 1, -1, -1):
            for name in chain[i].ends:
                t = times.get(name)
                if t is not None and exec_ns <= t <= bound:
                    picked[i] = (name, t)
                    bound = t
                    break
        out: list[PhaseTime] = []
        at_mark, at = "exec", exec_ns
        skipped: list[str] = []  # phases absent since `at`
        for phase, pick in zip(chain, picked, strict=True):
            if pick is None:
                skipped.append(phase.name)
                continue
            name, t = pick
            if t > at:
                if at_mark in phase.starts:
                    out.append(PhaseTime(phase.name, at, t, at_mark, name))
                else:
                    out.append(PhaseTime(UNATTRIBUTED, at, t, at_mark, name, (*skipped, phase.name)))
            # t == at: no measurable time between the two marks: the phase is absent, not 0
            at_mark, at, skipped = name, t, []
        if end is not None and at < end[1]:
            out.append(PhaseTime(UNATTRIBUTED, at, end[1], at_mark, end[0], tuple(skipped)))
        return out

    def first_request(self) -> PhaseTime | None:
        """The first request (--request), after the cold start, when both its marks were seen."""
        spec = next((p for p in self.phases_spec if p.name == FIRST_REQUEST), None)
        if spec is None:
            return None
        start = next(((m, self.marks[m]) for m in spec.starts if m in self.marks), None)
        end = next(((m, self.marks[m]) for m in spec.ends if m in self.marks), None)
        if start is None or end is None or end[1] <= start[1]:
            return None
        return PhaseTime(FIRST_REQUEST, start[1], end[1], start[0], end[0])

    def phases(self, until_ns: int | None = None) -> list[tuple[str, int, int]]:
        """(phase, start ns, end ns): the cold start's chain (`timeline`), then the first request."""
        cuts = self.timeline(until_ns)
        request = self.first_request()
        return [(c.phase, c.start_ns, c.end_ns) for c in (*cuts, *((request,) if request else ()))]

    def spans(self, end_ns: int, resource_attrs: Mapping[str, object] | None = None) -> list[SpanEvent]:
        """The root span (exec to ready, or to `end_ns` with an error) and one child per phase."""
        start = self.marks.get("exec")
        if start is None:
            return []
        end = self.end()
        cuts = self.timeline(end_ns)
        request = self.first_request()
        after = request.end_ns if request is not None else 0  # the root holds the first request too
        root_end = max(end[1], after) if end is not None else end_ns
        error = None if end is not None else (self.failure or "the function never became ready")
        base: Attributes = (("faas.coldstart", True), (SHRINKWRAP, self.shrinkwrap), (RUNTIME, self.runtime))
        guest: Attributes = tuple(
            (f"uniobs.guest.{name}_s", round(value, 6)) for name, value in sorted(self.guest_times.items())
        )
        how: Attributes = ()
        if end is not None:
            how += (("uniobs.coldstart.ended_by", end[0]),)
        if self.completed is not None and end is not None and end[0] == self.completed:
            how += (("uniobs.coldstart.run_to_completion", True),)
        unattributed = sum(c.duration_ns for c in cuts if c.phase == UNATTRIBUTED)
        if unattributed:
            how += (("uniobs.coldstart.unattributed_s", round(unattributed / 1e9, 9)),)
        spans = [
            SpanEvent(
                "coldstart",
                self.trace_id,
                self.root_span_id,
                self.parent_span_id,
                start,
                max(root_end, start),
                base + guest + how,
                error=error,
            )
        ]
        for cut in (*cuts, *((request,) if request else ())):
            attributes: Attributes = (
                (PHASE, cut.phase),
                (SHRINKWRAP, self.shrinkwrap),
                (RUNTIME, self.runtime),
                ("uniobs.coldstart.from", cut.start_mark),
                ("uniobs.coldstart.to", cut.end_mark),
            )
            if cut.phase == UNATTRIBUTED:
                attributes += (("uniobs.coldstart.covers", ", ".join(cut.covers)),)
            spans.append(
                SpanEvent(
                    f"coldstart.{cut.phase}",
                    self.trace_id,
                    new_span_id(),
                    self.root_span_id,
                    cut.start_ns,
                    cut.end_ns,
                    attributes,
                )
            )
        return spans

    def samples(self, until_ns: int | None = None) -> list[Sample]:
        labels: Attributes = ((SHRINKWRAP, self.shrinkwrap), (RUNTIME, self.runtime))
        ready = self.ready_ns()
        start = self.marks.get("exec")
        out = []
        if ready is not None and start is not None:
            out.append(Sample("faas.coldstarts", 1, labels))
            out.append(Sample("faas.init_duration", (ready - start) / 1e9, labels))
        elif start is not None:
            out.append(Sample("faas.coldstarts", 1, (*labels, ("error.type", "not_ready"))))
        for phase, p_start, p_end in self.phases(until_ns):
            out.append(Sample("uniobs.coldstart.phase.duration", (p_end - p_start) / 1e9, (*labels, (PHASE, phase))))
        return out
