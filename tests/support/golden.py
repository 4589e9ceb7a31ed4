"""Recorded scenarios checked against golden files.

A scenario is a folder `tests/testdata/<area>/<scenario>/` holding a recorded tree (a
`sys/fs/cgroup`, a runtime's state files, ...), a `SOURCE` saying where each file comes from,
and an `expected.json`: what the code must return for that tree. One parametrised test per area
runs over every folder, so a new real-world case is a new folder, not new test code.

`pytest --update-golden` rewrites the golden files from the code instead of comparing (see
docs/testing.md): review the diff before committing it, as the values become the tests'.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT, TESTDATA

EXPECTED = "expected.json"


def scenario_dirs(area: str, *, exclude: Iterable[str] = ()) -> list[Path]:
    """Every folder under tests/testdata/<area>/ but `exclude`, by name: one scenario each."""
    skip = set(exclude)
    return sorted(p for p in (TESTDATA / area).iterdir() if p.is_dir() and p.name not in skip)


def scenario_params(area: str, *, exclude: Iterable[str] = ()) -> list[Any]:
    """`scenario_dirs` as pytest parameters whose ids are the folder names."""
    return [pytest.param(folder, id=folder.name) for folder in scenario_dirs(area, exclude=exclude)]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Golden:
    """Compares what the code returned with a golden JSON file, or (`update`) rewrites the file."""

    def __init__(self, update: bool = False) -> None:
        self.update = update

    def load(self, path: Path) -> Any:
        """The golden file's content; None when it is missing and about to be written."""
        if path.is_file():
            return json.loads(path.read_text())
        if self.update:
            return None
        pytest.fail(f"{_shown(path)} is missing: write it with `pytest --update-golden`, then review it", pytrace=False)

    def check(self, path: Path, actual: Any) -> None:
        """`actual` (JSON-able; tuples compare as lists) must equal the golden file."""
        normalised = json.loads(json.dumps(actual))
        if self.update:
            text = json.dumps(normalised, indent=2, ensure_ascii=False) + "\n"
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                warnings.warn(f"rewrote {_shown(path)}: review the diff", stacklevel=2)
            return
        expected = self.load(path)
        assert normalised == expected, f"{_shown(path)} differs from what the code returns (see its diff below)"

    def check_entry(self, path: Path, key: str, actual: dict[str, Any]) -> None:
        """`actual` must equal the entry `key` of a golden file that maps names (of recorded files
        beside it) to what the code returns for each. A "note" in an entry is the reviewer's: not
        compared, and kept when --update-golden rewrites the entry."""
        golden = self.load(path) or {}
        entry = golden.get(key)
        normalised = json.loads(json.dumps(actual))
        if self.update:
            kept = {"note": entry["note"]} if entry and "note" in entry else {}
            if entry != {**normalised, **kept}:
                golden[key] = {**normalised, **kept}
                path.write_text(json.dumps(dict(sorted(golden.items())), indent=2, ensure_ascii=False) + "\n")
                warnings.warn(f"rewrote {key} in {_shown(path)}: review the diff", stacklevel=2)
            return
        if entry is None:
            pytest.fail(f"{_shown(path)} has no entry for {key}: add it with `pytest --update-golden`", pytrace=False)
        expected = {k: v for k, v in entry.items() if k != "note"}
        assert normalised == expected, f"{key}: what the code returns differs from {_shown(path)} (see the diff below)"

    def scenario(self, folder: Path) -> dict[str, Any]:
        """A scenario folder's expected.json ({} when it has none and --update-golden will write
        it); fails when the folder does not say where its data come from (no SOURCE)."""
        if not (folder / "SOURCE").is_file():
            pytest.fail(f"{_shown(folder)}: no SOURCE file saying where the recorded files come from", pytrace=False)
        expected = self.load(folder / EXPECTED)
        return expected if expected is not None else {}

    def check_scenario(self, folder: Path, actual: dict[str, Any]) -> None:
        self.check(folder / EXPECTED, actual)
