#!/usr/bin/env bash
# The main job on the embedded default: no backend needed. Telemetry goes to the console and to
# out/telemetry.jsonl (OTLP JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec make demo
