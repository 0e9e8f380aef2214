"""The alert rules, unit-tested by Prometheus's own ``promtool test rules``.

Every file in deploy/prometheus/tests/ is a promtool test file (whoever adds alert rules
adds a file there). They must all pass, and together they must give every alert rule of
the rule files at least one case where it fires (expected alerts) and one where it stays
quiet (no alert expected), so that neither a rule that never fires nor one that always does
gets through.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.localstack import binaries

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))


def _alert_names(rule_file: Path) -> set[str]:
    doc = yaml.safe_load(rule_file.read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_there_are_rule_tests() -> None:
    assert TEST_FILES, "no promtool test files in deploy/prometheus/tests/"


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_passes(test_file: Path) -> None:
    out = subprocess.run([binaries.promtool(), "test", "rules", test_file.name],
                         cwd=test_file.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_the_rule_files() -> None:
    rule_files = {(f.parent / r).resolve() for f in TEST_FILES
                  for r in yaml.safe_load(f.read_text())["rule_files"]}
    assert PROMETHEUS / "alerts.yml" in rule_files
    out = subprocess.run([binaries.promtool(), "check", "rules", *map(str, sorted(rule_files))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    alerts: set[str] = set()
    for test_file in TEST_FILES:
        doc = yaml.safe_load(test_file.read_text())
        for rule_file in doc["rule_files"]:
            alerts |= _alert_names(test_file.parent / rule_file)
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert _alert_names(PROMETHEUS / "alerts.yml") <= alerts
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"


def test_the_committed_prometheus_config_is_the_generated_one() -> None:
    from deploy.prometheus.config import K8S_CONFIG, k8s_text

    assert K8S_CONFIG.read_text() == k8s_text(), "run: python -m deploy.prometheus.config"
