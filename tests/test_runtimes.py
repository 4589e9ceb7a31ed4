"""Runtimes are plugins (`uniobs.runtimes`): the built-ins register like any third party, a command
line picks its runtime, and a third-party VMM runtime installed on its own is launched, attached to
and discovered by the real CLI without a line of uniobs changed.

The third party is `acme-vmm`: a stand-in VMM (`acmevmm`, a Python script that prints a console,
beats, and exits with 64 + the guest's status) and its `Runtime` subclass, installed the way pip
lays a package out (a module and a .dist-info with entry points) on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import pytest
from otlpfile import Signals
from support import free_port

from uniobs.model import Kind
from uniobs.plugin import (
    CONTAINER_PHASES,
    UNIKERNEL_PHASES,
    ExitInfo,
    Launch,
    LaunchError,
    LaunchPlan,
    Runtime,
)
from uniobs.registry import PluginError, PluginInfo, load_group
from uniobs.runtimes.select import Runtimes

# --- the built-ins ----------------------------------------------------------------------------


def test_the_builtins_register_like_plugins_and_process_comes_last() -> None:
    runtimes = Runtimes()
    names = [r.name for r in runtimes]
    assert set(names) >= {"qemu", "solo5-hvt", "oci", "engine", "process"}
    assert names[-1] == "process"
    info = load_group("uniobs.runtimes")["qemu"]
    assert (info.distribution, info.value) == ("uniobs", "uniobs.runtimes.qemu:QemuRuntime")
    chosen = {
        ("qemu-system-x86_64", "-kernel", "k.elf"): "qemu",
        ("/usr/bin/qemu-system-aarch64",): "qemu",
        ("solo5-hvt", "a.hvt"): "solo5-hvt",
        ("/opt/ukvm-bin", "a.ukvm"): "solo5-hvt",
        ("runc", "run", "id"): "oci",
        ("crun", "--root", "/r", "run", "id"): "oci",
        ("podman", "run", "alpine"): "engine",
        ("docker", "run", "alpine"): "engine",
        ("node", "app.js"): "process",
        ("qemu-img", "info", "x"): "process",
    }
    for argv, name in chosen.items():
        assert runtimes.for_command(argv).name == name, argv
    with pytest.raises(LaunchError, match="no command"):
        runtimes.for_command([])


def test_each_plan_names_its_runtime_the_workload_and_the_kind(tmp_path: Path) -> None:
    runtimes = Runtimes()
    cases = [
        (["qemu-system-x86_64", "-kernel", "/srv/fn.elf"], "qemu", "qemu", "fn", Kind.UNIKERNEL),
        (["solo5-hvt", "--mem=32", "hello.hvt"], "solo5-hvt", "solo5-hvt", "hello", Kind.UNIKERNEL),
        (["runc", "run", "-b", "bundle", "fn-1"], "oci", "runc", "fn-1", Kind.CONTAINER),
        (["docker", "run", "--rm", "reg.io/acme/hello:1.2", "x"], "engine", "docker", "hello", Kind.CONTAINER),
        (["/usr/bin/node", "app.js"], "process", "process", "node", Kind.PROCESS),
    ]
    for argv, planner, runtime, function, kind in cases:
        plan = runtimes.plan(argv, tmp_path, "vm")
        chosen = runtimes.of(plan)
        assert (plan.planned_by, plan.runtime, chosen.function_name(plan), chosen.kind) == (
            planner, runtime, function, kind
        ), argv  # fmt: skip
    assert runtimes.get("oci").coldstart_phases == CONTAINER_PHASES
    assert runtimes.get("qemu").coldstart_phases == UNIKERNEL_PHASES
    with pytest.raises(LaunchError, match="detached"):
        runtimes.plan(["runc", "run", "-d", "x"], tmp_path, "vm")


def test_the_traceparent_goes_in_the_runtime_s_own_way(tmp_path: Path) -> None:
    runtimes, tp = Runtimes(), "00-" + "1" * 32 + "-" + "2" * 16 + "-01"

    def inject(argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        plan = runtimes.plan(argv, tmp_path, "vm")
        command = runtimes.of(plan).inject_trace(plan, tp, {"A": "1"}, rundir=str(tmp_path), cwd=None)
        return command.argv, dict(command.env) if command.env is not None else None

    argv, env = inject(["qemu-system-x86_64", "-kernel", "k", "-append", "mode=ok"])
    assert argv[argv.index("-append") + 1] == f"mode=ok traceparent={tp}" and env is None
    argv, env = inject(["solo5-hvt", "a.hvt"])
    assert argv[-1] == f"traceparent={tp}" and env is None
    argv, env = inject(["podman", "run", "alpine"])
    assert argv[2:6] == ["-e", "A=1", "-e", f"TRACEPARENT={tp}"] and env is None
    argv, env = inject(["sleep", "1"])
    assert argv == ["sleep", "1"] and env is not None and (env["TRACEPARENT"], env["A"]) == (tp, "1")


def test_each_runtime_reads_an_exit_its_own_way(tmp_path: Path) -> None:
    runtimes = Runtimes()

    def classify(argv: list[str], returncode: int) -> ExitInfo:
        plan = runtimes.plan(argv, tmp_path, "vm")
        runtime = runtimes.of(plan)
        return runtime.classify_exit(returncode, runtime.start(plan))

    debug_exit = ["qemu-system-x86_64", "-device", "isa-debug-exit,iobase=0xf4", "-kernel", "k"]
    assert (classify(debug_exit, 7).reason, classify(debug_exit, 7).guest_exit_code) == ("exit", 3)
    assert classify(["qemu-system-x86_64", "-kernel", "k"], 1).reason == "exit"
    assert (classify(["solo5-hvt", "a.hvt"], 2).reason, classify(["solo5-hvt", "a.hvt"], 2).guest_exit_code) == (
        "exit", 2
    )  # fmt: skip
    killed = classify(["runc", "run", "x"], 128 + signal.SIGKILL)
    assert (killed.reason, killed.status, killed.signal_name) == ("signal", 137, "SIGKILL")
    assert classify(["docker", "run", "alpine"], 0).attributes == {"process.exit.code": 0, "uniobs.exit.reason": "exit"}
    ended = classify(["sleep", "1"], -signal.SIGTERM)
    assert (ended.reason, ended.status, ended.attributes["uniobs.exit.signal"]) == ("signal", 143, "SIGTERM")


def test_a_runtime_of_the_wrong_type_is_refused_with_the_group_named() -> None:
    ep = metadata.EntryPoint(name="bogus", value="uniobs.model:Workload", group="uniobs.runtimes")
    with pytest.raises(PluginError, match=r"'bogus'.*uniobs.runtimes.*not a subclass of Runtime"):
        load_group("uniobs.runtimes", [ep])
    misnamed = metadata.EntryPoint(name="kvmtool", value="uniobs.runtimes.qemu:QemuRuntime", group="uniobs.runtimes")
    with pytest.raises(PluginError, match="declares name 'qemu'"):
        load_group("uniobs.runtimes", [misnamed])

    class Half(Runtime):  # recognises() left out
        name = "half"

    half = PluginInfo("half", "uniobs.runtimes", Half, "acme", "1", "acme:Half")
    with pytest.raises(PluginError, match=r"runtime 'half'.*abstract"):
        Runtimes({"half": half})


# --- a third-party runtime ------------------------------------------------------------------------

ACME_VMM = """
import sys, time
opts, rest, args = {}, [], sys.argv[1:]
while args:
    word = args.pop(0)
    if word in ("--exit", "--sleep", "--console"):
        opts[word] = args.pop(0)
    else:
        rest.append(word)
out = open(opts["--console"], "a", buffering=1) if "--console" in opts else sys.stdout
image, guest_args = rest[0], rest[1:]
print(f"AcmeVMM 1.0: booting {image}", file=out, flush=True)
for arg in guest_args:
    print(f"acme: guest arg {arg}", file=out, flush=True)
end, beat = time.monotonic() + float(opts.get("--sleep", "0")), 0
while time.monotonic() < end:
    beat += 1
    print(f"acme: heartbeat {beat}", file=out, flush=True)
    time.sleep(0.1)
print("acme: guest halted", file=out, flush=True)
sys.exit(int(opts.get("--exit", "0")))
"""

ACME_RUNTIME = """
import os
from uniobs.model import Kind
from uniobs.plugin import Command, ExitInfo, Runtime, VmmInfo


def _own(argv):
    # the stand-in is a script: /proc shows its interpreter first
    if len(argv) > 1 and os.path.basename(argv[0]).startswith("python"):
        return list(argv[1:])
    return list(argv)


def _image(argv):
    words = _own(argv)[1:]  # options take a value: the image is the first word that is neither
    values = {i + 1 for i, w in enumerate(words) if w.startswith("--")}
    return next((w for i, w in enumerate(words) if not w.startswith("-") and i not in values), None)


class AcmeRuntime(Runtime):
    name = "acme"
    kind = Kind.UNIKERNEL
    description = "AcmeVMM: its stdout (or --console FILE) is the guest console; it exits with 64 + the guest's status"
    program = "acmevmm"

    def recognises(self, argv):
        argv = _own(argv)
        return bool(argv) and os.path.basename(argv[0]) == "acmevmm"

    def plan(self, argv, rundir, tag):
        plan = super().plan(argv, rundir, tag)
        plan.kernel = _image(argv)
        return plan

    def inject_trace(self, plan, traceparent, env, *, rundir, cwd):
        return Command([*plan.argv, f"traceparent={traceparent}"])  # a guest argument

    def classify_exit(self, returncode, launch):
        attributes = {"process.exit.code": returncode}
        if returncode < 0:
            return ExitInfo.by_signal(-returncode, returncode, attributes)
        if returncode >= 64:
            return ExitInfo.of(returncode, "exit", attributes, guest_exit_code=returncode - 64)
        return ExitInfo.of(returncode, "guest-shutdown", attributes)

    def inspect(self, pid, argv, proc="/proc"):
        words = _own(argv)
        console = next((f"tail:{words[i + 1]}" for i, w in enumerate(words[:-1]) if w == "--console"), None)
        image = _image(argv)
        name = os.path.splitext(os.path.basename(image))[0] if image else f"acme-{pid}"
        note = "" if console else "no --console FILE: the console belongs to the parent"
        return VmmInfo(pid, "acme", "acmevmm", name, console=console, console_note=note, kernel=image)
"""


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[dict[str, str]]:
    """acme-vmm installed on its own: the environment for the CLI's subprocesses."""
    package = tmp_path / "site"
    package.mkdir()
    (package / "acme_vmm.py").write_text(textwrap.dedent(ACME_RUNTIME))
    info = package / "acme_vmm-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vmm\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[uniobs.runtimes]\nacme = acme_vmm:AcmeRuntime\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vmm = bin_dir / "acmevmm"
    vmm.write_text(f"#!{sys.executable}\n{ACME_VMM}")
    vmm.chmod(vmm.stat().st_mode | stat.S_IXUSR)
    yield {**os.environ, "PYTHONPATH": str(package), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def uniobs(*args: str) -> list[str]:
    return [sys.executable, "-m", "uniobs.cli", *args]


def test_the_cli_lists_the_third_party_runtime(acme: dict[str, str]) -> None:
    out = subprocess.run(uniobs("plugins"), env=acme, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["runtimes", "acme", "acme-vmm", "0.1.0", "acme_vmm:AcmeRuntime"] in rows
    assert rows[[r[:2] for r in rows].index(["runtimes", "qemu"])][:3] == ["runtimes", "qemu", "uniobs"]


def test_run_launches_a_third_party_vmm_with_its_runtime_s_rules(acme: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        uniobs("run", "--quiet", "--interval", "0.2", "--export", f"file:{out}", "--",
               "acmevmm", "--exit", "67", "--sleep", "0.5", "hello.img"),
        env=acme, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 67, result.stderr  # the VMM's status
    assert "hello exited: exit (guest status 3), status 67" in result.stderr
    signals = Signals(out)
    exited = signals.events()[-1]
    assert exited["event"] == "uniobs.exited"
    assert (exited["attributes"]["uniobs.exit.reason"], exited["attributes"]["uniobs.guest.exit_code"]) == (
        "exit", 3
    )  # fmt: skip
    resource = exited["resource"]
    assert (resource["uniobs.workload.runtime"], resource["uniobs.workload.kind"], resource["service.name"]) == (
        "acme", "unikernel", "hello"
    )  # fmt: skip
    spawned = next(e for e in signals.events() if e["event"] == "uniobs.spawned")
    assert spawned["attributes"]["process.command"] == "acmevmm"
    # the traceparent went in as the runtime said (a guest argument) and names the cold-start trace
    console = signals.console()
    assert console[0] == "AcmeVMM 1.0: booting hello.img" and console[-1] == "acme: guest halted"
    [root] = [s for s in signals.spans() if s["name"] == "coldstart"]
    assert f"acme: guest arg traceparent=00-{root['traceId']}-{root['spanId']}-01" in console
    assert (root["attributes"]["uniobs.shrinkwrap"], root["attributes"]["uniobs.runtime"]) == ("unikernel", "acme")


def test_attach_follows_a_third_party_vmm_found_in_proc(acme: dict[str, str], tmp_path: Path) -> None:
    log, out = tmp_path / "acme.console", tmp_path / "t.jsonl"
    vm = subprocess.Popen(["acmevmm", "--console", str(log), "--sleep", "4", "--exit", "64", "fn.img"], env=acme)
    try:
        deadline = time.monotonic() + 10
        while not (log.exists() and "booting" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        attach = subprocess.Popen(
            uniobs("attach", "--interval", "0.2", "--export", f"file:{out}", str(vm.pid)),
            env=acme, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert attach.stderr is not None
        first = attach.stderr.readline()
        assert b"attached to acme pid" in first and b"console tail:" in first, first
        _, stderr = attach.communicate(timeout=30)
        assert attach.returncode == 0 and b"fn: exited" in stderr, stderr
    finally:
        vm.kill()
        vm.wait()
    signals = Signals(out)
    events = signals.events()
    assert [events[0]["event"], events[-1]["event"]] == ["uniobs.attached", "uniobs.exited"]
    assert (events[0]["resource"]["uniobs.workload.runtime"], events[0]["resource"]["process.pid"]) == ("acme", vm.pid)
    assert any(line.startswith("acme: heartbeat") for line in signals.console())  # read beside its owner
    assert signals.last("process.memory.usage") > 0
    # what is not one of the installed runtimes' VMMs is refused, naming them
    refused = subprocess.run(uniobs("attach", "1"), env=acme, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not a running acmevmm or qemu-system-* or solo5-hvt process" in refused.stderr


def test_the_agent_discovers_a_third_party_vmm(acme: dict[str, str], tmp_path: Path) -> None:
    log, out, port = tmp_path / "acme.console", tmp_path / "t.jsonl", free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[uniobs]\nexport = ["file:{out}"]\nexport_interval = 0.3\n[collectors.process]\ninterval = 0.3\n'
        f'[agent]\ndiscovery_interval = 0.3\ncontainers = false\nhealth = "127.0.0.1:{port}"\n'
    )
    vm = subprocess.Popen(["acmevmm", "--console", str(log), "--sleep", "60", "fn.img"], env=acme)
    agent = subprocess.Popen(
        uniobs("agent", "--config", str(config)), env=acme, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    pass
                if out.exists() and "acme: heartbeat" in out.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.2)
        vm.kill()  # it goes away: the agent lets go of it
        vm.wait()
        time.sleep(1.5)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
        assert agent.returncode == 0, stderr[-3000:]
    finally:
        for proc in (vm, agent):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    signals = Signals(out)
    ours = [r for r in signals.logs() if r["resource"].get("process.pid") == vm.pid]
    assert ours and all(r["resource"]["uniobs.workload.runtime"] == "acme" for r in ours)
    assert ours[0]["resource"]["service.name"] == "fn" and ours[0]["resource"]["uniobs.workload.kind"] == "unikernel"
    assert [r["event"] for r in ours if r["event"]][:1] == ["uniobs.discovered"]
    assert "uniobs.vanished" in [r["event"] for r in ours]
    assert any(r["body"].startswith("acme: heartbeat") for r in ours if not r["event"])  # its console
    memory = [p for res, _, p in signals.points("process.memory.usage") if res.get("process.pid") == vm.pid]
    assert memory and float(memory[-1].get("asDouble", memory[-1].get("asInt", 0))) > 0  # its series


def test_a_runtime_subclass_needs_only_a_name_and_recognises(tmp_path: Path) -> None:
    """The contract's defaults: a plain command, its stdout the console, a process's exit."""

    class Bare(Runtime):
        name = "bare"

        def recognises(self, argv: Sequence[str]) -> bool:
            return True

    runtime = Bare()
    plan = runtime.plan(["/opt/bare/vmm", "img.bin"], tmp_path, "vm")
    assert (plan.runtime, plan.executable, plan.console) == ("bare", "vmm", "fd:stdout")
    assert isinstance(plan, LaunchPlan) and runtime.function_name(plan) == "vmm"
    launch = runtime.start(plan)
    assert type(launch) is Launch and launch.ending() is None and dict(launch.coldstart_marks()) == {}
    assert runtime.classify_exit(5, launch).reason == "exit"
    assert runtime.inspect(1, ["/opt/bare/vmm"]) is None


def test_a_qemu_guest_is_named_after_its_image_whether_kernel_or_disk(tmp_path: Path) -> None:
    """`-kernel` names the function, and so does the disk image a guest boots from (a Nanos or OSv
    image: `-drive file=`, `-hda`); QEMU's own `-name` first; the program's name only as a last resort."""
    runtimes = Runtimes()

    def name(*args: str) -> str:
        plan = runtimes.plan(["qemu-system-x86_64", *args], tmp_path, "t")
        return runtimes.of(plan).function_name(plan)

    drive = "if=none,id=hd0,format=raw,file=/srv/images/node.img"
    assert name("-machine", "q35", "-drive", drive, "-device", "scsi-hd,drive=hd0") == "node"
    assert name("-hda", "fn.qcow2") == "fn"
    assert name("-kernel", "build/minikernel.elf", "-drive", "file=data.img") == "minikernel"
    assert name("-name", "guest=hello,debug-threads=on", "-hda", "fn.qcow2") == "hello"
    assert name("-blockdev", "driver=file,node-name=f0,filename=/srv/osv.raw") == "osv"
    assert name("-m", "64") == "qemu-system-x86_64"


def test_discovery_reads_only_new_reused_or_execd_pids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process found not to be a VMM is not read again until its pid is reused (another start
    time) or it execs (another comm); a new VMM, or a known process that becomes one, is found in
    the next round, and a vanished one is gone."""
    from uniobs.runtimes import select

    proc = tmp_path / "proc"

    def process(pid: int, argv: list[str], start: int, comm: str) -> None:
        d = proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        fields = ["S", *["0"] * 18, str(start), *["0"] * 30]  # field 22 (starttime) is the 20th after comm
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")

    qemu = ["qemu-system-x86_64", "-machine", "microvm", "-qmp", "unix:/tmp/q.sock,server=on,wait=off"]
    process(10, ["sleep", "60"], 100, "sleep")
    process(11, ["sh", "-c", "exec qemu"], 101, "sh")
    read: list[int] = []
    real = select.read_argv
    monkeypatch.setattr(select, "read_argv", lambda pid, p: read.append(pid) or real(pid, p))
    runtimes = Runtimes()
    assert runtimes.discover(str(proc)) == [] and sorted(read) == [10, 11]
    read.clear()
    assert runtimes.discover(str(proc)) == [] and read == []  # nothing new: nothing read
    process(11, qemu, 101, "qemu-system-x86")  # the launcher exec'd QEMU: same pid, same start
    process(12, qemu, 102, "qemu-system-x86")  # a new VMM
    assert sorted(v.pid for v in runtimes.discover(str(proc))) == [11, 12] and sorted(read) == [11, 12]
    read.clear()
    shutil.rmtree(proc / "10")
    process(10, qemu, 200, "qemu-system-x86")  # pid 10 reused (a new start time), by a VMM
    assert sorted(v.pid for v in runtimes.discover(str(proc))) == [10, 11, 12]
    shutil.rmtree(proc / "12")
    assert sorted(v.pid for v in runtimes.discover(str(proc))) == [10, 11]
