"""The NetworkPolicies allow exactly the connections the processes make.

The expected connections are not a hand-kept list: each pod's process reads its settings
(the project's own settings classes, from the pod's environment: ConfigMaps, literals and
Secret references) and the shard map mounted where MEDSVC_SHARD_MAP points, and the test
derives from them every host and port it will connect to, resolved through the rendered
Services to the pods behind them. nginx's connections come from its rendered configuration,
Prometheus's from the scrape annotations. Then:

* every derived connection is allowed by the policies (a new connection without its
  policy fails here), and the gateway's cached-read fast path (gateway → every shard's
  Redis) is among them;
* every connection the policies allow, to any port a pod listens on, is a derived one
  (nothing is open that no process uses).

A settings field that names a peer (``*_url``, ``*_urls``, ``*_dsn``, the shard map) and
that this derivation does not read fails the test, so that a new kind of connection gets
both its derivation and its policy.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from pydantic_settings import BaseSettings

from anonymizer.settings import AnonymizerSettings
from audit_service.settings import AuditSettings
from deploy.k8s import generate, kustomize
from shared.settings import FESettings, GatewaySettings
from shared.shardmap import ShardMap
from tests.unit.test_k8s_manifests import K8S, _may_connect

Obj = dict[str, Any]
Pod = tuple[str, dict[str, str]]  # (namespace, labels)

# The connection-bearing settings each derivation below reads, per settings class.
READS = {
    GatewaySettings: {"shard_map", "audit_urls", "anonymizer_urls"},
    FESettings: {"shard_map", "audit_urls", "anonymizer_urls"},
    # (audit_service inherits shard_map from the common settings and never opens it)
    AuditSettings: {"audit_dsn", "central_dsn", "shard_map"},
    AnonymizerSettings: {"shard_map", "anonymizer_dsn", "central_dsn"},
}
MONITORING = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
CLIENT = ("internet", {})


def _settings_class(command: list[str]) -> type[BaseSettings] | None:
    """The settings class of the process a container runs (None: not one of ours)."""
    if command[:2] == ["python", "-m"]:
        module = command[2]
        return {"gateway": GatewaySettings, "fe_server": FESettings,
                "audit_service": AuditSettings, "anonymizer": AnonymizerSettings}[module]
    if command[:2] == ["python", "-c"]:
        found = re.findall(r"load\((\w+)\)", command[2])
        assert found, "a python -c entry point that loads no settings"
        return {"AnonymizerSettings": AnonymizerSettings}[found[0]]
    return None


def _connection_fields(cls: type[BaseSettings]) -> set[str]:
    return {n for n in cls.model_fields
            if n == "shard_map" or n.endswith(("_url", "_urls", "_dsn"))}


class Render:
    """One rendered overlay: its pods, Services and ConfigMaps."""

    def __init__(self, overlay: str) -> None:
        self.objs = kustomize.build(K8S / "overlays" / overlay)
        self.namespace = generate.ENVIRONMENTS[overlay].namespace
        self.pods: dict[str, tuple[Obj, Obj]] = {}  # workload name -> (labels, pod spec)
        self.annotations: dict[str, Obj] = {}
        for obj in self.objs:
            if obj["kind"] in {"Deployment", "StatefulSet"}:
                tpl = obj["spec"]["template"]
            elif obj["kind"] == "CronJob":
                tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
            else:
                continue
            name = obj["metadata"]["name"]
            self.pods[name] = (tpl["metadata"]["labels"], tpl["spec"])
            self.annotations[name] = tpl["metadata"].get("annotations", {})
        self.services = {o["metadata"]["name"]: o for o in self.objs if o["kind"] == "Service"}
        self.config_maps = {o["metadata"]["name"]: o for o in self.objs if o["kind"] == "ConfigMap"}
        self.policies = [o for o in self.objs if o["kind"] == "NetworkPolicy"]

    def pod(self, name: str) -> Pod:
        return (self.namespace, self.pods[name][0])

    def resolve(self, host: str, port: int) -> set[tuple[str, int]]:
        """(workload, container port) behind the Service ``host`` (its short DNS name)."""
        service = self.services.get(host.split(".")[0])
        assert service is not None, f"no Service {host} in the render"
        (target,) = [p["targetPort"] for p in service["spec"]["ports"] if p["port"] == port]
        selector = service["spec"]["selector"]
        found = {(name, target) for name, (labels, _) in self.pods.items()
                 if all(labels.get(k) == v for k, v in selector.items())}
        assert found, f"Service {host} selects no pod"
        return found

    def listens(self, name: str) -> set[int]:
        return {p["containerPort"] for c in self.pods[name][1]["containers"]
                for p in c.get("ports", [])}

    def env(self, name: str) -> dict[str, str]:
        """The environment of a workload's first container (Secret values: placeholders)."""
        container = self.pods[name][1]["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.config_maps[source["configMapRef"]["name"]]["data"])
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = f"secret-{ref['key']}-" + "x" * 32
        return env

    def mounted_file(self, name: str, path: str) -> str:
        """The content of ``path`` in a workload's first container (from a ConfigMap)."""
        spec = self.pods[name][1]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in spec["containers"][0].get("volumeMounts", []):
            folder = PurePosixPath(mount["mountPath"])
            if PurePosixPath(path).parent == folder:
                config_map = self.config_maps[volumes[mount["name"]]["configMap"]["name"]]
                return config_map["data"][PurePosixPath(path).name]
        raise AssertionError(f"{name}: nothing mounted at {path}")


def _hostport(url: str, default: int) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname, url
    return parts.hostname, parts.port or default


def _peers(render: Render, name: str) -> set[tuple[str, int]]:
    """Host and port of every peer the process of workload ``name`` connects to."""
    spec = render.pods[name][1]
    container = spec["containers"][0]
    command = container.get("command", [])
    if container["name"] == "nginx":
        conf = "".join(cm["data"].get("nginx.conf", "") for cm in render.config_maps.values())
        upstreams = re.findall(r"^\s*server (\S+):(\d+)", conf, re.MULTILINE)
        assert upstreams
        return {(h, int(p)) for h, p in upstreams}
    cls = _settings_class(command) if command[:1] == ["python"] else None
    if cls is None:
        return set()  # PostgreSQL, Redis: they connect to no one
    unread = _connection_fields(cls) - READS[cls]
    assert not unread, f"{cls.__name__} names peers in {sorted(unread)}: derive them here"
    with mock.patch.dict(os.environ, render.env(name), clear=True):
        settings: Any = cls()
    out: set[tuple[str, int]] = set()

    def shard_map() -> ShardMap:
        return ShardMap.model_validate_json(render.mounted_file(name, settings.shard_map))

    def urls(value: str) -> None:
        out.update(_hostport(u.strip(), 80) for u in value.split(",") if u.strip())

    if cls is GatewaySettings:
        for shard in shard_map().shards:
            for members in shard.members.values():
                urls(",".join(members))
            if settings.cache and shard.redis:
                out.add(_hostport(shard.redis, 6379))  # the cached-read fast path
        urls(settings.audit_urls)
        urls(settings.anonymizer_urls)
    elif cls is FESettings:
        shard = shard_map().shard(settings.shard)
        out.add(_hostport(shard.postgres, 5432))
        if settings.cache and shard.redis:
            out.add(_hostport(shard.redis, 6379))
        urls(settings.audit_urls)
        urls(settings.anonymizer_urls)
    elif cls is AuditSettings:
        out.add(_hostport(settings.audit_dsn, 5432))
        out.add(_hostport(settings.writer_dsn, 5432))
    elif cls is AnonymizerSettings:
        out.add(_hostport(settings.anonymizer_dsn, 5432))
        out.update(_hostport(s.postgres, 5432) for s in shard_map().shards)
    return out


def derived_connections(render: Render) -> set[tuple[Pod | str, str, int]]:
    """(source workload, or CLIENT/MONITORING; destination workload; port)."""
    out: set[tuple[Any, str, int]] = set()
    for name in render.pods:
        for host, port in _peers(render, name):
            out |= {(name, dst, target) for dst, target in render.resolve(host, port)}
    for port in (80, 443):  # clients reach nginx through its Service
        out |= {("client", dst, target) for dst, target in render.resolve("nginx", port)}
    # Logical replication (resharder/): a bucket move's target database subscribes to its
    # source with the source's DSN from the shard map, so every shard database may reach every
    # shard database in the map (one policy for all of them: itself included).
    with mock.patch.dict(os.environ, render.env("gateway"), clear=True):
        map_path = GatewaySettings().shard_map
    shard_map = ShardMap.model_validate_json(render.mounted_file("gateway", map_path))
    for name in render.pods:
        if name.startswith("pg-shard-"):
            for shard in shard_map.shards:
                host, port = _hostport(shard.postgres, 5432)
                out |= {(name, dst, target) for dst, target in render.resolve(host, port)}
    for name, notes in render.annotations.items():
        if notes.get("prometheus.io/scrape") == "true":
            out.add(("prometheus", name, int(notes["prometheus.io/port"])))
    return out


@pytest.fixture(scope="module", params=sorted(generate.ENVIRONMENTS))
def render(request: pytest.FixtureRequest) -> Render:
    return Render(str(request.param))


def test_every_connection_the_processes_make_is_allowed(render: Render) -> None:
    derived = derived_connections(render)
    pods: dict[str, Pod] = {n: render.pod(n) for n in render.pods}
    pods |= {"client": CLIENT, "prometheus": MONITORING}
    missing = [c for c in sorted(derived)
               if not _may_connect(render.policies, render.namespace, pods[c[0]], pods[c[1]], c[2])]
    assert not missing, f"connections the code makes that no NetworkPolicy allows: {missing}"
    # The ones the issue names, so that a derivation that lost them fails too.
    shards = [s.id for s in ShardMap.model_validate_json(
        (K8S / "overlays" / render.namespace.replace("medsvc-", "").replace("medsvc", "prod")
         / "shardmap.json").read_text()).shards]
    for i in shards:
        assert ("gateway", f"redis-shard-{i}", 6379) in derived, "the gateway's fast path"
        assert ("gateway", f"fe-shard-{i}", 8000) in derived
        assert (f"fe-shard-{i}", f"pg-shard-{i}", 5432) in derived
        assert (f"fe-shard-{i}", f"redis-shard-{i}", 6379) in derived
        assert (f"fe-shard-{i}", "audit", 8000) in derived
        assert ("anonymizer", f"pg-shard-{i}", 5432) in derived
        assert ("anonymizer-schedule", f"pg-shard-{i}", 5432) in derived
        assert ("prometheus", f"fe-shard-{i}", 8000) in derived
    assert ("nginx", "gateway", 8000) in derived and ("audit", "pg-audit", 5432) in derived


def test_nothing_is_open_that_no_process_uses(render: Render) -> None:
    derived = derived_connections(render)
    pods: dict[str, Pod] = {n: render.pod(n) for n in render.pods}
    sources = {**pods, "client": CLIENT, "prometheus": MONITORING}
    extra = []
    for src, src_pod in sources.items():
        for dst, dst_pod in pods.items():
            for port in render.listens(dst):
                public = ("client", dst, port) in derived  # the door is open to anyone
                if (src, dst, port) not in derived and not public and _may_connect(
                        render.policies, render.namespace, src_pod, dst_pod, port):
                    extra.append((src, dst, port))
    assert not extra, f"allowed, but no process makes these connections: {sorted(extra)}"
