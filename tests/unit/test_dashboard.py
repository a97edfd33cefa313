"""The chart's Grafana dashboard: valid JSON, every panel has a query, every query names a
metric kvol exports, and the per-volume panels follow the `namespace` and `volume` variables."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from kvol import metrics
from tests.tools import REPO

CHART = REPO / "charts" / "kvol"
DASHBOARD = CHART / "dashboards" / "kvol.json"
#: The CSI convention's histogram; the plugin exports it under this exact name.
CSI_OPERATIONS = "csi_plugin_operations_seconds"
#: Functions, keywords and aggregation operators of PromQL that look like identifiers.
PROMQL_WORDS = {
    "sum",
    "rate",
    "irate",
    "increase",
    "deriv",
    "histogram_quantile",
    "by",
    "without",
    "max",
    "min",
    "avg",
    "count",
    "le",
    "topk",
    "clamp_min",
    "on",
    "ignoring",
    "group_left",
    "offset",
}
#: Labels a series may carry. Per-volume ones name the Volume (bounded by the number of
#: Volumes); nothing may name a path, a pod, a volume id or a commit.
ALLOWED_LABELS = {
    "result",
    "store",
    "operation",
    "kind",
    "handler",
    "reason",
    "phase",
    "namespace",
    "volume",
    "le",
    "driver_name",
    "method_name",
    "grpc_status_code",
}

#: Importing these registers the core's and the operator's metrics with prometheus_client.
METRIC_MODULES = ("kvol.metrics", "kvol.operator.metrics")


def families(tmp: Path) -> list[Metric]:
    """Every metric family kvol's processes can expose, the node's per-volume ones included
    (a node collector of its own, fed one copy, so the shared one is left alone)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    node = metrics.NodeCollector()
    node.watch(tmp, lambda: [metrics.CopySample("ns", "vol", False, 1, False, 3)])
    return [*REGISTRY.collect(), *node.collect()]


def exported_series(tmp: Path) -> set[str]:
    """Every series name kvol's processes can expose (counters as _total, histograms' parts)."""
    names = {f"{CSI_OPERATIONS}_{part}" for part in ("bucket", "count", "sum")}
    for family in families(tmp):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "count", "sum"))
        else:
            names.add(family.name)
    return names


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not labels, functions, strings)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_ranges))
    return words - PROMQL_WORDS


def test_the_chart_holds_the_dashboard_itself() -> None:
    # A link out of the chart makes every helm command warn and GitOps tools refuse it.
    assert DASHBOARD.is_file() and not DASHBOARD.is_symlink()
    assert not (REPO / "dashboards").exists(), "the chart's copy is the only dashboard"
    assert (
        '.Files.Get "dashboards/kvol.json"' in (CHART / "templates" / "dashboard.yaml").read_text()
    )


def test_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "kvol"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), f"{panel['title']}: no query"
        assert panel.get("description"), f"panel {panel['title']!r} needs a description"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_queried_metric_is_exported(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exported = exported_series(tmp_path)
    queried: set[str] = set()
    for title, expr in queries(dashboard):
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses in {expr}"
        assert "[$__rate_interval]" in expr or "[" not in expr, f"{title}: {expr}"
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - exported
        assert not unknown, f"{title}: {sorted(unknown)} are not exported by kvol"
        queried |= names
    # The parse above is strict enough to catch a misspelt name: it must see real ones.
    assert "kvol_commit_duration_seconds_bucket" in queried


def test_volume_variables_select_the_per_volume_panels(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("namespace", "volume"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        assert re.fullmatch(
            rf"label_values\(kvol_operator_volume_phase.*, {name}\)", var["definition"]
        )
        assert var["query"]["query"] == var["definition"]
    # Volumes listed are those of the chosen namespaces.
    assert 'namespace=~"$namespace"' in variables["volume"]["definition"]
    per_volume = [(title, expr) for title, expr in queries(dashboard) if "kvol_volume_" in expr] + [
        (t, e) for t, e in queries(dashboard) if "kvol_operator_volume_phase" in e
    ]
    assert len(per_volume) >= 6
    for title, expr in per_volume:
        assert 'namespace=~"$namespace", volume=~"$volume"' in expr, title
        assert re.search(r"by \(namespace, volume[,)]", expr), f"{title}: one series per volume"
    joined = "\n".join(expr for _, expr in per_volume)
    for metric in (
        "kvol_volume_writers",
        "kvol_volume_readers",
        "kvol_volume_uncommitted_bytes",
        "kvol_volume_commit_failing",
        "kvol_volume_base_seq",
        "kvol_operator_volume_phase",
    ):
        assert metric in joined, metric


def test_labels_are_bounded_by_the_number_of_volumes(tmp_path: Path) -> None:
    seen: set[str] = set()
    for family in families(tmp_path):
        if not family.name.startswith("kvol_"):
            continue  # the client library's own process and Python metrics
        for sample in family.samples:
            seen |= set(sample.labels)
    unbounded = seen - ALLOWED_LABELS
    assert not unbounded, f"labels {sorted(unbounded)} are not bounded by the number of volumes"
    assert {"namespace", "volume"} <= seen


def test_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    exprs = [expr for _, expr in queries(dashboard)]
    joined = "\n".join(exprs)
    for quantile in ("0.5", "0.99"):
        assert any(
            f"histogram_quantile({quantile}" in e and "kvol_commit_duration_seconds_bucket" in e
            for e in exprs
        ), f"commit latency p{quantile}"
    assert "rate(kvol_commits_total" in joined
    assert "kvol_writers" in joined
    assert "kvol_uncommitted_bytes" in joined
    assert "kvol_node_state_avail_bytes" in joined
    assert re.search(r"sum by \(result\) \(rate\(kvol_store_requests_total", joined)
    assert f"{CSI_OPERATIONS}_count" in joined and f"{CSI_OPERATIONS}_bucket" in joined
    assert "kvol_operator_reconciles_total" in joined
    assert "kvol_operator_reconcile_duration_seconds_bucket" in joined


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(kvol_x_bucket{result="ok"}'
        "[$__rate_interval]))) / on (instance) kvol_y"
    )
    assert metric_names(expr) == {"kvol_x_bucket", "kvol_y"}
