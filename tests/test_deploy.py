"""The deployment files under deploy/ are well-formed and agree with the code and with each other.

Every YAML file gets a structural check that needs no YAML library (top-level keys by regex,
no tabs), and a full parse with deeper checks when PyYAML happens to be importable (it is not a
dependency of uniobs). The agent's TOML files (deploy/uniobs.toml and the one inside the
Kubernetes ConfigMap) are loaded by uniobs' own configuration code. The Prometheus recording
rules are checked against what uniobs' Prometheus endpoint really serves; promtool and
systemd-analyze check their files when they are installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

from uniobs.config import build, load
from uniobs.model import Kind, Sample, Workload
from uniobs.pipeline import build_exporters
from uniobs.registry import Registry

DEPLOY = ROOT / "deploy"
TOML = DEPLOY / "uniobs.toml"
UNIT = DEPLOY / "systemd" / "uniobs-agent.service"
DAEMONSET = DEPLOY / "kubernetes" / "daemonset.yaml"
GATEWAY = DEPLOY / "otel-collector" / "gateway.yaml"
SIDECAR = DEPLOY / "otel-collector" / "agent-sidecar.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "uniobs-rules.yml"

# The agent's keys as the agent's brief lists them. They live in [agent], except the export
# buffer's (buffer_bytes, retry_*), which belong to every command's pipeline: [uniobs].
AGENT_KEYS = {
    "discovery_interval", "health", "vmms", "containers", "cgroups", "max_workloads", "shutdown_timeout",
    "buffer_bytes", "retry_initial", "retry_max",
}  # fmt: skip
AGENT_ONLY_KEYS = {"discovery_interval", "health", "vmms", "containers", "cgroups", "max_workloads",
                   "shutdown_timeout", "unhealthy_after"}  # fmt: skip

# Top-level keys each YAML file must have (regex on unindented lines: no YAML library needed).
TOP_LEVEL = {
    GATEWAY: {"receivers", "processors", "exporters", "extensions", "service"},
    SIDECAR: {"receivers", "processors", "exporters", "extensions", "service"},
    PROMETHEUS: {"global", "rule_files", "scrape_configs"},
    RULES: {"groups"},
}
K8S_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}

try:
    import yaml
except ImportError:  # not a dependency: the structural checks still run
    yaml = None

needs_yaml = pytest.mark.skipif(
    yaml is None, reason="PyYAML is not importable (install the test extra: pip install -e '.[test]')"
)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def top_level_keys(text: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z_][\w.-]*):", text, re.MULTILINE))


def k8s_documents(text: str) -> list[str]:
    """The manifest's documents, comments and blank ones left out."""
    docs = re.split(r"^---\s*$", text, flags=re.MULTILINE)
    return [d for d in docs if any(line.strip() and not line.lstrip().startswith("#") for line in d.splitlines())]


def configmap_toml(text: str) -> str:
    """The `uniobs.toml: |` block scalar of the ConfigMap, dedented (no YAML library needed)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)uniobs\.toml:\s*\|\s*$", line)
        if match:
            indent = len(match.group(1))
            block = []
            for body in lines[i + 1 :]:
                if body.strip() and len(body) - len(body.lstrip()) <= indent:
                    break
                block.append(body)
            return textwrap.dedent("\n".join(block)).strip() + "\n"
    raise AssertionError(f"{DAEMONSET}: no `uniobs.toml: |` in the ConfigMap")


def health_port(toml_text: str) -> int:
    return int(tomllib.loads(toml_text)["agent"]["health"].rpartition(":")[2])


# --- every YAML file, with and without a YAML library --------------------------------------


def test_deploy_holds_the_expected_yaml_files() -> None:
    assert set(yaml_files()) >= {DAEMONSET, *TOP_LEVEL}, [str(p) for p in yaml_files()]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_structure_without_a_yaml_library(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "\t" not in text, f"{path}: tabs are not YAML indentation"
    if path == DAEMONSET:
        docs = k8s_documents(text)
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= top_level_keys(doc), doc[:200]
        assert set(re.findall(r"^kind:\s*(\w+)", text, re.MULTILINE)) == K8S_KINDS
    else:
        assert TOP_LEVEL.get(path, set()) <= top_level_keys(text)
        assert top_level_keys(text), f"{path}: no top-level key"


@needs_yaml
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert yaml is not None
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)
    if path in TOP_LEVEL:
        assert TOP_LEVEL[path] <= set(docs[0])


# --- the agent's TOML --------------------------------------------------------------------------


def check_agent_toml(text: str, tmp_path: Path) -> dict[str, Any]:
    """Checks one agent configuration with uniobs' own loader; returns it parsed."""
    doc = tomllib.loads(text)
    agent, core = doc.get("agent", {}), doc.get("uniobs", {})
    assert set(agent) <= AGENT_ONLY_KEYS, set(agent) - AGENT_ONLY_KEYS
    assert set(agent) | set(core) >= AGENT_KEYS, AGENT_KEYS - set(agent) - set(core)
    # Everything but [agent], through uniobs.config.load (an [agent] table is the agent command's).
    rest = re.sub(r"(?ms)^\[agent\]\n.*?(?=^\[|\Z)", "", text)
    assert "[agent]" not in rest
    path = tmp_path / "uniobs.toml"
    path.write_text(rest)
    settings = load(path, environ={})
    registry = Registry()
    for name in settings.collectors:
        settings.collector_config(name, registry.collectors[name].plugin.config_class)
    for name in settings.exporters:
        settings.exporter_config(name, registry.exporters[name].plugin.config_class)
    assert settings.core.export, "no exporter configured"
    build_exporters(settings.core.export, settings, registry)  # built, not started: nothing is sent
    return doc


def test_deploy_uniobs_toml_loads(tmp_path: Path) -> None:
    doc = check_agent_toml(TOML.read_text(encoding="utf-8"), tmp_path)
    assert doc["agent"]["health"].startswith("127.0.0.1:"), "the health endpoint stays on loopback on a host"
    assert doc["exporters"]["otlp"]["endpoint"] == "http://127.0.0.1:4317"
    assert {doc["collectors"][c]["interval"] for c in ("process", "qemu", "cgroup")} == {10}
    assert doc["collectors"]["netns"]["interval"] == 30


def test_configmap_toml_loads(tmp_path: Path) -> None:
    doc = check_agent_toml(configmap_toml(DAEMONSET.read_text(encoding="utf-8")), tmp_path)
    assert doc["exporters"]["otlp"]["endpoint"] == "http://otel-collector.observability.svc:4317"


def test_agent_tables_build_with_the_agent_configuration() -> None:
    agent_module = pytest.importorskip("uniobs.agent", reason="uniobs.agent is not importable")
    for where, text in (("deploy/uniobs.toml", TOML.read_text()), ("ConfigMap", configmap_toml(DAEMONSET.read_text()))):
        build(agent_module.AgentConfig, tomllib.loads(text)["agent"], f"{where}: [agent]")


# --- systemd -----------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit() -> None:
    text = UNIT.read_text(encoding="utf-8")
    unit = unit_settings(text)
    assert unit["ExecStart"] == ["/usr/local/bin/uniobs agent --config /etc/uniobs/uniobs.toml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillSignal"] == ["SIGTERM"]
    shutdown = tomllib.loads(TOML.read_text())["agent"]["shutdown_timeout"]
    assert int(unit["TimeoutStopSec"][0]) > shutdown, "systemd must leave the agent its flush time"
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("Restart", "on-failure")):  # fmt: skip
        assert unit[key] == [value], key
    assert unit["MemoryMax"] and unit["CapabilityBoundingSet"]
    # Not even in the commented-out variants.
    for match in re.finditer(r"^\s*#?\s*(AmbientCapabilities|CapabilityBoundingSet)\s*=(.*)$", text, re.MULTILINE):
        assert "CAP_SYS_ADMIN" not in match.group(2), match.group(0)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd's own parser: unknown or misspelt directives fail. ExecStart must exist to verify."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/uniobs", shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    mine = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not mine, result.stderr


# --- Kubernetes --------------------------------------------------------------------------------


@needs_yaml
def test_daemonset_security_mounts_probes_and_config() -> None:
    assert yaml is not None
    text = DAEMONSET.read_text(encoding="utf-8")
    docs = {d["kind"]: d for d in yaml.safe_load_all(text) if d}
    config = docs["ConfigMap"]["data"]["uniobs.toml"]
    assert config.strip() == configmap_toml(text).strip()  # the regex extraction reads what YAML reads
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork", False)
    assert any(t.get("operator") == "Exists" and "key" not in t for t in pod["tolerations"])
    assert pod["terminationGracePeriodSeconds"] > tomllib.loads(config)["agent"]["shutdown_timeout"]
    (container,) = pod["containers"]
    assert container["command"] == ["uniobs", "agent", "--config", "/etc/uniobs/uniobs.toml"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert security["readOnlyRootFilesystem"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostIPC", False) and pod["enableServiceLinks"] is False
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys/fs/cgroup", "/var/lib/docker/containers", "/run/uniobs"} <= set(host_paths.values())
    for mount in container["volumeMounts"]:
        if mount["name"] in host_paths:
            assert mount.get("readOnly") is True, mount
            assert mount["mountPath"] == host_paths[mount["name"]], "host paths in state files must resolve as is"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == health_port(config)
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "health"}
    assert tomllib.loads(config)["agent"]["health"].startswith("0.0.0.0:"), "the kubelet probes the pod IP"
    names = [e["name"] for e in container["env"]]
    attributes = next(e["value"] for e in container["env"] if e["name"] == "OTEL_RESOURCE_ATTRIBUTES")
    assert "k8s.node.name=$(NODE_NAME)" in attributes
    assert names.index("NODE_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"), "$(VAR) expands earlier vars only"
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False


# Where the runtimes' API sockets live: a pod that can connect() to one is node root.
RUNTIME_SOCKETS = (
    "/run/containerd/containerd.sock", "/run/containerd/s/0123abcd", "/run/docker.sock", "/var/run/docker.sock",
    "/run/docker/containerd/containerd.sock", "/run/crio/crio.sock", "/var/run/crio/crio.sock",
    "/run/podman/podman.sock", "/run/k3s/containerd/containerd.sock", "/run/cri-dockerd.sock",
    "/run/dockershim.sock", "/run/systemd/private", "/run/dbus/system_bus_socket",
)  # fmt: skip


def under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def daemonset_pod() -> dict[str, Any]:
    assert yaml is not None
    docs = {d["kind"]: d for d in yaml.safe_load_all(DAEMONSET.read_text(encoding="utf-8")) if d}
    pod: dict[str, Any] = docs["DaemonSet"]["spec"]["template"]["spec"]
    return pod


@needs_yaml
def test_daemonset_mounts_no_runtime_socket() -> None:
    """Read-only mounts do not stop connect(): no host path may be /run, /var/run, a socket, or
    a directory holding a runtime's API socket."""
    pod = daemonset_pod()
    volumes = [v["hostPath"] for v in pod["volumes"] if "hostPath" in v]
    for volume in volumes:
        path = volume["path"].rstrip("/") or "/"
        assert path not in ("/", "/run", "/var/run", "/var", "/var/lib"), path
        assert volume.get("type") != "Socket" and not path.endswith(".sock"), path
        for socket_path in RUNTIME_SOCKETS:
            assert not under(socket_path, path), f"{path} holds {socket_path}"
        if under(path, "/run") or under(path, "/var/run"):
            assert volume.get("type") in ("Directory", "DirectoryOrCreate"), volume


@needs_yaml
def test_daemonset_mounts_what_discovery_reads() -> None:
    """Every state directory and metadata file container discovery reads (its own list, with the
    host's roots), and the QMP socket directory of `uniobs run`, is under a read-only mount at
    the same path."""
    from uniobs.containers.discovery import ContainerDiscovery

    pod = daemonset_pod()
    (container,) = pod["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = [m for m in container["volumeMounts"] if m["name"] in host_paths]
    for mount in mounts:
        assert mount.get("readOnly") is True and mount.get("recursiveReadOnly") == "IfPossible", mount
        assert mount["mountPath"] == host_paths[mount["name"]], "host paths in state files must resolve as is"
    discovery = ContainerDiscovery(None, "/run", "/var/lib", use_sockets=False, scan=False)
    read = [
        *discovery._runc_roots(), *discovery._task_roots(), "/run/crun",
        "/run/containerd/runc/k8s.io", "/run/containerd/io.containerd.runtime.v2.task/k8s.io",
        "/var/lib/docker/containers/0123/config.v2.json",
        "/var/lib/containers/storage/overlay-containers/containers.json",
        "/run/uniobs/fn-1/qmp.sock",  # uniobs run's run directory (uniobs/lifecycle/rundir.py)
    ]  # fmt: skip
    for path in read:
        assert any(under(path, m["mountPath"]) for m in mounts), f"discovery reads {path}: not mounted"


@needs_yaml
def test_daemonset_and_systemd_unit_grant_the_same() -> None:
    """The two deployments give the agent the same capabilities and the same sandbox promises."""
    (container,) = daemonset_pod()["containers"]
    security = container["securityContext"]
    unit = unit_settings(UNIT.read_text(encoding="utf-8"))
    assert {f"CAP_{c}" for c in security["capabilities"]["add"]} == set(unit["CapabilityBoundingSet"][0].split())
    assert security["allowPrivilegeEscalation"] is False and unit["NoNewPrivileges"] == ["yes"]
    assert security["readOnlyRootFilesystem"] is True and unit["ProtectSystem"] == ["strict"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault" and unit["SystemCallFilter"]
    assert unit["ProtectControlGroups"] == ["yes"], "cgroupfs read-only, as the pod's mount"


def test_daemonset_validates_against_the_kubernetes_schema() -> None:
    """The manifests against Kubernetes' own OpenAPI schemas (kubernetes-validate bundles them:
    no network), strict: an unknown or misplaced field fails."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')"
    )
    assert yaml is not None
    for doc in yaml.safe_load_all(DAEMONSET.read_text(encoding="utf-8")):
        if doc:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    broken = daemonset_pod()
    broken["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True  # misspelt
    wrapper = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": broken}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrapper, "1.30.0", strict=True)


# --- OpenTelemetry Collector -----------------------------------------------------------------


@needs_yaml
@pytest.mark.parametrize("path", [GATEWAY, SIDECAR], ids=["gateway", "agent-sidecar"])
def test_collector_pipelines_are_complete(path: Path) -> None:
    assert yaml is not None
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    pipelines = config["service"]["pipelines"]
    # uniobs sends all three signals: a signal without a pipeline is refused, and the agents' health fails.
    assert set(pipelines) == {"metrics", "logs", "traces"}
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] == ["otlp"], name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{name}: {component} is not defined under {kind}"
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert pipeline["processors"][-1] == "batch", name
    for extension in config["service"]["extensions"]:
        assert extension in config["extensions"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")


@needs_yaml
def test_gateway_exports_to_prometheus_and_tempo_and_sidecar_leaves_uniobs_its_port() -> None:
    assert yaml is not None
    gateway = yaml.safe_load(GATEWAY.read_text())
    prw = gateway["exporters"]["prometheusremotewrite"]
    assert prw["endpoint"] == "http://prometheus:9090/api/v1/write"
    # as uniobs' own endpoint: job/instance on the series, resource attributes on target_info (the rules join it)
    assert prw["resource_to_telemetry_conversion"]["enabled"] is False and prw["target_info"]["enabled"] is True
    assert gateway["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"
    assert gateway["exporters"]["otlp/tempo"]["tls"]["insecure"] is True
    attributes = gateway["processors"]["resource"]["attributes"]
    assert any(a["key"] == "deployment.environment" for a in attributes)
    sidecar = yaml.safe_load(SIDECAR.read_text())
    assert sidecar["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].startswith("127.0.0.1:")
    port = int(sidecar["extensions"]["health_check"]["endpoint"].rpartition(":")[2])
    assert port != health_port(TOML.read_text()), "two listeners on one loopback port"


# --- Prometheus --------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset"}  # fmt: skip


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """(metric and recorded-series names, label names) an expression uses. Enough for our rules."""
    labels: set[str] = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in match.group(1).split(",") if x.strip()}
    for match in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", match.group(1)))
    bare = re.sub(
        r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', " ", expr
    )
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", bare):
        follows = bare[match.end() :].lstrip()[:1]
        if follows != "(" and match.group(0) not in PROMQL_WORDS:
            names.add(match.group(0))
    return names, labels


def rule_expressions() -> list[tuple[str, str]]:
    """(record or alert name, expr) from the rules file, read line by line: no YAML library."""
    lines = RULES.read_text(encoding="utf-8").splitlines()
    out, name = [], ""
    for i, line in enumerate(lines):
        if match := re.match(r"^\s*- (?:record|alert):\s*(\S+)", line):
            name = match.group(1)
        elif match := re.match(r"^(\s*)expr:\s*(.*)$", line):
            indent, inline = len(match.group(1)), match.group(2).strip()
            body = [inline] if inline not in ("|", ">", "|-", ">-") else []
            for more in lines[i + 1 :] if not body else []:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                body.append(more)
            out.append((name, " ".join(" ".join(body).split())))
    assert out, "no rules found"
    return out


@pytest.fixture
def served() -> dict[str, set[tuple[str, str]]]:
    """What uniobs' real Prometheus endpoint serves for a unikernel, a container, a cold start and
    uniobs itself: sample name -> set of (label, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    from uniobs.config import Settings
    from uniobs.metrics import COLDSTART_METRICS
    from uniobs.pipeline import Pipeline

    pipeline = Pipeline(Settings(), export=["prometheus:127.0.0.1:0"], strict=True)
    try:
        pipeline.telemetry.declare(COLDSTART_METRICS, scope="uniobs.coldstart")
        vm = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="fn-4242", name="fn", pid=os.getpid(),
                      executable="qemu-system-x86_64")  # fmt: skip
        container = Workload(kind=Kind.CONTAINER, runtime="runc", id="c0ffee" * 4, name="fn", pid=os.getpid(),
                             cgroup="/fn")  # fmt: skip
        cold = (("uniobs.shrinkwrap", "unikernel"), ("uniobs.runtime", "qemu"))
        pipeline.telemetry.record(vm, [Sample("process.cpu.time", 1.5, (("cpu.mode", "user"),)),
                                       Sample("faas.init_duration", 0.04, cold)])  # fmt: skip
        pipeline.telemetry.record(container, [Sample("container.memory.usage", 1 << 20),
                                              Sample("container.memory.working_set", 1 << 19)])  # fmt: skip
        pipeline.flush(5)
        pipeline.flush(5)  # the second export carries the first one's sent counts
        port = pipeline.exporters[0][1].sink.port  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        pipeline.close(5)
    out: dict[str, set[tuple[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels.items())
    return out


def test_rules_name_what_the_prometheus_endpoint_serves(served: dict[str, set[tuple[str, str]]]) -> None:
    rules = rule_expressions()
    recorded = {name for name, _ in rules if ":" in name}
    for name, expr in rules:
        names, labels = promql_references(expr)
        assert names, f"{name}: no metric found in {expr!r}"
        metrics = names - recorded
        for metric in metrics:
            assert metric in served, f"{name}: uniobs serves no {metric} (served: {sorted(served)})"
        unknown = {n for n in names if ":" in n} - recorded
        assert not unknown, f"{name}: {sorted(unknown)} recorded by no rule"
        have = {label for metric in metrics for label, _ in served[metric]}
        if metrics:
            assert labels <= have, f"{name}: labels {sorted(labels - have)} are on none of {sorted(metrics)}"
    if yaml is not None:  # the line-by-line reading sees what YAML sees
        parsed = [(r.get("record") or r["alert"], " ".join(r["expr"].split()))
                  for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]  # fmt: skip
        assert rules == parsed
    kinds = set(re.findall(r'uniobs_workload_kind="(\w+)"', RULES.read_text()))
    assert kinds <= {k.value for k in Kind} and kinds


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package 'prometheus') is not installed")
def test_promtool_accepts_config_and_rules() -> None:
    for args in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(RULES)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_agent_endpoint_keeping_its_labels() -> None:
    text = PROMETHEUS.read_text(encoding="utf-8")
    assert re.search(r"^\s+honor_labels: true", text, re.MULTILINE)
    assert "127.0.0.1:9464" in text  # the exporter's default address
    for rule_file in re.findall(r"^rule_files:\n((?:\s+- .*\n)+)", text, re.MULTILINE)[0].split("\n"):
        if rule_file.strip():
            assert (PROMETHEUS.parent / rule_file.strip()[2:]).is_file(), rule_file
