"""VM metrics and lifecycle events of QEMU guests, read over QMP (see `uniobs.qmp`).

Applies to every workload with a QMP socket (`Workload.qmp`); give uniobs its own `-qmp`, since
QEMU serves one client per socket. One connection per VM is kept across scrapes (re-opened when
it drops). It sends only read-only queries (when each is asked: below):

- `query-status`: the run state (`uniobs.vm.status`);
- `query-cpus-fast`: each vCPU's host thread, whose CPU time is read from
  `/proc/<pid>/task/<tid>/stat` (utime and stime; `uniobs.host.procfs`) (`uniobs.vm.vcpu.*`);
- `query-memory-size-summary` (QEMU 2.11+): boot plus hot-plugged memory;
- `query-balloon`, when the VM has a balloon device (skipped quietly otherwise);
- `query-blockstats`: bytes and operations per block device, at most `max_devices` devices;
- `query-stats` (QEMU 7.1+) for the VM and its vCPUs, when the accelerator has statistics
  (KVM does, TCG returns none). `query-stats-schemas` is read once per connection to know each
  statistic's type: cumulative ones are counters (`uniobs.vm.kvm.stat`), instant and peak ones
  gauges (`uniobs.vm.kvm.gauge`); histograms are skipped. At most `max_kvm_stats` distinct
  names. Values are exported as KVM reports them: the name carries the unit (`halt_wait_ns`).

QMP events that arrive while querying (SHUTDOWN, RESET, STOP, GUEST_PANICKED, ...) are returned
by `events()` as log records named `qemu.<event>` (`qemu.shutdown`), with the event's data as
`qemu.<event>.<key>` attributes. Their time is when uniobs read them, so an event that happened
between two scrapes is stamped at the second; QEMU's own stamp is the `qemu.event.timestamp`
attribute (epoch seconds). Events read just before the VMM went away (the SHUTDOWN of a
SIGTERM) are still returned, also when another collector noticed the exit first and the
workload was forgotten before our `events()` ran (kept for up to 64 forgotten VMs).

Lifecycle: the VMM closing the connection, or refusing it once its pid is gone (or a zombie), is
`WorkloadGone`; a socket that refuses while the pid still runs (QEMU creates the file just before
it listens) is `SourceUnavailable` for that scrape. A socket held by another client gives no
greeting: `SourceUnavailable`, retried after `busy_retry` seconds rather than waiting at every
scrape. Timeouts and protocol errors close the connection and count as errors.

Only what may have changed is asked; a steady-state scrape of a running VM without disks or KVM
statistics sends nothing (it reads the events QEMU sent, and the vCPU threads' stat files):

- the vCPU list (`query-cpus-fast`), the memory size (`query-memory-size-summary`) and the
  balloon level are asked after any QMP event (a hot-plug's ACPI_DEVICE_OST, DEVICE_DELETED,
  BALLOON_CHANGE, RESET, ...), after a reconnect, and every `static_refresh` scrapes (a hot-plug
  by another QMP client on a QEMU that sends no event);
- the run state (`query-status`) after any event, at every scrape while the VM is not running,
  and every `status_refresh` scrapes while it runs. QEMU leaves `running` only through
  `vm_stop()`, which sends STOP (and SHUTDOWN, SUSPEND, GUEST_PANICKED... before it), so a
  running VM's state is known from events; between stopped states QEMU moves without one
  (`vm_stop_force_state`: paused -> postmigrate). The refresh bounds how long a monitor that
  stopped answering (a wedged QEMU main loop) goes unnoticed: `status_refresh` scrapes;
- block counters (`query-blockstats`) at every scrape when the VM has block devices; a VM
  without one is asked again with the run state (a plugged disk sends no event: QEMU has no
  DEVICE_ADDED);
- `query-stats` at every scrape when the accelerator has statistics.

The queries of a scrape are sent together (`QmpClient.execute_many`): one round trip at most.

Cost (QEMU 7.2, TCG, measured): QEMU spends 0.3-0.4 ms of CPU on every QMP command whatever
it is, so fewer commands per scrape is what saves QEMU's CPU (bench/vmm_bench.py). On the
client's side a steady-state scrape is one `poll(2)` for events, one batch of the queries above
when any is due, decoded with one JSON call, and one small read per vCPU thread (its stat file,
by the thread id QMP gave: the task list is not read); the samples that repeat (vCPU count,
memory size, run states, balloon) are built once.

No semantic conventions exist for VMs, so the metrics live in one small namespace,
`uniobs.vm.*`, declared below (the only place their names, units and attributes are written).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from uniobs.host.procfs import ProcFS, keep_open_budget
from uniobs.model import Attributes, Instrument, LogEvent, MetricSpec, Sample, Severity, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable, WorkloadGone
from uniobs.runtimes.qmp import (
    EVENTS_WATCHED,
    RUN_STATES,
    QmpBusy,
    QmpClient,
    QmpCommandError,
    QmpError,
    QmpEvent,
    QmpGone,
    StatSchema,
    Vcpu,
    event_log,
    parse_balloon,
    parse_blockstats,
    parse_cpus_fast,
    parse_memory_size_summary,
    parse_stats,
    parse_stats_schemas,
    parse_status,
)

log = logging.getLogger("uniobs.collectors.qemu")

VM_STATUS = "uniobs.vm.status"
VCPU = "uniobs.vm.vcpu"
DEVICE = "uniobs.vm.device"
DIRECTION = "disk.io.direction"
CPU_MODE = "cpu.mode"
KVM_STAT = "uniobs.kvm.stat"
VM_WIDE = "vm"  # the uniobs.vm.vcpu value of VM-wide statistics
OTHER_STATUS = "other"  # a run state newer than QEMU 7.2's enum
SCALAR_STATS = ("cumulative", "instant", "peak")  # query-stats types reported; histograms are not
_USER = (CPU_MODE, "user")
_SYSTEM = (CPU_MODE, "system")

METRICS = (
    MetricSpec(
        "uniobs.vm.status",
        Instrument.GAUGE,
        "{vm}",  # a state indicator, not a ratio: no `_ratio` in Prometheus (as k8s.pod.status.phase's {pod})
        "1 for the VM's current QEMU run state (running, paused, shutdown, ...), 0 for states it had before.",
        (VM_STATUS,),
    ),
    MetricSpec("uniobs.vm.vcpu.count", Instrument.UPDOWN_COUNTER, "{vcpu}", "Virtual CPUs of the VM."),
    MetricSpec(
        "uniobs.vm.vcpu.time",
        Instrument.COUNTER,
        "s",
        "Host CPU time of each vCPU thread, by mode (/proc/<pid>/task/<tid>/stat).",
        (VCPU, CPU_MODE),
    ),
    MetricSpec(
        "uniobs.vm.memory.size",
        Instrument.UPDOWN_COUNTER,
        "By",
        "Guest memory: boot memory plus hot-plugged memory (query-memory-size-summary).",
    ),
    MetricSpec(
        "uniobs.vm.memory.balloon",
        Instrument.UPDOWN_COUNTER,
        "By",
        "Guest memory after ballooning (query-balloon 'actual'); only VMs with a balloon device.",
    ),
    MetricSpec(
        "uniobs.vm.disk.io",
        Instrument.COUNTER,
        "By",
        "Bytes the guest read and wrote, by block device (query-blockstats).",
        (DIRECTION, DEVICE),
    ),
    MetricSpec(
        "uniobs.vm.disk.operations",
        Instrument.COUNTER,
        "{operation}",
        "Read, write and flush requests the guest issued, by block device (query-blockstats).",
        (DIRECTION, DEVICE),
    ),
    MetricSpec(
        "uniobs.vm.kvm.stat",
        Instrument.COUNTER,
        "{stat}",  # each statistic's own unit (counts, *_ns): none for the metric
        "Cumulative KVM statistics from QMP query-stats (exits, insn_emulation, halt_*...), per vCPU or "
        "'vm'; values as KVM reports them (the name carries the unit, e.g. *_ns).",
        (KVM_STAT, VCPU),
    ),
    MetricSpec(
        "uniobs.vm.kvm.gauge",
        Instrument.GAUGE,
        "{stat}",  # pages, flags, sizes: not a ratio
        "Instant and peak KVM statistics from QMP query-stats (pages_4k, guest_mode, max_mmu_rmap_size...), "
        "per vCPU or 'vm'.",
        (KVM_STAT, VCPU),
    ),
)


@dataclass(frozen=True)
class QemuConfig(CollectorConfig):
    qmp_timeout: float = 2.0  # seconds for each QMP operation (connect, greeting, each query)
    max_devices: int = 16  # block devices reported per VM
    kvm_stats: bool = True  # read query-stats when the accelerator has statistics
    max_kvm_stats: int = 64  # distinct query-stats names reported per VM
    busy_retry: float = 60.0  # seconds before retrying a QMP socket another client holds
    events: bool = True  # hand out QMP events; off when another reader (a launcher's watcher) logs them
    proc: str = "/proc"
    static_refresh: int = 60  # scrapes between re-asking the vCPU list and memory size when no event came
    # scrapes between asking a running VM's run state (and block device list) when no event came:
    # bounds how long a monitor that stopped answering, or a disk hot-plugged silently, goes unseen
    status_refresh: int = 6

    def validate(self) -> None:
        super().validate()
        if self.static_refresh < 1:
            raise ValueError("static_refresh: must be >= 1 scrape")
        if self.status_refresh < 1:
            raise ValueError("status_refresh: must be >= 1 scrape")
        if self.qmp_timeout <= 0:
            raise ValueError("qmp_timeout: must be > 0 seconds")
        if self.max_devices < 0:
            raise ValueError("max_devices: must be >= 0")
        if self.max_kvm_stats < 0:
            raise ValueError("max_kvm_stats: must be >= 0")
        if self.busy_retry < 0:
            raise ValueError("busy_retry: must be >= 0 seconds")


# --- events -> log records (pure) -----------------------------------------------------------

_MAX_TEXT = 256
_MAX_LAST_WORDS = 64  # forgotten VMs whose final events are kept for one more events() call


# --- per-VM state ---------------------------------------------------------------------------


@dataclass
class _Vm:
    client: QmpClient | None = None
    events: collections.deque[QmpEvent] = field(default_factory=lambda: collections.deque(maxlen=256))
    dropped_seen: int = 0  # the client's dropped_events already reported
    dropped: int = 0  # events lost (client buffer or this deque) and not yet reported
    statuses: set[str] = field(default_factory=set)
    said: set[str] = field(default_factory=set)
    busy_until: float = 0.0  # another client holds the socket: do not wait for a greeting before this
    busy: str = ""
    # Asked once until an event, a reconnect or `static_refresh` scrapes say otherwise.
    stale: bool = True  # an event (or a reconnect, a vanished vCPU thread) since they were asked
    vcpus: tuple[Vcpu, ...] | None = None
    # per vCPU of `vcpus`: (thread id, attributes of its user time, of its system time)
    vcpu_threads: tuple[tuple[int, Attributes, Attributes], ...] = ()
    memory_total: int | None = None
    # Samples of a scrape that repeat until what they say changes (Samples are immutable):
    static_samples: tuple[Sample, ...] | None = None  # vCPU count and memory size, since last asked
    status_samples: tuple[str, tuple[Sample, ...]] | None = None  # (the current state, its samples)
    static_age: int = 0  # scrapes since vcpus/memory_total were asked
    # Known from events between queries (see _scrape): the run state and what else a quiet VM keeps.
    status: str | None = None  # the run state query-status last gave
    status_age: int = 0  # scrapes since query-status was asked
    block_devices: bool = True  # query-blockstats listed a device the last time it was asked
    balloon_sample: Sample | None = None  # query-balloon's last answer
    ahead: _Plan | None = None  # the queries prepare() sent, to be read by collect()
    pid: int | None = None  # the VMM whose vCPU threads' stat files are read (kept open)
    just_read: bool = False  # collect() returned; the events() after it need not poll again
    # Per connection: what this VM's QEMU offers, learnt once.
    balloon: bool = True
    schemas: dict[tuple[str, str], StatSchema] | None = None  # (target, name) -> schema


class QemuCollector(Collector):
    name = "qemu"
    config_class = QemuConfig
    config: QemuConfig
    metrics = METRICS

    def __init__(self, config: CollectorConfig | None = None) -> None:
        super().__init__(config)
        self._vms: dict[tuple[str, str, str], _Vm] = {}
        # Events of forgotten VMs not yet handed out (bounded): another collector may see the VMM
        # gone first, and the pipeline then forgets the workload before our events() is called.
        self._last_words: collections.OrderedDict[tuple[str, str, str], _Vm] = collections.OrderedDict()
        self._proc = ProcFS(self.config.proc, keep_open=keep_open_budget())  # the vCPU threads' stat files

    def applies_to(self, workload: Workload) -> bool:
        return workload.qmp is not None

    # -- the scrape

    def collect(self, workload: Workload) -> Iterable[Sample]:
        assert workload.qmp is not None
        vm = self._vms.get(workload.key)
        if vm is None:
            vm = self._vms[workload.key] = _Vm()
            old = self._last_words.pop(workload.key, None)
            if old is not None:
                vm.events.extend(old.events)
                vm.dropped = old.dropped
        if vm.client is None and time.monotonic() < vm.busy_until:
            raise SourceUnavailable(vm.busy)  # the same words: the pipeline says it once
        was_connected = vm.client is not None and vm.client.connected
        vm.just_read = False
        try:
            samples = self._scrape(workload, vm)
            vm.just_read = True
            return samples
        except QmpGone as exc:
            self._disconnect(vm)
            if not was_connected and workload.pid is not None and self._proc.is_alive(workload.pid):
                # QEMU creates the socket file (bind) just before it listens: a VMM that is still
                # running and refuses us is starting (or exiting), not gone.
                raise SourceUnavailable(
                    f"QMP socket {workload.qmp} refuses connections while pid {workload.pid} runs"
                ) from None
            raise WorkloadGone(str(exc)) from None
        except QmpBusy as exc:
            self._disconnect(vm)
            vm.busy_until = time.monotonic() + self.config.busy_retry
            vm.busy = str(exc)
            raise SourceUnavailable(vm.busy) from None
        except QmpError:
            self._disconnect(vm)  # reconnect at the next scrape; the error is counted by the pipeline
            raise
        finally:
            self._take_events(vm)

    def prepare(self, workload: Workload) -> None:
        """Send this scrape's due queries now (never waiting), so that QEMU answers while the
        other collectors read /proc; collect() reads the replies. Only on a connection already
        open (a first scrape connects in collect())."""
        vm = self._vms.get(workload.key)
        if vm is None or vm.ahead is not None or vm.schemas is None:
            return
        client = vm.client
        if client is None or not client.connected:
            return
        # Events (or the end) already waiting are read by collect() before the replies: it then
        # asks again what the events may have changed.
        plan = self._plan(vm)
        if plan.calls and client.send_ahead(plan.calls):
            vm.ahead = plan

    def _plan(self, vm: _Vm) -> _Plan:
        """What this scrape asks: only what may have changed (QEMU spends ~0.3 ms of CPU on any
        command). The run state: QEMU leaves "running" only through vm_stop(), which sends STOP
        (with SHUTDOWN, SUSPEND, GUEST_PANICKED... before it), and any event makes the scrape
        `static`; a VM that is not running can move between stopped states silently
        (vm_stop_force_state: paused -> postmigrate), so it is asked every scrape. Block devices:
        their counters move at every scrape, and a device plugged into a VM without one sends no
        event (there is no DEVICE_ADDED), so an empty list is asked again with the run state. The
        balloon level changes with a BALLOON_CHANGE event."""
        static = vm.stale or vm.vcpus is None or vm.static_age >= self.config.static_refresh
        status = static or vm.status != "running" or vm.status_age >= self.config.status_refresh
        targets: tuple[str, ...] = ()
        if self.config.kvm_stats and vm.schemas:
            targets = tuple(t for t in ("vm", "vcpu") if any(k == t for k, _ in vm.schemas))
        return _plan_of(status, static, static and vm.balloon, status or vm.block_devices, targets)

    def _scrape(self, workload: Workload, vm: _Vm) -> list[Sample]:
        assert workload.qmp is not None
        client = vm.client
        plan, vm.ahead = vm.ahead, None
        replies: dict[str, object] | None = None
        if client is None or not client.connected:
            if client is None:
                client = vm.client = QmpClient(workload.qmp, timeout=self.config.qmp_timeout)
            vm.balloon, vm.schemas, vm.vcpus, vm.stale = True, None, None, True  # a (re)connect: learn it all again
            plan = None
        elif plan is not None:  # sent by prepare(): QEMU has answered meanwhile
            replies = dict(zip(plan.keys, client.execute_many(plan.calls), strict=True))
            if not plan.static and (client.events_waiting or client.dropped_events != vm.dropped_seen):
                # Something happened (before the replies, or just after): ask what it may have changed.
                self._take_events(vm)
                replies = None
            # (A static plan asked it all; its events are taken after the replies are used, in
            # collect(), so that the next scrape asks again: some may have come after them.)
        else:
            client.poll()  # the events since the last scrape; QmpGone if QEMU has exited
            self._take_events(vm)  # any event makes the vCPU list and memory size be asked again
        if replies is None:
            plan = self._plan(vm)
            replies = dict(zip(plan.keys, client.execute_many(plan.calls), strict=True)) if plan.calls else {}
        assert plan is not None
        for key, value in replies.items():
            if isinstance(value, QmpCommandError) and key != "balloon":
                raise value
        static, targets = plan.static, plan.targets
        if plan.status:
            vm.status = parse_status(replies["status"]).status
            vm.status_age = 0
        vm.status_age += 1
        if static:
            vm.vcpus = parse_cpus_fast(replies["cpus"])
            vm.vcpu_threads = tuple(
                (cpu.thread_id, ((VCPU, str(cpu.index)), _USER), ((VCPU, str(cpu.index)), _SYSTEM)) for cpu in vm.vcpus
            )
            vm.memory_total = parse_memory_size_summary(replies["memory"]).total
            vm.static_age = 0
            vm.stale = False
        vm.static_age += 1
        vcpus = vm.vcpus
        assert vcpus is not None and vm.memory_total is not None and vm.status is not None
        if static or vm.static_samples is None:
            vm.static_samples = (
                Sample("uniobs.vm.vcpu.count", len(vcpus)),
                Sample("uniobs.vm.memory.size", vm.memory_total),
            )
        samples = self._status_samples(vm, vm.status)
        samples += vm.static_samples
        if plan.balloon:
            balloon = replies["balloon"]
            if isinstance(balloon, QmpCommandError):  # DeviceNotActive: no balloon; CommandNotFound: built without
                vm.balloon = False
                vm.balloon_sample = None
                self._say_once(vm, "balloon", workload, f"no balloon figures ({balloon.error_class})")
            else:
                vm.balloon_sample = Sample("uniobs.vm.memory.balloon", parse_balloon(balloon))
        if vm.balloon_sample is not None:
            samples.append(vm.balloon_sample)
        if plan.blocks:
            samples += self._block_samples(vm, workload, replies["blockstats"])
        if self.config.kvm_stats:
            stats = {t: replies[f"stats:{t}"] for t in targets} if targets else None
            samples += self._kvm_samples(vm, workload, client, vcpus, stats)
        pid = vm.pid = workload.pid or client.peer_pid
        if pid is not None:
            samples += self._vcpu_times(vm, workload, pid)
        return samples

    def _status_samples(self, vm: _Vm, status: str) -> list[Sample]:
        current = status if status in RUN_STATES else OTHER_STATUS
        if vm.status_samples is None or vm.status_samples[0] != current:
            vm.statuses.add(current)
            # Earlier states go to 0: otherwise a paused-then-resumed VM would show both at 1.
            states = sorted(vm.statuses)
            samples = tuple(Sample("uniobs.vm.status", int(s == current), ((VM_STATUS, s),)) for s in states)
            vm.status_samples = (current, samples)
        return list(vm.status_samples[1])

    def _block_samples(self, vm: _Vm, workload: Workload, reply: object) -> list[Sample]:
        devices = parse_blockstats(reply)
        vm.block_devices = bool(devices)
        if len(devices) > self.config.max_devices:
            self._say_once(
                vm, "devices", workload, f"{len(devices)} block devices, reporting the first {self.config.max_devices}"
            )
        samples = []
        for dev in devices[: self.config.max_devices]:
            read, write, flush = _device_attributes(dev.device[:_MAX_TEXT])
            samples += [
                Sample("uniobs.vm.disk.io", dev.rd_bytes, read),
                Sample("uniobs.vm.disk.io", dev.wr_bytes, write),
                Sample("uniobs.vm.disk.operations", dev.rd_operations, read),
                Sample("uniobs.vm.disk.operations", dev.wr_operations, write),
                Sample("uniobs.vm.disk.operations", dev.flush_operations, flush),
            ]
        return samples

    def _kvm_samples(
        self,
        vm: _Vm,
        workload: Workload,
        client: QmpClient,
        vcpus: Sequence[Vcpu],
        replies: Mapping[str, object] | None = None,
    ) -> list[Sample]:
        """`replies`: query-stats' answers by target when the scrape's batch asked them."""
        if vm.schemas is None:
            try:
                schemas = parse_stats_schemas(client.execute("query-stats-schemas"))
            except QmpCommandError as exc:  # CommandNotFound before QEMU 7.1
                schemas = ()
                self._say_once(vm, "stats", workload, f"no query-stats ({exc.error_class})")
            vm.schemas = select_stats(schemas, self.config.max_kvm_stats)
            if not schemas:
                self._say_once(
                    vm, "stats", workload, "query-stats: the accelerator provides no statistics (TCG has none)"
                )
            elif len({s.name for s in schemas if s.type in SCALAR_STATS}) > len({n for _, n in vm.schemas}):
                self._say_once(vm, "stats-cap", workload, f"query-stats: reporting {self.config.max_kvm_stats} names")
        if not vm.schemas:
            return []
        by_path = {cpu.qom_path: str(cpu.index) for cpu in vcpus}
        samples: list[Sample] = []
        for target in ("vm", "vcpu"):
            if not any(t == target for t, _ in vm.schemas):
                continue
            reply = replies[target] if replies is not None else client.execute("query-stats", {"target": target})
            for result in parse_stats(reply):
                vcpu = VM_WIDE if target == "vm" else by_path.get(result.qom_path or "")
                if vcpu is None:
                    continue  # a vCPU that appeared after query-cpus-fast
                samples += stat_samples(vm.schemas, target, vcpu, result.values)
        return samples

    def _vcpu_times(self, vm: _Vm, workload: Workload, pid: int) -> list[Sample]:
        """utime and stime of each vCPU thread (`/proc/<pid>/task/<tid>/stat`), the thread ids
        being QMP's (`query-cpus-fast`): the task list is not read."""
        samples: list[Sample] = []
        hz = self._proc.hz
        for tid, user, system in vm.vcpu_threads:
            try:
                utime, stime = self._proc.task_times(pid, tid)  # ProcessGone once the VMM has exited
            except (FileNotFoundError, ProcessLookupError):
                if vm.static_age > 1:  # from a cached vCPU list: a vCPU unplugged quietly? ask again
                    vm.stale = True
                # QEMU's thread ids are in its own pid namespace; ours may differ (QEMU in a container).
                self._say_once(vm, "threads", workload, f"vCPU thread {tid} is not a thread of pid {pid}")
                continue
            samples.append(Sample("uniobs.vm.vcpu.time", utime / hz, user))
            samples.append(Sample("uniobs.vm.vcpu.time", stime / hz, system))
        return samples

    # -- events and state

    def events(self, workload: Workload) -> Iterable[LogEvent]:
        vm = self._vms.get(workload.key) or self._last_words.pop(workload.key, None)
        if vm is None:
            return ()
        if vm.just_read:  # collect() has just read the socket: its events are taken
            vm.just_read = False
        else:
            self._poll(vm)
        report = self.config.events and workload.labels.get(EVENTS_WATCHED) != "true"
        out = [event_log(e) for e in vm.events] if report else []
        vm.events.clear()
        if not self.config.events:
            vm.dropped = 0
        if vm.dropped:
            out.append(
                LogEvent(
                    time.monotonic_ns(),
                    f"{vm.dropped} QMP events were dropped: more arrived between two scrapes than are buffered",
                    Severity.WARN,
                    event_name="qemu.events_dropped",
                )
            )
            vm.dropped = 0
        return out

    def _take_events(self, vm: _Vm) -> bool:
        """The client's events into the VM's buffer; True when any came (or were dropped)."""
        client = vm.client
        if client is None:
            return False
        events = client.drain_events()
        happened = bool(events) or client.dropped_events != vm.dropped_seen
        if happened:
            vm.stale = True  # something happened (a hot-plug, a reset...): ask what it has again
        for event in events:
            if len(vm.events) == vm.events.maxlen:
                vm.dropped += 1
            vm.events.append(event)
        vm.dropped += client.dropped_events - vm.dropped_seen
        vm.dropped_seen = client.dropped_events
        return happened

    def _poll(self, vm: _Vm) -> None:
        """Pick up what QEMU sent since the last call, e.g. the SHUTDOWN before it exited."""
        if vm.client is not None and vm.client.connected:
            try:
                vm.client.poll()
            except QmpError:
                self._disconnect(vm)
        self._take_events(vm)

    def _disconnect(self, vm: _Vm) -> None:
        vm.ahead = None
        if vm.client is not None:
            self._take_events(vm)
            vm.client.close()
            vm.client = None
            vm.dropped_seen = 0

    def _say_once(self, vm: _Vm, topic: str, workload: Workload, message: str) -> None:
        if topic not in vm.said:
            vm.said.add(topic)
            log.info("qemu: %s: %s", workload.display_name, message)

    def forget(self, workload: Workload) -> None:
        vm = self._vms.pop(workload.key, None)
        if vm is None:
            return
        if vm.pid is not None:
            self._proc.forget(vm.pid)
        self._poll(vm)
        self._disconnect(vm)
        if vm.events or vm.dropped:
            self._last_words[workload.key] = vm
            while len(self._last_words) > _MAX_LAST_WORDS:
                self._last_words.popitem(last=False)

    def close(self) -> None:
        for vm in self._vms.values():
            if vm.client is not None:
                vm.client.close()
        self._vms.clear()
        self._last_words.clear()
        self._proc.close()


# --- helpers (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """A scrape's queries (one batch, one round trip; none when nothing is due): what is asked,
    the reply keys, and the (command, arguments) sent."""

    status: bool
    static: bool  # the vCPU list and memory size
    balloon: bool
    blocks: bool
    targets: tuple[str, ...]  # query-stats targets
    keys: tuple[str, ...]
    calls: tuple[tuple[str, Mapping[str, object] | None], ...]


@functools.cache
def _plan_of(status: bool, static: bool, balloon: bool, blocks: bool, targets: tuple[str, ...]) -> _Plan:
    """Built once per combination (a handful exist)."""
    asked: list[tuple[str, str, Mapping[str, object] | None]] = []
    if status:
        asked.append(("status", "query-status", None))
    if static:
        asked += [("cpus", "query-cpus-fast", None), ("memory", "query-memory-size-summary", None)]
    if balloon:
        asked.append(("balloon", "query-balloon", None))
    if blocks:
        asked.append(("blockstats", "query-blockstats", None))
    asked += [(f"stats:{t}", "query-stats", {"target": t}) for t in targets]
    keys = tuple(key for key, _, _ in asked)
    return _Plan(status, static, balloon, blocks, targets, keys, tuple((c, a) for _, c, a in asked))


@functools.lru_cache(maxsize=1024)  # bounded: device names come from QEMU, i.e. from whoever configured it
def _device_attributes(name: str) -> tuple[Attributes, Attributes, Attributes]:
    """The read, write and flush attributes of one block device's samples, built once."""
    return (
        ((DIRECTION, "read"), (DEVICE, name)),
        ((DIRECTION, "write"), (DEVICE, name)),
        ((DIRECTION, "flush"), (DEVICE, name)),
    )


def select_stats(schemas: Iterable[StatSchema], limit: int) -> dict[tuple[str, str], StatSchema]:
    """The statistics to report: scalar ones, the first `limit` distinct names (VM first)."""
    chosen: dict[tuple[str, str], StatSchema] = {}
    names: set[str] = set()
    for schema in sorted(schemas, key=lambda s: s.target != "vm"):  # stable: QEMU's order within a target
        if schema.type not in SCALAR_STATS:
            continue  # linear-histogram, log2-histogram
        if schema.name not in names:
            if len(names) >= limit:
                continue
            names.add(schema.name)
        chosen[(schema.target, schema.name)] = schema
    return chosen


def stat_samples(
    schemas: Mapping[tuple[str, str], StatSchema],
    target: str,
    vcpu: str,
    values: Iterable[tuple[str, int | tuple[int, ...]]],
) -> list[Sample]:
    samples = []
    for name, value in values:
        schema = schemas.get((target, name))
        if schema is None or isinstance(value, tuple):
            continue
        metric = "uniobs.vm.kvm.stat" if schema.type == "cumulative" else "uniobs.vm.kvm.gauge"
        attributes: Attributes = ((KVM_STAT, name), (VCPU, vcpu))
        samples.append(Sample(metric, value, attributes))
    return samples
