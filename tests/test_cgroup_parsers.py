"""The cgroup file parsers under hypothesis (issue 13): every variation the kernel documentation
allows for the files uniobs reads (Documentation/admin-guide/cgroup-v2.rst "Interface Files" and
"Format"; cgroup-v1/cpuacct.rst, memory.rst, blkio-controller.rst, pids.rst;
Documentation/accounting/psi.rst): keys unknown to uniobs, keys missing, any key order, `max`,
trailing spaces, empty and torn files, counts up to 2**64-1, several devices per line.

Two properties throughout: a parser never raises, whatever it is given, and returns only what
the text says (a missing or unreadable figure is absent, never 0); and a well-formed generated
file parses to exactly the values it was generated from. The reader-level tests write the
generated files into a cgroup v2 or v1 tree and check `read_stats` end to end.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from uniobs.host import cgroupfs
from uniobs.host.cgroupfs import DeviceIO, Pressure

U64 = st.integers(0, 2**64 - 1)
# Key names as the kernel prints them: lower case, digits, "_" and "." (core_sched.force_idle_usec).
KEY = st.from_regex(r"[a-z][a-z0-9_.]{0,24}", fullmatch=True).filter(lambda k: k != "cost.vrate")
TRAILING = st.sampled_from(["", " ", "  ", "\t"])  # what may follow a value on its line
DEVICE = st.tuples(st.integers(0, 4095), st.integers(0, (1 << 20) - 1)).map(lambda mm: f"{mm[0]}:{mm[1]}")

# the keys each flat-keyed file has on Linux 4.x-6.x (a generated file has any subset of them, and others)
CPU_STAT_V2 = ("usage_usec", "user_usec", "system_usec", "core_sched.force_idle_usec", "nr_periods", "nr_throttled")
CPU_STAT_V2 += ("throttled_usec", "nr_bursts", "burst_usec")
CPU_STAT_V1 = ("nr_periods", "nr_throttled", "throttled_time", "nr_bursts", "burst_time", "wait_sum")
MEMORY_STAT_V2 = ("anon", "file", "kernel", "shmem", "file_mapped", "file_dirty", "inactive_anon", "active_anon")
MEMORY_STAT_V2 += ("inactive_file", "active_file", "unevictable", "pgfault", "pgmajfault", "workingset_refault_file")
MEMORY_STAT_V1 = ("cache", "rss", "rss_huge", "shmem", "mapped_file", "swap", "pgfault", "pgmajfault")
MEMORY_STAT_V1 += ("inactive_file", "active_file", "hierarchical_memory_limit")
MEMORY_STAT_V1 += tuple(f"total_{k}" for k in MEMORY_STAT_V1 if k != "hierarchical_memory_limit")
MEMORY_EVENTS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
IO_KEYS = ("rbytes", "wbytes", "rios", "wios", "dbytes", "dios")


def flat_keyed(known: tuple[str, ...]) -> st.SearchStrategy[dict[str, int]]:
    """A flat-keyed file's content: some of the file's known keys and unknown ones, any order."""
    return st.dictionaries(st.one_of(st.sampled_from(known), KEY), U64, max_size=len(known) + 4)


@st.composite
def rendered(draw: st.DrawFn, pairs: Mapping[str, object]) -> str:
    """Lines of "key value", each possibly with trailing blanks, the last newline possibly left out."""
    lines = [f"{key} {value}{draw(TRAILING)}" for key, value in pairs.items()]
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]) if lines else st.just(""))


def torn(text: str, cut: int) -> str:
    return text[: cut % (len(text) + 1)]


# --- never raises -----------------------------------------------------------------------------

# pieces of real cgroup files, in any order: garbage that looks like them
PIECES = ["0", "1", "9", str(2**64 - 1), str(2**64), "-1", "+5", "1.5", " ", "  ", "\n", "\t", ":", "=", "max"]
PIECES += ["Total", "Read", "Write", "some", "full", "total=", "avg10=", "rbytes=", "(unknown)", "8:0", "8:0 "]
PIECES += ["user", "system", "usage_usec", "total_rss", "\x00", "\u00b2"]
ANY_TEXT = st.one_of(st.text(max_size=400), st.lists(st.sampled_from(PIECES), max_size=80).map("".join))


@given(ANY_TEXT)
@example("9" * 5000)  # past int()'s 4300-digit limit
@example("\u00b2 \u00b3\n8:0 rbytes=\u00b9\nsome total=\u00b2\n")  # latin-1 digits: str.isdigit() says yes, int() no
def test_no_parser_raises_and_every_count_is_a_u64(text: str) -> None:
    for value in (cgroupfs.parse_int(text), cgroupfs.parse_v1_limit(text)):
        assert value is None or 0 <= value < 10**20
    for values in (cgroupfs.parse_flat_keyed(text), *cgroupfs.parse_io_stat(text).values()):
        assert all(0 <= v < 10**20 for v in values.values())
    raw = cgroupfs.parse_flat_keyed_raw(text)
    for key in raw:  # the reader converts only the keys it wants, when it wants them
        value = cgroupfs._get(raw, key)
        assert value is None or 0 <= value < 10**20
    for device, ops in cgroupfs.parse_blkio_v1(text).items():
        assert cgroupfs._device(device) == device and ops.keys() <= {"read", "write"}
    assert all(cgroupfs._device(device) == device for device in cgroupfs.parse_io_stat(text))
    pressure = cgroupfs.parse_pressure(text)
    assert pressure is None or pressure.some_s is not None or pressure.full_s is not None
    user, system = cgroupfs.parse_cpuacct_stat(text, clk_tck=100)
    assert all(v is None or v >= 0 for v in (user, system))
    assert all(pid >= 0 for pid in cgroupfs.parse_procs(text))


# --- single values: cgroup.procs aside, one count or "max" -------------------------------------


@given(U64, TRAILING, st.sampled_from(["\n", ""]))
def test_a_single_value_file(value: int, blank: str, end: str) -> None:
    """memory.current, memory.max, memory.swap.current, pids.current, pids.max, cpuacct.usage,
    memory.usage_in_bytes, memory.failcnt, memory.limit_in_bytes."""
    text = f"{value}{blank}{end}"
    assert cgroupfs.parse_int(text) == value
    assert cgroupfs.parse_int(f"max{blank}{end}") is None  # v2's "no limit"
    assert cgroupfs.parse_v1_limit(text) == (value if value < cgroupfs.V1_UNLIMITED else None)
    assert cgroupfs.parse_int(torn(text, 0)) is None


@given(st.lists(st.integers(1, 2**22), max_size=50), st.sampled_from(["\n", ""]))
def test_cgroup_procs(pids: list[int], end: str) -> None:
    assert cgroupfs.parse_procs("\n".join(map(str, pids)) + end) == pids


# --- flat-keyed files ---------------------------------------------------------------------------


@given(st.data(), st.sampled_from([CPU_STAT_V2, CPU_STAT_V1, MEMORY_STAT_V2, MEMORY_STAT_V1, MEMORY_EVENTS]))
def test_a_flat_keyed_file_parses_to_exactly_its_values(data: st.DataObject, known: tuple[str, ...]) -> None:
    values = data.draw(flat_keyed(known))
    text = data.draw(rendered(values))
    assert cgroupfs.parse_flat_keyed(text) == values
    raw = cgroupfs.parse_flat_keyed_raw(text)
    assert raw.keys() == values.keys() and all(raw[k].strip() == str(v) for k, v in values.items())
    for key in known:  # a key the file does not have is absent, never 0
        assert cgroupfs._get(cgroupfs.parse_flat_keyed_raw(text), key) == values.get(key)


@given(flat_keyed(MEMORY_STAT_V2).filter(bool), st.data())
def test_a_key_printed_twice_is_absent_not_last_wins(values: dict[str, int], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(values)))
    again = data.draw(U64.filter(lambda v: v != values[key]))
    text = data.draw(rendered(values)) + f"\n{key} {again}\n"
    assert cgroupfs.parse_flat_keyed(text) == {k: v for k, v in values.items() if k != key}


@given(flat_keyed(CPU_STAT_V2), st.data())
def test_a_torn_flat_keyed_file_gives_its_whole_lines_and_nothing_else(
    values: dict[str, int], data: st.DataObject
) -> None:
    """A read cut anywhere: every line it holds whole is there with its value; the line it cuts
    gives its key with a prefix of the digits at most (a seq_file is cut at the buffer's end, and
    a count's own digits cannot tell); nothing else."""
    text = data.draw(rendered(values))
    cut = data.draw(st.integers(0, len(text)))
    lines = text[:cut].split("\n")
    complete = lines if cut == len(text) else lines[:-1]  # the last piece of a cut text may be partial
    whole = {line.split()[0] for line in complete if line}
    got = cgroupfs.parse_flat_keyed(text[:cut])
    assert whole <= got.keys() <= values.keys()
    for key, value in got.items():
        assert value == values[key] or (key not in whole and str(values[key]).startswith(str(value)))


@given(st.dictionaries(st.sampled_from(["user", "system"]), U64), st.data())
def test_cpuacct_stat(values: dict[str, int], data: st.DataObject) -> None:
    user, system = cgroupfs.parse_cpuacct_stat(data.draw(rendered(values)), clk_tck=100)
    assert user == (values["user"] / 100 if "user" in values else None)
    assert system == (values["system"] / 100 if "system" in values else None)


# --- PSI ----------------------------------------------------------------------------------------

AVG = st.decimals(0, 100, places=2).map(str)


@st.composite
def psi_line(draw: st.DrawFn, kind: str, total: int) -> str:
    return f"{kind} avg10={draw(AVG)} avg60={draw(AVG)} avg300={draw(AVG)} total={total}{draw(TRAILING)}"


@given(st.one_of(st.none(), U64), st.one_of(st.none(), U64), st.booleans(), st.data())
def test_a_pressure_file_parses_to_exactly_its_totals(
    some: int | None, full: int | None, full_first: bool, data: st.DataObject
) -> None:
    """Either line may be missing (cpu.pressure has no "full" before Linux 5.13), in either order."""
    lines = [data.draw(psi_line(kind, total)) for kind, total in (("some", some), ("full", full)) if total is not None]
    text = "\n".join(lines[::-1] if full_first else lines) + ("\n" if lines else "")
    expected = (
        None if not lines else Pressure(None if some is None else some / 1e6, None if full is None else full / 1e6)
    )
    assert cgroupfs.parse_pressure(text) == expected


# --- io.stat (v2, nested-keyed) -----------------------------------------------------------------


@st.composite
def io_stat(draw: st.DrawFn) -> tuple[str, dict[str, dict[str, int]]]:
    """An io.stat and what it says: devices with any of the kernel's keys and unknown ones (a
    device with none is a bare "MAJ:MIN "), iocost's fractional cost.* keys, "(unknown)" rows,
    and after a bare row either a newline or, as Linux 5.15-5.17 printed it, none (several
    devices on one line)."""
    devices = draw(st.lists(DEVICE, unique=True, max_size=8))
    rows: list[tuple[str, dict[str, object]]] = []
    expected: dict[str, dict[str, int]] = {}
    for device in devices:
        keys = draw(st.dictionaries(st.one_of(st.sampled_from(IO_KEYS), KEY), U64, max_size=8))
        rows.append((device, {**keys, **draw(st.dictionaries(st.just("cost.vrate"), AVG, max_size=1))}))
        if keys:
            expected[device] = keys
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(rows)))
        rows.insert(at, ("(unknown)", draw(st.dictionaries(st.sampled_from(IO_KEYS), U64, max_size=6))))
    text = ""
    for device, keys in rows:
        text += device + " " + " ".join(f"{k}={v}" for k, v in keys.items())
        text += draw(st.sampled_from(["\n", " "])) if not keys else "\n"
    return text, expected


@given(io_stat())
def test_io_stat_parses_to_exactly_its_devices(case: tuple[str, dict[str, dict[str, int]]]) -> None:
    text, expected = case
    assert cgroupfs.parse_io_stat(text) == expected


@given(DEVICE, st.lists(st.dictionaries(st.sampled_from(IO_KEYS), U64, min_size=1), min_size=2, max_size=4))
def test_io_stat_rows_of_one_device_are_summed_in_any_order(device: str, rows: list[dict[str, int]]) -> None:
    common = set(rows[0]).intersection(*rows[1:])
    expected = {k: sum(r[k] for r in rows) for k in common}
    for order in (rows, rows[::-1]):
        text = "".join(f"{device} " + " ".join(f"{k}={v}" for k, v in r.items()) + "\n" for r in order)
        assert cgroupfs.parse_io_stat(text) == ({device: expected} if expected else {})


# --- blkio.throttle.* (v1) ----------------------------------------------------------------------


@st.composite
def blkio(draw: st.DrawFn) -> tuple[str, dict[str, dict[str, int]]]:
    """blkio.throttle.io_service_bytes / io_serviced: per device Read, Write, Sync, Async,
    Discard (4.x+) and Total lines (any of them missing in a torn or older file), "(unknown)"
    rows, and the closing all-device "Total"."""
    lines: list[str] = []
    expected: dict[str, dict[str, int]] = {}
    for device in draw(st.lists(DEVICE, unique=True, max_size=6)):
        ops = draw(st.dictionaries(st.sampled_from(["Read", "Write", "Sync", "Async", "Discard", "Total"]), U64))
        lines += [f"{device} {op} {value}{draw(TRAILING)}" for op, value in ops.items()]
        kept = {op.lower(): value for op, value in ops.items() if op in ("Read", "Write")}
        if kept:
            expected[device] = kept
    lines += [f"(unknown) {op} {draw(U64)}" for op in draw(st.lists(st.sampled_from(["Read", "Write"]), max_size=2))]
    lines = draw(st.permutations(lines))
    return "\n".join([*lines, f"Total {draw(U64)}"]) + "\n", expected


@given(blkio())
def test_blkio_parses_to_exactly_its_devices(case: tuple[str, dict[str, dict[str, int]]]) -> None:
    text, expected = case
    assert cgroupfs.parse_blkio_v1(text) == expected


# --- end to end: generated files in a tree, through read_stats ----------------------------------


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def per_s(value: int | None, scale: float) -> float | None:
    return None if value is None else value / scale


@settings(max_examples=60, deadline=None)
@given(
    cpu=flat_keyed(CPU_STAT_V2),
    memory=flat_keyed(MEMORY_STAT_V2),
    events=flat_keyed(MEMORY_EVENTS),
    current=st.one_of(st.none(), U64),
    limit=st.one_of(st.none(), U64),
    pids=st.one_of(st.none(), U64),
    pids_max=st.one_of(st.none(), U64),
    io=io_stat(),
    psi=st.one_of(st.none(), U64),
    data=st.data(),
)
def test_a_generated_v2_cgroup_reads_as_generated(
    cpu: dict[str, int],
    memory: dict[str, int],
    events: dict[str, int],
    current: int | None,
    limit: int | None,
    pids: int | None,
    pids_max: int | None,
    io: tuple[str, dict[str, dict[str, int]]],
    psi: int | None,
    data: st.DataObject,
) -> None:
    """A v2 cgroup whose files were generated: every figure is the generated value, or None where
    the generated file lacks it (a key, a file, "max")."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {
            "cgroup.controllers": "cpu io memory pids\n",
            "cgroup.procs": "",
            "c/cgroup.procs": "1\n",
            "c/cpu.stat": data.draw(rendered(cpu)),
            "c/memory.stat": data.draw(rendered(memory)),
            "c/memory.events": data.draw(rendered(events)),
            "c/memory.current": "" if current is None else f"{current}\n",
            "c/memory.max": "max\n" if limit is None else f"{limit}\n",
            "c/pids.current": "" if pids is None else f"{pids}\n",
            "c/pids.max": "max\n" if pids_max is None else f"{pids_max}\n",
            "c/io.stat": io[0],
            "c/cpu.pressure": "" if psi is None else f"some avg10=0.00 avg60=0.00 avg300=0.00 total={psi}\n",
        }
        write_tree(root, files)
        stats = cgroupfs.read_stats(cgroupfs.detect_layout(str(root)), "/c")
    inactive = memory.get("inactive_file")
    expected: dict[str, Any] = {
        "cpu_usage_s": per_s(cpu.get("usage_usec"), 1e6),
        "cpu_user_s": per_s(cpu.get("user_usec"), 1e6),
        "cpu_system_s": per_s(cpu.get("system_usec"), 1e6),
        "cpu_periods": cpu.get("nr_periods"),
        "cpu_throttled_periods": cpu.get("nr_throttled"),
        "cpu_throttled_s": per_s(cpu.get("throttled_usec"), 1e6),
        "memory_usage": current,
        "memory_limit": limit,
        "memory_working_set": None if current is None or inactive is None else max(0, current - inactive),
        "memory_rss": memory.get("anon"),
        "memory_cache": memory.get("file"),
        "memory_mapped_file": memory.get("file_mapped"),
        "memory_pgfault": memory.get("pgfault"),
        "memory_pgmajfault": memory.get("pgmajfault"),
        "memory_events_max": events.get("max"),
        "memory_oom_events": events.get("oom"),
        "memory_oom_kills": events.get("oom_kill"),
        "pids_current": pids,
        "pids_limit": pids_max,
        "io": tuple(
            DeviceIO(dev, v.get("rbytes"), v.get("wbytes"), v.get("rios"), v.get("wios"))
            for dev, v in sorted(io[1].items(), key=lambda item: cgroupfs._device_key(item[0]))
            if v.keys() & {"rbytes", "wbytes", "rios", "wios"}
        ),
        "cpu_pressure": None if psi is None else Pressure(psi / 1e6, None),
    }
    assert {name: getattr(stats, name) for name in expected} == expected


@settings(max_examples=40, deadline=None)
@given(
    memory=flat_keyed(MEMORY_STAT_V1),
    usage=st.one_of(st.none(), U64),
    limit=U64,
    cpuacct=st.dictionaries(st.sampled_from(["user", "system"]), U64),
    cpu=flat_keyed(CPU_STAT_V1),
    service_bytes=blkio(),
    serviced=blkio(),
    data=st.data(),
)
def test_a_generated_v1_cgroup_reads_as_generated(
    memory: dict[str, int],
    usage: int | None,
    limit: int,
    cpuacct: dict[str, int],
    cpu: dict[str, int],
    service_bytes: tuple[str, dict[str, dict[str, int]]],
    serviced: tuple[str, dict[str, dict[str, int]]],
    data: st.DataObject,
) -> None:
    """The same for v1 (a combined cpu,cpuacct mount): hierarchical total_* keys first, limits at
    or past 2**62 unlimited, and each device's figures from the file that lists them (None where
    the other file does not)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {
            "memory/cgroup.procs": "",
            "memory/c/cgroup.procs": "1\n",
            "memory/c/memory.stat": data.draw(rendered(memory)),
            "memory/c/memory.usage_in_bytes": "" if usage is None else f"{usage}\n",
            "memory/c/memory.limit_in_bytes": f"{limit}\n",
            "cpu,cpuacct/cgroup.procs": "",
            "cpu,cpuacct/c/cgroup.procs": "1\n",
            "cpu,cpuacct/c/cpuacct.stat": data.draw(rendered(cpuacct)),
            "cpu,cpuacct/c/cpu.stat": data.draw(rendered(cpu)),
            "blkio/cgroup.procs": "",
            "blkio/c/cgroup.procs": "1\n",
            "blkio/c/blkio.throttle.io_service_bytes": service_bytes[0],
            "blkio/c/blkio.throttle.io_serviced": serviced[0],
        }
        write_tree(root, files)
        stats = cgroupfs.read_stats(cgroupfs.detect_layout(str(root)), "/c")

    def hierarchical(key: str) -> int | None:
        return memory.get(f"total_{key}", memory.get(key))

    inactive = hierarchical("inactive_file")
    nbytes, nops = service_bytes[1], serviced[1]
    expected: dict[str, Any] = {
        "cpu_user_s": per_s(cpuacct.get("user"), cgroupfs.CLK_TCK),
        "cpu_system_s": per_s(cpuacct.get("system"), cgroupfs.CLK_TCK),
        "cpu_periods": cpu.get("nr_periods"),
        "cpu_throttled_periods": cpu.get("nr_throttled"),
        "cpu_throttled_s": per_s(cpu.get("throttled_time"), 1e9),
        "memory_usage": usage,
        "memory_limit": limit if limit < cgroupfs.V1_UNLIMITED else None,
        "memory_working_set": None if usage is None or inactive is None else max(0, usage - inactive),
        "memory_rss": hierarchical("rss"),
        "memory_cache": hierarchical("cache"),
        "memory_swap": hierarchical("swap"),
        "memory_mapped_file": hierarchical("mapped_file"),
        "memory_pgfault": hierarchical("pgfault"),
        "memory_pgmajfault": hierarchical("pgmajfault"),
        "io": tuple(
            DeviceIO(
                dev,
                nbytes.get(dev, {}).get("read"),
                nbytes.get(dev, {}).get("write"),
                nops.get(dev, {}).get("read"),
                nops.get(dev, {}).get("write"),
            )
            for dev in sorted(nbytes.keys() | nops.keys(), key=cgroupfs._device_key)
        ),
    }
    assert {name: getattr(stats, name) for name in expected} == expected


# --- the real files of this host ------------------------------------------------------------

FLAT = ("cpu.stat", "memory.stat", "memory.events", "cpuacct.stat", "memory.oom_control")
SINGLE = ("memory.current", "memory.max", "pids.current", "pids.max", "cpuacct.usage", "memory.usage_in_bytes")
SINGLE += ("memory.limit_in_bytes", "memory.failcnt", "memory.swap.current")
BLKIO = ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced")
BLKIO += ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive")
PSI = ("cpu.pressure", "memory.pressure", "io.pressure")


def host_files(limit: int = 40) -> dict[str, list[str]]:
    """{file name: its text in up to `limit` cgroups of this host (each hierarchy's root and its
    children)}, for the files the parsers read."""
    try:
        layout = cgroupfs.detect_layout()
    except OSError as exc:
        pytest.skip(f"no cgroup hierarchy on this host: {exc}")
    roots = [*dict.fromkeys(layout.v1.values()), *([layout.unified] if layout.unified else [])]
    dirs = [Path(r) for r in roots] + [p for r in roots for p in sorted(Path(r).iterdir()) if p.is_dir()]
    found: dict[str, list[str]] = {}
    for directory in dirs[:limit]:
        for name in (*FLAT, *SINGLE, *BLKIO, *PSI, "io.stat"):
            try:
                text = (directory / name).read_text()
            except OSError:  # absent here, or refused (PSI disabled): nothing to compare
                continue
            found.setdefault(name, []).append(text)
    return found


def test_the_hosts_own_files_parse_to_what_they_say() -> None:
    """Every such file of this host against a plain reading of its documented format: the
    parsers agree on real kernel output, not only on the generated one."""
    found = host_files()
    assert found, "no cgroup file read on this host"
    for name, texts in found.items():
        for text in texts:
            lines = [line.split() for line in text.splitlines() if line.strip()]
            if name in FLAT:
                assert cgroupfs.parse_flat_keyed(text) == {k: int(v) for k, v in lines}, (name, text)
            elif name in SINGLE:
                assert cgroupfs.parse_int(text) == (None if text.strip() == "max" else int(text)), (name, text)
            elif name in BLKIO:
                rows = [t for t in lines if len(t) == 3 and t[1] in ("Read", "Write")]
                expected: dict[str, dict[str, int]] = {}
                for device, op, value in rows:
                    expected.setdefault(device, {})[op.lower()] = int(value)
                assert cgroupfs.parse_blkio_v1(text) == expected, (name, text)
            elif name in PSI:
                totals = {t[0]: int(t[-1].removeprefix("total=")) / 1e6 for t in lines}
                assert cgroupfs.parse_pressure(text) == Pressure(totals.get("some"), totals.get("full")), (name, text)
            else:  # io.stat, one device per line on the kernels since 5.18
                assert cgroupfs.parse_io_stat(text) == {
                    t[0]: {k: int(v) for k, _, v in (kv.partition("=") for kv in t[1:]) if v.isdigit()}
                    for t in lines
                    if len(t) > 1 and t[0] != "(unknown)"
                }, (name, text)
