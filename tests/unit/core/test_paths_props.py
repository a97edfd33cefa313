"""Property tests of kvol.paths: the one gate every path from an entry, a user or the SDK
passes through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvol import paths
from kvol.errors import InvalidPath
from tests.unit.core.helpers import props

COMPONENTS = st.one_of(
    st.sampled_from(["a", "b", "..", ".", "", ".kvol", "x\x00y", "\x00", "é", "a b", "...", "~"]),
    st.text(max_size=8),
)
PATHS = st.builds(
    lambda lead, parts, trail: lead + "/".join(parts) + trail,
    st.sampled_from(["", "/", "//", "./"]),
    st.lists(COMPONENTS, max_size=6),
    st.sampled_from(["", "/"]),
)
ANY_PATH = st.one_of(PATHS, st.text(max_size=40))


def assert_canonical_and_safe(path: str) -> None:
    parts = path.split("/")
    assert path and not path.startswith("/") and not path.endswith("/")
    assert "\x00" not in path
    assert ".." not in parts and "." not in parts and "" not in parts
    assert parts[0] != paths.RESERVED
    path.encode("utf-8")


@props(600)
@given(ANY_PATH)
def test_check_accepts_only_canonical_safe_paths(path: str) -> None:
    try:
        checked = paths.check(path)
    except InvalidPath:
        return
    assert checked == path
    assert_canonical_and_safe(path)


PLAIN_NAMES = st.one_of(
    st.sampled_from(["a", "-", "_", "a.b", "a..", "x" * 255, "x" * 256, ".kvol", "kvol"]),
    st.text(alphabet="ab.-_/\x00é ", max_size=12),
)
PLAIN_PATHS = st.lists(PLAIN_NAMES, min_size=1, max_size=20).map("/".join)


@props(600)
@given(st.one_of(PLAIN_PATHS, ANY_PATH))
def test_the_quick_check_accepts_only_what_the_full_check_accepts(path: str) -> None:
    # Most paths are decided by one pattern match; the full checks must agree.
    if len(path) <= paths.MAX_PATH_BYTES and paths._PLAIN(path):
        assert paths._check_fully(path) == path


def test_the_quick_check_takes_common_paths() -> None:
    for path in ["a", "models/v1.2/weights-00001.safetensors", "a_b/c-d/e.f.g", "x" * 255]:
        assert paths._PLAIN(path), path


@props(600)
@given(ANY_PATH)
def test_normalize_never_accepts_unsafe_paths_and_is_idempotent(path: str) -> None:
    try:
        normal = paths.normalize(path)
    except InvalidPath:
        return
    assert_canonical_and_safe(normal)
    assert paths.normalize(normal) == normal
    assert paths.check(normal) == normal
    assert paths.normalize("/" + normal) == normal


@props()
@given(ANY_PATH)
def test_a_climbing_or_nul_path_is_always_refused(path: str) -> None:
    components = path.split("/")
    if ".." in components or "\x00" in path:
        with pytest.raises(InvalidPath):
            paths.normalize(path)
        with pytest.raises(InvalidPath):
            paths.check(path)


@props()
@given(st.lists(st.sampled_from(["a", "b", "cd"]), min_size=1, max_size=5))
def test_reserved_directory_is_refused_at_the_root_only(parts: list[str]) -> None:
    rel = "/".join(parts)
    with pytest.raises(InvalidPath, match="reserved"):
        paths.check(f"{paths.RESERVED}/{rel}")
    with pytest.raises(InvalidPath, match="reserved"):
        paths.normalize(f"/{paths.RESERVED}/{rel}")
    assert paths.check(f"{rel}/{paths.RESERVED}") == f"{rel}/{paths.RESERVED}"


@pytest.mark.parametrize(
    ("given_path", "expected"),
    [("/a/b", "a/b"), ("a/b/", "a/b"), ("./a//b", "a/b"), ("/./x/./y/", "x/y")],
)
def test_normalize_examples(given_path: str, expected: str) -> None:
    assert paths.normalize(given_path) == expected


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "../x", "/..", "a\x00b", ".kvol", "/.kvol/x"])
def test_normalize_refuses(bad: str) -> None:
    with pytest.raises(InvalidPath):
        paths.normalize(bad)


def test_root_only_when_allowed() -> None:
    assert paths.normalize("/", allow_root=True) == ""
    assert paths.normalize("./", allow_root=True) == ""


def test_long_names_and_paths_are_refused() -> None:
    with pytest.raises(InvalidPath, match="255"):
        paths.check("a" * 256)
    paths.check("a" * 255)
    with pytest.raises(InvalidPath, match="4096"):
        paths.check("/".join(["a" * 200] * 21))
