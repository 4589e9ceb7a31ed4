"""Where the checkout and its recorded test data are, wherever it was cloned."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "testdata"
# Real unikernel binaries (Solo5 tender and test kernels, the Nanos toolchain) for tests only: beside
# the checkout (../shared/unikernels, CI has it there too); tests that need them skip where it is absent.
UNIKERNELS = ROOT.parent / "shared" / "unikernels"
