"""The publications this process serves, and the mounts that show them to their pods.

Bringing a recorded publication up makes its working copy, the subPath and the control
socket's mount point inside it, binds the copy at the target path and the control socket
at ``<target>/.kvol``, and starts serving and autocommitting; every step is skipped if
already done, so it also re-adopts a copy a previous process left. Taking one down
removes the pod's view first, then the copy, then its record, and releases the snapshot
it was on.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvol import fsops, paths
from kvol.control import MAX_CONNECTIONS, SOCKET_NAME, ConnectionBudget, ControlServer
from kvol.csi import mounts
from kvol.csi.mounts import LiveMount, MountError
from kvol.csi.podinfo import mount_group, pod_of
from kvol.csi.snapshots import Snapshots
from kvol.csi.state import TEARING_DOWN, Publication, StateFile
from kvol.overlay import GROUP_DIR_MODE, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

log = logging.getLogger(__name__)

#: Opens (or creates) a publication's working copy; returns it with the publication as
#: recorded meanwhile (the snapshot it went on).
CopyOpener = Callable[[Publication, Repo], tuple[WorkingCopy, Publication]]


class Live:
    """A publication this process serves: its working copy and its control socket."""

    def __init__(self, pub: Publication, wc: WorkingCopy, pod_budget: ConnectionBudget) -> None:
        self.pub = pub
        self.wc = wc
        self.control = ControlServer(
            Path(pub.workdir) / "control" / SOCKET_NAME,
            target=self,
            label=f"{pub.namespace}/{pub.name}@{target_key(pub.target_path)}",
            client_budget=pod_budget,
        )

    # -- the control socket's target ---------------------------------------------------

    def commit(self, message: str | None = None) -> dict[str, Any]:
        return dataclasses.asdict(self.wc.commit(message))

    def reload(self) -> dict[str, Any]:
        return dataclasses.asdict(self.wc.reload())

    def status(self) -> dict[str, Any]:
        st = self.wc.status()
        error = self.wc.autocommit_error
        return {
            "volume": self.pub.name,
            "namespace": self.pub.namespace,
            "volume_id": st.volume_id,
            "base_seq": st.base_seq,
            "changed": list(st.changed),
            "deleted": list(st.deleted),
            "uncommitted_bytes": st.uncommitted_bytes,
            "read_only": self.pub.readonly,
            "sub_path": self.pub.sub_path,
            "layout": self.pub.layout,
            "autocommit_seconds": self.pub.autocommit_seconds,
            "autocommit_error": str(error) if error else None,
            "published_at": self.pub.published_at,
        }

    def start(self) -> None:
        self.control.start()
        if not self.pub.readonly and self.pub.autocommit_seconds > 0:
            self.wc.start_autocommit(self.pub.autocommit_seconds)

    def pause(self) -> None:
        """Stop serving the pod (control socket) and background commits."""
        self.control.stop()
        self.wc.stop_autocommit()


class Publisher:
    """Brings recorded publications up at their target paths and takes them down; holds
    the ones this process serves, by target path."""

    def __init__(self, state: StateFile, snapshots: Snapshots, open_copy: CopyOpener) -> None:
        self.state = state
        self.snapshots = snapshots
        self._open_copy = open_copy
        self.live: dict[str, Live] = {}
        self._live_lock = threading.Lock()
        # One connection bound per pod, shared by the control sockets of all its mounts
        # (held by them: it goes with the pod's last one).
        self._pod_budgets: weakref.WeakValueDictionary[str, ConnectionBudget] = (
            weakref.WeakValueDictionary()
        )

    def serving(self) -> list[Live]:
        with self._live_lock:
            return list(self.live.values())

    def pause_all(self) -> None:
        """Stop serving every publication; their mounts and records stay."""
        with self._live_lock:
            lives = list(self.live.values())
            self.live.clear()
        for live in lives:
            live.pause()

    # -- up ------------------------------------------------------------------------------

    def activate(self, pub: Publication, repo: Repo) -> Live:
        """Bring a recorded publication fully up; every step is skipped if already done."""
        live = self.live.get(pub.target_path)
        if live is None:
            wc, pub = self._open_copy(pub, repo)
            # Its commits name the pod: a Volume's status counts pods, not copies.
            pod = pub.extra.get("podName") or pub.extra.get("pod")
            if pod:
                wc.writer = replace(wc.writer, pod=f"{pub.namespace}/{pod}")
            live = Live(pub, wc, self._pod_budget(pub))
            with self._live_lock:
                self.live[pub.target_path] = live
        if pub.layout == "plain":
            # The plugin's own way into a plain copy is nosuid,nodev too (an overlay is
            # mounted so): a device node a pod made there (pods may mknod) is never
            # opened by the plugin's reads, which run as root, even if it is swapped in
            # for a file between a commit's scan and its read.
            mounts.bind(live.wc.root, live.wc.root)
        source = live.wc.root / pub.sub_path if pub.sub_path else live.wc.root
        root_fd = fsops.open_root(str(live.wc.root))
        try:
            if pub.sub_path:
                fsops.make_dirs(root_fd, pub.sub_path)
                _open_to_group(root_fd, pub.sub_path, mount_group(pub))
            # The mount point of the control socket inside the copy (never committed).
            fsops.make_dirs(root_fd, control_rel(pub.sub_path))
        finally:
            os.close(root_fd)
        target = Path(pub.target_path)
        target.mkdir(parents=True, exist_ok=True)
        live.start()
        mounts.bind(source, target, readonly=pub.readonly)
        _bind_control(live, target)
        if pub.phase != "published":
            pub = pub.with_phase("published")
            self.state.put(pub)
            live.pub = pub
        return live

    def resume(self, live: Live) -> None:
        """Serve a publication again after its unpublish failed, with its socket in place."""
        live.start()
        target = Path(live.pub.target_path)
        if mounts.is_mountpoint(target):
            _bind_control(live, target)

    def _pod_budget(self, pub: Publication) -> ConnectionBudget:
        pod = pod_of(pub)
        with self._live_lock:
            budget = self._pod_budgets.get(pod)
            if budget is None:
                budget = ConnectionBudget(MAX_CONNECTIONS)
                self._pod_budgets[pod] = budget
            return budget

    # -- down ----------------------------------------------------------------------------

    def unmount_target(self, pub: Publication) -> None:
        """Take the pod's view away: its control socket, then its mount of the copy."""
        target = Path(pub.target_path)
        mounts.unmount(target / paths.RESERVED)
        try:
            mounts.unmount(target)
        except MountError as exc:
            if exc.errno != errno.EBUSY:
                raise
            raise LiveMount(
                f"{target} is still in use; retry once the pod's processes are gone"
            ) from exc

    def teardown(self, pub: Publication, live: Live | None) -> None:
        """Unmount and remove everything of a publication whose data is safe (or was
        never shown to a pod), then forget it."""
        target = Path(pub.target_path)
        if live is not None:
            # Never served or committed again, even if a removal step below fails.
            live.pause()
            live.wc.close(final_commit=False)
            with self._live_lock:
                if self.live.get(pub.target_path) is live:
                    del self.live[pub.target_path]
        self.unmount_target(pub)
        try:
            mounts.remove_dir(target)
        except OSError as exc:  # something wrote into the directory under the mount
            log.warning("left %s in place: %s", target, exc)
        if live is not None and isinstance(live.wc, OverlayWorkingCopy):
            live.wc.unmount()
        workdir = Path(pub.workdir)
        if workdir.exists():
            mounts.unmount_tree(workdir)  # e.g. an overlay mounted by a previous process
        mounts.remove_tree(workdir)
        with self._live_lock:
            self.live.pop(pub.target_path, None)
        # Only the read-only snapshot is kept warm, never a copy (its layers are gone).
        self.state.remove(pub.target_path, warm=self.snapshots.warm_record(pub.lower))
        if pub.lower is not None:
            self.snapshots.release(pub.lower)

    def finish_abandoned(self, pub: Publication) -> bool:
        """Remove, without any commit, a copy whose data is safe or never existed: one
        whose teardown began (it may be half removed: committing it would publish the
        missing files as deletions) or whose publish never finished (no pod saw it).
        Returns whether ``pub`` was such a copy (and is now gone)."""
        if pub.phase not in (TEARING_DOWN, "publishing"):
            return False
        self.teardown(pub, self.live.get(pub.target_path))
        log.info(
            "removed the copy of %s/%s at %s left %s",
            pub.namespace,
            pub.name,
            pub.target_path,
            "half torn down" if pub.phase == TEARING_DOWN else "half published",
        )
        return True


def target_key(target: str) -> str:
    """A short name for a target path (its working copy's directory, its socket's label)."""
    return hashlib.sha256(target.encode()).hexdigest()[:20]


def control_rel(sub_path: str) -> str:
    """Where the control socket is mounted inside a copy, relative to the copy's root."""
    return f"{sub_path}/{paths.RESERVED}" if sub_path else paths.RESERVED


def _bind_control(live: Live, target: Path) -> None:
    """The control socket's directory at ``<target>/.kvol``, read-only: a pod connects
    to a socket on a read-only mount, but can never swap the socket for a symlink that
    the plugin (root) would follow when it sets the socket's mode."""
    mounts.bind(live.control.path.parent, target / paths.RESERVED, readonly=True, noexec=True)


def _open_to_group(root_fd: int, rel_dir: str, group: int | None) -> None:
    """A subPath directory the plugin made (root's, of the group by the setgid parent)
    made writable by the mount group too; one a pod made keeps the modes it gave it."""
    if group is None:
        return
    fd = fsops.open_dir(root_fd, rel_dir)  # never follows a symlink
    try:
        st = os.fstat(fd)
        if st.st_uid == 0 and st.st_gid == group:
            os.fchmod(fd, GROUP_DIR_MODE)
    finally:
        os.close(fd)
