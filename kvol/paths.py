"""Volume paths: the one place that decides which paths are allowed.

Inside kvol a volume path is canonical: relative, ``/``-separated, no empty, ``.`` or ``..``
component, no NUL, and never inside the reserved ``.kvol`` directory at the root (the
control socket and working-copy metadata live there). Paths from users may carry a
leading ``/`` (the volume root, as in Modal) and are normalized first.
"""

from __future__ import annotations

import re

from kvol.errors import InvalidPath

#: Reserved top-level directory of a working copy; never committed.
RESERVED = ".kvol"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

#: Names of letters, digits, "_", "-" and "." (never first: no ".", ".." or RESERVED),
#: 1-255 of them: a path of such names is canonical if it is short enough. Most paths
#: are; one match decides them (every path of a state is checked at every cold start).
_PLAIN = re.compile(r"[\w\-][\w.\-]{0,254}(?:/[\w\-][\w.\-]{0,254})*", re.ASCII).fullmatch


def check(path: str) -> str:
    """Validate a canonical volume path (from a log entry, an index, a checkpoint)."""
    if type(path) is str and len(path) <= MAX_PATH_BYTES and _PLAIN(path):
        return path
    return _check_fully(path)


def _check_fully(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidPath(f"invalid volume path {path!r}: empty")
    if "\x00" in path:
        raise InvalidPath(f"invalid volume path {path!r}: contains NUL")
    if path[0] == "/" or path[-1] == "/":
        raise InvalidPath(f"invalid volume path {path!r}: not canonical")
    # Every path of a volume's state is checked when it is parsed: ASCII ones (most)
    # are measured in characters, which are their bytes, without encoding each name.
    ascii = path.isascii()
    try:
        size = len(path) if ascii else len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"invalid volume path {path!r}: not valid UTF-8") from exc
    if size > MAX_PATH_BYTES:
        raise InvalidPath(f"invalid volume path: longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts:
        part = next(p for p in parts if p in ("", ".", ".."))
        raise InvalidPath(f"invalid volume path {path!r}: '{part}' component")
    if (
        max(map(len, parts)) if ascii else max(len(p.encode("utf-8")) for p in parts)
    ) > MAX_NAME_BYTES:
        raise InvalidPath(f"invalid volume path {path!r}: a name is over {MAX_NAME_BYTES} bytes")
    if parts[0] == RESERVED:
        raise InvalidPath(f"invalid volume path {path!r}: {RESERVED}/ is reserved")
    return path


def normalize(user_path: str, *, allow_root: bool = False) -> str:
    """Turn a user's path (``/a/b``, ``a/b/``, ``./a``) into a canonical one.

    ``..`` is refused rather than resolved: a path that climbs is a mistake or an attack.
    With ``allow_root`` the volume root itself is returned as ``""``.
    """
    if "\x00" in user_path:
        raise InvalidPath(f"invalid volume path {user_path!r}: contains NUL")
    parts = [p for p in user_path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPath(f"invalid volume path {user_path!r}: '..' is not allowed")
    if not parts:
        if allow_root:
            return ""
        raise InvalidPath(f"invalid volume path {user_path!r}: names the volume root")
    return check("/".join(parts))


def parent(path: str) -> str:
    """Parent directory of a canonical path ("" for the root)."""
    head, _, _ = path.rpartition("/")
    return head


def ancestors(path: str) -> list[str]:
    """Every proper ancestor directory of ``path``, nearest last (``a``, ``a/b`` for ``a/b/c``)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def deepest_first(path: str) -> tuple[int, str]:
    """Sort key: every path before its ancestors (removals, deepest first)."""
    return (-path.count("/"), path)


def is_under(path: str, directory: str) -> bool:
    """True if ``path`` is ``directory`` or inside it ("" is the root and holds everything)."""
    return not directory or path == directory or path.startswith(directory + "/")
