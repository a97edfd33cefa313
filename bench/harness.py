"""The benchmark harness: scenario and result types, sizes, discovery and the run loop.

A scenario module is any ``bench/<area>_<topic>.py`` with a ``SCENARIOS`` list. Each item
is a :class:`Scenario` (or a plain callable taking a :class:`Context`), whose ``run``
returns one :class:`Result` or a list of them. Every result carries kvol's time beside a
baseline measured in the same run.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

# -- sizes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is. ``full()`` is what the targets are stated for."""

    #: Commit of new large files: total bytes, split evenly over ``large_files`` files.
    large_bytes: int
    large_files: int
    #: Commit of many new small files.
    small_files: int
    small_file_size: int
    #: Files in the volume of the no-op commit scenario.
    noop_files: int
    noop_file_size: int
    #: Reload: files in the volume, how many change, their size.
    reload_volume_files: int
    reload_changed: int
    reload_file_size: int
    #: Timings of fast operations are the median of this many runs.
    repeats: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            large_bytes=1 << 30,
            large_files=4,
            small_files=10_000,
            small_file_size=4096,
            noop_files=100_000,
            noop_file_size=64,
            reload_volume_files=10_000,
            reload_changed=1_000,
            reload_file_size=16 * 1024,
            repeats=5,
        )

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes: proves the harness works; the numbers mean little."""
        return cls(
            large_bytes=24 << 20,
            large_files=2,
            small_files=200,
            small_file_size=4096,
            noop_files=1_000,
            noop_file_size=64,
            reload_volume_files=300,
            reload_changed=50,
            reload_file_size=4096,
            repeats=2,
        )


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a result must reach. ``speedup`` compares with the primary baseline
    (baseline seconds / kvol seconds); ``seconds`` bounds kvol's own time."""

    kind: Literal["speedup_at_least", "seconds_at_most"]
    value: float
    text: str

    def met(self, kvol_seconds: float, ratio: float | None) -> bool:
        if self.kind == "seconds_at_most":
            return kvol_seconds <= self.value
        return ratio is not None and ratio >= self.value


@dataclass(frozen=True)
class Measurement:
    name: str
    seconds: float


@dataclass
class Result:
    name: str
    kvol_seconds: float
    #: The baseline the target compares with (and the ``ratio`` of the JSON output).
    baseline: Measurement | None
    target: Target | None = None
    store: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: Further baselines, each reported with its own ratio.
    other_baselines: list[Measurement] = field(default_factory=list)
    #: Extra numbers worth seeing (phases, cold timings, throughput).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """How many times faster kvol is than the baseline (below 1: slower)."""
        return _ratio(self.baseline, self.kvol_seconds)

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.kvol_seconds, self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "store": self.store,
            "params": self.params,
            "kvol_seconds": _round(self.kvol_seconds),
            "baseline": None
            if self.baseline is None
            else {"name": self.baseline.name, "seconds": _round(self.baseline.seconds)},
            "baseline_seconds": None if self.baseline is None else _round(self.baseline.seconds),
            "ratio": _round(self.ratio),
            "target": None if self.target is None else asdict(self.target),
            "passed": self.passed,
            "other_baselines": [
                {
                    "name": m.name,
                    "seconds": _round(m.seconds),
                    "ratio": _round(_ratio(m, self.kvol_seconds)),
                }
                for m in self.other_baselines
            ],
            "details": {
                k: _round(v) if isinstance(v, float) else v for k, v in self.details.items()
            },
        }


def _ratio(baseline: Measurement | None, kvol_seconds: float) -> float | None:
    if baseline is None or kvol_seconds <= 0:
        return None
    return baseline.seconds / kvol_seconds


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Context:
    """What a scenario gets: where to work, which store, how big."""

    #: The store under test (None for scenarios that are not per store).
    store_url: str | None
    sizes: Sizes
    #: A fresh directory for this scenario, removed after it.
    workdir: Path
    quick: bool = False

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)


RunFn = Callable[[Context], "Result | dict[str, Any] | Sequence[Result | dict[str, Any]]"]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: RunFn
    #: Run once per store under test (``ctx.store_url`` set) rather than once in all.
    per_store: bool = True
    description: str = ""


def as_scenario(item: Any) -> Scenario:
    if isinstance(item, Scenario):
        return item
    if callable(item):
        return Scenario(getattr(item, "__name__", repr(item)), item, per_store=False)
    raise TypeError(f"a SCENARIOS item must be a bench.Scenario or a callable, not {item!r}")


def discover(package_dir: Path | None = None) -> tuple[list[Scenario], list[dict[str, str]]]:
    """Scenarios of every ``bench/*_*.py`` that has a ``SCENARIOS`` list, by file name.

    A module that fails to import is reported, not fatal: other areas still run.
    """
    own_dir = Path(__file__).parent
    package_dir = package_dir or own_dir
    scenarios: list[Scenario] = []
    errors: list[dict[str, str]] = []
    for path in sorted(package_dir.glob("*_*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"{__package__ or 'bench'}.{path.stem}"
        try:
            if package_dir == own_dir:
                module = importlib.import_module(module_name)
            else:
                module = _load_file(module_name, path)
            items = getattr(module, "SCENARIOS", None)
            if items is None:
                continue
            scenarios.extend(as_scenario(item) for item in items)
        except Exception as exc:
            errors.append({"module": module_name, "error": f"{type(exc).__name__}: {exc}"})
    return scenarios, errors


def _load_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def select(scenarios: Iterable[Scenario], only: Sequence[str] | None) -> list[Scenario]:
    """Scenarios whose name matches one of ``only`` (exactly, as a glob, or as a prefix)."""
    if not only:
        return list(scenarios)
    return [
        s
        for s in scenarios
        if any(s.name == o or fnmatchcase(s.name, o) or s.name.startswith(o + ".") for o in only)
    ]


def normalize(raw: Any, scenario: Scenario, store_url: str | None) -> list[dict[str, Any]]:
    items = raw if isinstance(raw, list | tuple) else [raw]
    out = []
    for item in items:
        if isinstance(item, Result):
            if item.store is None:
                item.store = store_url
            out.append(item.to_dict())
        elif isinstance(item, dict) and "name" in item and "kvol_seconds" in item:
            out.append({"store": store_url, **item})
        else:
            raise TypeError(f"scenario {scenario.name} returned {item!r}, not a bench.Result")
    return out


def run_scenario(
    scenario: Scenario,
    store_url: str | None,
    sizes: Sizes,
    *,
    root: Path,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """Run one scenario in a fresh directory under ``root``; a failure becomes an error
    record naming the scenario, so one broken scenario does not hide the others."""
    where = f" on {store_url}" if store_url else ""
    print(f"bench: {scenario.name}{where} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with scratch_dir(root, scenario.name) as workdir:
        ctx = Context(store_url, sizes, workdir, quick)
        try:
            results = normalize(scenario.run(ctx), scenario, store_url)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return [
                {
                    "name": scenario.name,
                    "store": store_url,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            ]
    elapsed = time.perf_counter() - started
    for r in results:
        verdict = {True: "PASS", False: "FAIL", None: "info"}[r.get("passed")]
        ratio = r.get("ratio")
        shown = f" ratio {ratio:.2f}" if isinstance(ratio, float) else ""
        seconds = r["kvol_seconds"]
        took = f"{seconds * 1000:.3f} ms" if seconds < 0.1 else f"{seconds:.3f} s"
        print(
            f"bench:   {r['name']}: kvol {took}{shown} [{verdict}]",
            file=sys.stderr,
            flush=True,
        )
    print(f"bench:   ({elapsed:.1f}s with setup)", file=sys.stderr, flush=True)
    return results


@contextmanager
def scratch_dir(root: Path, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=name.replace("/", "_") + "-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- timing helpers -----------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(max(1, repeats)))
