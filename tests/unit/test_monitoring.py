"""contrib/: the alerts and the dashboard use only metrics and labels the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rescue.config import SmarthostConfig
from rescue.service.autorules import QUOTA
from rescue.service.metrics import Metrics

CONTRIB = Path(__file__).parents[2] / "contrib"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
ALERTS_TEST = CONTRIB / "prometheus" / "alerts_test.yml"
DASHBOARD = CONTRIB / "grafana" / "queue-rescue.json"

# Series and labels Prometheus adds itself: the scrape's health and its target.
PROMETHEUS_OWN_SERIES = {"up"}
PROMETHEUS_OWN_LABELS = {"job", "instance", "__name__"}

_METRIC = re.compile(r"\b(queue_rescue_[a-z_]+|up)\b(?!\s*\()")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def exported() -> tuple[set[str], set[str]]:
    """(series names, label names) the service's registry serves, every metric in use."""
    metrics = Metrics()
    metrics.deferred({"ionos": (1, 1)})
    metrics.held({("ionos", QUOTA): 1})
    metrics.rerouted.labels("ionos", "relay1").inc()
    metrics.failed.labels("ionos", "relay1").inc()
    metrics.errors({"relay1": {"connect": 1}})
    metrics.quotas([SmarthostConfig("relay1", "h", max_per_hour=1, max_per_day=2)])
    metrics.cycle_errors.inc()
    metrics.last_cycle.set(1)
    metrics.last_cycle_duration.set(1)
    metrics.route_state.labels("ionos", "rerouting").set(1)
    metrics.route_changed.labels("ionos").set(1)
    metrics.route_entries.set(1)
    metrics.relayed.labels("ionos", "relay1").inc()
    metrics.relay_refused.labels("ionos", "relay1").inc()
    names: set[str] = set()
    labels: set[str] = set()
    for family in metrics.registry.collect():
        assert family.samples, f"{family.name}: no sample; give it one above"
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_exprs() -> list[str]:
    """Each rule's expr (the rules file's only multi-line and `expr:` values)."""
    text = ALERTS.read_text()
    exprs = re.findall(r"^\s+expr: \|\n((?:\s{10,}.*\n)+)", text, re.MULTILINE)
    exprs += re.findall(r"^\s+expr: (?!\|)(.+)$", text, re.MULTILINE)
    return exprs


def used(exprs: list[str]) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    labels: set[str] = set()
    for expr in exprs:
        # label_values(metric, label): the label is the second argument
        plain = re.sub(r"label_values\((\w+),\s*(\w+)\)", r"\1 by (\2)", expr)
        names.update(_METRIC.findall(plain))
        for group in _GROUPING.findall(plain):
            labels.update(label.strip() for label in group.split(",") if label.strip())
        for matchers in _MATCHER.findall(plain):
            labels.update(_MATCHER_LABEL.findall(matchers))
    return names, labels


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_and_label_used_is_exported(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert len(exprs) >= 9
    names, labels = used(exprs)
    served, served_labels = exported()
    assert names - PROMETHEUS_OWN_SERIES, "no queue_rescue metric found: the parsing broke"
    assert names - PROMETHEUS_OWN_SERIES - served == set()
    assert labels - PROMETHEUS_OWN_LABELS - served_labels == set()


def test_the_checks_themselves_catch_an_unknown_metric() -> None:
    names, labels = used(['sum by (provder) (queue_rescue_rerouted_total{smarthost="a"})'])
    served, served_labels = exported()
    assert names - served == {"queue_rescue_rerouted_total"}
    assert labels - served_labels == {"provder"}


def test_the_alerts_cover_what_an_operator_needs() -> None:
    text = ALERTS.read_text()
    for alert in (
        "QueueRescueDown",
        "QueueRescueNoCycle",
        "QueueRescueReroutingRising",
        "QueueRescueSmarthostErrors",
        "QueueRescueSmarthostDown",
        "QueueRescueQuotaNearlyUsed",
        "QueueRescueReleased",
    ):
        assert f"- alert: {alert}\n" in text


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_when_it_should_and_not_before() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", ALERTS_TEST.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERTS_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool checks PromQL in rule files: each query as a recording rule.
    queries = [e.replace("$instance", ".*") for e in dashboard_exprs() if "(" in e or "{" in e]
    queries = [q for q in queries if not q.startswith("label_values(")]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
