"""examples/prometheus (alert rules) and examples/grafana (dashboard) against bot/metrics.py.

promtool (Debian package `prometheus`) checks the rules, runs their unit tests and parses every
dashboard expression; the metric names in both must be ones siar exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import FANOUT_RESULTS, Metrics
from bot.outbox_gauges import OutboxSnapshot

pytestmark = pytest.mark.e2e  # promtool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "examples" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "siar.json"
NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
}
# Grafana's variables, replaced by what Prometheus would get.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$feed": ".*",
    "$channel": ".*",
}


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail(
            "promtool is missing: install the Debian package `prometheus` "
            "(apt-get install prometheus; `make test` does it through scripts/system-deps.sh)"
        )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before = expr[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in "._$":  # 1e3, 5m, $variable
            continue
        if expr[match.end() :].lstrip().startswith("(") or match.group() in NOT_METRICS:
            continue
        names.add(match.group())
    return names


def exposed_names() -> set[str]:
    """Every sample name a fully exercised siar exposes (counters' _total, histograms' _bucket…)."""
    metrics = Metrics(["f"], ["c"])
    metrics.poll("f", "new", 0.1, 0.1, 1)
    metrics.poll_skipped("f")
    metrics.feed_state("f", interval_seconds=60, last_success=datetime.now(UTC), consecutive_failures=0)
    metrics.send("c", "sent", 0.1, datetime.now(UTC))
    metrics.rate_limit_wait("c", 1)
    metrics.subscribers("c", 1)
    metrics.channel_up("c", True)
    metrics.channel_auth_failed("c", False)
    metrics.fanout("c", sorted(FANOUT_RESULTS)[0])
    metrics.reload("applied")
    metrics.watch_outbox(lambda: OutboxSnapshot({"c": {"pending": 1}}, {}, 0.0))
    text = generate_latest(metrics).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expression) of every query of every panel and templating variable."""
    found = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert inner, f"variable {var['name']}: {query}"
        found.append((f"variable {var['name']}", inner.group(1)))
    return found


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (feed, result) (rate(siar_polls_total{feed=~"$feed"}[$__rate_interval]))',
            {"siar_polls_total"},
        ),
        ("time() - siar_a > 3 * siar_b", {"siar_a", "siar_b"}),
        ("histogram_quantile(0.95, sum(rate(x_bucket[5m])) by (le))", {"x_bucket"}),
        ("a > 900 and on (job, channel) b == 1 offset 1h", {"a", "b"}),
        ('up{job="siar"} == 0 or vector(1e3)', {"up"}),
    ],
)
def test_metric_names_finds_selectors_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_alert_rules_are_valid() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_alert_rules_fire_when_they_should_and_only_then() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_both_ways_and_says_what_to_do() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for rule in rules:
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} never shown not firing"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert "siar" in rule["annotations"]["description"] and len(rule["annotations"]["description"]) > 150


def test_alerts_and_dashboard_use_only_exposed_metrics() -> None:
    exposed = exposed_names() | {"up"}  # up: Prometheus' own, for "siar is down"
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        assert metric_names(rule["expr"]) <= exposed, (rule["alert"], metric_names(rule["expr"]) - exposed)
    used: set[str] = set()
    for where, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        assert names <= exposed - {"up"}, (where, names - exposed)
        used |= names
    # every family siar exposes is on the dashboard somewhere
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exposed - {"up"}}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}
    assert families <= shown, families - shown


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, (_where, expr) in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"siar:dashboard:q{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_imports_with_a_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"] == "siar"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        if panel["type"] == "row":
            continue
        assert panel["type"] in {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    documented = (ROOT / "docs" / "dashboard.md").read_text()
    for panel in (p for p in panels if p["type"] != "row"):
        assert f"**{panel['title']}**" in documented, (
            f"docs/dashboard.md does not describe {panel['title']!r}"
        )
