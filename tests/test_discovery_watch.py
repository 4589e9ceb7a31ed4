"""Discovery that follows the cgroup tree with inotify (`cgroupfs.CgroupTree`), on this host's
real cgroupfs under /sys/fs/cgroup: cgroups made, nested, renamed and removed between rounds are
found and forgotten in the next round, exactly as a full walk (`list_cgroups`) finds them; a
queue overflow falls back to a full walk; removed directories leave no watch behind; the agent's
discovery follows a cgroup with a real process made and removed between its rounds.

Needs root and v1 hierarchies (this host is a v1/v2 hybrid, see ../shared/HOST-NOTES.md); skips
with the reason otherwise. Every cgroup is made under one base directory of its own, and only the
paths under it are compared: other tests on the machine make cgroups of their own meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import remove_cgroups, v1_cgroup_layout

from uniobs.host import cgroupfs

pytestmark = pytest.mark.cgroup

ROOT = "/sys/fs/cgroup"


@dataclass
class Base:
    layout: cgroupfs.CgroupLayout
    path: str  # the base cgroup's path, e.g. /uniobs-watch-123-abcd
    made: list[str]  # every directory made (absolute), removed deepest first at the end

    def mkdir(self, controller: str, rel: str) -> str:
        directory = self.layout.v1[controller] + rel
        os.mkdir(directory)
        self.made.append(directory)
        return directory

    def rmdir(self, controller: str, rel: str) -> None:
        directory = self.layout.v1[controller] + rel
        os.rmdir(directory)
        self.made.remove(directory)

    def mine(self, paths: list[str]) -> list[str]:
        return [p for p in paths if p == self.path or p.startswith(self.path + "/")]


@pytest.fixture
def base() -> Iterator[Base]:
    layout = v1_cgroup_layout(("memory", "cpuacct"), ROOT)
    if layout.v1["memory"] == layout.v1["cpuacct"]:
        pytest.skip("memory and cpuacct share a hierarchy here")
    b = Base(layout, f"/uniobs-watch-{os.getpid()}-{uuid.uuid4().hex[:8]}", [])
    try:
        for controller in ("memory", "cpuacct"):
            b.mkdir(controller, b.path)
        yield b
    finally:
        remove_cgroups(sorted(b.made, key=lambda d: d.count("/"), reverse=True))


def watches(tree: cgroupfs.CgroupTree) -> int:
    """The inotify watches the kernel holds for the tree (its fdinfo has one line per watch)."""
    fd = tree._inotify.fileno()
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


def test_cgroups_made_and_removed_between_rounds_are_found_from_events(base: Base) -> None:
    tree = cgroupfs.CgroupTree(base.layout)
    try:
        assert base.mine(tree.list()) == [base.path]
        if not tree.watching:
            pytest.skip("inotify is not available here (inotify_simple or the kernel)")
        walks = tree.full_walks
        held = watches(tree)

        # between rounds: a cgroup in memory only, one in cpuacct only, one nested two levels
        a, b, x, y = (f"{base.path}/{n}" for n in ("a", "b", "a/x", "a/x/y"))
        base.mkdir("memory", a)
        base.mkdir("cpuacct", b)
        base.mkdir("memory", x)
        base.mkdir("memory", y)
        got = base.mine(tree.list())
        assert got == sorted([base.path, a, b, x, y])
        assert got == base.mine(cgroupfs.list_cgroups(base.layout))  # what a full walk finds
        assert tree.full_walks == walks, "answered from the events, without a full walk"
        assert watches(tree) == held + 4

        # a child made in a directory created in the same round, then removed, deepest first
        base.rmdir("memory", y)
        base.rmdir("memory", x)
        got = base.mine(tree.list())
        assert got == sorted([base.path, a, b]) == base.mine(cgroupfs.list_cgroups(base.layout))
        assert watches(tree) == held + 2, "a removed directory's watch is removed with it"
        base.rmdir("memory", a)
        base.rmdir("cpuacct", b)
        assert base.mine(tree.list()) == [base.path]
        assert tree.full_walks == walks
        assert watches(tree) == held

        # a rename (v1 allows it within a parent): the watches name old paths, so a full walk
        c = f"{base.path}/c"
        base.mkdir("cpuacct", b)
        os.rename(base.layout.v1["cpuacct"] + b, base.layout.v1["cpuacct"] + c)
        base.made[base.made.index(base.layout.v1["cpuacct"] + b)] = base.layout.v1["cpuacct"] + c
        assert base.mine(tree.list()) == sorted([base.path, c])
        assert tree.full_walks == walks + 1
    finally:
        tree.close()


def test_a_lost_event_falls_back_to_a_full_walk(base: Base) -> None:
    """More directories than the kernel queues events for (fs.inotify.max_queued_events) made
    between two rounds: IN_Q_OVERFLOW, and the round walks the tree instead."""
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        queued = int(f.read())
    if queued > 40_000:
        pytest.skip(f"fs.inotify.max_queued_events is {queued}: too many cgroups to make for an overflow")
    tree = cgroupfs.CgroupTree(base.layout, max_cgroups=1_000_000)  # whatever else the host holds
    try:
        tree.list()
        if not tree.watching:
            pytest.skip("inotify is not available here (inotify_simple or the kernel)")
        walks = tree.full_walks
        made = [f"{base.path}/o{i:05d}" for i in range(queued + 1)]  # cpuacct cgroups are the light ones
        for rel in made:
            base.mkdir("cpuacct", rel)
        got = base.mine(tree.list())
        assert tree.full_walks == walks + 1
        assert got == sorted([base.path, *made])
        for rel in made[:10]:
            base.rmdir("cpuacct", rel)
        assert base.mine(tree.list()) == sorted([base.path, *made[10:]])
        assert tree.full_walks == walks + 1, "back to events after the full walk"
    finally:
        tree.close()


def test_the_agent_follows_a_cgroup_made_and_removed_between_its_rounds(base: Base, tmp_path: Path) -> None:
    from uniobs.lifecycle.agent import Agent

    config = tmp_path / "agent.toml"
    config.write_text(
        '[uniobs]\nexport = ["console"]\n[agent]\nhealth = ""\nvmms = false\ncontainers = true\ncgroups = true\n'
    )
    agent = Agent(str(config))
    sleep = None
    try:
        agent.reconcile()

        def mine() -> list[str]:
            return sorted(w.id for w in agent.workloads.values() if w.id.startswith(base.path + "/"))

        assert mine() == []
        path = f"{base.path}/fn"
        dirs = [base.mkdir(c, path) for c in ("memory", "cpuacct")]
        sleep = subprocess.Popen(["sleep", "300"])
        for directory in dirs:
            Path(directory, "cgroup.procs").write_text(str(sleep.pid))
        agent.reconcile()
        assert mine() == [path]
        tree = agent._containers._tree
        assert tree is not None and tree.watching and tree.full_walks == 1, "found from the events"

        sleep.kill()
        sleep.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                for c in ("memory", "cpuacct"):
                    if os.path.isdir(base.layout.v1[c] + path):
                        base.rmdir(c, path)
                break
            except OSError:  # EBUSY while the killed sleep is reaped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        agent.reconcile()
        assert mine() == []
        assert tree.full_walks == 1
        status = agent.status()[1]["discovery"]
        assert status["rounds"] == 3 and status["full_walks"] == 1
    finally:
        if sleep is not None and sleep.poll() is None:
            sleep.kill()
            sleep.wait()
        agent.shutdown()


def test_without_inotify_or_past_max_cgroups_a_round_walks(base: Base, caplog: pytest.LogCaptureFixture) -> None:
    """Where inotify is not used, and once the tree holds more than max_cgroups, list() is
    list_cgroups (the walk of today), said once for max_cgroups."""
    for i in range(3):
        base.mkdir("memory", f"{base.path}/m{i}")
    plain = cgroupfs.CgroupTree(base.layout, inotify=False)
    assert base.mine(plain.list()) == base.mine(cgroupfs.list_cgroups(base.layout))
    assert plain.full_walks == 1 and not plain.watching

    everything = len(cgroupfs.list_cgroups(base.layout))
    small = cgroupfs.CgroupTree(base.layout, max_cgroups=everything - 2)
    try:
        with caplog.at_level("WARNING", logger="uniobs.cgroupfs"):
            assert len(small.list()) == everything - 2  # truncated as list_cgroups truncates
            assert len(small.list()) == everything - 2
        assert not small.watching
        assert sum("walking the cgroup hierarchies every round" in r.getMessage() for r in caplog.records) == 1
    finally:
        small.close()
