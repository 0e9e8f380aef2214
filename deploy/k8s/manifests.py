"""The Kubernetes objects of a MedicalService deployment, built as plain dicts.

Every process of the local stack has its workload here, wired the same way: the shard map
names each shard's database, cache and FE cluster by Service DNS name (``pg-shard-0``,
``redis-shard-0``, ``fe-shard-0``), so that the file the processes read is the one the
local stack writes, with other hosts. Each pod runs as a non-root user on a read-only root
filesystem (``/tmp`` is an emptyDir), with probes, requests and limits; each workload has a
PodDisruptionBudget; NetworkPolicies deny everything that is not named below.
"""

from __future__ import annotations

from typing import Any

from deploy.localstack.redis_server import ACL_USER, MAXMEMORY_POLICY, acl_line

Obj = dict[str, Any]

PORT = 8000
# nginx in its pod: the door (HTTP redirects only, HTTPS) and its own /healthz for probes.
NGINX_HTTP_PORT = 8080
NGINX_HTTPS_PORT = 8443
NGINX_OPS_PORT = 8081
# The project's image; each overlay pins its name and tag with kustomize's ``images:``.
IMAGE = "medsvc"
POSTGRES_IMAGE = "postgres:15.10"
REDIS_IMAGE = "redis:7.2.6"
NGINX_IMAGE = "nginxinc/nginx-unprivileged:1.26.2"
APP_UID = 10001  # the Dockerfile's user
POSTGRES_UID = 999  # "postgres" in the official image
REDIS_UID = 999  # "redis" in the official image
NGINX_UID = 101  # "nginx" in nginx-unprivileged
PG_USER = "medsvc"
# Prometheus runs in this namespace; it alone may scrape /metrics from outside.
MONITORING_NAMESPACE = "monitoring"

SECRET = "medsvc-secrets"
# Secret keys; each pod gets only the ones it needs. A shard database's superuser
# ("postgres", pg-admin-password) is used by no process: the FE servers log in as PG_USER,
# the database's owner, and the anonymizer as a read-only role.
# Each PostgreSQL role its own password: pg-password (the shards' owner, the FE servers),
# shard-reader-password (the anonymizer's read-only role on the shards), audit-pg-password and
# audit-writer-password (audit_service), anonymizer-pg-password (the study registry).
SECRET_KEYS = (
    "jwt-secret",
    "pseudonym-key",
    "pg-password",
    "audit-pg-password",
    "audit-writer-password",
    "redis-password",
    "anonymizer-pg-password",
    "shard-reader-password",
    "pg-admin-password",
)
ENV_CONFIG = "medsvc-env"
SHARDMAP_CONFIG = "shardmap"
NGINX_CONFIG = "nginx-conf"
TLS_SECRET = "medsvc-tls"

COMPONENT = "app.kubernetes.io/component"
SHARD = "medsvc.io/shard"
SCRAPE = "medsvc.io/metrics"

PYTHON_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}
NGINX_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "32Mi"},
    "limits": {"cpu": "1", "memory": "128Mi"},
}
JOB_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}


# -- labels and small pieces -------------------------------------------------------------


def selector(component: str, shard: int | None = None) -> dict[str, str]:
    """The labels that pick a workload's pods (and nothing else)."""
    out = {"app.kubernetes.io/name": "medsvc", COMPONENT: component}
    if shard is not None:
        out[SHARD] = str(shard)
    return out


def meta(name: str, component: str, shard: int | None = None, **extra: Any) -> Obj:
    return {
        "name": name,
        "labels": {**selector(component, shard), "app.kubernetes.io/part-of": "medsvc"},
        **extra,
    }


def secret_env(var: str, key: str) -> Obj:
    assert key in SECRET_KEYS, key
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}


def container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security(uid: int) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probes(port: int | str = "http", ready_path: str = "/readyz") -> Obj:
    """Startup (migrations may take a while), liveness (/healthz), readiness."""

    def get(path: str, period: int, failures: int) -> Obj:
        return {
            "httpGet": {"path": path, "port": port},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "startupProbe": get("/healthz", 2, 60),
        "livenessProbe": get("/healthz", 10, 3),
        "readinessProbe": get(ready_path, 5, 2),
    }


def exec_probes(command: list[str]) -> Obj:
    def probe(period: int, failures: int) -> Obj:
        return {
            "exec": {"command": command},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    return {
        "startupProbe": probe(2, 90),
        "livenessProbe": probe(10, 6),
        "readinessProbe": probe(5, 2),
    }


TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
SHARDMAP_VOLUME = {"name": "shardmap", "configMap": {"name": SHARDMAP_CONFIG}}
SHARDMAP_MOUNT = {"name": "shardmap", "mountPath": "/etc/medsvc", "readOnly": True}


def spread(component: str, shard: int | None = None) -> list[Obj]:
    """Keep the replicas of one workload on different nodes where there are enough."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(component, shard)},
        }
    ]


def python_pod(
    component: str,
    command: list[str],
    *,
    env: list[Obj],
    shard: int | None = None,
    shard_map: bool = False,
    probes: bool = True,
    resources: Obj = PYTHON_RESOURCES,
) -> Obj:
    """A pod running one of the project's processes from the project's image."""
    mounts = [TMP_MOUNT] + ([SHARDMAP_MOUNT] if shard_map else [])
    volumes = [TMP_VOLUME] + ([SHARDMAP_VOLUME] if shard_map else [])
    container: Obj = {
        "name": component,
        "image": IMAGE,
        "command": command,
        "envFrom": [{"configMapRef": {"name": ENV_CONFIG}}],
        "env": env,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    if probes:
        container["ports"] = [{"name": "http", "containerPort": PORT}]
        container.update(http_probes())
        # Let the Service drop this pod from its endpoints before the process stops.
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    spec: Obj = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(APP_UID),
        "containers": [container],
        "volumes": volumes,
    }
    if probes:
        spec["terminationGracePeriodSeconds"] = 30
        spec["topologySpreadConstraints"] = spread(component, shard)
    return spec


def template(component: str, shard: int | None, spec: Obj, *, scrape: bool) -> Obj:
    labels = {**selector(component, shard), "app.kubernetes.io/part-of": "medsvc"}
    md: Obj = {"labels": labels}
    if scrape:
        labels[SCRAPE] = "true"
        md["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics",
        }
    return {"metadata": md, "spec": spec}


def deployment(
    name: str,
    component: str,
    replicas: int,
    spec: Obj,
    shard: int | None = None,
    *,
    scrape: bool = True,
) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, component, shard),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(component, shard)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": template(component, shard, spec, scrape=scrape),
        },
    }


def service(
    name: str,
    component: str,
    ports: list[tuple[str, int, int]],
    shard: int | None = None,
    *,
    headless: bool = False,
) -> Obj:
    spec: Obj = {
        "selector": selector(component, shard),
        "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, component, shard),
        "spec": spec,
    }


def pdb(name: str, component: str, shard: int | None = None, *, max_unavailable: int = 1) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name, component, shard),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector(component, shard)},
        },
    }


def peer(component: str | list[str], shard: int | None = None) -> Obj:
    """A NetworkPolicy peer: pods of ``component`` (one or several), of one shard or any."""
    if isinstance(component, list):
        sel: Obj = {"matchExpressions": [{"key": COMPONENT, "operator": "In", "values": component}]}
        if shard is not None:
            sel["matchLabels"] = {SHARD: str(shard)}
        return {"podSelector": sel}
    labels = {COMPONENT: component}
    if shard is not None:
        labels[SHARD] = str(shard)
    return {"podSelector": {"matchLabels": labels}}


def rule(peers: list[Obj], ports: list[int], direction: str) -> Obj:
    out: Obj = {"ports": [{"protocol": "TCP", "port": p} for p in ports]}
    if peers:
        out["from" if direction == "in" else "to"] = peers
    return out


def netpol(
    name: str, pods: Obj, *, ingress: list[Obj] | None = None, egress: list[Obj] | None = None
) -> Obj:
    """A policy for ``pods``; a direction left None is not governed by this policy."""
    spec: Obj = {"podSelector": pods, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "medsvc"}},
        "spec": spec,
    }


def pods_of(component: str | list[str], shard: int | None = None) -> Obj:
    return peer(component, shard)["podSelector"]


# -- PostgreSQL and Redis ----------------------------------------------------------------


def postgres(
    name: str,
    component: str,
    database: str,
    password_key: str,
    storage: str,
    resources: Obj,
    shard: int | None = None,
    init_config: str | None = None,
    extra_env: list[Obj] | None = None,
    admin_user: str = PG_USER,
) -> list[Obj]:
    """A single-instance PostgreSQL 15 StatefulSet with its volume, headless Service and PDB."""
    mounts = [
        {"name": "data", "mountPath": "/var/lib/postgresql/data"},
        {"name": "run", "mountPath": "/var/run/postgresql"},
        TMP_MOUNT,
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    volumes = [
        {"name": "run", "emptyDir": {}},
        TMP_VOLUME,
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
    ]
    if init_config:
        mounts.append(
            {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True}
        )
        volumes.append({"name": "init", "configMap": {"name": init_config}})
    container: Obj = {
        "name": "postgres",
        "image": POSTGRES_IMAGE,
        # No PHI in the server log: terse errors leave out DETAIL ("Failing row contains
        # (...)", "Key (...)=(...)"), and failing statements are not logged.
        # wal_level=logical: a bucket move (resharder/) copies by logical replication, in
        # several streams at once (the worker, slot and sender limits: room for them, as
        # deploy/localstack/postgres.py REPLICATION_SETTINGS).
        "args": [
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "wal_level=logical",
            "-c",
            "max_logical_replication_workers=16",
            "-c",
            "max_worker_processes=24",
            "-c",
            "max_replication_slots=16",
            "-c",
            "max_wal_senders=16",
            "-c",
            "log_error_verbosity=terse",
            "-c",
            "log_min_error_statement=panic",
        ],
        "env": [
            {"name": "POSTGRES_USER", "value": admin_user},
            {"name": "POSTGRES_DB", "value": database},
            secret_env("POSTGRES_PASSWORD", password_key),
            # A subfolder: the volume's root may hold lost+found.
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
            *(extra_env or []),
        ],
        "ports": [{"name": "postgres", "containerPort": 5432}],
        **exec_probes(["pg_isready", "-h", "127.0.0.1", "-U", PG_USER, "-d", database]),
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(name, component, shard),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector(component, shard)},
            "template": template(
                component,
                shard,
                {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(POSTGRES_UID),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": volumes,
                },
                scrape=False,
            ),
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": storage}},
                    },
                }
            ],
        },
    }
    svc = service(name, component, [("postgres", 5432, 5432)], shard, headless=True)
    # A shard has one database server: a drain waits for an operator rather than evict it.
    return [sts, svc, pdb(name, component, shard, max_unavailable=0)]


def redis(name: str, shard: int, resources: Obj, maxmemory: str) -> list[Obj]:
    """The shard's read cache.

    Persistence is off and the data folder is an emptyDir, on purpose: a snapshot restored
    at restart could hold values invalidated after it was taken, and the cache must never
    serve a value older than a successful write. A restarted Redis starts empty.
    """
    component = "redis"
    # The ACL file is written at start from the Secret (the password never appears in the
    # process's arguments); the default user is off.
    script = (
        "umask 077\n"
        f"printf 'user default off\\n%s\\n' \"{acl_line('$REDIS_PASSWORD')}\" > /data/users.acl\n"
        "exec redis-server --save '' --appendonly no --dir /data"
        f" --maxmemory {maxmemory} --maxmemory-policy {MAXMEMORY_POLICY}"
        " --aclfile /data/users.acl --protected-mode no\n"
    )
    container: Obj = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "command": ["sh", "-c", script],
        "env": [secret_env("REDIS_PASSWORD", "redis-password")],
        "ports": [{"name": "redis", "containerPort": 6379}],
        **exec_probes(
            [
                "sh",
                "-c",
                f'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --no-auth-warning'
                f" --user {ACL_USER} ping | grep -qx PONG",
            ]
        ),
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(name, component, shard),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector(component, shard)},
            "template": template(
                component,
                shard,
                {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(REDIS_UID),
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
                scrape=False,
            ),
        },
    }
    svc = service(name, component, [("redis", 6379, 6379)], shard, headless=True)
    return [sts, svc, pdb(name, component, shard)]
