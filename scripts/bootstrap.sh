#!/usr/bin/env bash
# Installs what uniobs and its tests need on a Debian 12 host (as root), then the Python package
# into ./.venv. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the VMM and the container runtimes (runc, Podman) the tests drive for real, Prometheus for the
# scrape test, a compiler for the example guests, Debian's kernel and Node.js for the
# single-application microVM guest (examples/hello-node), Chromium to check the HTML report, tmux to drive
# `uniobs top`'s live view (tests/test_top.py).
PACKAGES=(python3 python3-venv python3-pip make gcc libc6-dev binutils openssl ca-certificates
          qemu-system-x86 runc podman prometheus iproute2 procps linux-image-amd64 nodejs chromium fonts-dejavu-core
          tmux)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
