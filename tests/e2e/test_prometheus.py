"""A real Prometheus over the running stack, configured as `make run` configures it.

Its scrape job and target labels are the manifests' (deploy/prometheus/config.py); every
Python process of the stack must be a target, and up, and the alert rules must be loaded.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import yaml

from deploy.localstack import Stack
from deploy.localstack.ports import free_port
from deploy.localstack.prometheus import PrometheusServer
from deploy.prometheus.config import ALERTS, JOB, k8s_config

pytestmark = pytest.mark.timeout(150)


async def test_prometheus_scrapes_every_process_of_the_stack_and_loads_the_rules(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    server = PrometheusServer("prometheus-e2e", stack.base_dir / "prometheus-e2e", free_port(),
                              stack.logs_dir / "prometheus-e2e.log", stack.scrape_targets())
    await server.start()
    try:
        processes = {p.name for p in [*stack.gateways, *(f for fs in stack.fe.values() for f in fs),
                                      *(p for ps in stack.services.values() for p in ps)]}
        deadline = time.monotonic() + 90
        while True:
            async with http.get(f"{server.url}/api/v1/targets") as resp:
                active = (await resp.json())["data"]["activeTargets"]
            health = {t["labels"]["pod"]: t["health"] for t in active}
            if set(health) == processes and set(health.values()) == {"up"}:
                break
            assert time.monotonic() < deadline, health
            await asyncio.sleep(1)
        # The labels are those the pods get on Kubernetes.
        for target in active:
            labels = target["labels"]
            assert labels["job"] == JOB and labels["namespace"] == "local"
            assert labels["component"] in {"gateway", "fe", "audit", "anonymizer",
                                           "anonymizer-scheduler"}
            assert ("shard" in labels) == (labels["component"] == "fe")
        # Every alert rule is loaded and evaluated.
        async with http.get(f"{server.url}/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        written = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                   for r in g["rules"] if "alert" in r}
        assert loaded == written
        assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
        # And the series are queryable with those labels.
        async with http.get(f"{server.url}/api/v1/query",
                            params={"query": 'sum by (component) (up{job="medsvc"})'}) as resp:
            result = (await resp.json())["data"]["result"]
        assert {r["metric"]["component"] for r in result} >= {"gateway", "fe", "audit"}
    finally:
        await server.stop()
    # The job the cluster's Prometheus runs is the same one, found through the API instead.
    (k8s_job,) = k8s_config()["scrape_configs"]
    local = yaml.safe_load(server.config_path.read_text())
    (local_job,) = local["scrape_configs"]
    shared_keys = {"job_name", "honor_labels", "metrics_path", "scheme"}
    assert {k: k8s_job[k] for k in shared_keys} == {k: local_job[k] for k in shared_keys}
    assert local["global"] == k8s_config()["global"]
