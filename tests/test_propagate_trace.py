"""A unikernel runs exactly as given; the traceparent goes on its command line only when asked
(`uniobs run --propagate-trace`, `propagate_trace = true` in a function definition's side).

The flag itself is exercised on real guests in tests/test_hvt.py and tests/test_solo5_virtio.py;
here: which runtimes need asking, the definition key, and `uniobs run --function` with it, on the
real Solo5 hvt tender (../shared/unikernels, skipped visibly where absent).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from otlpfile import Signals
from support import ROOT, UNIKERNELS, requires_kvm, requires_solo5

from uniobs.compare.function import DefinitionError, load_definition
from uniobs.runtimes.select import Runtimes

HELLO = UNIKERNELS / "solo5" / "tests" / "test_hello.hvt"


@pytest.mark.parametrize(
    ("argv", "alters"),
    [(["qemu-system-x86_64"], True), (["solo5-hvt", "a.hvt"], True), (["runc", "run", "x"], False),
     (["podman", "run", "alpine"], False), (["sleep", "1"], False)],
)  # fmt: skip
def test_which_runtimes_change_the_guest_to_pass_a_traceparent(argv: list[str], alters: bool, tmp_path: Path) -> None:
    runtimes = Runtimes()
    assert runtimes.of(runtimes.plan(argv, tmp_path, "vm")).trace_alters_guest is alters


def definition(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "fn.toml"
    tender = UNIKERNELS / "solo5" / "solo5-hvt"
    path.write_text(f'name = "hello"\n[unikernel]\ncommand = ["{tender}", "{HELLO}", "Hello_Solo5"]\n{extra}\n')
    return path


def test_the_definition_key(tmp_path: Path) -> None:
    assert load_definition(definition(tmp_path, "")).wraps["unikernel"].propagate_trace is False
    assert load_definition(definition(tmp_path, "propagate_trace = true")).wraps["unikernel"].propagate_trace is True
    with pytest.raises(DefinitionError, match="propagate_trace: expected true or false"):
        load_definition(definition(tmp_path, 'propagate_trace = "yes"'))
    # the microVM example's /init reads traceparent= from its kernel command line: it asks for it
    example = load_definition(ROOT / "examples" / "hello-node" / "function.toml")
    assert example.wraps["unikernel"].propagate_trace is True


@pytest.mark.parametrize("key", ["", "propagate_trace = true"], ids=["as-given", "propagated"])
@requires_solo5
@requires_kvm
def test_run_function_honours_the_key(tmp_path: Path, key: str) -> None:
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "-q", "--export", f"file:{out}",
         "--function", str(definition(tmp_path, key)), "--as", "unikernel"],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    [root] = [s for s in signals.spans() if s["name"] == "coldstart"]
    if key:
        line = f"Command line is: 'Hello_Solo5 traceparent=00-{root['traceId']}-{root['spanId']}-01'"
        assert line in signals.console()
    else:
        assert "Command line is: 'Hello_Solo5'" in signals.console() and "SUCCESS" in signals.console()
