"""Every query of the chart's dashboard returns data in a real cluster: a Prometheus on the
node, inside the cluster's network, scrapes the plugin's and the operator's pods while a
pod writes, commits and reloads, and each panel's expression, with the dashboard variables
set to that pod's namespace and volume, returns at least one series."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import Cluster, pod, unique, wait_for
from tests.tools import REPO, stop_process, tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DASHBOARD = REPO / "charts" / "kvol" / "dashboards" / "kvol.json"
#: Prometheus listens on the loopback of the cluster's network namespace only.
LISTEN = "127.0.0.1:19090"
#: The metrics ports of the chart's defaults.
PORTS = {"node": 9810, "controller": 8080}
#: What Grafana's $__rate_interval would be with a 1 s scrape interval, rounded up.
RATE_INTERVAL = "1m"

# Writes, and so commits, every second, and reloads through the control socket, so that
# every kind of series (commits, reloads, uploads, downloads) has recent samples.
WORKER = (
    "trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); echo $i > /data/n$((i % 5)); "
    "curl -s --unix-socket /data/.kvol/control.sock -X POST http://kvol/reload >/dev/null; "
    "sleep 1; done & wait"
)

#: Runs in the cluster's network namespace: evaluates each expression read from stdin (a
#: JSON list) as an instant query and prints the results (a JSON list of vectors).
QUERIER = """
import json, sys, urllib.parse, urllib.request
out = []
for expr in json.load(sys.stdin):
    url = "http://%s/api/v1/query?" % sys.argv[1] + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        out.append(body["data"]["result"])
    except Exception as exc:
        out.append("error: %s" % (getattr(exc, "read", lambda: b"")().decode() or exc))
print(json.dumps(out))
"""


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every panel target, and the variables' series queries."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            found += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
            assert match, var["definition"]
            found.append((f"variable {var['name']}", match.group(1)))
    return found


def substitute(expr: str, namespace: str, volume: str) -> str:
    for name, value in (
        ("$__rate_interval", RATE_INTERVAL),
        # Kubernetes names need no regex escaping ("." matches itself too).
        ("$namespace", namespace),
        ("$volume", volume),
    ):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not set: {expr}"
    return expr


def query(cluster: Cluster, exprs: list[str]) -> list[Any]:
    result = subprocess.run(
        ["nsenter", f"--net={cluster.netns}", sys.executable, "-c", QUERIER, LISTEN],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answers: list[Any] = json.loads(result.stdout)
    return answers


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[None]:
    """Prometheus scraping the plugin's and the operator's pods every second."""
    binary = tool("prometheus", "install-prometheus.sh")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": f"kvol-{component}",
                # Per-volume series carry the Volume's namespace, as the chart's monitors keep.
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [
                            f"{ip}:{port}"
                            for ip in cluster.running_pods(component, ".status.podIP")
                        ]
                    }
                ],
            }
            for component, port in PORTS.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "nsenter",
            f"--net={cluster.netns}",
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={LISTEN}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError("Prometheus exited")
        return isinstance(query(cluster, ["up"])[0], list)

    try:
        wait_for(answers, 30, "Prometheus to answer")
    except AssertionError:
        stop_process(process, signal.SIGTERM)
        raise AssertionError(
            f"Prometheus did not start:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
        ) from None
    try:
        yield
    finally:
        stop_process(process, signal.SIGTERM)
        log.close()


def test_every_dashboard_query_returns_data(
    cluster: Cluster, namespace: str, prometheus: None
) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    cluster.apply(pod("worker", WORKER, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "worker", ("Running",))
    panels = dashboard_queries()
    exprs = [substitute(expr, namespace, vol) for _, expr in panels]
    # Up and scraped, the pod's volume among the per-volume series, and commits published.
    checks = [
        'min(up{job=~"kvol-.*"})',
        f'sum(kvol_volume_writers{{namespace="{namespace}", volume="{vol}"}})',
        f'kvol_operator_volume_phase{{namespace="{namespace}", volume="{vol}", phase="Ready"}}',
        'sum(rate(kvol_commits_total{result="published"}[1m]))',
    ]
    last: list[Any] = []

    def all_answer() -> bool:
        nonlocal last
        last = query(cluster, exprs + checks)
        return all(isinstance(a, list) and a for a in last) and all(
            float(a[0]["value"][1]) > 0 for a in last[len(exprs) :]
        )

    try:
        wait_for(all_answer, 60, "every dashboard query to return data", interval=2)
    except AssertionError:
        empty = [
            f"{title}: {expr} -> {answer}"
            for (title, _), expr, answer in zip(panels, exprs, last, strict=False)
            if not (isinstance(answer, list) and answer)
        ]
        empty += [f"{c} -> {a}" for c, a in zip(checks, last[len(exprs) :], strict=False)]
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None
    finally:
        cluster.delete_pod(namespace, "worker")
    by_title = dict(zip([t for t, _ in panels], last, strict=False))
    # The variables list the test's namespace and volume.
    assert namespace in {s["metric"].get("namespace") for s in by_title["variable namespace"]}
    assert vol in {s["metric"].get("volume") for s in by_title["variable volume"]}
