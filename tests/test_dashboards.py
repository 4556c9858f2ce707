"""The shipped Grafana dashboard and alert rules query only metrics the gateway exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_proxy_basic import CHAT, chat_body

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "gateway-alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "gateway-alerts.test.yaml"

# words of PromQL that are not series names when they stand alone
_KEYWORDS = {
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
    "atan2",
    "inf",
    "nan",
}
# these keywords take a list of label names in parentheses, not an expression
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<matcher>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression selects: no functions, keywords, labels or variables."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if not m.group().isspace()]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident" and text.lower() in _LABEL_LISTS:
            # skip "by (le, route)": those are label names
            if i + 1 < len(tokens) and tokens[i + 1][0] == "open":
                close = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
                i = close + 1
                continue
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            # "rate(" is a function and "sum by (" an aggregation, not a series
            called = after[0] == "open" or after[1].lower() in ("by", "without")
            if not called:
                names.add(text)
        i += 1
    # a selector written {__name__="x"} names its series in the matcher
    names.update(re.findall(r"__name__\s*=\s*\"([^\"]+)\"", expr))
    return names


def exposed_series(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce, labelled children or not.

    ``# TYPE`` lines list each family even before it has a sample; a
    histogram's series are its ``_bucket``, ``_sum`` and ``_count``.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "histogram":
                names.update(f"{family}{s}" for s in ("_bucket", "_sum", "_count", "_created"))
            elif kind == "summary":
                names.update(f"{family}{s}" for s in ("", "_sum", "_count", "_created"))
            elif kind == "counter":
                base = family.removesuffix("_total")
                names.update((f"{base}_total", f"{base}_created"))
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def panels(items: list[dict]) -> Iterator[dict]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict) -> dict[str, str]:
    """``where -> PromQL`` for every panel target of the dashboard."""
    found = {}
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} target {target['refId']}"] = target["expr"]
    return found


def template_metrics(dashboard: dict) -> set[str]:
    """The metrics the dashboard's variables list label values from."""
    names = set()
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert match, f"variable {var['name']}: unexpected query {query!r}"
        names.add(match.group(1))
    return names


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture
async def exposed(make_gateway, fake) -> set[str]:
    """The series names of a gateway with every subsystem installed, after one request."""
    proxy, admin, gw = await make_gateway(upstream=fake)
    installed = {type(s).__name__ for s in gw.subsystems}
    assert {"Review", "Incidents", "Monitors"} <= installed
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    await resp.read()
    resp = await admin.get("/metrics")
    assert resp.status == 200
    return exposed_series(await resp.text())


def test_metric_names_skip_functions_labels_and_variables():
    expr = (
        "histogram_quantile(0.99, sum by (le, route) "
        '(rate(gateway_added_latency_seconds_bucket{route=~"$route"}[$__rate_interval])))'
        " / on(route) group_left(mode) max without (instance) (gateway_route_containment"
        ' offset 5m) > bool 1 or vector(0) unless {__name__="gateway_shed_total"}'
    )
    assert metric_names(expr) == {
        "gateway_added_latency_seconds_bucket",
        "gateway_route_containment",
        "gateway_shed_total",
    }


def test_exposed_series_expand_families_without_samples():
    text = (
        "# HELP a_seconds x\n# TYPE a_seconds histogram\n"
        "# HELP b_total y\n# TYPE b_total counter\n"
        "# HELP c z\n# TYPE c gauge\nc 1.0\n"
    )
    assert exposed_series(text) == {
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "a_seconds_created",
        "b_total",
        "b_created",
        "c",
    }


async def test_every_dashboard_query_names_an_exposed_metric(exposed):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    used: set[str] = set()
    unknown = {}
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        used |= names
        if names - exposed:
            unknown[where] = sorted(names - exposed)
    for name in template_metrics(dashboard) - exposed:
        unknown[f"variable over {name}"] = [name]
    assert unknown == {}
    # the panels an operator looks for first, by the metric behind each
    for needed in (
        "gateway_added_latency_seconds_bucket",
        "gateway_requests_total",
        "gateway_policy_results_total",
        "gateway_review_queue_depth",
        "gateway_review_overdue",
        "gateway_incidents_active",
        "gateway_route_containment",
        "gateway_upstream_errors_total",
        "gateway_shed_total",
        "gateway_policy_reloads_total",
        "gateway_decision_records_dropped_total",
    ):
        assert needed in used, needed


async def test_a_misspelt_metric_is_caught(exposed):
    assert metric_names("sum(rate(gateway_request_total[5m]))") - exposed == {
        "gateway_request_total"
    }


def test_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        # every query goes to the data source the importer picks, never a fixed uid
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert {t["datasource"]["uid"] for t in panel["targets"]} == {"${datasource}"}


async def test_every_alert_rule_is_well_formed_and_names_exposed_metrics(exposed):
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    names = [rule.get("alert") for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"], rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule["alert"]
        metrics = metric_names(rule["expr"])
        assert metrics, rule["alert"]
        assert metrics <= exposed, (rule["alert"], sorted(metrics - exposed))
    for needed in (
        "GatewayAddedLatencyHigh",
        "GatewayUpstreamErrorRate",
        "GatewayReviewSLABreached",
        "GatewayReviewQueueGrowing",
        "GatewayRouteContained",
        "GatewayPolicyReloadFailed",
        "GatewayDecisionRecordsDropped",
        "GatewayShedding",
    ):
        assert needed in names, needed


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # scripts/test.sh unpacks Debian's prometheus package into .tools/
        pytest.fail("promtool is missing: run the tests with bash scripts/test.sh")
    return found


def test_promtool_accepts_the_rules():
    result = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alerts_fire_on_their_thresholds_in_promtool():
    """The unit cases beside the rules: each alert fires past its threshold and not before."""
    result = subprocess.run(
        [_promtool(), "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
