"""The results of `uniobs compare`: one JSON document, the single source every report renders from.

`uniobs compare --json results.json` writes it; `uniobs compare --from results.json` renders it
again; `uniobs compare --diff old.json new.json` compares two. Plain dicts with a schema tag
keep it readable by any tool; the helpers here build and check them.

    {
      "schema": "uniobs.compare/1",
      "function": {"name": "hello-node", "definition": "examples/hello-node/function.toml"},
      "host": {"hostname": ..., "kernel": ..., "cpus": 2, "memory_bytes": ..., "os": ...,
               "uniobs_version": ..., "accelerator": "tcg", "accelerator_reason": ...,
               "versions": {"qemu": "7.2.x", "runc": "1.1.5", "node": ...}},
      "runs_per_side": 5, "started_at": "2026-11-26T17:30:00Z", "duration_s": 81.2,
      "sides": [ SIDE, ... ],         # in the order the definition lists them: 1, 2, 3 or more
      "skipped": [SKIPPED, ...]       # sides this host could not build; since uniobs 0.2
    }

    SIDE = {
      "side": "nanos",                # the definition's table; absent from older files (= shrinkwrap)
      "shrinkwrap": "unikernel" | "container", "runtime": "qemu" | "solo5-hvt" | "runc" | "podman" | ...,
      "label": "unikernel (QEMU microvm, TCG)",
      "image": {"files": [{"path": ..., "bytes": ...}], "bytes": N, "compressed_bytes": N,
                "compression": "gzip -6", "method": "..."},
      "coldstart": {"samples_s": [...], "median_s": x, "p95_s": x, "min_s": x, "max_s": x,
                    "failures": N, "phases": {"guest_boot": {"median_s": x, "samples_s": [...]}, ...},
                    "method": "..."},
      "memory": {"idle": MEMORY, "load": MEMORY,    # {} when not measured
                 "timeline": [[seconds since launch, bytes], ...], "timeline_metric": "...",
                 "method": "..."},
      "cpu": {"idle_percent": x|null, "load_percent": x|null, "method": "..."},
      "load": {"requests": N, "errors": N, "duration_s": x, "rps": x} | null,
      "attack_surface": {"executables": N|null, "shared_libraries": N|null, "shell": bool|null,
                         "setuid_files": N|null,      # null: unknown, the image could not be read whole
                         "listening_sockets": N|null, "syscalls": N|null, "seccomp_profile_syscalls": N|null,
                         "host_devices": [...], "complete": bool,
                         "unknown": {"executables": "why", ...},   # only where a figure is unknown
                         "method": "..."},
      "observability": {"metrics": [names...], "logs": N, "trace_phases": [...],
                        "guest_spans": N, "guest_metrics": N, "method": "..."},
      "windows": [WINDOW, ...],       # since uniobs 0.2; absent from older files
      "invocations": INVOCATIONS      # since uniobs 0.3; absent from older files
    }

    INVOCATIONS = {                   # seconds and bytes; null: not measured (see "unknown")
      "cold_p50_s": x, "cold_p95_s": x,          # the request that launched an instance: sent -> response
      "warm_p50_s": x, "warm_p99_s": x, "warm_invocations": N,
      "resume_p50_s": x,                         # the request that resumed a paused instance
      "resume_host_p50_s": x,                    # the resume alone (QMP cont, runc resume), as the host timed it
      "max_memory_used_bytes": N, "max_memory_used_max_bytes": N,  # REPORT Max Memory Used: median, max
      "load_invocations": N, "load_errors": N, "load_throughput_per_s": x,
      "load_p50_s": x, "load_p90_s": x, "load_p99_s": x,
      "runs": [{"run": 1, "instance": "<faas.instance>", "sent": N, "spans": N, "faas_invocations": N,
                "cold_s": x, "init_s": x, "resume_s": x, "resume_host_s": x,
                "cold_spans": N, "warm_spans": N, "load_spans": N, "resume_spans": N}, ...],
      "windows": [{"run": 1, "phase": "cold" | "warm" | "load" | "resume", "instance": "<faas.instance>",
                   "start_unix_nano": N, "end_unix_nano": N, "sent": N, "spans": N}, ...],
      "unknown": {"resume_p50_s": "not paused: why", ...},   # only where a figure is unknown
      "method": "..."
    }                                 # a side whose invocations cannot be observed: {"method": "not measured: why"}

    SKIPPED = {"side": "nanos", "shrinkwrap": "unikernel", "label": "...",
               "reason": "no Nanos toolchain on this host (set NANOS_DIR or install ops)"}
    MEMORY = {"rss_bytes": N|null, "pss_bytes": N|null, "cgroup_bytes": N|null, "runtime_rss_bytes": N|null}
    WINDOW = {"run": 1, "phase": "idle" | "load", "instance": "<faas.instance>",
              "start_unix_nano": N, "end_unix_nano": N}

Every figure block carries "method": how it was measured, in words a reader can check. A figure
that could not be measured is null; where it is null because it is unknown (not merely not
applicable, like a VM's cgroup memory), its block's "unknown" says why, and no side wins that row. The memory
and CPU figures are computed from the telemetry uniobs exported: each `windows` entry names the
instance (its `faas.instance` resource attribute) and the span of time (the data points'
`timeUnixNano`) one measurement window covered, so they can be checked against any backend. The
invocation figures likewise come from the exported invocation spans (their start and end),
REPORT records and `faas.invocations` points of the instance and window each
`invocations.windows` entry names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

SCHEMA = "uniobs.compare/1"

# Table rows: (key path, label, unit, better) — better is "lower", "higher" or None (no winner).
ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("image.bytes", "image size on disk", "bytes", "lower"),
    ("image.compressed_bytes", "image size, compressed", "bytes", "lower"),
    ("coldstart.median_s", "cold start to ready, median", "s", "lower"),
    ("coldstart.p95_s", "cold start to ready, p95", "s", "lower"),
    ("memory.idle.rss_bytes", "memory idle: VMM/process RSS", "bytes", "lower"),
    ("memory.idle.pss_bytes", "memory idle: VMM/process PSS", "bytes", "lower"),
    ("memory.idle.cgroup_bytes", "memory idle: cgroup", "bytes", "lower"),
    ("memory.load.rss_bytes", "memory under load: RSS", "bytes", "lower"),
    ("memory.load.cgroup_bytes", "memory under load: cgroup", "bytes", "lower"),
    ("cpu.idle_percent", "CPU idle", "%", "lower"),
    ("cpu.load_percent", "CPU under load", "%", "lower"),
    ("invocations.cold_p50_s", "cold request (sent → response), p50", "s", "lower"),
    ("invocations.cold_p95_s", "cold request (sent → response), p95", "s", "lower"),
    ("invocations.warm_p50_s", "warm invocation, p50", "s", "lower"),
    ("invocations.warm_p99_s", "warm invocation, p99", "s", "lower"),
    ("invocations.resume_p50_s", "request resuming from pause, p50", "s", "lower"),
    ("invocations.max_memory_used_bytes", "max memory used per invocation, median", "bytes", "lower"),
    ("invocations.max_memory_used_max_bytes", "max memory used per invocation, max", "bytes", "lower"),
    ("invocations.load_throughput_per_s", "load: invocations per second", "/s", "higher"),
    ("invocations.load_p50_s", "load: invocation latency p50", "s", "lower"),
    ("invocations.load_p90_s", "load: invocation latency p90", "s", "lower"),
    ("invocations.load_p99_s", "load: invocation latency p99", "s", "lower"),
    ("invocations.load_errors", "load: invocation errors", "count", "lower"),
    ("attack_surface.executables", "executables in the image", "count", "lower"),
    ("attack_surface.shared_libraries", "shared libraries in the image", "count", "lower"),
    ("attack_surface.shell", "a shell in the image", "bool", "lower"),
    ("attack_surface.setuid_files", "setuid/setgid files", "count", "lower"),
    ("attack_surface.listening_sockets", "listening sockets", "count", "lower"),
    ("attack_surface.syscalls", "syscalls the VMM/runtime may make", "count", "lower"),
    ("attack_surface.host_devices", "host devices exposed", "list", "lower"),
    ("observability.coverage", "observability: signals obtained", "count", "higher"),
)


class MemoryFigures(TypedDict):
    """MEMORY: one window's (or the median launch's) memory figures, in bytes."""

    rss_bytes: int | None
    pss_bytes: int | None
    cgroup_bytes: int | None
    runtime_rss_bytes: int | None


class Window(TypedDict):
    """WINDOW: which exported telemetry one measurement window's figures were computed from."""

    run: int
    phase: str
    instance: str
    start_unix_nano: int
    end_unix_nano: int


class ResultsError(ValueError):
    """A results file that is not a uniobs comparison, or is damaged."""


def lookup(side: Mapping[str, Any], path: str) -> Any:
    """A value by dotted path, or None where any part is missing."""
    if path == "observability.coverage":
        return coverage(side)  # derived, not stored
    node: Any = side
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def coverage(side: Mapping[str, Any]) -> int | None:
    """How many kinds of signal uniobs obtained: metrics, logs, each trace phase, guest spans/metrics
    (None when the side has no observability figures at all)."""
    obs = side.get("observability")
    if not obs:
        return None
    return (
        (1 if obs.get("metrics") else 0)
        + (1 if obs.get("logs") else 0)
        + len(obs.get("trace_phases") or [])
        + (1 if obs.get("guest_spans") else 0)
        + (1 if obs.get("guest_metrics") else 0)
    )


def comparable(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, list):
        return float(len(value))
    return None


def unknown(side: Mapping[str, Any], path: str) -> str | None:
    """Why a side's figure is unknown ("attack_surface.executables" -> the attack_surface block's
    unknown["executables"]), or None where it is known or merely not applicable."""
    block, _, key = path.partition(".")
    reasons = (side.get(block) or {}).get("unknown") if isinstance(side.get(block), Mapping) else None
    reason = reasons.get(key) if isinstance(reasons, Mapping) else None
    return str(reason) if reason else None


def side_name(side: Mapping[str, Any]) -> str:
    """The side's name: its definition table ("nanos"), or its shrink-wrap in files older than 0.2."""
    return str(side.get("side") or side.get("shrinkwrap") or "?")


def winners(sides: Sequence[Mapping[str, Any]], path: str, better: str | None) -> set[int]:
    """Indexes of the sides that win a row (ties: all of them; one side or no figure: none; a side
    whose figure is unknown: none, since it might have been the best)."""
    if better is None or len(sides) < 2:
        return set()
    if any(unknown(s, path) for s in sides):
        return set()
    values = {i: comparable(lookup(s, path)) for i, s in enumerate(sides)}
    known = {i: v for i, v in values.items() if v is not None}
    if len(known) < 2:
        return set()
    best = min(known.values()) if better == "lower" else max(known.values())
    if all(v == best for v in known.values()):
        return set()
    return {i for i, v in known.items() if v == best}


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def load(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: cannot read a comparison: {exc}") from None
    validate(data, str(path))
    return data  # type: ignore[no-any-return]


def validate(data: Any, where: str = "results") -> None:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsError(f"{where}: not a uniobs comparison (schema {SCHEMA!r} expected)")
    sides = data.get("sides")
    if not isinstance(sides, list) or not sides:
        raise ResultsError(f"{where}: no sides")
    for side in sides:
        if not isinstance(side, dict) or side.get("shrinkwrap") not in ("unikernel", "container"):
            raise ResultsError(f"{where}: a side without a shrinkwrap of unikernel or container")
    skipped = data.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(s, dict) for s in skipped):
        raise ResultsError(f"{where}: skipped: expected a list of sides")


def dump(data: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
