#!/usr/bin/env python3
"""Prints the kernel command line (QEMU's ``-append`` value) for the hello-node microVM on this host.

    console=ttyS0 panic=-1 tsc_early_khz=<host TSC kHz> tsc=reliable quiet [extra...]

Why each word:

* ``console=ttyS0`` -- the kernel and /init write on the 16550 UART that ``-serial stdio`` shows.
* ``panic=-1`` -- a panic (for instance when the application, PID 1, exits) reboots at once;
  with QEMU's ``-no-reboot`` that ends QEMU instead of leaving a dead guest behind.
* ``tsc_early_khz=`` -- under TCG the guest's TSC ticks at the host's TSC rate. The microvm
  machine has no HPET, and calibrating against its PIT fails under TCG ("Unable to calibrate
  against PIT"), after which the guest hangs. Telling the kernel the rate skips calibration. It
  depends on the host, so it is computed here, at boot time, never written into the build.
* ``tsc=reliable`` -- the clocksource watchdog checks the TSC against jiffies, which run late
  under TCG; without this it often declares the (correct) TSC unstable a few seconds in and
  falls back to jiffies, a 4 ms clock, for every later timestamp (t= included).
* ``quiet`` -- keeps kernel messages off the console (every character is an emulated UART port
  write, so a verbose boot is slower) and lets the uniobs records stand out. One KERN_ERR line
  still shows: "PCI: Fatal: No config space access function found" -- harmless: the microvm
  machine has no PCI bus (its virtio devices are virtio-mmio), and pci=off does not silence it.

The host TSC rate comes from, in order: the kernel log (``tsc: Refined TSC clocksource
calibration: N MHz``, else ``tsc: Detected N MHz processor``) read through /dev/kmsg, the
``dmesg`` command, then ``cpu MHz`` of /proc/cpuinfo (the current clock, right on hosts with a
constant-rate TSC and no frequency scaling, such as most VMs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable

BASE = ("console=ttyS0", "panic=-1")
REFINED = re.compile(r"tsc: Refined TSC clocksource calibration: (\d+(?:\.\d+)?) MHz")
DETECTED = re.compile(r"tsc: Detected (\d+(?:\.\d+)?) MHz processor")
CPUINFO = re.compile(r"^cpu MHz\s*:\s*(\d+(?:\.\d+)?)\s*$", re.M)


def _read_kmsg() -> str:
    """The kernel ring buffer as text, without blocking (needs root or dmesg_restrict=0)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    lines = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break  # no more records
            except OSError as e:
                if e.errno == 32:  # EPIPE: a record was overwritten while reading; go on
                    continue
                break
            if not record:
                break
            lines.append(record.decode("utf-8", "replace").partition(";")[2])
    finally:
        os.close(fd)
    return "".join(lines)


def _read_dmesg() -> str:
    dmesg = shutil.which("dmesg")
    if dmesg is None:
        return ""
    try:
        return subprocess.run([dmesg], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _mhz_to_khz(mhz: str) -> int:
    whole, _, frac = mhz.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def tsc_khz_from_log(log: str) -> int | None:
    for pattern in (REFINED, DETECTED):
        found = pattern.findall(log)
        if found:
            return _mhz_to_khz(found[-1])
    return None


def host_tsc_khz() -> tuple[int, str]:
    """(kHz, where it came from)."""
    for source, read in (("kmsg", _read_kmsg), ("dmesg", _read_dmesg)):
        khz = tsc_khz_from_log(read())
        if khz:
            return khz, source
    try:
        with open("/proc/cpuinfo") as f:
            found = CPUINFO.findall(f.read())
    except OSError:
        found = []
    if found:
        return _mhz_to_khz(found[0]), "cpuinfo"
    raise SystemExit("boot_args.py: cannot find this host's TSC frequency (no kernel log access, no cpu MHz)")


def append_line(khz: int, extra: Iterable[str] = (), quiet: bool = True) -> str:
    words = [*BASE, f"tsc_early_khz={khz}", "tsc=reliable"]
    if quiet:
        words.append("quiet")
    words.extend(w for e in extra for w in e.split())
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prints the -append value for the hello-node microVM.")
    p.add_argument("--extra", action="append", default=[], help="more words, e.g. traceparent=00-...-01")
    p.add_argument("--verbose", action="store_true", help="keep kernel messages (no 'quiet')")
    p.add_argument("--khz", action="store_true", help="print only the host TSC kHz and its source")
    args = p.parse_args(argv)
    khz, source = host_tsc_khz()
    if args.khz:
        print(khz, source)
    else:
        print(append_line(khz, args.extra, quiet=not args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
