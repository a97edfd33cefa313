"""kvol's alert rules: valid for Prometheus (``promtool check rules``), firing when they
should and silent otherwise (``promtool test rules``), with the same rules in the chart's
PrometheusRule and in the plain rules file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.tools import REPO, tool

RULES = REPO / "charts" / "kvol" / "alerts" / "kvol-rules.yaml"
PLAIN = REPO / "manifests" / "alerts" / "kvol-rules.yaml"
UNPUBLISH = "/csi.v1.Node/NodeUnpublishVolume"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = tool("promtool", "install-prometheus.sh")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def rendered_annotations(alert: str, placeholders: dict[str, str]) -> dict[str, str]:
    """The alert's annotations as Prometheus renders them, given what each placeholder
    becomes; every placeholder must be given one."""
    out = {}
    for key, text in rules()[alert]["annotations"].items():
        for placeholder, value in placeholders.items():
            text = text.replace(placeholder, value)
        assert "{{" not in text, f"{alert}.{key}: a placeholder left in {text!r}"
        out[key] = text
    return out


def alternating(high: float, samples: int) -> str:
    return " ".join(str(high if i % 2 == 0 else 0) for i in range(samples))


def firing(alert: str, at: str, labels: dict[str, str], placeholders: dict[str, str]) -> Any:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {"severity": "warning", **labels},
                "exp_annotations": rendered_annotations(alert, placeholders),
            }
        ],
    }


def silent(alert: str, at: str) -> Any:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def cases() -> list[dict[str, Any]]:
    node = {"instance": "node-1:9810", "job": "kvol-node"}
    lbl = 'instance="node-1:9810",job="kvol-node"'
    team = {"namespace": "team", "volume": "data"}
    return [
        {  # a steady failure rate fires after 10 minutes; published commits never do
            "interval": "1m",
            "input_series": [
                {"series": f'kvol_commits_total{{result="failed",{lbl}}}', "values": "0+6x40"},
                {
                    "series": 'kvol_commits_total{result="published",instance="node-2:9810"}',
                    "values": "0+60x40",
                },
            ],
            "alert_rule_test": [
                silent("KvolCommitsFailing", "8m"),
                firing(
                    "KvolCommitsFailing",
                    "20m",
                    node,
                    {"{{ $labels.instance }}": "node-1:9810", "{{ $value | humanize }}": "100m"},
                ),
            ],
        },
        {  # failing copies of one volume on two nodes: one alert for the volume
            "interval": "1m",
            "input_series": [
                {
                    "series": 'kvol_volume_commit_failing{namespace="team",volume="data",'
                    'instance="node-1:9810"}',
                    "values": "1x30",
                },
                {
                    "series": 'kvol_volume_commit_failing{namespace="team",volume="data",'
                    'instance="node-2:9810"}',
                    "values": "1x30",
                },
                {
                    "series": 'kvol_volume_commit_failing{namespace="team",volume="fine",'
                    'instance="node-1:9810"}',
                    "values": "0x30",
                },
            ],
            "alert_rule_test": [
                silent("KvolVolumeCommitFailing", "5m"),
                firing(
                    "KvolVolumeCommitFailing",
                    "15m",
                    team,
                    {
                        "{{ $value }}": "2",
                        "{{ $labels.namespace }}": "team",
                        "{{ $labels.volume }}": "data",
                    },
                ),
            ],
        },
        {  # changes that stay uncommitted fire; changes committed every minute never do
            "interval": "1m",
            "input_series": [
                {
                    "series": 'kvol_volume_uncommitted_bytes{namespace="team",volume="data"}',
                    "values": "1073741824x45",
                },
                {
                    "series": 'kvol_volume_uncommitted_bytes{namespace="team",volume="busy"}',
                    "values": alternating(5e9, 46),
                },
            ],
            "alert_rule_test": [
                silent("KvolUncommittedDataPilingUp", "25m"),
                firing(
                    "KvolUncommittedDataPilingUp",
                    "40m",
                    team,
                    {
                        "{{ $value | humanize1024 }}": "1Gi",
                        "{{ $labels.namespace }}": "team",
                        "{{ $labels.volume }}": "data",
                    },
                ),
            ],
        },
        {  # unpublish failing keeps firing; failed publishes and good unpublishes do not
            "interval": "1m",
            "input_series": [
                {
                    "series": "csi_plugin_operations_seconds_count{"
                    f'method_name="{UNPUBLISH}",grpc_status_code="Unavailable",'
                    'driver_name="csi.kvol.dev",instance="node-1:9810"}',
                    "values": "0+1x30",
                },
                {
                    "series": "csi_plugin_operations_seconds_count{"
                    f'method_name="{UNPUBLISH}",grpc_status_code="OK",'
                    'driver_name="csi.kvol.dev",instance="node-2:9810"}',
                    "values": "0+5x30",
                },
                {
                    "series": "csi_plugin_operations_seconds_count{"
                    'method_name="/csi.v1.Node/NodePublishVolume",grpc_status_code="NotFound",'
                    'driver_name="csi.kvol.dev",instance="node-3:9810"}',
                    "values": "0+5x30",
                },
            ],
            "alert_rule_test": [
                silent("KvolFinalCommitRetrying", "3m"),
                firing(
                    "KvolFinalCommitRetrying",
                    "10m",
                    {
                        "method_name": UNPUBLISH,
                        "driver_name": "csi.kvol.dev",
                        "instance": "node-1:9810",
                    },
                    {"{{ $labels.instance }}": "node-1:9810"},
                ),
            ],
        },
        {  # stuck Pending fires; Pending for a few minutes, then Ready, does not
            "interval": "1m",
            "input_series": [
                {
                    "series": 'kvol_operator_volume_phase{namespace="team",volume="data",'
                    'phase="Pending"}',
                    "values": "1x30",
                },
                {
                    "series": 'kvol_operator_volume_phase{namespace="team",volume="quick",'
                    'phase="Pending"}',
                    "values": "1x5 stale",
                },
                {
                    "series": 'kvol_operator_volume_phase{namespace="team",volume="quick",'
                    'phase="Ready"}',
                    "values": "_x5 1x25",
                },
            ],
            "alert_rule_test": [
                silent("KvolVolumeNotReady", "10m"),
                firing(
                    "KvolVolumeNotReady",
                    "20m",
                    {**team, "phase": "Pending"},
                    {
                        "{{ $labels.namespace }}": "team",
                        "{{ $labels.volume }}": "data",
                        "{{ $labels.phase }}": "Pending",
                    },
                ),
            ],
        },
        {  # 5% free fires, half free does not
            "interval": "1m",
            "input_series": [
                {"series": f"kvol_node_state_avail_bytes{{{lbl}}}", "values": "5x30"},
                {"series": f"kvol_node_state_size_bytes{{{lbl}}}", "values": "100x30"},
                {
                    "series": 'kvol_node_state_avail_bytes{instance="node-2:9810"}',
                    "values": "50x30",
                },
                {
                    "series": 'kvol_node_state_size_bytes{instance="node-2:9810"}',
                    "values": "100x30",
                },
            ],
            "alert_rule_test": [
                silent("KvolNodeCacheFull", "5m"),
                firing(
                    "KvolNodeCacheFull",
                    "15m",
                    node,
                    {
                        "{{ $value | humanizePercentage }}": "5%",
                        "{{ $labels.instance }}": "node-1:9810",
                    },
                ),
            ],
        },
    ]


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    tests = cases()
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert tested == set(rules()), "every alert has a promtool unit test"
    spec = tmp_path / "kvol-rules.test.yaml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_catches_a_wrong_expectation(tmp_path: Path) -> None:
    # The harness above proves something only if promtool rejects an alert that did not fire.
    (case, *_) = cases()
    (_, fired) = case["alert_rule_test"]
    case["alert_rule_test"] = [{**fired, "eval_time": "5m"}]  # still pending at 5m
    spec = tmp_path / "wrong.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "tests": [case]}))
    assert promtool("test", "rules", str(spec)).returncode != 0


def test_the_plain_rules_file_is_the_charts() -> None:
    assert PLAIN.read_bytes() == RULES.read_bytes(), "run hack/gen_manifests.py"


def test_the_chart_renders_the_same_rules_when_enabled() -> None:
    helm = tool("helm", "install-helm.sh")
    args = [helm, "template", "kvol", str(REPO / "charts" / "kvol"), "--namespace", "kvol-system"]
    args += ["--show-only", "templates/prometheusrule.yaml"]
    on = subprocess.run(
        [
            *args,
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.labels.release=prom",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert on.returncode == 0, on.stderr
    (rule,) = [d for d in yaml.safe_load_all(on.stdout) if d]
    assert rule["kind"] == "PrometheusRule"
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    off = subprocess.run(args, capture_output=True, text=True, timeout=120)
    # Off by default: helm refuses to show a template that renders nothing.
    assert off.returncode != 0 and "could not find template" in off.stderr


def test_promtool_and_prometheus_are_the_pinned_release_without_discovery_plugins() -> None:
    script = (REPO / "hack" / "install-prometheus.sh").read_text()
    match = re.search(r"PROMETHEUS_VERSION:-v0\.(\d)(\d+)\.(\d+)", script)
    assert match, "hack/install-prometheus.sh pins a v0.3MM.P module version"
    release = ".".join(str(int(part)) for part in match.groups())
    for name in ("promtool", "prometheus"):
        binary = tool(name, "install-prometheus.sh")
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
        assert f"{name}, version {release} " in out.stdout, out.stdout
        assert re.search(r"tags:\s+remove_all_sd$", out.stdout, re.M), out.stdout
