"""deploy/monitoring: every series the Grafana dashboard and the Prometheus alert rules
query is one the code exports (read from its metric objects), with labels it has."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from common import metrics
from predictions.metrics import JobsCollector, operations_families
from predictions.operations import STAGES, WINDOW_MINUTES

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset"}
# Labels every scraped series gets from Prometheus itself.
PROMETHEUS_TARGET_LABELS = {"job", "instance"}


@pytest.fixture
def exported(db) -> dict[str, set[str]]:
    """Each series name the code exports -> its label names."""
    families = []
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            families.append((family.name, family.type, set(value._labelnames)))
    # The jobs collector counts in the database; then the operations figures of a version
    # with every figure known, so that each family shows its labels (a database without
    # versions gives those families no samples).
    known = {
        "model": "m",
        "version": 1,
        "queue": {"queued": 1},
        "workers": 1,
        "lag": 1,
        "succeeded_last_hour": 1,
        "failed_last_hour": 1,
        "jobs_per_minute": 1,
        "stage_seconds": {stage: {"0.5": 1.0} for stage in STAGES},
    }
    operations = {"window_minutes": WINDOW_MINUTES, "versions": [known], "dead_letters": 1}
    for family in [*JobsCollector().collect(), *operations_families(operations)]:
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        families.append((family.name, family.type, labels))
    series = {}
    for name, kind, labels in families:
        for suffix in SERIES_SUFFIXES[kind]:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    # `up`: Prometheus's own series per scrape target.
    series["up"] = set()
    return series


def target_labels() -> set[str]:
    """Labels the scrape configuration adds to every series from the pod."""
    podmonitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    return PROMETHEUS_TARGET_LABELS | {
        relabel["targetLabel"]
        for endpoint in podmonitor["spec"]["podMetricsEndpoints"]
        for relabel in endpoint["relabelings"]
    }


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return queries


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def selectors(query: str) -> list[tuple[str, set[str]]]:
    """(series name, label names it is filtered on) for every series in a PromQL query."""
    query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # string values
    query = re.sub(r"\[[^\]]*\]", "", query)  # ranges and subqueries
    # Label lists of by (...), on (...) etc., and Grafana's label_values(series, label).
    query = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", query)
    query = re.sub(r"\blabel_values\(([^,]+),[^)]*\)", r"\1", query)
    found = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", query):
        name, braces, call = match.groups()
        if call or name in PROMQL_WORDS:
            continue
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", braces or ""))
        found.append((name, labels))
    return found


def grouping_labels(query: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def all_queries() -> list[str]:
    return dashboard_queries() + [rule["expr"] for rule in alert_rules()]


def test_every_series_queried_is_exported_with_the_labels_used(exported):
    labels_on_targets = target_labels()
    used = set()
    for query in all_queries():
        found = selectors(query)
        assert found, query
        for name, labels in found:
            assert name in exported, f"{name} is not exported by the code: {query}"
            unknown = labels - exported[name] - labels_on_targets
            assert not unknown, f"{name} has no label {sorted(unknown)}: {query}"
            used.add(name)
        available = set().union(*(exported[name] for name, _ in found)) | labels_on_targets
        assert grouping_labels(query) <= available, query
    # Every metric the code exports is shown or alerted on somewhere.
    families = {re.sub(r"_(total|created|bucket|count|sum)$", "", name) for name in exported}
    unused = {family for family in families if not any(n.startswith(family) for n in used)}
    assert not unused, sorted(unused)


def test_the_query_reader_finds_names_and_labels_and_skips_functions():
    query = 'sum by (model) (rate(foo_total{a="x", b=~"5.."}[5m])) / on (c) bar'
    assert selectors(query) == [("foo_total", {"a", "b"}), ("bar", set())]
    assert grouping_labels(query) == {"model"}
    assert selectors("label_values(inferencehub_jobs, namespace)") == [("inferencehub_jobs", set())]


def test_a_misspelt_series_is_caught(exported):
    (name, _), *_ = selectors("rate(inferencehub_messages_consumed{consumer='x'}[1m])")
    assert name not in exported  # a counter is exported as name_total


def test_alerts_cover_lag_live_workers_dead_letters_and_5xx():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    series_of = {name: {n for n, _ in selectors(rule["expr"])} for name, rule in rules.items()}
    assert any(
        "inferencehub_consumer_lag" in s and "deriv" in rules[n]["expr"]
        for n, s in series_of.items()
    )
    assert any(
        s == {"up"} and "model" in grouping_labels(rules[n]["expr"]) for n, s in series_of.items()
    )
    assert any(s == {"inferencehub_dead_letters_total"} for s in series_of.values())
    assert any("5.." in rules[n]["expr"] for n in rules)
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_dashboard_panels_have_unique_ids_and_use_the_datasource_variable():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= variables, target["expr"]
