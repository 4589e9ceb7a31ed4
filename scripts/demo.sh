#!/usr/bin/env bash
# The main job on the embedded default, no backend needed: the seed function (Node.js "Hello
# World") as a Nanos unikernel, as a single-application microVM and as a container, compared on
# this host. Builds the example images (and the probe kernel that picks KVM or TCG) first if they
# are missing; a side this host cannot build (Nanos without a toolchain: NANOS_DIR or ops' ~/.ops;
# `make demo` uses ../shared/unikernels/nanos when it is beside the checkout, as on this
# repository's CI and machines) is skipped, and the table says why. Prints the table; writes
# out/compare/report.html, report.md, results.json and every signal as OTLP JSON lines
# (out/compare/telemetry.jsonl). UNIOBS_DEMO_RUNS=N: cold starts per side (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec make demo
