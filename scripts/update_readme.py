"""Regenerate the README's metric table from the plugins' declarations (`make readme`)."""

from __future__ import annotations

import sys
from pathlib import Path

from uniobs.cli.main import declared_metrics, render_metric_table
from uniobs.registry import Registry

BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def rendered(readme: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    table = render_metric_table(declared_metrics(Registry()), "markdown")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "README.md"
    new = rendered(path.read_text())
    if "--check" in sys.argv:
        sys.exit(0 if new == path.read_text() else "README.md's metric table is stale: run `make readme`")
    path.write_text(new)
