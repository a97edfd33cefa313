"""Write charts/kvol/README.md from the chart's values.yaml, or check that it is up to date.

Every key of values.yaml is documented by a comment starting ``# --`` right above it (more
``#`` lines continue it). A documented key is one row of the table, its whole value the
default; an undocumented key holding a map is read into, key by key. An undocumented key
that holds no map is an error: the README lists every setting.

Usage: hack/gen_chart_readme.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kvol"
README = CHART / "README.md"

_KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
_DOC = re.compile(r"^\s*# -- ?(.*)$")
_MORE = re.compile(r"^\s*#(?: (.*))?$")

INTRO = """\
# kvol Helm chart

Named, persistent volumes that many pods mount at once, each working on a local copy at disk
speed: the kvol CSI node plugin, the operator for the `Volume` and `VolumeBackend` resources,
their CustomResourceDefinitions (`crds/`), and optionally metrics Services, ServiceMonitors,
alert rules and a Grafana dashboard.

```bash
helm install kvol charts/kvol --namespace kvol-system --create-namespace
```

With the defaults, volumes live in the host directory `/var/lib/kvol-store` (a
filesystem store: one node, or a directory every node mounts from the same share). For an
S3-compatible store:

```bash
helm install kvol charts/kvol --namespace kvol-system --create-namespace \\
  --set backend.type=s3 --set backend.s3.bucket=my-bucket \\
  --set backend.s3.credentialsSecret.name=kvol-s3
```

`values.schema.json` checks every value: an unknown key or a value of the wrong kind fails
`helm install` and `helm template` with the key it is about.

## Values

This table is generated from the comments in `values.yaml` by `hack/gen_chart_readme.py`.

| Key | Type | Default | Description |
|-----|------|---------|-------------|
"""


@dataclass(frozen=True)
class Row:
    key: str
    kind: str
    default: str
    description: str


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _lookup(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = values
    for part in path:
        node = node[part]
    return node


def _cell(text: str) -> str:
    # "<fullname>" would read as an HTML tag and vanish from the rendered page.
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def rows(values_text: str) -> list[Row]:
    """One row per documented key (or undocumented leaf, which is an error), in file order."""
    values = yaml.safe_load(values_text)
    found: list[Row] = []
    missing: list[str] = []
    doc: list[str] | None = None
    stack: list[tuple[int, str]] = []
    documented: list[tuple[str, ...]] = []
    for line in values_text.splitlines():
        if (match := _DOC.match(line)) is not None:
            doc = [match.group(1).strip()]
            continue
        if doc is not None and (more := _MORE.match(line)) is not None:
            doc.append((more.group(1) or "").strip())
            continue
        key = _KEY.match(line)
        if key is None:
            # A list item, a plain comment or a blank line ends a description.
            if not line.strip().startswith("-"):
                doc = None
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        path = tuple(name for _, name in stack)
        if any(path[: len(d)] == d for d in documented):
            doc = None  # inside a key documented as a whole
            continue
        value = _lookup(values, path)
        if doc is not None:
            documented.append(path)
            found.append(
                Row(
                    ".".join(path),
                    _kind(value),
                    json.dumps(value, separators=(",", ":")),
                    " ".join(part for part in doc if part),
                )
            )
        elif not (isinstance(value, dict) and value):
            missing.append(".".join(path))
        doc = None
    if missing:
        raise SystemExit(f"values.yaml: no '# --' description for {', '.join(missing)}")
    return found


def render(values_text: str) -> str:
    lines = [
        f"| `{r.key}` | {r.kind} | `{_cell(r.default)}` | {_cell(r.description)} |"
        for r in rows(values_text)
    ]
    return INTRO + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = parser.parse_args(argv)
    text = render((CHART / "values.yaml").read_text())
    current = README.read_text() if README.exists() else None
    if args.check:
        if current != text:
            print("charts/kvol/README.md is out of date: run hack/gen_chart_readme.py")
            return 1
        return 0
    if current != text:
        README.write_text(text)
        print("wrote charts/kvol/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
