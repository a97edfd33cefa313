"""The CRDs: manifests match their source, schemas are structural and agree with the parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kvol.operator import crds
from kvol.operator.resources import VolumeSpec

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("crd", crds.all_crds(), ids=crds.file_name)
def test_manifest_matches_generator(crd: dict[str, Any]) -> None:
    path = REPO / "manifests" / "crds" / crds.file_name(crd)
    assert path.read_text() == crds.render(crd), (
        f"{path} is stale: run `kvol-operator crds --write manifests/crds`"
    )


def _walk(schema: dict[str, Any], where: str) -> list[str]:
    """Places where a schema is not structural: every node needs a type."""
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        problems.append(where)
    for name, sub in (schema.get("properties") or {}).items():
        problems += _walk(sub, f"{where}.{name}")
    if "items" in schema:
        problems += _walk(schema["items"], f"{where}[]")
    return problems


@pytest.mark.parametrize("crd", crds.all_crds(), ids=crds.file_name)
def test_schema_is_structural_with_status_subresource(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("crd", crds.all_crds(), ids=crds.file_name)
def test_printer_columns_point_at_schema_fields(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        node = schema
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]
        kind = node.get("type", "string")
        expected = {"integer": "integer", "string": "string", "boolean": "boolean"}[kind]
        if column["type"] != "date":
            assert column["type"] == expected, column


def test_volume_columns_show_what_kubectl_get_promises() -> None:
    (version,) = crds.volume_crd()["spec"]["versions"]
    shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Phase", "Files", "Size", "Head", "Writers", "Age"]


def test_schema_defaults_agree_with_the_parser() -> None:
    (version,) = crds.volume_crd()["spec"]["versions"]
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    parsed = VolumeSpec.parse({})
    assert props["version"]["default"] == parsed.version
    assert props["reclaimPolicy"]["default"] == parsed.reclaim_policy
    assert props["autocommitIntervalSeconds"]["default"] == parsed.autocommit_interval_seconds
    assert props["accessModes"]["default"] == list(parsed.access_modes)
    assert props["size"]["default"] == parsed.size


def test_cli_prints_both_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main([]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["metadata"]["name"] for d in docs] == ["volumes.kvol.dev", "volumebackends.kvol.dev"]


def test_cli_writes_files(tmp_path: Path) -> None:
    assert crds.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "volumebackends.kvol.dev.yaml",
        "volumes.kvol.dev.yaml",
    ]
