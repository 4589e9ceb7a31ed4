#!/usr/bin/env bash
# The test command: install what the tests need, then lint, type-check and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec make check
