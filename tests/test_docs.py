"""Docs generated from declarations stay in step with the code."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


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


def test_core_metrics_are_declared_in_one_module() -> None:
    """A MetricSpec the core declares at module level lives in uniobs/metrics.py (plugins declare
    theirs in their class): `describe` and the README table read that module, so none is missed."""
    import ast

    elsewhere = []
    for path in sorted((ROOT / "uniobs").rglob("*.py")):
        if path.name == "metrics.py" and path.parent.name == "uniobs":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue  # made at run time: a guest's own metrics (uniobs.guest.*)
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "MetricSpec":
                    elsewhere.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert elsewhere == []

    from uniobs.cli.main import _registry, declared_metrics
    from uniobs.metrics import CORE_METRICS

    described = {spec.name for _, spec in declared_metrics(_registry())}
    assert {spec.name for _, specs in CORE_METRICS for spec in specs} <= described
