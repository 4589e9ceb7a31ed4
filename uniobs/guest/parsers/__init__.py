"""Boot-milestone parsers: one `ConsoleParser` per unikernel family, registered as `uniobs.parsers`.

Each module reads the console lines of one family (Solo5, Unikraft, OSv, Nanos, IncludeOS,
Hermit, a Linux microVM) and turns the lines it understands into `GuestEvent`s: the boot
milestones a cold-start trace is cut at, the guest's own uptime stamps and the boot-time figures
it prints. Beside them, `VmmLogParser`s read a VMM's own lines where they share the stream with
the guest's console (Firecracker's logger, QEMU's monitor and stderr, Cloud Hypervisor's log),
line by line. `detect` sends each line to the parser that owns it, picks the guest's family from
the guest's lines and replays a recorded console. The project's own line protocol
(`@@uniobs/1 ...`) is `uniobs.lineproto`'s job.

Milestones, the same for every family:
- BOOT: the guest's first sign of life (firmware or kernel banner);
- KERNEL_READY: the kernel has finished initialising and hands over to the application
  (the last kernel line before the application runs: Solo5's memory map, Unikraft's banner,
  OSv's DHCP lease or boot-time figure, Nanos's address, Linux's `Run /init`);
- APP_START / READY: the application starts / says it is ready, where the kernel prints it;
- EXIT / CRASH: a clean exit with its code, or a trap, panic or fatal signal with its reason.
Each milestone is reported at most once per console stream (the first occurrence) by the guest's
family, and once by each VMM log (its own start, exit and crash, kept apart from the guest's).
"""
