"""The Kubernetes manifests, Prometheus rules and Grafana dashboard, checked offline.

Each overlay is rendered (by :mod:`deploy.k8s.kustomize`, and also by ``kubectl kustomize``
or ``kustomize`` where one is installed, which must agree) and every object is validated
against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``. Then the tests
read the render as an operator reviewing it would: every shard of the shard map has its
database, cache and FE cluster; every pod is hardened and probed; only the named paths
through the network are open; the alert rules parse and name metrics the code exports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pytest
import yaml

from deploy.k8s import generate, kustomize
from deploy.k8s.manifests import APP_UID, PORT, SECRET, SECRET_KEYS
from shared.shardmap import ShardMap

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "medsvc-dashboard.json"
# The oldest Kubernetes release the manifests are meant for.
K8S_VERSION = "1.29"
OVERLAYS = sorted(generate.ENVIRONMENTS)
EXPECTED_SHARDS = {"dev": 2, "prod": 4}

Obj = dict[str, Any]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: kustomize.build(K8S / "overlays" / name) for name in OVERLAYS}


def objects(rendered: dict[str, list[Obj]], overlay: str, kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in rendered[overlay] if o["kind"] == kind}


def shard_map_of(overlay: str) -> ShardMap:
    return ShardMap.model_validate_json((K8S / "overlays" / overlay / "shardmap.json").read_text())


# -- rendering and schemas ---------------------------------------------------------------


def test_committed_manifests_are_what_the_generator_writes() -> None:
    assert generate.stale_files() == [], "run: python -m deploy.k8s.generate"


def test_every_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    errors = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not errors, "\n".join(errors)
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]]
    assert len(names) == len(set(names)), "duplicate objects"


def _normalise_hashes(objs: list[Obj]) -> list[Obj]:
    generated = {g["name"] for g in _generators()}
    text = json.dumps(
        sorted(objs, key=lambda o: (o["kind"], o["metadata"]["name"])), sort_keys=True
    )
    for name in generated:
        text = re.sub(rf'"{re.escape(name)}-[a-z0-9]{{10}}"', f'"{name}-HASH"', text)
    return json.loads(text)


def _generators() -> list[Obj]:
    out = []
    for path in K8S.rglob("kustomization.yaml"):
        kz = yaml.safe_load(path.read_text())
        out += kz.get("configMapGenerator", []) + kz.get("secretGenerator", [])
    return out


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def test_kustomize_renders_the_same_objects(rendered: dict[str, list[Obj]], overlay: str) -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed; the Python render stands alone")
    out = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    # The name-suffix hashes may differ between kustomize releases; nothing else may.
    assert _normalise_hashes(theirs) == _normalise_hashes(rendered[overlay])


# -- shards ------------------------------------------------------------------------------


def test_every_shard_has_its_database_cache_and_fe_cluster(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    shard_map = shard_map_of(overlay)
    assert len(shard_map.shards) == EXPECTED_SHARDS[overlay]
    statefulsets = objects(rendered, overlay, "StatefulSet")
    deployments = objects(rendered, overlay, "Deployment")
    services = objects(rendered, overlay, "Service")
    for shard in shard_map.shards:
        pg_host = urlsplit(shard.postgres).hostname
        redis_host = urlsplit(shard.redis or "").hostname
        assert pg_host == f"pg-shard-{shard.id}" and redis_host == f"redis-shard-{shard.id}"
        pg = statefulsets[pg_host]
        assert pg["spec"]["volumeClaimTemplates"], "the shard's database needs a volume"
        assert services[pg_host]["spec"]["selector"] == pg["spec"]["selector"]["matchLabels"]
        cache = statefulsets[redis_host]
        assert any(v["name"] == "data" for v in cache["spec"]["template"]["spec"]["volumes"])
        assert services[redis_host]["spec"]["selector"] == cache["spec"]["selector"]["matchLabels"]
        for service, urls in shard.members.items():
            assert urls, f"shard {shard.id} lists no {service} server"
            for url in urls:
                host, port = urlsplit(url).hostname, urlsplit(url).port
                fe = deployments[host]
                assert services[host]["spec"]["selector"] == fe["spec"]["selector"]["matchLabels"]
                assert port in {p["port"] for p in services[host]["spec"]["ports"]}
                env = {
                    e["name"]: e.get("value")
                    for e in fe["spec"]["template"]["spec"]["containers"][0]["env"]
                }
                assert env["MEDSVC_SHARD"] == str(shard.id)
                assert service in env["MEDSVC_SERVICES"].split(",")
        for component in ("postgres", "redis", "fe"):
            labels = {"app.kubernetes.io/component": component, "medsvc.io/shard": str(shard.id)}
            for kind in ("NetworkPolicy",):
                assert any(
                    _selects(p["spec"]["podSelector"], labels)
                    for p in objects(rendered, overlay, kind).values()
                    if p["spec"]["podSelector"]
                ), f"no policy for {component} {shard.id}"
    # No shard resources for a shard the map does not name.
    ids = {str(s.id) for s in shard_map.shards}
    for obj in rendered[overlay]:
        shard_label = obj["metadata"].get("labels", {}).get("medsvc.io/shard")
        assert shard_label is None or shard_label in ids, obj["metadata"]["name"]


def test_the_shard_map_config_map_is_the_committed_file(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    maps = [
        o
        for o in rendered[overlay]
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shardmap"
    ]
    assert len(maps) == 1
    text = maps[0]["data"]["shardmap.json"]
    assert text == (K8S / "overlays" / overlay / "shardmap.json").read_text()
    ShardMap.model_validate_json(text)
    # Every process that routes by userName mounts it where MEDSVC_SHARD_MAP points.
    env = next(o for o in rendered[overlay] if o["metadata"]["name"].startswith("medsvc-env-"))
    assert env["data"]["MEDSVC_SHARD_MAP"] == "/etc/medsvc/shardmap.json"
    for name in (
        "gateway",
        "anonymizer",
        *(f"fe-shard-{i}" for i in range(EXPECTED_SHARDS[overlay])),
    ):
        spec = objects(rendered, overlay, "Deployment")[name]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert volumes["shardmap"]["configMap"]["name"] == maps[0]["metadata"]["name"]
        assert mounts["shardmap"]["mountPath"] == "/etc/medsvc"


def test_adding_a_shard_and_moving_buckets_changes_only_the_map_and_new_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("__pycache__"))
    new_id = generate.add_shard(root, "dev")
    generate.move_buckets(root, "dev", 0, 63, new_id)
    generate.write_tree(root)
    moved = ShardMap.model_validate_json((root / "overlays/dev/shardmap.json").read_text())
    assert [s.id for s in moved.shards] == [0, 1, 2]
    assert moved.shard(2).buckets == [(0, 63)] and moved.shard(0).buckets == [(64, 511)]
    assert (root / "overlays/dev/shards/shard-2.yaml").exists()
    objs = kustomize.build(root / "overlays/dev")
    names = {o["metadata"]["name"] for o in objs}
    assert {"pg-shard-2", "redis-shard-2", "fe-shard-2"} <= names


# -- pods --------------------------------------------------------------------------------


def _pods(objs: list[Obj]) -> list[tuple[str, Obj, bool]]:
    """(workload name, pod spec, long-running) for every workload."""
    out = []
    for obj in objs:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            out.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"], True))
        elif obj["kind"] == "CronJob":
            spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            out.append((obj["metadata"]["name"], spec, False))
    return out


def test_every_pod_is_non_root_read_only_limited_and_probed(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    pods = _pods(rendered[overlay])
    assert len(pods) >= 10
    for name, spec, long_running in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, bound)
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["image"].startswith("medsvc") or c["name"] in {"nginx", "postgres"}:
                assert "/tmp" in mounts, f"{name}: /tmp must be a writable emptyDir"
            if long_running:
                assert "livenessProbe" in c and "readinessProbe" in c, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if "tmp" in volumes:
            assert "emptyDir" in volumes["tmp"], name


def test_every_workload_has_a_disruption_budget_and_the_gateway_two_replicas(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    budgets = objects(rendered, overlay, "PodDisruptionBudget").values()
    for obj in rendered[overlay]:
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(b["spec"]["selector"], labels) for b in budgets), obj["metadata"][
            "name"
        ]
    deployments = objects(rendered, overlay, "Deployment")
    assert deployments["gateway"]["spec"]["replicas"] >= 2
    for name, dep in deployments.items():
        if name in {"gateway", "nginx", "audit"} or name.startswith("fe-shard-"):
            assert dep["spec"]["replicas"] >= 2, name


def test_python_processes_are_scraped_and_run_real_entry_points(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for name, spec, long_running in _pods(rendered[overlay]):
        container = spec["containers"][0]
        if not container["image"].startswith("medsvc"):
            continue
        for module, attr in _entry_points(container["command"]):
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            if attr:
                assert hasattr(importlib.import_module(module), attr), f"{name}: {module}.{attr}"
        if long_running:
            workload = next(o for o in rendered[overlay] if o["metadata"]["name"] == name)
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", name
            assert annotations["prometheus.io/port"] == str(PORT), name
            assert container["ports"][0]["containerPort"] == PORT, name


def _entry_points(command: list[str]) -> list[tuple[str, str | None]]:
    """The modules (and names) a container's ``python -m X`` or ``python -c SCRIPT`` needs."""
    assert command[0] == "python" and command[1] in {"-m", "-c"}, command
    if command[1] == "-m":
        return [(command[2], None)]
    tree = ast.parse(command[2])  # a syntax error fails here
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
    return out


# -- secrets -----------------------------------------------------------------------------


def test_no_real_secret_is_committed(rendered: dict[str, list[Obj]], overlay: str) -> None:
    secrets = objects(rendered, overlay, "Secret")
    env = generate.ENVIRONMENTS[overlay]
    if env.secrets_env is None:
        # Production's Secret is created by hand (deploy/README.md), never rendered.
        assert secrets == {}
    else:
        (secret,) = secrets.values()
        import base64

        values = [base64.b64decode(v).decode() for v in secret["data"].values()]
        assert all("placeholder" in v for v in values), "dev secrets must be placeholders"
        assert set(secret["data"]) == set(SECRET_KEYS)
    for _, spec, _ in _pods(rendered[overlay]):
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"].startswith(SECRET) and ref["key"] in SECRET_KEYS


# -- network policies --------------------------------------------------------------------


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: Obj, pod: tuple[str, dict[str, str]], home: str) -> bool:
    namespace, labels = pod
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != home:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _rule_allows(
    rule: Obj, key: str, pod: tuple[str, dict[str, str]], port: int, home: str
) -> bool:
    ports = rule.get("ports")
    if ports and not any(
        p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports
    ):
        return False
    peers = rule.get(key)
    return not peers or any(_peer_matches(p, pod, home) for p in peers)


def _may_connect(
    policies: list[Obj],
    home: str,
    src: tuple[str, dict[str, str]],
    dst: tuple[str, dict[str, str]],
    port: int,
) -> bool:
    """Whether ``src`` may open a TCP connection to ``dst:port`` under ``policies``."""

    def direction(
        pod: tuple[str, dict[str, str]], kind: str, key: str, other: tuple[str, dict[str, str]]
    ) -> bool:
        if pod[0] != home:
            return True  # not governed by this namespace's policies
        governing = [
            p
            for p in policies
            if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod[1])
        ]
        if not governing:
            return True
        rules = [r for p in governing for r in p["spec"].get(kind.lower(), [])]
        return any(_rule_allows(r, key, other, port, home) for r in rules)

    return direction(dst, "Ingress", "from", src) and direction(src, "Egress", "to", dst)


def test_only_the_named_paths_are_open(rendered: dict[str, list[Obj]], overlay: str) -> None:
    home = generate.ENVIRONMENTS[overlay].namespace
    policies = list(objects(rendered, overlay, "NetworkPolicy").values())
    pods: dict[str, tuple[str, dict[str, str]]] = {}
    for obj in rendered[overlay]:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            pods[obj["metadata"]["name"]] = (home, obj["spec"]["template"]["metadata"]["labels"])
        elif obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
            pods[obj["metadata"]["name"]] = (home, template["metadata"]["labels"])
    pods["client"] = ("elsewhere", {})
    pods["prometheus"] = ("monitoring", {"app": "prometheus"})
    shards = range(EXPECTED_SHARDS[overlay])

    def may(src: str, dst: str, port: int) -> bool:
        return _may_connect(policies, home, pods[src], pods[dst], port)

    assert may("client", "nginx", 8080) and may("client", "nginx", 8443)
    assert not may("client", "gateway", PORT)
    assert may("nginx", "gateway", PORT)
    assert may("gateway", "audit", PORT) and may("gateway", "anonymizer", PORT)
    for i in shards:
        fe, pg, cache = f"fe-shard-{i}", f"pg-shard-{i}", f"redis-shard-{i}"
        # Only the gateway reaches FE servers (and Prometheus their /metrics).
        assert may("gateway", fe, PORT)
        for other in ("nginx", "audit", "anonymizer", "client"):
            assert not may(other, fe, PORT), (other, fe)
        assert may("prometheus", fe, PORT)
        # Only a shard's own FE servers reach its database and cache.
        assert may(fe, pg, 5432) and may(fe, cache, 6379)
        for j in shards:
            if j != i:
                assert not may(f"fe-shard-{j}", pg, 5432), (j, pg)
                assert not may(f"fe-shard-{j}", cache, 6379), (j, cache)
        for other in ("gateway", "nginx", "audit", "client", "prometheus"):
            assert not may(other, pg, 5432), (other, i)
        # The gateway answers cached reads from every shard's cache (its fast path).
        assert may("gateway", cache, 6379)
        for other in ("nginx", "audit", "client", "prometheus"):
            assert not may(other, cache, 6379), (other, i)
        # The anonymizer extracts from every shard's database, and uses no cache.
        assert may("anonymizer", pg, 5432) and may("anonymizer-schedule", pg, 5432)
        assert not may("anonymizer", cache, 6379)
        assert may(fe, "audit", PORT) and not may(fe, "pg-audit", 5432)
        assert not may(fe, "pg-anonymizer", 5432)
    # The audit database belongs to audit_service alone.
    assert may("audit", "pg-audit", 5432)
    for other in ("gateway", "nginx", "anonymizer", "anonymizer-schedule", "client", "prometheus"):
        assert not may(other, "pg-audit", 5432), other
    assert may("anonymizer", "pg-anonymizer", 5432)
    assert may("anonymizer-schedule", "pg-anonymizer", 5432)
    assert not may("audit", "pg-anonymizer", 5432) and not may("gateway", "pg-anonymizer", 5432)


# -- nginx -------------------------------------------------------------------------------


def _routing(text: str) -> str:
    """nginx.conf without what may differ between the pods and `make run`: listen
    addresses, log targets, the plain-HTTP redirect server and the generated-file header."""
    text = re.sub(
        r"\n    # Plain HTTP answers nothing but.*?\n    }\n", "\n", text, flags=re.DOTALL
    )
    keep = [
        line
        for line in text.splitlines()
        if line.strip()
        and not line.lstrip().startswith(("listen ", "error_log ", "access_log ", "# Generated"))
    ]
    return "\n".join(keep)


def test_nginx_runs_the_local_stack_config(overlay: str) -> None:
    """Same door, limits and errors as `make run`: only addresses, logs and the redirect differ."""
    from deploy.localstack.nginx import NginxConfig

    replicas = generate.ENVIRONMENTS[overlay].replicas
    local = NginxConfig(
        run_dir=Path("/tmp/nginx"),
        http_port=8080,
        https_port=8443,
        ops_port=8081,
        cert=Path("/etc/nginx/tls/tls.crt"),
        key=Path("/etc/nginx/tls/tls.key"),
        gateways=[f"gateway:{PORT}"],
        worker_processes=2,
        logs_dir=Path("/LOGS"),
        user=None,
        gateway_processes=replicas["gateway"],
        nginx_instances=replicas["nginx"],
    ).render()
    pod = (K8S / "overlays" / overlay / "nginx.conf").read_text()
    assert _routing(pod) == _routing(local)
    assert "return 308 https://$host$request_uri;" in pod
    assert "listen 8080 backlog=4096;" in pod and "listen 8443 ssl backlog=4096;" in pod
    assert "error_log stderr crit;" in pod and "access_log /dev/stdout json;" in pod
    assert any('"requestId":"$reqid"' in line for line in pod.splitlines())


def _bound(conf: str, pattern: str) -> int:
    found = re.findall(pattern, conf)
    assert len(found) >= 1, pattern
    assert len(set(found)) == 1, found
    return int(found[0])


def test_nginx_edge_bounds_follow_the_replicas(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Together the nginx replicas let through at most what the gateway replicas admit
    (shared/admission.py bounds; two thirds, the rest for an uneven split), and not much less:
    the rendered ConfigMap's bounds, multiplied by nginx's replicas, against the gateways'."""
    from shared.settings import GatewaySettings

    deployments = objects(rendered, overlay, "Deployment")
    gateways, nginxes = (
        deployments["gateway"]["spec"]["replicas"],
        deployments["nginx"]["spec"]["replicas"],
    )
    env = {
        e["name"]: e["value"]
        for c in deployments["gateway"]["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "value" in e
    }
    fields = GatewaySettings.model_fields
    admit = int(env.get("MEDSVC_MAX_IN_FLIGHT", fields["max_in_flight"].default))
    admit_cached = int(
        env.get("MEDSVC_MAX_IN_FLIGHT_CACHED", fields["max_in_flight_cached"].default)
    )
    volumes = deployments["nginx"]["spec"]["template"]["spec"]["volumes"]
    conf_map = next(v["configMap"]["name"] for v in volumes if v["name"] == "conf")
    conf = objects(rendered, overlay, "ConfigMap")[conf_map]["data"]["nginx.conf"]
    assert conf == (K8S / "overlays" / overlay / "nginx.conf").read_text()
    edge = _bound(conf, r"limit_conn inflight (\d+);")
    uncached = _bound(conf, r"limit_conn inflight_uncached (\d+);")
    for ours, theirs in ((edge, max(admit, admit_cached)), (uncached, admit)):
        together, capacity = ours * nginxes, theirs * gateways
        assert capacity // 2 <= together <= capacity * 2 // 3, (overlay, ours, theirs)
    # One connection per request in flight to the gateway Service, all kept warm.
    assert _bound(conf, r"max_conns=(\d+);") == edge
    assert _bound(conf, r"keepalive (\d+);") == edge
    # max_conns bounds all of nginx's workers (the pods run several) together only when the
    # upstream's counts live in a shared zone: without one, each worker may open max_conns.
    assert re.search(r"upstream gateways \{\s*zone gateways \d+k;", conf), overlay


def test_the_pods_nginx_conf_is_valid_for_nginx(tmp_path: Path, overlay: str) -> None:
    """``nginx -t`` accepts the pods' configuration (with a local certificate and folders)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    text = (K8S / "overlays" / overlay / "nginx.conf").read_text()
    text = (
        text.replace("/etc/nginx/tls/tls.crt", str(cert))
        .replace("/etc/nginx/tls/tls.key", str(key))
        .replace("/tmp/nginx", str(tmp_path))
    )
    # The pods' upstream is the gateway Service's DNS name; here, any address resolves.
    text = text.replace(f"server gateway:{PORT} ", f"server 127.0.0.1:{PORT} ")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / sub).mkdir(parents=True)
    out = subprocess.run(
        [
            nginx,
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


# -- Prometheus and Grafana --------------------------------------------------------------

REQUIRED_ALERTS = {
    "MedsvcShardDown",
    "MedsvcOutboxLag",
    "MedsvcAnonymizerRunOverdue",
    "MedsvcHigh5xxRate",
    "MedsvcCacheErrorRate",
}
# Components whose metrics the rules name before their code may have landed.
PENDING_COMPONENTS = {"medsvc_anonymizer_": "anonymizer.metrics"}
METRIC_MODULES = (
    "shared.metrics",
    "shared.cache",
    "shared.db",
    "fe_server.outbox",
    "shared.admission",
    "gateway.metrics",
    "gateway.retrybudget",
    "audit_service.metrics",
    "anonymizer.metrics",
)


def _alert_rules() -> list[Obj]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$namespace", "medsvc")


def _metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if type(node).__name__ == "VectorSelector" and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_alert_rules_parse_and_cover_the_required_conditions() -> None:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert doc["groups"] and all(g["name"] and g["rules"] for g in doc["groups"])
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_prometheus_scrapes_the_pods_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "medsvc" and job["kubernetes_sd_configs"][0]["role"] == "pod"
    namespaces = set(job["kubernetes_sd_configs"][0]["namespaces"]["names"])
    assert namespaces == {e.namespace for e in generate.ENVIRONMENTS.values()}
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"__address__", "namespace", "pod", "component", "shard"} <= targets


def test_grafana_dashboard_queries_parse() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        promql_parser.parse(_grafana_to_promql(expr))


def test_rules_and_dashboard_name_only_metrics_the_code_exports() -> None:
    from prometheus_client import REGISTRY

    missing_modules = []
    for module in METRIC_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            missing_modules.append(module)
    known = {"up"}
    for family in REGISTRY.collect():
        known.add(family.name)
        known.update(family.name + s for s in ("_total", "_bucket", "_sum", "_count"))
    used: set[str] = set()
    for expr in [r["expr"] for r in _alert_rules()] + [
        _grafana_to_promql(e) for e in _dashboard_exprs()
    ]:
        used |= _metric_names(expr)
    unknown = used - known
    pending = {
        n
        for n in unknown
        for prefix, module in PENDING_COMPONENTS.items()
        if n.startswith(prefix) and module in missing_modules
    }
    if pending:
        warnings.warn(f"metrics of components not in the tree yet: {sorted(pending)}", stacklevel=1)
    assert unknown - pending == set()
    # The families the issue asks for are all named somewhere.
    for needed in (
        "medsvc_http_requests_total",
        "medsvc_gateway_upstream_requests_total",
        "medsvc_db_pool_connections",
        "medsvc_cache_events_total",
        "medsvc_audit_outbox_backlog",
        "medsvc_audit_outbox_oldest_age_seconds",
        "medsvc_audit_events_appended_total",
        "medsvc_anonymizer_rows_extracted_total",
        "medsvc_anonymizer_last_success_timestamp_seconds",
    ):
        assert needed in used, needed


# -- the image ---------------------------------------------------------------------------


def test_the_image_holds_every_package_the_manifests_run(rendered: dict[str, list[Obj]]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    assert re.search(rf"^USER {APP_UID}:{APP_UID}$", dockerfile, re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text().split()
    for objs in rendered.values():
        for name, spec, _ in _pods(objs):
            c = spec["containers"][0]
            if c["image"].startswith("medsvc"):
                for module, _ in _entry_points(c["command"]):
                    package = module.split(".")[0]
                    if (REPO / package / "__init__.py").exists():  # the project's own
                        assert package in copied and package not in ignored, (name, package)
    # Every package of the project the FE servers load (the services they host).
    for package in (
        "shared",
        "fe_server",
        "gateway",
        "user_service",
        "visit_service",
        "audit_service",
    ):
        assert package in copied, package


def test_the_resharder_job_is_valid_and_may_only_patch_the_shard_map(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    (job,) = yaml.safe_load_all((K8S / "jobs" / "resharder-move.yaml").read_text())
    job = dict(job)
    job["metadata"] = {**job["metadata"], "name": "resharder-move-x"}  # generateName in the file
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "resharder" and pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["command"][:4] == ["python", "-m", "resharder", "move"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MEDSVC_SHARDMAP_CONFIGMAP"] == "shardmap"
    (role,) = [
        o for o in rendered[overlay] if o["kind"] == "Role" and o["metadata"]["name"] == "resharder"
    ]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["shardmap"],
            "verbs": ["get", "patch"],
        }
    ]
    # The ConfigMap it patches keeps its name, so pods see the new map without a restart.
    assert any(
        o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shardmap" for o in rendered[overlay]
    )
