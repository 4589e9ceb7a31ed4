"""Reports of a comparison: the table from the talk, for a terminal, in Markdown, and as one HTML page.

Everything here renders a `uniobs.compare/1` document (see `uniobs.results`, whose docstring is
the schema) and nothing else: no measurement, no I/O except `write_reports`. The table has one
row per `uniobs.results.ROWS` entry that any side has a figure for and one column per side (one,
two, three or more); the better figure of a row is marked ★ (ties, rows where only one side has a
figure, and rows where a side's figure is unknown get none). A figure not measured is shown as
"—", one that could not be measured (the block's `unknown` says why) as "unknown"; never guessed.
Sides the host could not build (`skipped`) are named, with the reason, in the header and notes.

    terminal_table(results, color=True)   # what `uniobs compare` prints
    markdown(results)                     # the table, the phases, and how each figure was measured
    html(results)                         # one self-contained page: the table and inline SVG charts
    diff(old, new)                        # two runs of the same function, row by row
    write_reports(results, out_dir)       # report.md, report.html, results.json

Units are decimal (kB, MB, GB = 10^3, 10^6, 10^9 bytes) with three significant figures, the way
image registries and the talk's table quote them. The HTML page has no script and loads nothing:
its charts are SVG drawn here, its palette follows the reader's light or dark preference.
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniobs.compare.results import ROWS, comparable, coverage, dump, lookup, side_name, unknown, validate, winners

MISSING = "—"
UNKNOWN = "unknown"
STAR = "★"
REGRESSION = "REGRESSION"
IMPROVED = "improved"

# The blocks of a side that carry a "method", in the order the table shows them.
BLOCKS: tuple[tuple[str, str], ...] = (
    ("image", "Image size"),
    ("coldstart", "Cold start"),
    ("memory", "Memory"),
    ("cpu", "CPU"),
    ("invocations", "Invocations"),
    ("attack_surface", "Attack surface"),
    ("observability", "Observability"),
)

# Cold-start phases in the order they happen (docs/coldstart.md); unknown phases follow, as found.
PHASE_ORDER = (
    "vmm_spawn", "guest_load", "guest_boot", "runtime_create", "runtime_start", "runtime_load", "app_init",
    "unattributed", "readiness", "first_request",
)  # fmt: skip

MEMORY_NOTE = (
    "The memory rows measure different things. A VMM's RSS is every guest page QEMU has touched plus "
    "QEMU's own memory, as the host sees one process; PSS divides the pages it shares with other "
    "processes (libraries) among them. A container's cgroup figure (memory.current) is what the kernel charges to "
    "its cgroup: the function's anonymous memory, page cache and kernel memory, but not the runtime "
    "outside it. Both are shown, labelled; compare a row across sides, not RSS with cgroup. Max memory used per "
    "invocation is each REPORT's, the instance's peak so far as Lambda's: a VM's VMM peak RSS (VmHWM), a "
    "container's cgroup peak."
)
STAR_NOTE = (
    f"{STAR} marks the better figure of a row (lower is better, except invocations per second and observability "
    "signals); "
    f"no mark on a tie, where only one side has a figure, or where a side's figure is {UNKNOWN}."
)

# Side colours (Tableau 10): readable on light and dark backgrounds, distinct for colour-blind readers.
SIDE_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2")
PHASE_COLORS = {
    "vmm_spawn": "#b07aa1",
    "guest_load": "#d4a6c8",
    "guest_boot": "#76b7b2",
    "runtime_load": "#a0cbe8",
    "unattributed": "#79706e",
    "runtime_create": "#9c755f",
    "runtime_start": "#edc948",
    "app_init": "#59a14f",
    "readiness": "#ff9da7",
    "first_request": "#bab0ac",
}
EXTRA_PHASE_COLORS = ("#e15759", "#86bcb6", "#d37295", "#8cd17d", "#f1ce63")

_GREEN, _BOLD, _DIM, _RESET = "\x1b[32m", "\x1b[1m", "\x1b[2m", "\x1b[0m"


# ---------------------------------------------------------------- units


def _sig3(v: float) -> str:
    """Three significant figures, trailing zeros kept ("92.0", "1.23", "101")."""
    if v == 0:
        return "0"
    rounded = round(v, 2 - math.floor(math.log10(abs(v))))  # 0.9997 -> 1.0: one more digit left of the point
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale * 0.9995:  # 999.6 kB reads better as 1.00 MB
            return f"{_sig3(n / scale)} {unit}"
    return f"{round(n)} B"


def fmt_seconds(s: float) -> str:
    if abs(s) < 0.9995:
        return f"{_sig3(s * 1000)} ms"
    return f"{_sig3(s)} s"


def fmt_percent(p: float) -> str:
    return f"{p:.1f} %"


def fmt_count(n: float) -> str:
    if isinstance(n, int) or float(n).is_integer():
        return f"{int(n):,}"
    return _sig3(n)


def fmt_value(value: Any, unit: str) -> str:
    """A figure in the unit of its row; None (not measured) is "—"."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if not value:
            return "0"
        names = ", ".join(str(v) for v in value)
        # a table cell stays narrow: the full list is in results.json
        return f"{len(value)}: {names if len(names) <= 40 else names[:39] + '…'}"
    if not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "s":
        return fmt_seconds(value)
    if unit == "%":
        return fmt_percent(value)
    if unit == "/s":
        return f"{fmt_count(value)}/s"
    return fmt_count(value)


def fmt_change(old: float, new: float) -> str:
    if old == new:
        return "0.0 %"
    if old == 0:
        return "from 0"
    return f"{(new - old) / abs(old) * 100:+.1f} %"


# ---------------------------------------------------------------- the table, format-neutral


@dataclass(frozen=True)
class Row:
    path: str
    label: str
    unit: str
    better: str | None
    cells: tuple[str, ...]  # formatted, one per side
    winners: frozenset[int]


def _sides(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The sides, with observability.coverage computed where the writer left it out."""
    out: list[Mapping[str, Any]] = []
    for side in results["sides"]:
        obs = side.get("observability")
        if isinstance(obs, Mapping) and obs.get("coverage") is None:
            side = {**side, "observability": {**obs, "coverage": coverage(side)}}
        out.append(side)
    return out


def table_rows(results: Mapping[str, Any]) -> list[Row]:
    """The rows any side has a figure for, formatted, with their winners."""
    validate(results)
    sides = _sides(results)
    rows = []
    for path, label, unit, better in ROWS:
        values = [lookup(s, path) for s in sides]
        if all(v is None for v in values):
            continue
        cells = tuple(
            UNKNOWN if v is None and unknown(side, path) else fmt_value(v, unit)
            for side, v in zip(sides, values, strict=True)
        )
        rows.append(Row(path, label, unit, better, cells, frozenset(winners(sides, path, better))))
    return rows


def _labels(results: Mapping[str, Any]) -> list[str]:
    return [str(s.get("label") or f"{s.get('shrinkwrap')} ({s.get('runtime', '?')})") for s in results["sides"]]


def _accelerator(host: Mapping[str, Any]) -> str:
    accel = host.get("accelerator")
    name = {"kvm": "KVM", "tcg": "TCG"}.get(str(accel).lower(), str(accel).upper()) if accel else MISSING
    reason = host.get("accelerator_reason")
    return f"{name} ({reason})" if reason else name


def header(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, text) lines that say what was compared, where, and with what."""
    fn = results.get("function") or {}
    host = results.get("host") or {}
    name = str(fn.get("name") or MISSING)
    function = f"{name} ({fn['definition']})" if fn.get("definition") else name
    machine = [str(host[k]) for k in ("hostname", "os", "kernel") if host.get(k)]
    if host.get("cpus"):
        machine.append(f"{host['cpus']} CPUs")
    if host.get("memory_bytes"):
        machine.append(f"{fmt_bytes(host['memory_bytes'])} memory")
    versions = [f"{k} {v}" for k, v in (host.get("versions") or {}).items()]
    if host.get("uniobs_version"):
        versions.append(f"uniobs {host['uniobs_version']}")
    runs = [f"{results['runs_per_side']} per side" if results.get("runs_per_side") is not None else MISSING]
    if results.get("started_at"):
        runs.append(f"started {results['started_at']}")
    if isinstance(results.get("duration_s"), int | float):
        runs.append(f"took {fmt_seconds(results['duration_s'])}")
    out = [
        ("function", function),
        ("host", " · ".join(machine) or MISSING),
        ("accelerator", _accelerator(host)),
        ("versions", " · ".join(versions) or MISSING),
        ("runs", " · ".join(runs)),
    ]
    if skipped(results):
        out.append(("skipped", "; ".join(f"{name}: {reason}" for name, reason in skipped(results))))
    return out


def skipped(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(side, reason) for each side of the definition this host could not build."""
    return [
        (str(s.get("side") or s.get("label") or "?"), str(s.get("reason") or "no reason recorded"))
        for s in results.get("skipped") or []
        if isinstance(s, Mapping)
    ]


def _kinds(results: Mapping[str, Any]) -> str:
    """What was compared, for a title: "nanos vs unikernel vs container"."""
    return " vs ".join(side_name(s) for s in results["sides"])


def phase_rows(results: Mapping[str, Any]) -> list[tuple[str, list[float | None]]]:
    """(phase, median seconds per side) for every phase any side observed, in the order they happen."""
    sides = results["sides"]
    per_side = [(s.get("coldstart") or {}).get("phases") or {} for s in sides]
    names = [p for p in PHASE_ORDER if any(p in ps for ps in per_side)]
    for ps in per_side:
        names += [p for p in ps if p not in names]
    out = []
    for name in names:
        medians: list[float | None] = []
        for ps in per_side:
            m = (ps.get(name) or {}).get("median_s")
            medians.append(float(m) if isinstance(m, int | float) else None)
        out.append((name, medians))
    return out


def phase_cells(results: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """`phase_rows` as table cells: a median that covers fewer cold starts than the side had (a
    phase some runs did not show) says over how many, "25.0 ms (2 of 3 runs)": medians over
    different runs do not add up to the cold start's."""
    counts = []
    for side in results["sides"]:
        coldstart = side.get("coldstart") or {}
        runs = len(coldstart.get("samples_s") or ())
        phases = coldstart.get("phases") or {}
        counts.append((runs, {name: len(p.get("samples_s") or ()) for name, p in phases.items()}))
    out = []
    for name, medians in phase_rows(results):
        cells = []
        for m, (runs, seen) in zip(medians, counts, strict=True):
            if m is None:
                cells.append(MISSING)
            elif 0 < seen.get(name, runs) < runs:
                cells.append(f"{fmt_seconds(m)} ({seen[name]} of {runs} runs)")
            else:
                cells.append(fmt_seconds(m))
        out.append((name, cells))
    return out


def _plural(n: Any, what: str, many: str | None = None) -> str:
    return f"{n:,} {what if n == 1 else many or what + 's'}"


def _observed(side: Mapping[str, Any]) -> str:
    obs = side.get("observability")
    if not isinstance(obs, Mapping):
        return MISSING
    parts = []
    if obs.get("metrics"):
        parts.append(_plural(len(obs["metrics"]), "metric"))
    if obs.get("logs"):
        parts.append(_plural(obs["logs"], "log record"))
    if obs.get("trace_phases"):
        parts.append(f"trace phases {', '.join(map(str, obs['trace_phases']))}")
    if obs.get("guest_spans"):
        parts.append(_plural(obs["guest_spans"], "guest span"))
    if obs.get("guest_metrics"):
        parts.append(_plural(obs["guest_metrics"], "guest metric"))
    return "; ".join(parts) or "nothing"


def notes(results: Mapping[str, Any]) -> list[str]:
    """The footnotes under the table: what ★ means, the memory caveat, failures, load, signals."""
    out = [STAR_NOTE, MEMORY_NOTE]
    for name, reason in skipped(results):
        out.append(f"{name}: skipped: {reason}.")
    for label, side in zip(_labels(results), results["sides"], strict=True):
        reasons: dict[str, list[str]] = {}
        for path, row_label, _, _ in ROWS:
            if lookup(side, path) is None and (why := unknown(side, path)):
                reasons.setdefault(why, []).append(row_label)
        for why, rows in reasons.items():
            out.append(f"{label}: {UNKNOWN} ({', '.join(rows)}): {why}.")
        cs = side.get("coldstart") or {}
        if cs.get("failures"):
            failed = _plural(cs["failures"], "launch", "launches")
            out.append(f"{label}: {failed} failed to become ready; the cold-start figures are of the others.")
        load = side.get("load")
        if isinstance(load, Mapping) and load.get("requests") is not None:
            rps = f", {load['rps']:.0f} req/s" if isinstance(load.get("rps"), int | float) else ""
            over = f" over {fmt_seconds(load['duration_s'])}" if isinstance(load.get("duration_s"), int | float) else ""
            out.append(f"{label}: load of {load['requests']:,} requests, {load.get('errors', 0):,} errors{rps}{over}.")
        if isinstance(side.get("observability"), Mapping):
            out.append(f"{label}: signals obtained: {_observed(side)}.")
    return out


def methods(results: Mapping[str, Any]) -> list[tuple[str, list[tuple[str | None, str]]]]:
    """(block title, [(side label or None for all sides, method)]) for every block with a method."""
    labels = _labels(results)
    sides = results["sides"]
    keys = [k for k, _ in BLOCKS]
    extra = [k for s in sides for k, v in s.items() if isinstance(v, Mapping) and "method" in v and k not in keys]
    titles = dict(BLOCKS)
    out = []
    for key in keys + list(dict.fromkeys(extra)):
        found: list[tuple[str, str]] = []
        for label, side in zip(labels, sides, strict=True):
            block = side.get(key)
            if isinstance(block, Mapping) and block.get("method"):
                method = str(block["method"])
                compression, metric = str(block.get("compression") or ""), str(block.get("timeline_metric") or "")
                if key == "image" and compression and compression not in method:
                    method += f" Compressed with {compression}."
                if key == "memory" and metric and metric not in method:
                    method += f" Timeline: {metric}."
                found.append((label, method))
        if not found:
            continue
        title = titles.get(key, key.replace("_", " ").capitalize())
        entries: list[tuple[str | None, str]] = list(found)
        if len(found) == len(sides) and len({m for _, m in found}) == 1:
            entries = [(None, found[0][1])]
        out.append((title, entries))
    return out


# ---------------------------------------------------------------- terminal


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _grid(
    head: Sequence[str], body: Sequence[Sequence[str]], paint: Callable[[int, int, str], str], suffix: str = ""
) -> list[str]:
    """Columns sized to their plain text; paint(row, col, padded) adds colour after padding.

    A long column heading (a side's label) wraps onto more lines rather than widening its column
    past 36 characters; `suffix` ends each heading line of the value columns (room for the ★)."""
    widths = [max(len(r[c]) for r in body) if body else 0 for c in range(len(head))]
    heads = [[head[0]]] + [
        [line + suffix for line in _wrap(h, max(36, widths[c + 1]) - len(suffix))] for c, h in enumerate(head[1:])
    ]
    widths = [max(w, *(len(line) for line in h)) for w, h in zip(widths, heads, strict=True)]
    depth = max(len(h) for h in heads)
    heads = [[""] * (depth - len(h)) + h for h in heads]  # headings sit on the rule
    lines = [
        "   ".join(_pad(h[k], w, c > 0) for c, (h, w) in enumerate(zip(heads, widths, strict=True))).rstrip()
        for k in range(depth)
    ]
    lines.append("   ".join("─" * w for w in widths))
    for r, row in enumerate(body):
        cells = [paint(r, c, _pad(t, w, c > 0)) for c, (t, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("   ".join(cells).rstrip())
    return lines


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def terminal_table(results: Mapping[str, Any], color: bool) -> str:
    """The talk's table for a terminal: header, one row per figure, footnotes, then the phases."""
    rows = table_rows(results)
    labels = _labels(results)

    def style(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    fn = (results.get("function") or {}).get("name") or MISSING
    out = [style(_BOLD, f"uniobs compare: {fn}, {_kinds(results)}")]
    out += [f"{name:<12} {text}" for name, text in header(results)]
    out.append("")

    body = [[r.label] + [c + (f" {STAR}" if i in r.winners else "  ") for i, c in enumerate(r.cells)] for r in rows]

    def paint(r: int, c: int, text: str) -> str:
        if c > 0 and (c - 1) in rows[r].winners:
            return style(_GREEN + _BOLD, text)
        if c > 0 and rows[r].cells[c - 1] in (MISSING, UNKNOWN):
            return style(_DIM, text)
        return text

    out += _grid(["figure", *labels], body, paint, suffix="  ")
    out.append("")
    for note in notes(results):
        out += [style(_DIM, line) for line in _wrap(note, 100, "  ")]

    phases = phase_cells(results)
    if phases:
        out.append("")
        out.append(style(_BOLD, "cold-start phases, median per side"))
        pbody = [[name, *cells] for name, cells in phases]
        out += _grid(["phase", *labels], pbody, lambda r, c, t: style(_DIM, t) if t.strip() == MISSING else t)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- Markdown


def _md(text: Any) -> str:
    """Text safe in a Markdown table cell: no raw HTML, no column breaks, one line."""
    return _html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]], align: str | Sequence[str] = "---:") -> list[str]:
    """A table; `align` is the rule of every column after the first, or of each column."""
    rules = ["---", *[align] * (len(head) - 1)] if isinstance(align, str) else list(align)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """The table in GitHub Markdown, the phases, the footnotes and how each figure was measured."""
    rows = table_rows(results)
    labels = [_md(label) for label in _labels(results)]
    fn = (results.get("function") or {}).get("name") or MISSING
    out = [f"# uniobs compare: {_md(fn)}", ""]
    out += [f"- **{name}**: {_md(text)}" for name, text in header(results)]
    out += ["", "## Figures", ""]
    body = []
    for r in rows:
        cells = [f"**{_md(c)}** {STAR}" if i in r.winners else _md(c) for i, c in enumerate(r.cells)]
        body.append([_md(r.label), *cells])
    out += _md_table(["figure", *labels], body)
    out.append("")
    out += [f"- {_md(n)}" for n in notes(results)]
    phases = phase_cells(results)
    if phases:
        out += ["", "## Cold-start phases (median)", ""]
        pbody = [[f"`{_md(name)}`", *cells] for name, cells in phases]
        out += _md_table(["phase", *labels], pbody)
    out += ["", "## How each figure was measured", ""]
    for title, entries in methods(results):
        out += [f"### {_md(title)}", ""]
        out += [f"- {_md(m)}" if who is None else f"- **{_md(who)}**: {_md(m)}" for who, m in entries]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------- SVG charts

_W = 560  # every chart's viewBox width; the page scales it to its column
_FONT = 12.5


def _e(text: Any) -> str:
    return _html.escape(str(text), quote=True)


def _text_w(text: str, size: float = _FONT) -> float:
    return len(text) * size * 0.55  # DejaVu Sans averages ~0.5 em per character: a safe upper estimate


def _clip(text: str, width: float, size: float = _FONT) -> str:
    n = int(width / (size * 0.55))
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def _nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= m * mag * (1 + 1e-9))


def _linear_ticks(hi: float, n: int = 5) -> list[float]:
    hi = hi if hi > 0 else 1.0
    step = _nice_step(hi, n)
    top = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(top + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks from the one at or below lo to the one at or above hi."""
    ticks = [
        m * 10.0**d for d in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)
    ]
    first = max(t for t in ticks if t <= lo * (1 + 1e-9))
    last = min(t for t in ticks if t >= hi * (1 - 1e-9))
    return [t for t in ticks if first <= t <= last]


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi
    log: bool = False

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo) if self.hi != self.lo else 0.0
        return self.a + f * (self.b - self.a)


def _tick_seconds(v: float) -> str:
    if v == 0:
        return "0"
    return f"{round(v * 1000, 6):g} ms" if v < 1 else f"{round(v, 6):g} s"


def _byte_unit(hi: float) -> tuple[str, float]:
    return next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if hi >= s), ("B", 1.0))


def _svg(height: float, title: str, body: list[str]) -> str:
    return (
        f'<svg viewBox="0 0 {_W} {height:.0f}" width="100%" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="{_FONT}"><title>{_e(title)}</title>' + "".join(body) + "</svg>"
    )


def _x_axis(scale: _Scale, ticks: Sequence[float], y: float, top: float, label: Callable[[float], str]) -> list[str]:
    out = [f'<line class="axis" x1="{scale.a:.1f}" x2="{scale.b:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>']
    for t in ticks:
        x = scale(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{y + 15:.1f}" text-anchor="middle">{_e(label(t))}</text>')
    return out


def _no_data(title: str, why: str) -> str:
    return _svg(60, title, [f'<text class="muted" x="{_W / 2}" y="34" text-anchor="middle">{_e(why)}</text>'])


def svg_coldstart(results: Mapping[str, Any]) -> str:
    """A strip plot of every cold start per side, the median marked; log scale when sides differ 20 times."""
    title = "Cold start to ready, every run"
    sides = results["sides"]
    samples = [[float(x) for x in ((s.get("coldstart") or {}).get("samples_s") or [])] for s in sides]
    flat = [x for xs in samples for x in xs if x > 0]
    if not flat:
        return _no_data(title, "no cold-start samples")
    lo, hi = min(flat), max(flat)
    log = hi / lo > 20
    ticks = _log_ticks(lo, hi) if log else _linear_ticks(hi)
    scale = _Scale(ticks[0], ticks[-1], 24, _W - 24, log)
    band, top = 74, 8
    body: list[str] = []
    axis_y = top + band * len(sides) + 4
    body += _x_axis(scale, ticks, axis_y, top, _tick_seconds)
    for i, (side, xs) in enumerate(zip(sides, samples, strict=True)):
        y0 = top + band * i
        cs = side.get("coldstart") or {}
        color = SIDE_COLORS[i % len(SIDE_COLORS)]
        stats = [f"{len(xs)} runs"]
        median = cs.get("median_s")
        if isinstance(median, int | float):
            stats.insert(0, f"median {fmt_seconds(median)}")
        if isinstance(cs.get("p95_s"), int | float):
            stats.insert(1, f"p95 {fmt_seconds(cs['p95_s'])}")
        if cs.get("failures"):
            stats.append(f"{cs['failures']} failed")
        label = _labels(results)[i]
        tail = " — " + ", ".join(stats)
        head = _clip(label, _W - 48 - _text_w(tail))
        body.append(f'<text class="label" x="24" y="{y0 + 14}"><tspan font-weight="600">{_e(head)}</tspan>')
        body.append(f'<tspan class="muted">{_e(tail)}</tspan></text>')
        cy = y0 + 44
        for k, x in enumerate(xs):
            jitter = ((k * 37) % 11 - 5) * 2.4
            body.append(
                f'<circle cx="{scale(x):.1f}" cy="{cy + jitter:.1f}" r="4.5" fill="{color}" '
                f'fill-opacity="0.75" stroke="{color}"/>'
            )
        if isinstance(median, int | float) and median > 0:
            mx = scale(float(median))
            body.append(f'<line class="median" x1="{mx:.1f}" x2="{mx:.1f}" y1="{cy - 18}" y2="{cy + 18}"/>')
    axis_title = "seconds from exec to ready" + (" (log scale)" if log else "") + "; bar: median"
    body.append(f'<text class="muted" x="{_W / 2}" y="{axis_y + 32}" text-anchor="middle">{_e(axis_title)}</text>')
    return _svg(axis_y + 42, title, body)


def _legend(items: Sequence[tuple[str, str]], y: float, x0: float = 24) -> tuple[list[str], float]:
    """Swatches in rows; items are (svg of a 12 px swatch at 0,0, text). Returns the svg and the next y."""
    out: list[str] = []
    x = x0
    for swatch, text in items:
        text = _clip(text, _W - x0 - 30, 11 * 1.09)  # 0.6 em per character: never past the edge
        w = 18 + len(text) * 11 * 0.62 + 12  # generous: a legend entry must never touch the next
        if x > x0 and x + w > _W - 8:
            x, y = x0, y + 18
        out.append(f'<g transform="translate({x:.1f},{y - 10:.1f})">{swatch}</g>')
        out.append(f'<text class="tick" x="{x + 17:.1f}" y="{y:.1f}">{_e(text)}</text>')
        x += w
    return out, y + 18


def svg_waterfall(results: Mapping[str, Any]) -> str:
    """Median phase durations stacked in order, one bar per side, the cold-start median marked."""
    title = "Where a cold start goes: median of each phase"
    sides = results["sides"]
    phases = phase_rows(results)
    if not phases:
        return _no_data(title, "no cold-start phases were observed")
    colors = {}
    for k, (name, _) in enumerate(phases):
        colors[name] = PHASE_COLORS.get(name) or EXTRA_PHASE_COLORS[k % len(EXTRA_PHASE_COLORS)]
    totals = [sum(m[i] or 0.0 for _, m in phases) for i in range(len(sides))]
    medians = [(s.get("coldstart") or {}).get("median_s") for s in sides]
    ends = [max(t, float(m) if isinstance(m, int | float) else 0.0) for t, m in zip(totals, medians, strict=True)]
    positive = [e for e in ends if e > 0]
    # One shared scale unless a side would be a sliver: then each bar gets its own, with its own ticks.
    shared = not positive or max(positive) / min(positive) < 4
    band, top = 64 if shared else 78, 8
    x0, x1 = 24, _W - 84
    body: list[str] = []
    shared_ticks = _linear_ticks(max(positive or [1.0]), 6)
    shared_scale = _Scale(0, shared_ticks[-1], x0, x1)
    y: float = top + band * len(sides)
    if shared:  # first: under the bars
        body += _x_axis(shared_scale, shared_ticks, y, top, _tick_seconds)
    for i in range(len(sides)):
        y0 = top + band * i
        ticks = shared_ticks if shared else _linear_ticks(ends[i] or 1.0, 5)
        scale = shared_scale if shared else _Scale(0, ticks[-1], x0, x1)
        bar_y = y0 + 22
        if not shared:
            body += _x_axis(scale, ticks, bar_y + 30, bar_y - 4, _tick_seconds)
        side_label = _e(_clip(_labels(results)[i], x1 - x0))
        body.append(f'<text class="label" x="{x0}" y="{y0 + 14}" font-weight="600">{side_label}</text>')
        at = 0.0
        for name, ms in phases:
            m = ms[i]
            if not m:
                continue
            a, b = scale(at), scale(at + m)
            body.append(
                f'<rect x="{a:.1f}" y="{bar_y}" width="{max(b - a, 0.8):.1f}" height="22" fill="{colors[name]}">'
                f"<title>{_e(name)}: {_e(fmt_seconds(m))}</title></rect>"
            )
            text = fmt_seconds(m)
            if b - a > _text_w(text, 10.5) + 6:
                body.append(
                    f'<text class="inbar" x="{(a + b) / 2:.1f}" y="{bar_y + 15}" text-anchor="middle" '
                    f'font-size="10.5">{_e(text)}</text>'
                )
            at += m
        m = medians[i]
        mx = scale(float(m)) if isinstance(m, int | float) and m > 0 else None
        if mx is not None:
            body.append(f'<line class="median dashed" x1="{mx:.1f}" x2="{mx:.1f}" y1="{bar_y - 5}" y2="{bar_y + 27}"/>')
        if at == 0:
            body.append(f'<text class="muted" x="{x0}" y="{bar_y + 15}">no phases observed</text>')
        else:
            tx = max(scale(at), mx or 0.0) + 6  # after the bar and the median mark, whichever is further
            body.append(f'<text class="tick" x="{tx:.1f}" y="{bar_y + 15}">Σ {_e(fmt_seconds(at))}</text>')
    y += 34 if shared else 8
    items = [(f'<rect width="12" height="12" fill="{colors[n]}"/>', n) for n, _ in phases]
    items.append(('<line class="median dashed" x1="6" x2="6" y1="-2" y2="14"/>', "cold-start median (exec → ready)"))
    legend, y = _legend(items, y + 4)
    body += legend
    note = (
        "one time scale for all bars" if shared else "each bar has its own time scale: compare the Σ, not the lengths"
    )
    body.append(f'<text class="muted" x="{x0}" y="{y + 2:.1f}">{_e(note)}</text>')
    return _svg(y + 10, title, body)


def svg_memory(results: Mapping[str, Any]) -> str:
    """Memory over time per side, one line each, from launch."""
    title = "Memory over time"
    sides = results["sides"]
    lines: list[tuple[int, list[tuple[float, float]], str]] = []
    for i, s in enumerate(sides):
        mem = s.get("memory") or {}
        pts = [(float(t), float(v)) for t, v in (mem.get("timeline") or []) if v is not None]
        if pts:
            lines.append((i, pts, str(mem.get("timeline_metric") or "memory")))
    if not lines:
        return _no_data(title, "no memory timeline")
    labels = _labels(results)
    items = [
        (
            f'<rect y="4" width="14" height="3" fill="{SIDE_COLORS[i % len(SIDE_COLORS)]}"/>',
            f"{_clip(labels[i], 300)} — {metric}",
        )
        for i, _, metric in lines
    ]
    legend, top = _legend(items, 16)
    x0, x1, plot_h = 64, _W - 16, 220
    y_axis = top + plot_h
    t_hi = max(t for _, pts, _ in lines for t, _ in pts)
    v_hi = max(v for _, pts, _ in lines for _, v in pts)
    unit, div = _byte_unit(v_hi)
    vticks = [t * div for t in _linear_ticks(v_hi / div, 5)]
    tticks = _linear_ticks(t_hi, 6)
    xs = _Scale(0, tticks[-1], x0, x1)
    ys = _Scale(0, vticks[-1], y_axis, top)
    body = list(legend)
    body += _x_axis(xs, tticks, y_axis, top, lambda t: f"{round(t, 6):g}")
    for v in vticks:
        y = ys(v)
        body.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(
            f'<text class="tick" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(f"{round(v / div, 6):g}")}</text>'
        )
    body.append(f'<line class="axis" x1="{x0}" x2="{x0}" y1="{top}" y2="{y_axis}"/>')
    for i, pts, _ in lines:
        color = SIDE_COLORS[i % len(SIDE_COLORS)]
        path = " ".join(f"{xs(t):.1f},{ys(v):.1f}" for t, v in sorted(pts))
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5" stroke-linejoin="round"/>'
        )
        if len(pts) <= 40:
            body += [f'<circle cx="{xs(t):.1f}" cy="{ys(v):.1f}" r="2.5" fill="{color}"/>' for t, v in pts]
    body.append(
        f'<text class="muted" x="{(x0 + x1) / 2}" y="{y_axis + 32}" text-anchor="middle">seconds since launch</text>'
    )
    body.append(
        f'<text class="muted" transform="translate(16,{(top + y_axis) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">memory ({unit})</text>'
    )
    return _svg(y_axis + 42, title, body)


def svg_image(results: Mapping[str, Any]) -> str:
    """Image size per side: on disk and compressed, side by side."""
    title = "Image size: on disk and compressed"
    sides = results["sides"]
    sizes = [((s.get("image") or {}).get("bytes"), (s.get("image") or {}).get("compressed_bytes")) for s in sides]
    known = [float(v) for pair in sizes for v in pair if isinstance(v, int | float)]
    if not known:
        return _no_data(title, "no image sizes")
    unit, div = _byte_unit(max(known))
    ticks = [t * div for t in _linear_ticks(max(known) / div, 5)]
    x0, x1 = 24, _W - 110
    scale = _Scale(0, ticks[-1], x0, x1)
    win_disk = winners(sides, "image.bytes", "lower")
    win_gz = winners(sides, "image.compressed_bytes", "lower")
    band, top = 66, 8
    y: float = top + band * len(sides)
    body = _x_axis(scale, ticks, y, top, lambda v: f"{round(v / div, 6):g}")  # first: under the bars
    for i, (disk, gz) in enumerate(sizes):
        y0 = top + band * i
        color = SIDE_COLORS[i % len(SIDE_COLORS)]
        side_label = _e(_clip(_labels(results)[i], x1 - x0))
        body.append(f'<text class="label" x="{x0}" y="{y0 + 14}" font-weight="600">{side_label}</text>')
        for k, (value, opacity, win) in enumerate(((disk, 1.0, i in win_disk), (gz, 0.45, i in win_gz))):
            by = y0 + 22 + k * 20
            if not isinstance(value, int | float):
                body.append(f'<text class="muted" x="{x0}" y="{by + 12}">{MISSING} not measured</text>')
                continue
            w = max(scale(float(value)) - x0, 1.0)
            body.append(
                f'<rect x="{x0}" y="{by}" width="{w:.1f}" height="16" fill="{color}" fill-opacity="{opacity}"/>'
            )
            text = fmt_bytes(value) + (f" {STAR}" if win else "")
            body.append(f'<text class="tick" x="{x0 + w + 6:.1f}" y="{by + 12}">{_e(text)}</text>')
    body.append(f'<text class="muted" x="{(x0 + x1) / 2}" y="{y + 32}" text-anchor="middle">{unit}</text>')
    compression = next(
        ((s.get("image") or {}).get("compression") for s in sides if (s.get("image") or {}).get("compression")), None
    )
    items = [
        ('<rect width="12" height="12" class="swatch-solid"/>', "on disk"),
        (
            '<rect width="12" height="12" class="swatch-light"/>',
            f"compressed ({compression})" if compression else "compressed",
        ),
        ("", f"{STAR} smaller"),
    ]
    legend, y = _legend(items, y + 52)
    body += legend
    return _svg(y, title, body)


# ---------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #ffffff; --fg: #1c1c1e; --muted: #66666e;
  --line: #dcdce0; --grid: #ececef; --win: #17803a; --winbg: #e3f3e7; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #141416; --card: #1d1d21; --fg: #e6e6e9; --muted: #9d9da6; --line: #38383f;
    --grid: #2a2a30; --win: #5fd07f; --winbg: #173623; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0 0; color: var(--muted); }
.meta dt { font-weight: 600; } .meta dd { margin: 0; color: var(--fg); }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600; font-size: 13px;
  background: var(--line); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: 13px; color: var(--muted); border-bottom: 2px solid var(--line); }
td.win { color: var(--win); background: var(--winbg); font-weight: 700; }
td.missing { color: var(--muted); }
.notes { color: var(--muted); font-size: 13px; padding-left: 18px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; } figure h3 { margin: 0 0 8px; }
figcaption { font-size: 12.5px; color: var(--muted); margin-top: 8px; }
svg text { fill: var(--fg); font-family: inherit; }
svg .muted { fill: var(--muted); } svg .tick { fill: var(--muted); font-size: 11px; }
svg .inbar { fill: #111; }
svg .label, svg .tick { paint-order: stroke; stroke: var(--card); stroke-width: 3px; stroke-linejoin: round; }
svg .axis { stroke: var(--muted); stroke-width: 1; } svg .grid { stroke: var(--grid); stroke-width: 1; }
svg .median { stroke: var(--fg); stroke-width: 2.5; } svg .dashed { stroke-dasharray: 4 3; stroke-width: 1.5; }
svg .swatch-solid { fill: var(--muted); } svg .swatch-light { fill: var(--muted); fill-opacity: 0.45; }
.methods li { margin: 3px 0; }
"""


def _caption(results: Mapping[str, Any], blocks: Sequence[str]) -> str:
    """How a chart's figures were measured (each block's method, per side where they differ) and on what."""
    labels = _labels(results)
    parts = []
    for block in blocks:
        found = [(label, (s.get(block) or {}).get("method")) for label, s in zip(labels, results["sides"], strict=True)]
        found = [(label, m) for label, m in found if m]
        if found and len({m for _, m in found}) == 1:
            parts.append(_e(found[0][1]))
        else:
            parts += [f"<b>{_e(label)}</b>: {_e(m)}" for label, m in found]
    host = results.get("host") or {}
    machine = ", ".join(str(host[k]) for k in ("hostname", "os", "kernel") if host.get(k)) or "an unnamed host"
    runs = results.get("runs_per_side")
    where = f"On {_e(machine)}, accelerator {_e(_accelerator(host))}" + (
        f", {_e(runs)} runs per side." if runs else "."
    )
    return "How: " + (" ".join(parts) if parts else "no method recorded.") + " " + where


def html(results: Mapping[str, Any]) -> str:
    """One self-contained page: header, the table with winners, charts (inline SVG), phases, methods."""
    rows = table_rows(results)
    labels = _labels(results)
    fn = (results.get("function") or {}).get("name") or MISSING
    kinds = _kinds(results)
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>uniobs compare: {_e(fn)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(fn)}: {_e(kinds)}</h1>",
        '<dl class="meta">',
    ]
    for name, text in header(results):
        value = f'<span class="badge">{_e(text)}</span>' if name == "accelerator" else _e(text)
        out.append(f"<dt>{_e(name)}</dt><dd>{value}</dd>")
    out.append("</dl>")

    out.append('<h2>Figures</h2><div class="card"><table><thead><tr><th>figure</th>')
    out += [f"<th>{_e(label)}</th>" for label in labels]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append(f"<tr><td>{_e(r.label)}</td>")
        for i, cell in enumerate(r.cells):
            if i in r.winners:
                out.append(f'<td class="win">{_e(cell)} {STAR}</td>')
            elif cell in (MISSING, UNKNOWN):
                out.append(f'<td class="missing">{cell}</td>')
            else:
                out.append(f"<td>{_e(cell)}</td>")
        out.append("</tr>")
    out.append('</tbody></table><ul class="notes">')
    out += [f"<li>{_e(n)}</li>" for n in notes(results)]
    out.append("</ul></div>")

    charts = [
        ("Cold start", svg_coldstart(results), ["coldstart"]),
        ("Cold-start phases", svg_waterfall(results), ["coldstart"]),
        ("Memory over time", svg_memory(results), ["memory"]),
        ("Image size", svg_image(results), ["image"]),
    ]
    out.append('<h2>Charts</h2><div class="charts">')
    for title, svg, blocks in charts:
        caption = _caption(results, blocks)
        out.append(f'<figure class="card"><h3>{_e(title)}</h3>{svg}<figcaption>{caption}</figcaption></figure>')
    out.append("</div>")

    phases = phase_cells(results)
    if phases:
        out.append('<h2>Cold-start phases, median</h2><div class="card"><table><thead><tr><th>phase</th>')
        out += [f"<th>{_e(label)}</th>" for label in labels]
        out.append("</tr></thead><tbody>")
        for name, texts in phases:
            cells = "".join(
                f'<td class="missing">{MISSING}</td>' if t == MISSING else f"<td>{_e(t)}</td>" for t in texts
            )
            out.append(f"<tr><td><code>{_e(name)}</code></td>{cells}</tr>")
        out.append("</tbody></table></div>")

    out.append('<h2>How each figure was measured</h2><div class="card methods">')
    for title, entries in methods(results):
        out.append(f"<h3>{_e(title)}</h3><ul>")
        out += [f"<li>{_e(m)}</li>" if who is None else f"<li><b>{_e(who)}</b>: {_e(m)}</li>" for who, m in entries]
        out.append("</ul>")
    out.append("</div></main></body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- diff


def _side_key(side: Mapping[str, Any]) -> str:
    return side_name(side)


def _pairs(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """Sides matched by name (the definition's table; the shrink-wrap in older files), else by label;
    in the new document's order."""

    def keyed(doc: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
        sides = _sides(doc)
        keys = [_side_key(s) for s in sides]
        if len(set(keys)) < len(keys):
            return {str(label): s for label, s in zip(_labels(doc), sides, strict=True)}
        return dict(zip(keys, sides, strict=True))

    a, b = keyed(old), keyed(new)
    keys = list(b) + [k for k in a if k not in b]
    return [(str((b.get(k) or a[k]).get("label") or k), a.get(k), b.get(k)) for k in keys]


def diff(old: Mapping[str, Any], new: Mapping[str, Any], threshold: float = 0.05) -> str:
    """Row by row and side by side, old → new with the relative change; worse by more than
    `threshold` is a REGRESSION, better by more than it is improved. A Markdown table."""
    validate(old, "old")
    validate(new, "new")

    def name(doc: Mapping[str, Any]) -> str:
        return str((doc.get("function") or {}).get("name") or MISSING)

    out = [f"# uniobs compare --diff: {_md(name(new))}", ""]
    for tag, doc in (("old", old), ("new", new)):
        host = doc.get("host") or {}
        when = doc.get("started_at") or MISSING
        out.append(f"- {tag}: {_md(when)} on {_md(host.get('hostname') or MISSING)}, {_md(_accelerator(host))}, "
                   f"{_md(doc.get('runs_per_side', MISSING))} runs per side")  # fmt: skip
    warnings = []
    if name(old) != name(new):
        warnings.append(f"different functions ({name(old)} → {name(new)}): the figures are not comparable")
    ao, an = ((d.get("host") or {}).get("accelerator") for d in (old, new))
    if ao != an:
        warnings.append(f"the accelerator changed ({ao} → {an}): unikernel timings are not comparable")
    ho, hn = ((d.get("host") or {}).get("hostname") for d in (old, new))
    if ho != hn:
        warnings.append(f"different hosts ({ho} → {hn})")
    out += [f"- **warning**: {_md(w)}" for w in warnings]
    out.append("")

    body = []
    regressions = improvements = 0
    pairs = _pairs(old, new)
    for path, label, unit, better in ROWS:
        for side_label, a, b in pairs:
            va = lookup(a, path) if a is not None else None
            vb = lookup(b, path) if b is not None else None
            if va is None and vb is None:
                continue
            body_row, mark = _diff_cells(va, vb, unit, better, threshold)
            regressions += mark == REGRESSION
            improvements += mark == IMPROVED
            body.append([_md(label), _md(side_label), *body_row])
    phase_names = [n for n, _ in phase_rows({"sides": [s for _, a, b in pairs for s in (a, b) if s is not None]})]
    for phase in phase_names:
        for side_label, a, b in pairs:
            va, vb = (_phase_median(s, phase) for s in (a, b))
            if va is None and vb is None:
                continue
            body_row, mark = _diff_cells(va, vb, "s", "lower", threshold)
            regressions += mark == REGRESSION
            improvements += mark == IMPROVED
            body.append([f"phase `{_md(phase)}`, median", _md(side_label), *body_row])
    out += _md_table(["figure", "side", "old → new", "change", ""], body, ["---", "---", "---:", "---:", "---"])
    out += ["", f"{regressions} regression{'s' * (regressions != 1)}, {improvements} improvement"
                f"{'s' * (improvements != 1)} (threshold {threshold * 100:g} %)."]  # fmt: skip
    return "\n".join(out) + "\n"


def _phase_median(side: Mapping[str, Any] | None, phase: str) -> Any:
    phases = ((side or {}).get("coldstart") or {}).get("phases") or {}
    return (phases.get(phase) or {}).get("median_s")


def _diff_cells(va: Any, vb: Any, unit: str, better: str | None, threshold: float) -> tuple[list[str], str]:
    """[old → new, change, mark] and the mark alone."""
    shown = f"{_md(fmt_value(va, unit))} → {_md(fmt_value(vb, unit))}"
    a, b = comparable(va), comparable(vb)
    if a is None or b is None:
        return [shown, MISSING, ""], ""
    change = MISSING if unit == "bool" else fmt_change(a, b)
    mark = ""
    if better is not None and a != b:
        rel = math.inf if a == 0 else abs(b - a) / abs(a)
        worse = b > a if better == "lower" else b < a
        if rel > threshold or unit == "bool":
            mark = REGRESSION if worse else IMPROVED
    return [shown, change, f"**{mark}**" if mark == REGRESSION else mark], mark


# ---------------------------------------------------------------- files


def write_reports(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """report.md, report.html and results.json in out_dir (created); their paths by format."""
    validate(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    paths["markdown"].write_text(markdown(results), encoding="utf-8")
    paths["html"].write_text(html(results), encoding="utf-8")
    dump(results, paths["json"])
    return paths
