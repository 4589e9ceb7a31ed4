#!/usr/bin/env bash
# The main job on the embedded default, no backend needed: the seed function (Node.js "Hello
# World") as a unikernel and as a container, compared on this host. Builds the example images
# (and the probe kernel that picks KVM or TCG) first if they are missing. Prints the table; writes
# out/compare/report.html, report.md, results.json and every signal as OTLP JSON lines
# (out/compare/telemetry.jsonl). UNIOBS_DEMO_RUNS=N: cold starts per shrink-wrap (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec make demo
