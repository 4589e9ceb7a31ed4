"""Docs generated from declarations stay in step with the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_metric_table_matches_the_declarations() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_readme_names_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_ci_runs_the_main_command_on_a_fresh_clone_with_the_documented_run_count() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "git clone" in ci and "bash scripts/demo.sh" in ci and "UNIOBS_ACCEL_CACHE=" in ci
    assert ci.index("\nbash scripts/test.sh") < ci.rindex("bash scripts/demo.sh")  # after the tests
    assert "UNIOBS_DEMO_RUNS=" in ci and "UNIOBS_DEMO_RUNS" in (ROOT / "README.md").read_text()
    assert "--runs $(UNIOBS_DEMO_RUNS)" in (ROOT / "Makefile").read_text()
