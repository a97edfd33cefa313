"""dashboards/kvol.json: valid Grafana JSON whose every query names a metric kvol exports."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.tools import REPO

DASHBOARD = REPO / "dashboards" / "kvol.json"
#: The CSI convention's histogram; the plugin exports it under this exact name.
CSI_OPERATIONS = "csi_plugin_operations_seconds"
#: Functions, keywords and aggregation operators of PromQL that look like identifiers.
PROMQL_WORDS = {
    "sum",
    "rate",
    "irate",
    "increase",
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


#: Importing these registers the core's and the operator's metrics with prometheus_client.
METRIC_MODULES = ("kvol.metrics", "kvol.operator.metrics")


def exported_series() -> set[str]:
    """Every series name kvol's processes can expose (counters as _total, histograms' parts)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = {f"{CSI_OPERATIONS}_{part}" for part in ("bucket", "count", "sum")}
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "count", "sum"))
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


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
        assert panel.get("description"), f"panel {panel['title']!r} needs a description"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_queried_metric_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    queried: set[str] = set()
    for title, expr in queries(dashboard):
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses in {expr}"
        assert "[$__rate_interval]" in expr or "rate(" not in expr, f"{title}: {expr}"
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - exported
        assert not unknown, f"{title}: {sorted(unknown)} are not exported by kvol"
        queried |= names
    # The parse above is strict enough to catch a misspelt name: it must see real ones.
    assert "kvol_commit_duration_seconds_bucket" in queried


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
