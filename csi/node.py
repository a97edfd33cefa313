"""CSI Node service: publish a working copy of a kvol volume at a pod's target path.

A publication is a working copy in the plugin's state directory (an overlay over a shared
lower snapshot when the node allows it, else a plain copy), bind-mounted at the target
path, with its control socket bind-mounted at ``<target>/.kvol`` and its autocommit
running. Unpublishing makes the final commit first and tears down only after it
succeeded: an unreachable store fails the call, the kubelet retries, nothing is dropped
(and a Warning event on the pod, see events.py, says why it stays Terminating).

Every step is idempotent and recorded in the host state before it is taken, so a call
repeated after a failure, or after the plugin restarted, finishes what the first began.
The phase decides what a leftover copy may be used for: a copy still "publishing" was
never shown to a pod and is discarded; a "published" one is re-adopted and committed; one
"tearing-down" (its final commit succeeded, removal may have begun, so it may be partly
gone) is never committed or served again, only removed.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvol import fsops, metrics, paths
from kvol.blobfill import BlobFiller
from kvol.csi import mounts
from kvol.csi.control import MAX_CONNECTIONS, SOCKET_NAME, ConnectionBudget, ControlServer
from kvol.csi.errors import Forbidden, MissingField, NotPublished, PublishedElsewhere
from kvol.csi.events import EventReporter, PodRef
from kvol.csi.locks import VolumeLocks
from kvol.csi.mounts import LiveMount, MountError
from kvol.csi.proto import csi_pb2
from kvol.csi.resolver import Resolver
from kvol.csi.state import TEARING_DOWN, Publication, StateFile
from kvol.erofs import images_supported
from kvol.errors import CorruptData, InvalidArgument, KvolError, StaleBase
from kvol.mounting import overlay_supported
from kvol.overlay import (
    GROUP_DIR_MODE,
    ContentCache,
    Lower,
    Lowers,
    OverlayWorkingCopy,
    lower_family,
)
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

log = logging.getLogger(__name__)

#: Keys the kubelet adds to volume_context when the CSIDriver sets podInfoOnMount.
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_NAME = "csi.storage.k8s.io/pod.name"
POD_UID = "csi.storage.k8s.io/pod.uid"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
#: volumeAttributes understood by the plugin.
ATTR_VOLUME = "volume"
ATTR_NAMESPACE = "namespace"
ATTR_BACKEND = "backend"
ATTR_SUB_PATH = "subPath"
ATTR_READ_ONLY = "readOnly"
ATTR_AUTOCOMMIT = "autocommitIntervalSeconds"
#: Where a publication records its mount group (the pod's fsGroup, from the kubelet).
EXTRA_MOUNT_GROUP = "mountGroup"

_READ_ONLY_MODES = (
    csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
    csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
)
#: A publish reuses this node's newest snapshot of the volume and reloads the commits
#: after it, rather than building a new snapshot, when it is at most this far behind.
REUSE_SNAPSHOT_WITHIN = 64
#: Longest wait between two passes of the janitor (warm snapshots, the cache's limit).
JANITOR_INTERVAL = 60.0
#: Final commits retried this many times when files changed while they were read.
FINAL_COMMIT_ATTEMPTS = 3


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    state_dir: Path
    #: "auto" (overlay where possible), "overlay" or "plain".
    layout: str = "auto"
    max_volumes_per_node: int = 0
    #: Seconds a volume's snapshot stays on the node after its last copy here went, for
    #: the next pod of the volume (0: dropped with the last copy).
    keep_warm_seconds: float = 600.0
    #: Size the node's content cache is trimmed to, least recently used first (0: none).
    cache_max_bytes: int = 10 << 30
    #: Publish before the volume's content is here: files are fetched when first read
    #: and in the background (overlay layout, root, kernel 6.14+).
    lazy_fetch: bool = False
    #: How: "image" (each snapshot an EROFS image whose data is fetched range by range
    #: as it is read: kvol.image_lowers), "entries" (placeholder files in the content
    #: cache, each fetched whole on first open: kvol.lazy) or "auto" (image where the
    #: kernel mounts one from a file, 6.12+).
    lazy_fetch_as: str = "auto"


class Live:
    """A publication this process serves: its working copy and its control socket."""

    def __init__(self, pub: Publication, wc: WorkingCopy, pod_budget: ConnectionBudget) -> None:
        self.pub = pub
        self.wc = wc
        self.control = ControlServer(
            Path(pub.workdir) / "control" / SOCKET_NAME,
            target=self,
            label=f"{pub.namespace}/{pub.name}@{_key(pub.target_path)}",
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


class NodeService:
    """The CSI Node service. Servicer methods take a request and return a response."""

    def __init__(
        self, config: NodeConfig, resolver: Resolver, events: EventReporter | None = None
    ) -> None:
        self.config = config
        self.resolver = resolver
        # Warning events on pods whose final commit waits (off unless given one).
        self.events = events or EventReporter(config.node_id, enabled=False)
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.pubs_dir = state_dir / "pubs"
        self.state = StateFile(state_dir / "state.json")
        if config.keep_warm_seconds < 0:
            raise InvalidArgument(
                f"keep-warm time must be 0 (off) or more seconds, not {config.keep_warm_seconds}"
            )
        images = self._lazy_images(config, state_dir)
        self.lowers = Lowers(
            state_dir / "lowers",
            ContentCache(
                state_dir / "cache",
                config.cache_max_bytes,
                lazy=config.lazy_fetch and images is None,
            ),
            images=images,
        )
        # The janitor drops expired warm snapshots and trims the content cache.
        self._janitor: threading.Thread | None = None
        self._janitor_wake = threading.Event()
        self._janitor_stop = threading.Event()
        self.locks = VolumeLocks()
        self._live: dict[str, Live] = {}
        self._live_lock = threading.Lock()
        # One connection bound per pod, shared by the control sockets of all its mounts
        # (held by them: it goes with the pod's last one).
        self._pod_budgets: weakref.WeakValueDictionary[str, ConnectionBudget] = (
            weakref.WeakValueDictionary()
        )
        # One lock for choosing and dropping snapshots, so a snapshot is never dropped
        # between a publish choosing it and recording it.
        self._lowers_lock = threading.Lock()
        if config.layout == "auto":
            self.layout = "overlay" if overlay_supported() else "plain"
        elif config.layout in ("overlay", "plain"):
            self.layout = config.layout
        else:
            raise InvalidArgument(f"layout must be auto, overlay or plain, not {config.layout!r}")

    @staticmethod
    def _lazy_images(config: NodeConfig, state_dir: Path) -> BlobFiller | None:
        """The blob filler of image snapshots, if lazy fetching is on and goes by images."""
        if config.lazy_fetch_as not in ("auto", "image", "entries"):
            raise InvalidArgument(
                f"lazy fetch must go by auto, image or entries, not {config.lazy_fetch_as!r}"
            )
        if not config.lazy_fetch or config.lazy_fetch_as == "entries":
            return None
        if config.lazy_fetch_as == "auto" and not images_supported(state_dir):
            log.info("lazy fetch goes by cache entries: this kernel mounts no image from a file")
            return None
        return BlobFiller(state_dir / "blobs").start()

    # -- lifecycle -----------------------------------------------------------------------

    def readopt(self) -> list[str]:
        """Take back every publication a previous process left; returns the failures."""
        failed = []
        for pub in self.state.all():
            try:
                with self.locks.hold(pub.volume_id, "re-adoption"):
                    if self._finish_abandoned(pub):
                        continue
                    self._activate(pub, self.resolver_repo(pub))
                log.info(
                    "re-adopted %s/%s at %s (base seq %s)",
                    pub.namespace,
                    pub.name,
                    pub.target_path,
                    self._live[pub.target_path].wc.index.base,
                )
            except Exception as exc:
                # The record stays: the kubelet's next publish or unpublish retries it.
                log.error("could not re-adopt %s: %s", pub.target_path, exc, exc_info=exc)
                failed.append(pub.target_path)
        self._drop_leftover_lowers()
        return failed

    def _finish_abandoned(self, pub: Publication) -> bool:
        """Remove, without any commit, a copy whose data is safe or never existed: one
        whose teardown began (it may be half removed: committing it would publish the
        missing files as deletions) or whose publish never finished (no pod saw it).
        Returns whether ``pub`` was such a copy (and is now gone)."""
        if pub.phase not in (TEARING_DOWN, "publishing"):
            return False
        self._teardown(pub, self._live.get(pub.target_path))
        log.info(
            "removed the copy of %s/%s at %s left %s",
            pub.namespace,
            pub.name,
            pub.target_path,
            "half torn down" if pub.phase == TEARING_DOWN else "half published",
        )
        return True

    def _drop_leftover_lowers(self) -> None:
        """Snapshots no publication uses and none keeps warm (their last one went while
        no plugin ran, or their warm time ended), and half-built ones of an interrupted
        build."""
        with self._lowers_lock:
            used = {p.lower for p in self.state.all()}
            warm = self._revise_warm(time.time())
            for lower in self.lowers.all():
                if lower.key not in used and lower.key not in warm:
                    self._drop_lower(lower)
            for partial in self.lowers.root.glob(f"*/{fsops.TEMP_PREFIX}*"):
                self.lowers.release_partial(partial)
                mounts.remove_tree(partial)

    # -- warm snapshots and the content cache ------------------------------------------

    def start_janitor(self) -> None:
        """Drop warm snapshots when their time ends and keep the content cache within its
        limit, in the background (until :meth:`shutdown`)."""
        if self._janitor is None:
            self._janitor = threading.Thread(
                target=self._janitor_loop, name="kvol-janitor", daemon=True
            )
            self._janitor.start()

    def _janitor_loop(self) -> None:
        _ = self.lowers.cache.size  # read the cache from disk once, for its metrics
        while not self._janitor_stop.is_set():
            try:
                self.tidy()
            except Exception as exc:  # the next pass retries; serving goes on
                log.error("tidying snapshots and the content cache failed: %s", exc, exc_info=exc)
            expiries = self.state.warm().values()
            wait = min([*(t - time.time() for t in expiries), JANITOR_INTERVAL])
            self._janitor_wake.wait(max(wait, 0.05))
            self._janitor_wake.clear()

    def tidy(self, now: float | None = None) -> None:
        """Drop the warm snapshots whose time ended or that a newer snapshot of the same
        volume supersedes (a publish never picks them again), then trim the content cache.
        If entries only warm snapshots link keep the cache over its limit, those
        snapshots go too, the soonest to expire first: the limit is the node's disk,
        keeping warm only saves time."""
        now = time.time() if now is None else now
        doomed: list[Path] = []
        with self._lowers_lock:
            was = self.state.warm()
            warm = self._revise_warm(now)
            used = {p.lower for p in self.state.all()}
            for key in was:
                lower = self._lower_of(key)
                if lower is None or key in used:
                    continue
                if key not in warm or self._superseded(lower):
                    self.state.revise_warm({key: (warm[key], None)} if key in warm else {})
                    doomed += self._detach(lower)
        for path in doomed:
            self.lowers.discard(path)
        tried: set[str] = set()
        while self.lowers.cache.trim() > 0:
            with self._lowers_lock:
                used = {p.lower for p in self.state.all()}
                idle = sorted(
                    (until, key)
                    for key, until in self.state.warm().items()
                    if key not in used and key not in tried
                )
                if not idle:
                    return  # what is left is in use
                key = idle[0][1]
                tried.add(key)
                lower = self._lower_of(key)
                self.state.revise_warm({key: (idle[0][0], None)})
                if lower is None:
                    continue
                log.info("dropped warm snapshot %s: the content cache is over its limit", key)
                doomed = self._detach(lower)
            for path in doomed:
                self.lowers.discard(path)

    def _revise_warm(self, now: float) -> dict[str, float]:
        """The warm snapshots still warm at ``now``; the others are forgotten (under the
        lowers lock; the caller drops their snapshots if no copy uses them). A deadline
        further away than the keep-warm time (the setting was lowered, or the clock went
        back) is brought in."""
        keep = self.config.keep_warm_seconds
        changes: dict[str, tuple[float, float | None]] = {}
        warm: dict[str, float] = {}
        for key, until in self.state.warm().items():
            if until <= now or keep == 0 or self._lower_of(key) is None:
                changes[key] = (until, None)
                continue
            if until > now + keep:
                changes[key] = (until, now + keep)
            warm[key] = min(until, now + keep)
        self.state.revise_warm(changes)
        return warm

    def _lower_of(self, key: str) -> Lower | None:
        family, _, seq = key.partition("/")
        try:
            return self.lowers.get(family, int(seq))
        except ValueError:
            return None

    def _superseded(self, lower: Lower) -> bool:
        newest = self.lowers.newest(lower.volume_id)
        return newest is not None and newest.seq > lower.seq

    def shutdown(self) -> None:
        """Stop serving (the plugin is exiting). Mounts stay; the next process re-adopts,
        and keeps the warm snapshots until their time ends."""
        self._janitor_stop.set()
        self._janitor_wake.set()
        if self._janitor is not None:
            self._janitor.join()
            self._janitor = None
        with self._live_lock:
            lives = list(self._live.values())
            self._live.clear()
        for live in lives:
            live.pause()
        # Lazy fetches stop; the group stays with its holder, so opens of files not fetched
        # yet wait for the next process instead of reading placeholders.
        self.lowers.close(release=False)

    def copy_samples(self) -> list[metrics.CopySample]:
        """The copies this process serves, for the per-volume metrics."""
        with self._live_lock:
            lives = list(self._live.values())
        return [
            metrics.CopySample(
                namespace=live.pub.namespace,
                volume=live.pub.name,
                read_only=live.pub.readonly,
                uncommitted_bytes=live.wc.uncommitted_bytes,
                commit_failing=live.wc.autocommit_error is not None,
                base_seq=live.wc.index.base,
            )
            for live in lives
        ]

    def resolver_repo(self, pub: Publication) -> Repo:
        repo = Repo(self.resolver.store(pub.backend), pub.kvol_id)
        # After a restart, placeholders of this volume left unfilled are filled from it.
        self.lowers.adopt(repo)
        return repo

    # -- Node service ----------------------------------------------------------------------

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=t))
                # VOLUME_MOUNT_GROUP: the kubelet hands the pod's fsGroup to
                # NodePublishVolume instead of changing the owner of every file itself.
                for t in (rpc.GET_VOLUME_STATS, rpc.VOLUME_MOUNT_GROUP)
            ]
        )

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.config.node_id, max_volumes_per_node=self.config.max_volumes_per_node
        )

    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest
    ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = _required(request.volume_id, "volume_id")
        target = _target(_required(request.target_path, "target_path"))
        if not request.HasField("volume_capability"):
            raise MissingField("volume_capability")
        capability = request.volume_capability
        if capability.HasField("block"):
            raise InvalidArgument("kvol volumes are file systems: block access is not supported")
        context = dict(request.volume_context)
        readonly = (
            request.readonly
            or capability.access_mode.mode in _READ_ONLY_MODES
            or _flag(context.get(ATTR_READ_ONLY, ""), ATTR_READ_ONLY)
        )
        sub_path = paths.normalize(context.get(ATTR_SUB_PATH, ""), allow_root=True)
        with self.locks.hold(volume_id, "NodePublishVolume"):
            existing = self.state.get(target)
            if existing is not None and self._finish_abandoned(existing):
                existing = None  # published again from scratch below
            if existing is not None:
                if (existing.volume_id, existing.readonly, existing.sub_path) != (
                    volume_id,
                    readonly,
                    sub_path,
                ):
                    raise PublishedElsewhere(
                        f"{target} already holds volume {existing.volume_id} "
                        f"(read-only={existing.readonly}, subPath={existing.sub_path!r})"
                    )
                self._activate(existing, self.resolver_repo(existing))
                return csi_pb2.NodePublishVolumeResponse()
            name, namespace = _who(context)
            autocommit = _autocommit(context.get(ATTR_AUTOCOMMIT))
            resolved = self.resolver.resolve(name, namespace, context.get(ATTR_BACKEND, ""))
            pub = Publication(
                volume_id=volume_id,
                target_path=target,
                name=name,
                namespace=namespace,
                backend=resolved.backend,
                kvol_id=resolved.repo.volume_id,
                workdir=str(self.pubs_dir / _key(target)),
                readonly=readonly,
                sub_path=sub_path,
                layout=self.layout,
                autocommit_seconds=resolved.autocommit_seconds
                if autocommit is None
                else autocommit,
                published_at=time.time(),
                extra=_pod_extra(context) | _mount_group_extra(capability),
            )
            # Recorded before anything is mounted: a crash from here on leaves a record the
            # next call (or the restarted plugin) completes or cleans up.
            self.state.put(pub)
            try:
                live = self._activate(pub, resolved.repo)
            except Exception:
                # The pod never saw this mount, so no data of it can be lost: undo.
                self._teardown(pub, self._live.get(target))
                raise
            log.info(
                "published %s/%s (%s, %s) at %s based on seq %d",
                namespace,
                name,
                pub.kvol_id,
                pub.layout,
                target,
                live.wc.index.base,
            )
            return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = _required(request.volume_id, "volume_id")
        target = _target(_required(request.target_path, "target_path"))
        with self.locks.hold(volume_id, "NodeUnpublishVolume"):
            pub = self.state.get(target)
            if pub is None:
                # Not published here (or unpublished already): nothing of ours to undo.
                if mounts.is_mountpoint(target):
                    log.warning("%s is mounted but not by this plugin: left alone", target)
                else:
                    mounts.remove_dir(target)
                return csi_pb2.NodeUnpublishVolumeResponse()
            if pub.volume_id != volume_id:
                raise NotPublished(
                    f"volume {volume_id} is not published at {target} (it holds {pub.volume_id})"
                )
            if pub.phase == TEARING_DOWN:
                # The final commit succeeded before a failure or a restart; the copy may
                # be partly removed: finish removing it, and never commit it.
                self._teardown(pub, self._live.get(target))
                log.info("finished unpublishing %s/%s from %s", pub.namespace, pub.name, target)
                return csi_pb2.NodeUnpublishVolumeResponse()
            live = self._live.get(target) or self._activate(pub, self.resolver_repo(pub))
            live.pause()
            try:
                result = self._final_commit_or_report(live)
                self._unmount_target(pub)
                # Once the pod's view is gone nothing can write to the copy: what was
                # written between the final commit and the unmount is committed now.
                later = self._final_commit_or_report(live)
            except Exception:
                self._resume(live)  # still published: keep serving and committing
                raise
            self.events.resolved(_pod_ref(pub))
            result = later if later is not None else result
            # Durable before anything is removed: a copy from here on may be half gone,
            # and a restarted plugin or a retried call must only finish removing it.
            pub = pub.with_phase(TEARING_DOWN)
            self.state.put(pub)
            live.pub = pub
            self._teardown(pub, live)
            log.info(
                "unpublished %s/%s from %s (final commit: %s)",
                pub.namespace,
                pub.name,
                target,
                "nothing to commit" if result is None else f"seq {result}",
            )
            return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = _required(request.volume_id, "volume_id")
        path = _required(request.volume_path, "volume_path")
        target = os.path.abspath(path)
        pub = self.state.get(target)
        live = self._live.get(target)
        if pub is None or pub.volume_id != volume_id or live is None:
            raise NotPublished(f"volume {volume_id} is not published at {path}")
        index = live.wc.index
        files = dict(index.files)  # a copy: a commit may update the index meanwhile
        used_bytes = sum(e.record.size for e in files.values() if e.record is not None)
        used_inodes = len(files) + len(index.dirs)
        fs = os.statvfs(live.wc.root)
        unit = csi_pb2.VolumeUsage.Unit
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    unit=unit.BYTES,
                    used=used_bytes,
                    available=fs.f_bavail * fs.f_frsize,
                    total=used_bytes + fs.f_bavail * fs.f_frsize,
                ),
                csi_pb2.VolumeUsage(
                    unit=unit.INODES,
                    used=used_inodes,
                    available=fs.f_favail,
                    total=used_inodes + fs.f_favail,
                ),
            ]
        )

    # -- steps ---------------------------------------------------------------------------

    def _activate(self, pub: Publication, repo: Repo) -> Live:
        """Bring a recorded publication fully up; every step is skipped if already done."""
        live = self._live.get(pub.target_path)
        if live is None:
            wc, pub = self._working_copy(pub, repo)
            # Its commits name the pod: a Volume's status counts pods, not copies.
            pod = pub.extra.get("podName") or pub.extra.get("pod")
            if pod:
                wc.writer = replace(wc.writer, pod=f"{pub.namespace}/{pod}")
            live = Live(pub, wc, self._pod_budget(pub))
            with self._live_lock:
                self._live[pub.target_path] = live
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
                _open_to_group(root_fd, pub.sub_path, _mount_group(pub))
            # The mount point of the control socket inside the copy (never committed).
            fsops.make_dirs(root_fd, _control_rel(pub.sub_path))
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

    def _pod_budget(self, pub: Publication) -> ConnectionBudget:
        pod = _pod_of(pub)
        with self._live_lock:
            budget = self._pod_budgets.get(pod)
            if budget is None:
                budget = ConnectionBudget(MAX_CONNECTIONS)
                self._pod_budgets[pod] = budget
            return budget

    def _working_copy(self, pub: Publication, repo: Repo) -> tuple[WorkingCopy, Publication]:
        workdir = Path(pub.workdir)
        excluded = frozenset({_control_rel(pub.sub_path)})
        if pub.layout == "overlay":
            lower = self._lower_for(pub, repo)
            if pub.lower != lower.key:
                pub = replace(pub, lower=lower.key)
            fresh = not (workdir / "meta").exists()
            wc: WorkingCopy = OverlayWorkingCopy.mount(
                repo,
                self.lowers,
                lower,
                workdir,
                read_only=pub.readonly,
                excluded=excluded,
                group=_mount_group(pub),
            )
            if fresh and lower.seq < repo.head():
                wc.reload()  # a recent snapshot plus the commits after it
            return wc, pub
        root, meta = workdir / "root", workdir / "meta"
        if (meta / "config.json").exists():
            return WorkingCopy.open(root, meta, store=repo.store), pub
        return WorkingCopy.create(repo, root, meta, read_only=pub.readonly), pub

    def _lower_for(self, pub: Publication, repo: Repo) -> Lower:
        """The snapshot under this publication, recorded in the state before it is used.

        Choosing and recording happen under one lock with dropping, so a snapshot is
        never dropped between the two; a build (long: it may download) runs outside it.
        """
        if pub.lower is not None:
            volume_id, _, seq = pub.lower.partition("/")
            found = self.lowers.get(volume_id, int(seq))
            if found is None:
                raise CorruptData(f"snapshot {pub.lower} of {pub.target_path} is missing")
            return found
        head = repo.head()
        group = _mount_group(pub)
        family = lower_family(repo.volume_id, group)
        for _ in range(3):
            with self._lowers_lock:
                newest = self.lowers.newest(family, at_most=head)
                if newest is not None and head - newest.seq <= REUSE_SNAPSHOT_WITHIN:
                    self.state.put(replace(pub, lower=newest.key))
                    return newest
            self.lowers.build(repo, head, group=group)
        raise KvolError(f"snapshot of {repo.volume_id} at {head} kept disappearing; will retry")

    def _final_commit(self, live: Live) -> int | None:
        if live.pub.readonly:
            return None
        seq = None
        for _ in range(FINAL_COMMIT_ATTEMPTS):
            try:
                result = live.wc.commit()
            except StaleBase:
                # The volume's retained history now begins after this copy's base. The
                # pod is gone, so nobody sees its files change: bring the copy up to date
                # (a reload keeps its changes) and publish them on top of the head.
                live.wc.reload()
                result = live.wc.commit()
            seq = result.seq if result.seq is not None else seq
            if not result.deferred:
                return seq
        raise KvolError(
            f"files kept changing during the final commit of {live.pub.target_path}: "
            f"{', '.join(result.deferred[:5])}; will retry"
        )

    def _final_commit_or_report(self, live: Live) -> int | None:
        """The final commit; when it fails, a Warning event on the pod (best effort, never
        blocking) says why it stays Terminating, before the error goes to the kubelet."""
        try:
            return self._final_commit(live)
        except Exception as exc:
            self.events.final_commit_retrying(_pod_ref(live.pub), live.pub.name, exc)
            raise

    def _resume(self, live: Live) -> None:
        """Serve a publication again after its unpublish failed, with its socket in place."""
        live.start()
        target = Path(live.pub.target_path)
        if mounts.is_mountpoint(target):
            _bind_control(live, target)

    def _unmount_target(self, pub: Publication) -> None:
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

    def _teardown(self, pub: Publication, live: Live | None) -> None:
        """Unmount and remove everything of a publication whose data is safe (or was
        never shown to a pod), then forget it."""
        target = Path(pub.target_path)
        if live is not None:
            # Never served or committed again, even if a removal step below fails.
            live.pause()
            live.wc.close(final_commit=False)
            with self._live_lock:
                if self._live.get(pub.target_path) is live:
                    del self._live[pub.target_path]
        self._unmount_target(pub)
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
            self._live.pop(pub.target_path, None)
        # Only the read-only snapshot is kept warm, never a copy (its layers are gone).
        keep = self.config.keep_warm_seconds
        warm = (pub.lower, time.time() + keep) if pub.lower is not None and keep > 0 else None
        self.state.remove(pub.target_path, warm=warm)
        if pub.lower is not None:
            self._release_lower(pub.lower)

    def _release_lower(self, key: str) -> None:
        """A copy on snapshot ``key`` is gone: drop the snapshot unless a copy still uses
        it or it stays warm (a newer snapshot of the volume makes keeping it pointless)."""
        with self._lowers_lock:
            if any(p.lower == key for p in self.state.all()):
                return
            lower = self._lower_of(key)
            until = self.state.warm().get(key)
            if lower is not None and until is not None and not self._superseded(lower):
                self._janitor_wake.set()  # a new deadline to wait for
                return
            if until is not None:
                self.state.revise_warm({key: (until, None)})
            doomed = self._detach(lower) if lower is not None else []
        for path in doomed:
            self.lowers.discard(path)
        self.lowers.cache.trim()

    def _detach(self, lower: Lower) -> list[Path]:
        """Take a snapshot out of use (under the lowers lock); returns what
        :meth:`Lowers.discard` removes, outside the lock (it is O(files))."""
        try:
            doomed = self.lowers.detach(lower)
        except MountError as exc:
            # Something this plugin has no record of still sits on it: keep it.
            log.warning("kept snapshot %s: %s", lower.key, exc)
            return []
        return [doomed] if doomed is not None else []

    def _drop_lower(self, lower: Lower) -> None:
        for path in self._detach(lower):
            self.lowers.discard(path)


def _required(value: str, field: str) -> str:
    if not value:
        raise MissingField(field)
    return value


def _target(path: str) -> str:
    if not os.path.isabs(path) or "\x00" in path:
        raise InvalidArgument(f"target_path must be an absolute path, not {path!r}")
    return os.path.normpath(path)


def _key(target: str) -> str:
    return hashlib.sha256(target.encode()).hexdigest()[:20]


def _bind_control(live: Live, target: Path) -> None:
    """The control socket's directory at ``<target>/.kvol``, read-only: a pod connects
    to a socket on a read-only mount, but can never swap the socket for a symlink that
    the plugin (root) would follow when it sets the socket's mode."""
    mounts.bind(live.control.path.parent, target / paths.RESERVED, readonly=True, noexec=True)


_POD_DIR = re.compile(r"/pods/([^/]+)/volumes/")


def _pod_of(pub: Publication) -> str:
    """Which pod a publication serves: its uid, as the kubelet gave it or as its target
    path (``.../pods/<uid>/volumes/...``) names it; else the target path alone."""
    if pub.extra.get("pod"):
        return pub.extra["pod"]
    found = _POD_DIR.search(pub.target_path)
    return found.group(1) if found else pub.target_path


def _pod_extra(context: dict[str, str]) -> dict[str, str]:
    """What a publication records of its pod: the uid (its connection budget) and the
    name (events posted on it when its final commit waits)."""
    keys = {"pod": POD_UID, "podName": POD_NAME}
    return {key: context[field] for key, field in keys.items() if context.get(field)}


def _pod_ref(pub: Publication) -> PodRef:
    """The pod a publication serves, as far as its record knows it (no name: recorded
    by an older version, and then no event can name the pod)."""
    return PodRef(pub.namespace, pub.extra.get("podName", ""), pub.extra.get("pod", ""))


def _mount_group_extra(capability: csi_pb2.VolumeCapability) -> dict[str, str]:
    """The mount group the kubelet asks for (the pod's fsGroup), checked."""
    group = capability.mount.volume_mount_group if capability.HasField("mount") else ""
    if not group:
        return {}
    if not group.isascii() or not group.isdigit() or int(group) > 0xFFFFFFFE:
        raise InvalidArgument(f"volume_mount_group must be a numeric group id, not {group!r}")
    return {EXTRA_MOUNT_GROUP: str(int(group))}


def _mount_group(pub: Publication) -> int | None:
    """The group whose members may write a publication's view (overlay layout only: a
    plain copy keeps the committed modes, owned by root)."""
    group = pub.extra.get(EXTRA_MOUNT_GROUP)
    return int(group) if group and pub.layout == "overlay" else None


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


def _control_rel(sub_path: str) -> str:
    return f"{sub_path}/{paths.RESERVED}" if sub_path else paths.RESERVED


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("", "false", "0", "no"):
        return False
    if lowered in ("true", "1", "yes"):
        return True
    raise InvalidArgument(f"volume attribute {name} must be true or false, not {value!r}")


def _autocommit(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise InvalidArgument(
            f"volume attribute {ATTR_AUTOCOMMIT} must be a number of seconds (0: off), not {value!r}"
        )
    return seconds


def _who(context: dict[str, str]) -> tuple[str, str]:
    """The volume's name and namespace; a pod may only have its own namespace's volumes."""
    name = context.get(ATTR_VOLUME, "")
    if not name:
        raise InvalidArgument(
            f"volumeAttributes must name the kvol volume: {{{ATTR_VOLUME}: <name>}}"
        )
    namespace = context.get(POD_NAMESPACE, "")
    if not namespace:
        raise InvalidArgument(
            f"the pod's namespace is missing ({POD_NAMESPACE}): the CSIDriver object must set "
            "podInfoOnMount: true"
        )
    wanted = context.get(ATTR_NAMESPACE)
    if wanted and wanted != namespace:
        raise Forbidden(
            f"a pod of namespace {namespace!r} may not mount volume {name!r} of namespace {wanted!r}"
        )
    return name, namespace
