"""The workloads: shard-independent ones (the base) and one shard's (generated per overlay).

Ports, names and labels come from :mod:`deploy.k8s.manifests`; the shard map written next to
the overlay names the same Services (``pg-shard-N``, ``redis-shard-N``, ``fe-shard-N``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy.k8s.manifests import (
    JOB_RESOURCES,
    MONITORING_NAMESPACE,
    NGINX_CONFIG,
    NGINX_HTTP_PORT,
    NGINX_HTTPS_PORT,
    NGINX_IMAGE,
    NGINX_OPS_PORT,
    NGINX_RESOURCES,
    NGINX_UID,
    PG_USER,
    PORT,
    SCRAPE,
    SHARDMAP_CONFIG,
    TLS_SECRET,
    TMP_MOUNT,
    TMP_VOLUME,
    Obj,
    container_security,
    deployment,
    http_probes,
    netpol,
    pdb,
    peer,
    pod_security,
    pods_of,
    postgres,
    python_pod,
    redis,
    rule,
    secret_env,
    selector,
    service,
    spread,
    template,
)
from deploy.localstack.redis_server import ACL_USER

FE_SERVICES = "user,visit"
PG_DATABASE = "medsvc"
# The shards' Redis ACL user and its password (FE servers and gateways).
# A shard database's roles, made at its first start by its superuser (PG_ADMIN, whose
# password no process gets): the owner the FE servers log in as (PG_USER, not a superuser;
# its migrations create the tables) and the anonymizer's read-only role, which may SELECT
# every table the owner creates.
PG_ADMIN = "postgres"
SHARD_READER = "anonymizer_reader"
SHARD_INIT = "pg-shard-init"


def shard_roles_init(
    owner: str = PG_USER, reader: str = SHARD_READER, database: str = PG_DATABASE
) -> str:
    """The shard database's init script (sourced by the postgres image's entry point)."""
    return (
        "#!/bin/sh\n"
        'psql -v ON_ERROR_STOP=1 -v owner_pw="$SHARD_OWNER_PASSWORD" '
        '-v reader_pw="$SHARD_READER_PASSWORD" '
        '--username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<\'SQL\'\n'
        f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_pw';\n"
        f"ALTER DATABASE {database} OWNER TO {owner};\n"
        f"CREATE ROLE {reader} LOGIN PASSWORD :'reader_pw';\n"
        f"GRANT CONNECT ON DATABASE {database} TO {reader};\n"
        f"GRANT USAGE ON SCHEMA public TO {reader};\n"
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public\n"
        f"    GRANT SELECT ON TABLES TO {reader};\n"
        "SQL\n"
    )


REDIS_CREDENTIALS = [
    {"name": "MEDSVC_REDIS_USERNAME", "value": ACL_USER},
    secret_env("MEDSVC_REDIS_PASSWORD", "redis-password"),
]
AUDIT_DATABASE = "audit"
ANONYMIZER_DATABASE = "anonymizer"
ANONYMIZER_COMPONENTS = ["anonymizer", "anonymizer-job"]
# The CronJob's tick: every minute, one pass of the anonymizer's scheduler over the studies
# whose own cron schedules have come due (anonymizer/scheduler.py), then exit. It is the
# loop of `python -m anonymizer schedule` (the local scheduler) run once. Several passes at
# once are safe: a study's run lock lets one in.
ANONYMIZER_SCHEDULE = "* * * * *"
ANONYMIZER_TICK = """\
import uvloop
from anonymizer.app import extractor_scope
from anonymizer.scheduler import tick
from anonymizer.settings import AnonymizerSettings
from shared.logs import setup_logging
from shared.settings import load
from shared.shardmap import load_shard_map


async def one_pass() -> None:
    settings = load(AnonymizerSettings)
    setup_logging("anonymizer-cronjob", settings.log_level)
    async with extractor_scope(settings, load_shard_map(settings.shard_map)) as ex:
        await tick(ex)


uvloop.run(one_pass())
"""


@dataclass(frozen=True)
class ShardSizing:
    """What one shard gets in an environment."""

    fe_replicas: int = 2
    pg_storage: str = "10Gi"
    pg_resources: Obj = field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        }
    )
    redis_resources: Obj = field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "320Mi"},
        }
    )
    # Below the container's memory limit, leaving room for Redis's own overhead.
    redis_maxmemory: str = "256mb"


def service_urls(name: str) -> str:
    return f"http://{name}:{PORT}"


def dsn(host: str, database: str) -> str:
    """A DSN without a password (the processes get it from MEDSVC_PG_PASSWORD)."""
    return f"postgresql://{PG_USER}@{host}:5432/{database}"


def shard_names(shard: int) -> dict[str, str]:
    """The Service names of a shard's database, cache and FE cluster."""
    return {
        "postgres": f"pg-shard-{shard}",
        "redis": f"redis-shard-{shard}",
        "fe": f"fe-shard-{shard}",
    }


# -- one shard ---------------------------------------------------------------------------


def shard_objects(shard: int, sizing: ShardSizing) -> list[Obj]:
    """A shard: its PostgreSQL, its Redis, its FE cluster, and who may reach them."""
    names = shard_names(shard)
    fe_env = [
        {"name": "MEDSVC_SHARD", "value": str(shard)},
        {"name": "MEDSVC_SERVICES", "value": FE_SERVICES},
        # The outbox relay ships this shard's audit events there.
        {"name": "MEDSVC_AUDIT_URLS", "value": service_urls("audit")},
        # A study consent checks that the study exists in the anonymizer's registry.
        {"name": "MEDSVC_ANONYMIZER_URLS", "value": service_urls("anonymizer")},
        secret_env("MEDSVC_JWT_SECRET", "jwt-secret"),
        secret_env("MEDSVC_PG_PASSWORD", "pg-password"),
        *REDIS_CREDENTIALS,
    ]
    fe_pod = python_pod(
        "fe", ["python", "-m", "fe_server"], env=fe_env, shard=shard, shard_map=True
    )
    objs = [
        *postgres(
            names["postgres"],
            "postgres",
            PG_DATABASE,
            "pg-admin-password",
            sizing.pg_storage,
            sizing.pg_resources,
            shard,
            init_config=SHARD_INIT,
            admin_user=PG_ADMIN,
            extra_env=[
                secret_env("SHARD_OWNER_PASSWORD", "pg-password"),
                secret_env("SHARD_READER_PASSWORD", "shard-reader-password"),
            ],
        ),
        *redis(names["redis"], shard, sizing.redis_resources, sizing.redis_maxmemory),
        deployment(names["fe"], "fe", sizing.fe_replicas, fe_pod, shard),
        service(names["fe"], "fe", [("http", PORT, PORT)], shard),
        pdb(names["fe"], "fe", shard),
        # Only the gateway calls an FE server; it reaches its own shard's data, audit_service
        # (the outbox relay) and the anonymizer API (does a study exist?).
        netpol(
            names["fe"],
            pods_of("fe", shard),
            ingress=[rule([peer("gateway")], [PORT], "in")],
            egress=[
                rule([peer("postgres", shard)], [5432], "out"),
                rule([peer("redis", shard)], [6379], "out"),
                rule([peer("audit"), peer("anonymizer")], [PORT], "out"),
            ],
        ),
        # Only this shard's FE servers (and the anonymizer's extraction) reach its database;
        # and, for bucket moves, the resharder and the other shards' databases (a move's
        # target subscribes to its source: logical replication).
        netpol(
            names["postgres"],
            pods_of("postgres", shard),
            ingress=[
                rule(
                    [
                        peer("fe", shard),
                        peer(ANONYMIZER_COMPONENTS),
                        peer("resharder"),
                        peer("postgres"),
                    ],
                    [5432],
                    "in",
                )
            ],
            egress=[rule([peer("postgres")], [5432], "out")],
        ),
        # This shard's FE servers reach its cache, and the gateways (which answer cached
        # reads themselves, gateway/fastpath.py), and the resharder (which invalidates the
        # entries of the users it moved).
        netpol(
            names["redis"],
            pods_of("redis", shard),
            ingress=[rule([peer("fe", shard), peer("gateway"), peer("resharder")], [6379], "in")],
            egress=[],
        ),
    ]
    return objs


# -- the base ----------------------------------------------------------------------------


def nginx_objects() -> list[Obj]:
    """nginx with the local stack's config (``deploy/nginx/nginx.conf.j2``) in a ConfigMap."""
    run = "/tmp/nginx"
    container: Obj = {
        "name": "nginx",
        "image": NGINX_IMAGE,
        # The temp folders live under /tmp (an emptyDir): the root filesystem is read-only.
        "command": [
            "sh",
            "-c",
            f"mkdir -p {run}/tmp && exec nginx -p {run} "
            "-c /etc/nginx/medsvc/nginx.conf -e stderr -g 'daemon off;'",
        ],
        "ports": [
            {"name": "http", "containerPort": NGINX_HTTP_PORT},
            {"name": "https", "containerPort": NGINX_HTTPS_PORT},
            {"name": "ops", "containerPort": NGINX_OPS_PORT},
        ],
        # nginx's /healthz is on its own port: the door (8080, 8443) passes only the API.
        **http_probes(NGINX_OPS_PORT, ready_path="/healthz"),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "resources": NGINX_RESOURCES,
        "securityContext": container_security(),
        "volumeMounts": [
            TMP_MOUNT,
            {"name": "conf", "mountPath": "/etc/nginx/medsvc", "readOnly": True},
            {"name": "tls", "mountPath": "/etc/nginx/tls", "readOnly": True},
        ],
    }
    spec = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(NGINX_UID),
        "terminationGracePeriodSeconds": 30,
        "topologySpreadConstraints": spread("nginx"),
        "containers": [container],
        "volumes": [
            TMP_VOLUME,
            {"name": "conf", "configMap": {"name": NGINX_CONFIG}},
            {"name": "tls", "secret": {"secretName": TLS_SECRET}},
        ],
    }
    return [
        deployment("nginx", "nginx", 2, spec, scrape=False),
        service(
            "nginx", "nginx", [("http", 80, NGINX_HTTP_PORT), ("https", 443, NGINX_HTTPS_PORT)]
        ),
        pdb("nginx", "nginx"),
    ]


def gateway_objects() -> list[Obj]:
    pod = python_pod(
        "gateway",
        ["python", "-m", "gateway"],
        env=[
            {"name": "MEDSVC_AUDIT_URLS", "value": service_urls("audit")},
            {"name": "MEDSVC_ANONYMIZER_URLS", "value": service_urls("anonymizer")},
            secret_env("MEDSVC_JWT_SECRET", "jwt-secret"),
            *REDIS_CREDENTIALS,
        ],
        shard_map=True,
    )
    return [
        deployment("gateway", "gateway", 2, pod),
        service("gateway", "gateway", [("http", PORT, PORT)]),
        pdb("gateway", "gateway"),
    ]


# -- audit checkpoints: the signing key and the checkpoint log, kept away from the audit database.
# The Ed25519 key is its own Secret (not medsvc-secrets), mounted as files into the audit pods
# only; nothing the audit PostgreSQL runs can read it. Created by hand, never rendered:
#   kubectl create secret generic medsvc-audit-signing \
#     --from-file=signing-key.pem --from-file=public-keys.pem
# public-keys.pem holds the current and every earlier public key (rotation: add the new public
# key, then replace signing-key.pem; old checkpoints stay verifiable).
# The checkpoint log is a volume of its own, shared by the audit replicas (ReadWriteMany with
# POSIX locks, e.g. CephFS or NFSv4: writers take its flock); the database never mounts it.
AUDIT_SIGNING_SECRET = "medsvc-audit-signing"
AUDIT_SIGNING_DIR = "/etc/medsvc/audit-signing"
AUDIT_CHECKPOINT_DIR = "/var/lib/medsvc/audit-checkpoints"
AUDIT_SIGNING_ENV = [
    {"name": "MEDSVC_AUDIT_SIGNING_KEY_FILE", "value": f"{AUDIT_SIGNING_DIR}/signing-key.pem"},
    {"name": "MEDSVC_AUDIT_PUBLIC_KEYS_FILE", "value": f"{AUDIT_SIGNING_DIR}/public-keys.pem"},
    {"name": "MEDSVC_AUDIT_CHECKPOINT_LOG", "value": f"{AUDIT_CHECKPOINT_DIR}/checkpoints.jsonl"},
]
AUDIT_CHECKPOINT_CLAIM: Obj = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "audit-checkpoints", "labels": selector("audit")},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
}


def _mount_audit_signing(pod: Obj) -> None:
    """Give the audit pod the signing key (read-only) and the checkpoint log volume."""
    pod["volumes"] += [
        {
            "name": "audit-signing",
            "secret": {"secretName": AUDIT_SIGNING_SECRET, "defaultMode": 0o400},
        },
        {"name": "audit-checkpoints", "persistentVolumeClaim": {"claimName": "audit-checkpoints"}},
    ]
    pod["containers"][0]["volumeMounts"] += [
        {"name": "audit-signing", "mountPath": AUDIT_SIGNING_DIR, "readOnly": True},
        {"name": "audit-checkpoints", "mountPath": AUDIT_CHECKPOINT_DIR},
    ]


def audit_objects() -> list[Obj]:
    env = [
        {"name": "MEDSVC_AUDIT_DSN", "value": dsn("pg-audit", AUDIT_DATABASE)},
        # The image's entry point created the database (POSTGRES_DB).
        {"name": "MEDSVC_AUDIT_CREATE_DATABASE", "value": "false"},
        secret_env("MEDSVC_JWT_SECRET", "jwt-secret"),
        secret_env("MEDSVC_PG_PASSWORD", "audit-pg-password"),
        secret_env("MEDSVC_AUDIT_WRITER_PASSWORD", "audit-writer-password"),
        *AUDIT_SIGNING_ENV,
    ]
    pod = python_pod("audit", ["python", "-m", "audit_service"], env=env)
    _mount_audit_signing(pod)
    # The append-only role the service's pool logs in as, with its password (the service's
    # migration grants it exactly SELECT and INSERT).
    init = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "pg-audit-init", "labels": selector("audit-postgres")},
        "data": {
            "10-audit-writer.sh": (
                # Sourced by the image's entry point on the first start (an empty volume).
                "#!/bin/sh\n"
                'psql -v ON_ERROR_STOP=1 -v pw="$AUDIT_WRITER_PASSWORD" '
                '--username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<\'SQL\'\n'
                "CREATE ROLE audit_writer LOGIN PASSWORD :'pw';\n"
                "SQL\n"
            )
        },
    }
    return [
        deployment("audit", "audit", 2, pod),
        AUDIT_CHECKPOINT_CLAIM,
        service("audit", "audit", [("http", PORT, PORT)]),
        pdb("audit", "audit"),
        init,
        *postgres(
            "pg-audit",
            "audit-postgres",
            AUDIT_DATABASE,
            "audit-pg-password",
            "20Gi",
            {
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": "2", "memory": "1Gi"},
            },
            init_config="pg-audit-init",
            extra_env=[secret_env("AUDIT_WRITER_PASSWORD", "audit-writer-password")],
        ),
        netpol(
            "audit",
            pods_of("audit"),
            ingress=[rule([peer("gateway"), peer("fe")], [PORT], "in")],
            egress=[rule([peer("audit-postgres")], [5432], "out")],
        ),
        netpol(
            "pg-audit",
            pods_of("audit-postgres"),
            ingress=[rule([peer("audit")], [5432], "in")],
            egress=[],
        ),
    ]


def anonymizer_objects() -> list[Obj]:
    env = [
        {"name": "MEDSVC_ANONYMIZER_DSN", "value": dsn("pg-anonymizer", ANONYMIZER_DATABASE)},
        # The image's entry point created the database (POSTGRES_DB).
        {"name": "MEDSVC_ANONYMIZER_CREATE_DATABASE", "value": "false"},
        secret_env("MEDSVC_JWT_SECRET", "jwt-secret"),
        secret_env("MEDSVC_PG_PASSWORD", "anonymizer-pg-password"),
        # The shards are read as a read-only role of their own.
        {"name": "MEDSVC_ANONYMIZER_SHARD_USER", "value": SHARD_READER},
        secret_env("MEDSVC_ANONYMIZER_SHARD_PASSWORD", "shard-reader-password"),
        secret_env("MEDSVC_PSEUDONYM_KEY", "pseudonym-key"),
    ]
    api = python_pod("anonymizer", ["python", "-m", "anonymizer", "serve"], env=env, shard_map=True)
    job_pod = python_pod(
        "anonymizer-job",
        ["python", "-c", ANONYMIZER_TICK],
        env=env,
        shard_map=True,
        probes=False,
        resources=JOB_RESOURCES,
    )
    job_pod["restartPolicy"] = "Never"
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "anonymizer-schedule", "labels": selector("anonymizer-job")},
        "spec": {
            "schedule": ANONYMIZER_SCHEDULE,
            # A pass still running when the next tick comes is left to finish: runs resume
            # and are idempotent, so a skipped tick only delays them.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 120,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 6 * 3600,
                    "ttlSecondsAfterFinished": 3600,
                    "template": template("anonymizer-job", None, job_pod, scrape=False),
                }
            },
        },
    }
    shard_init = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SHARD_INIT, "labels": selector("postgres")},
        "data": {"10-shard-roles.sh": shard_roles_init()},
    }
    return [
        shard_init,
        deployment("anonymizer", "anonymizer", 2, api),
        service("anonymizer", "anonymizer", [("http", PORT, PORT)]),
        pdb("anonymizer", "anonymizer"),
        cron,
        *postgres(
            "pg-anonymizer",
            "anonymizer-postgres",
            ANONYMIZER_DATABASE,
            "anonymizer-pg-password",
            "20Gi",
            {
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": "2", "memory": "1Gi"},
            },
        ),
        netpol(
            "anonymizer",
            pods_of(ANONYMIZER_COMPONENTS),
            ingress=[rule([peer("gateway"), peer("fe")], [PORT], "in")],
            egress=[
                rule([peer("anonymizer-postgres")], [5432], "out"),
                rule([peer("postgres")], [5432], "out"),
            ],
        ),
        # The anonymizer; and the resharder, whose move registry lives there too.
        netpol(
            "pg-anonymizer",
            pods_of("anonymizer-postgres"),
            ingress=[rule([peer(ANONYMIZER_COMPONENTS), peer("resharder")], [5432], "in")],
            egress=[],
        ),
    ]


def common_policies() -> list[Obj]:
    """Deny by default; DNS for everyone; nginx open to clients; the gateway's paths."""
    dns = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    return [
        netpol("default-deny", {}, ingress=[], egress=[]),
        netpol(
            "allow-dns",
            {},
            egress=[
                {
                    "to": dns,
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }
            ],
        ),
        netpol(
            "nginx",
            pods_of("nginx"),
            ingress=[rule([], [NGINX_HTTP_PORT, NGINX_HTTPS_PORT], "in")],
            egress=[rule([peer("gateway")], [PORT], "out")],
        ),
        netpol(
            "gateway",
            pods_of("gateway"),
            ingress=[rule([peer("nginx")], [PORT], "in")],
            egress=[
                rule([peer("fe"), peer("audit"), peer(ANONYMIZER_COMPONENTS)], [PORT], "out"),
                # Every shard's cache: the gateway answers cached reads itself.
                rule([peer("redis")], [6379], "out"),
            ],
        ),
        # Prometheus, in its own namespace, scrapes /metrics of the project's processes.
        netpol(
            "allow-metrics-scrape",
            {"matchLabels": {SCRAPE: "true"}},
            ingress=[
                rule(
                    [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                            }
                        }
                    ],
                    [PORT],
                    "in",
                )
            ],
        ),
    ]


def resharder_objects() -> list[Obj]:
    """What a bucket move (resharder/) needs in place: its service account, allowed to patch
    the shard map ConfigMap (that is how it publishes a new map version), and its network
    paths. The move itself is a Job made from deploy/k8s/jobs/resharder-move.yaml."""
    labels = {"app.kubernetes.io/part-of": "medsvc"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "resharder", "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "resharder", "labels": labels},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [SHARDMAP_CONFIG],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "resharder", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "resharder",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "resharder"}],
        },
        # Every shard's database and cache, the registry (pg-anonymizer), and the API server.
        netpol(
            "resharder",
            pods_of("resharder"),
            ingress=[],
            egress=[
                rule([peer("postgres"), peer("anonymizer-postgres")], [5432], "out"),
                rule([peer("redis")], [6379], "out"),
                rule([], [443, 6443], "out"),
            ],
        ),
    ]


def resharder_job() -> list[Obj]:
    """The Job of one move; set the range and the target in its args, then
    ``kubectl -n <namespace> create -f deploy/k8s/jobs/resharder-move.yaml``."""
    env = [
        {"name": "MEDSVC_RESHARDER_DSN", "value": dsn("pg-anonymizer", ANONYMIZER_DATABASE)},
        {"name": "MEDSVC_SHARDMAP_CONFIGMAP", "value": SHARDMAP_CONFIG},
        secret_env("MEDSVC_PG_PASSWORD", "pg-password"),
    ]
    pod = python_pod(
        "resharder",
        ["python", "-m", "resharder", "move", "--buckets", "0-63", "--to", "4"],
        env=env,
        shard_map=True,
        probes=False,
        resources=JOB_RESOURCES,
    )
    # Applied outside kustomize: no reference to the hashed medsvc-env ConfigMap.
    container = pod["containers"][0]
    del container["envFrom"]
    container["env"].append({"name": "MEDSVC_SHARD_MAP", "value": "/etc/medsvc/shardmap.json"})
    pod["restartPolicy"] = "Never"
    pod["serviceAccountName"] = "resharder"
    pod["automountServiceAccountToken"] = True  # it patches the shard map ConfigMap
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"generateName": "resharder-move-", "labels": selector("resharder")},
            "spec": {
                # A killed move resumes when run again: the Job retries it.
                "backoffLimit": 3,
                "activeDeadlineSeconds": 6 * 3600,
                "ttlSecondsAfterFinished": 24 * 3600,
                "template": template("resharder", None, pod, scrape=False),
            },
        }
    ]


def base_files() -> dict[str, list[Obj]]:
    """The base's resource files and their objects."""
    return {
        "nginx.yaml": nginx_objects(),
        "gateway.yaml": gateway_objects(),
        "audit.yaml": audit_objects(),
        "anonymizer.yaml": anonymizer_objects(),
        "resharder.yaml": resharder_objects(),
        "network-policies.yaml": common_policies(),
    }
