"""The live view of `uniobs top`: a Textual app over a source's rows (`uniobs.top.local` / `remote`).

Measurement runs on the source's own thread; the table is rebuilt from the source's rows at most
twice a second, when new figures came or the sort or filter changed. Keys: q quit; s next sort
column (the same column again: reverse); a column's key sorts by it (n name, k kind, r runtime,
t state, u uptime, c CPU, m memory, o cold start, l lines/s, i invocations/s, e errors, 9 p99);
/ or f filter (typing filters at once, Enter keeps it, Esc clears it); p pause (the figures stay
as they are; measuring goes on).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from uniobs.top.model import COLUMNS, cells, filter_rows, headings, sort_rows

SORT_KEYS = {
    "n": "name",
    "k": "kind",
    "r": "runtime",
    "t": "state",
    "u": "uptime",
    "c": "cpu",
    "m": "memory",
    "o": "coldstart",
    "l": "console",
    "i": "invocations",
    "e": "errors",
    "9": "p99",
}
_NUMERIC = [descending for _, _, descending in COLUMNS.values()]


class TopApp(App[None]):
    """`uniobs top`'s live table. `source` has step(), rows(), describe() and a `store`."""

    TITLE = "uniobs top"
    CSS = """
    #status { height: 1; background: $primary-background; }
    #filter { display: none; height: 3; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("s", "next_sort", "sort"),
        Binding("slash", "filter", "filter"),
        Binding("f", "filter", "filter", show=False),
        Binding("p", "pause", "pause"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        *[Binding(key, f"sort('{column}')", f"sort {column}", show=False) for key, column in SORT_KEYS.items()],
    ]

    def __init__(self, source: Any, interval: float, sort_by: str, reverse: bool | None, filter_text: str) -> None:
        super().__init__()
        self.source = source
        self.interval = interval
        self.sort_by = sort_by
        self.reverse = reverse
        self.filter_text = filter_text
        self.paused = False
        self._shown_updates = -1
        self._dirty = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter: name, kind, runtime, state or id (Enter keeps, Esc clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for heading, numeric in zip(headings(), _NUMERIC, strict=True):
            table.add_column(Text(heading, justify="right" if numeric else "left"), key=heading)
        self._thread = threading.Thread(target=self._measure, name="uniobs-top-measure", daemon=True)
        self._thread.start()
        self.set_interval(min(0.5, self.interval), self._refresh)
        self._refresh()

    def _measure(self) -> None:
        wait = getattr(self.source, "wait_s", None)
        while not self._stop.is_set():
            try:
                self.source.step()
            except Exception as exc:  # shown, and measuring goes on
                self.source_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(wait() if wait is not None else self.interval)

    def on_unmount(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    source_error: str | None = None

    def _status(self, total: int, shown: int) -> str:
        heading = COLUMNS[self.sort_by][0]
        descending = COLUMNS[self.sort_by][2] if self.reverse is None else self.reverse
        parts = [
            f"{total} workloads" + (f", {shown} shown" if shown != total else ""),
            f"sort {heading} {'↓' if descending else '↑'}",
            f"every {self.interval:g} s",
            self.source.describe(),
        ]
        if self.filter_text:
            parts.insert(1, f"filter '{self.filter_text}'")
        if self.paused:
            parts.insert(0, "PAUSED")
        errors = getattr(self.source, "errors", {})
        if errors:
            parts.append("; ".join(f"{url}: {error}" for url, error in errors.items()))
        if self.source_error:
            parts.append(self.source_error)
        return " | ".join(parts)

    def _refresh(self) -> None:
        updates = self.source.store.updates
        if self.paused or (updates == self._shown_updates and not self._dirty):
            return
        self._shown_updates, self._dirty = updates, False
        rows = self.source.rows()
        shown = sort_rows(filter_rows(rows, self.filter_text), self.sort_by, self.reverse)
        table = self.query_one(DataTable)
        selected = None
        if table.row_count and 0 <= table.cursor_row < table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for row in shown:
            line = [Text(c, justify="right" if n else "left") for c, n in zip(cells(row), _NUMERIC, strict=True)]
            table.add_row(*line, key=row.instance)
        keys = [row.instance for row in shown]
        if selected in keys:
            table.move_cursor(row=keys.index(selected))
        self.query_one("#status", Static).update(self._status(len(rows), len(shown)))

    def _changed(self) -> None:
        self._dirty = True
        self._refresh()

    # -- actions

    def action_sort(self, column: str) -> None:
        if column == self.sort_by:
            descending = COLUMNS[column][2] if self.reverse is None else self.reverse
            self.reverse = not descending
        else:
            self.sort_by, self.reverse = column, None
        self._changed()

    def action_next_sort(self) -> None:
        names = list(COLUMNS)
        self.sort_by, self.reverse = names[(names.index(self.sort_by) + 1) % len(names)], None
        self._changed()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self._dirty = True
        self._refresh_status()

    def _refresh_status(self) -> None:
        table = self.query_one(DataTable)
        total = len(self.source.rows())
        self.query_one("#status", Static).update(self._status(total, table.row_count))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.filter_text
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.query_one(DataTable).focus()
        self._changed()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._changed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value
        event.input.display = False
        self.query_one(DataTable).focus()
        self._changed()
