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

This module checks the kubelet's requests and decides what copy a publication gets;
publisher.py mounts and removes copies, snapshots.py keeps the snapshots under them,
final_commit.py makes the commit before a copy goes and stats.py measures a copy.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kvol import metrics, paths
from kvol.blobfill import BlobFiller
from kvol.csi import mounts
from kvol.csi.errors import Forbidden, MissingField, NotPublished, PublishedElsewhere
from kvol.csi.events import EventReporter
from kvol.csi.final_commit import final_commit_or_report
from kvol.csi.locks import VolumeLocks
from kvol.csi.podinfo import POD_NAMESPACE, mount_group, mount_group_extra, pod_extra, pod_ref
from kvol.csi.proto import csi_pb2
from kvol.csi.publisher import Live, Publisher, control_rel, target_key
from kvol.csi.resolver import Resolver
from kvol.csi.snapshots import Snapshots
from kvol.csi.state import TEARING_DOWN, Publication, StateFile
from kvol.csi.stats import volume_usage
from kvol.erofs import images_supported
from kvol.errors import InvalidArgument
from kvol.mounting import overlay_supported
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

log = logging.getLogger(__name__)

#: volumeAttributes understood by the plugin.
ATTR_VOLUME = "volume"
ATTR_NAMESPACE = "namespace"
ATTR_BACKEND = "backend"
ATTR_SUB_PATH = "subPath"
ATTR_READ_ONLY = "readOnly"
ATTR_AUTOCOMMIT = "autocommitIntervalSeconds"

_READ_ONLY_MODES = (
    csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
    csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
)
#: A publish reuses this node's newest snapshot of the volume and reloads the commits
#: after it, rather than building a new snapshot, when it is at most this far behind.
REUSE_SNAPSHOT_WITHIN = 64


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
        self.snapshots = Snapshots(self.lowers, self.state, config.keep_warm_seconds)
        # Which copy a publication gets (layout, snapshot reuse) is this service's choice;
        # the publisher only mounts, serves and removes it.
        self.publisher = Publisher(self.state, self.snapshots, self._working_copy)
        self.locks = VolumeLocks()
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

    @property
    def _live(self) -> dict[str, Live]:
        """The publications this process serves, by target path."""
        return self.publisher.live

    # -- lifecycle -----------------------------------------------------------------------

    def readopt(self) -> list[str]:
        """Take back every publication a previous process left; returns the failures."""
        failed = []
        for pub in self.state.all():
            try:
                with self.locks.hold(pub.volume_id, "re-adoption"):
                    if self.publisher.finish_abandoned(pub):
                        continue
                    self.publisher.activate(pub, self.resolver_repo(pub))
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
        self.snapshots.drop_leftovers()
        return failed

    def start_janitor(self) -> None:
        """Drop warm snapshots when their time ends and keep the content cache within its
        limit, in the background (until :meth:`shutdown`)."""
        self.snapshots.start_janitor()

    def tidy(self, now: float | None = None) -> None:
        """One pass of the janitor now: see :meth:`Snapshots.tidy`."""
        self.snapshots.tidy(now)

    def shutdown(self) -> None:
        """Stop serving (the plugin is exiting). Mounts stay; the next process re-adopts,
        and keeps the warm snapshots until their time ends."""
        self.snapshots.stop_janitor()
        self.publisher.pause_all()
        # Lazy fetches stop; the group stays with its holder, so opens of files not fetched
        # yet wait for the next process instead of reading placeholders.
        self.lowers.close(release=False)

    def copy_samples(self) -> list[metrics.CopySample]:
        """The copies this process serves, for the per-volume metrics."""
        return [
            metrics.CopySample(
                namespace=live.pub.namespace,
                volume=live.pub.name,
                read_only=live.pub.readonly,
                uncommitted_bytes=live.wc.uncommitted_bytes,
                commit_failing=live.wc.autocommit_error is not None,
                base_seq=live.wc.index.base,
            )
            for live in self.publisher.serving()
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
            if existing is not None and self.publisher.finish_abandoned(existing):
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
                self.publisher.activate(existing, self.resolver_repo(existing))
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
                workdir=str(self.pubs_dir / target_key(target)),
                readonly=readonly,
                sub_path=sub_path,
                layout=self.layout,
                autocommit_seconds=resolved.autocommit_seconds
                if autocommit is None
                else autocommit,
                published_at=time.time(),
                extra=pod_extra(context) | mount_group_extra(capability),
            )
            # Recorded before anything is mounted: a crash from here on leaves a record the
            # next call (or the restarted plugin) completes or cleans up.
            self.state.put(pub)
            try:
                live = self.publisher.activate(pub, resolved.repo)
            except Exception:
                # The pod never saw this mount, so no data of it can be lost: undo.
                self.publisher.teardown(pub, self._live.get(target))
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
                self.publisher.teardown(pub, self._live.get(target))
                log.info("finished unpublishing %s/%s from %s", pub.namespace, pub.name, target)
                return csi_pb2.NodeUnpublishVolumeResponse()
            live = self._live.get(target) or self.publisher.activate(pub, self.resolver_repo(pub))
            live.pause()
            try:
                result = final_commit_or_report(live, self.events)
                self.publisher.unmount_target(pub)
                # Once the pod's view is gone nothing can write to the copy: what was
                # written between the final commit and the unmount is committed now.
                later = final_commit_or_report(live, self.events)
            except Exception:
                self.publisher.resume(live)  # still published: keep serving and committing
                raise
            self.events.resolved(pod_ref(pub))
            result = later if later is not None else result
            # Durable before anything is removed: a copy from here on may be half gone,
            # and a restarted plugin or a retried call must only finish removing it.
            pub = pub.with_phase(TEARING_DOWN)
            self.state.put(pub)
            live.pub = pub
            self.publisher.teardown(pub, live)
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
        return csi_pb2.NodeGetVolumeStatsResponse(usage=volume_usage(live.wc))

    # -- the copy a publication gets ---------------------------------------------------

    def _working_copy(self, pub: Publication, repo: Repo) -> tuple[WorkingCopy, Publication]:
        """Open a publication's working copy in its workdir, or create it: an overlay on
        a snapshot of this node, or a plain copy."""
        workdir = Path(pub.workdir)
        excluded = frozenset({control_rel(pub.sub_path)})
        if pub.layout == "overlay":
            lower = self.snapshots.lower_for(pub, repo, REUSE_SNAPSHOT_WITHIN)
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
                group=mount_group(pub),
            )
            if fresh and lower.seq < repo.head():
                wc.reload()  # a recent snapshot plus the commits after it
            return wc, pub
        root, meta = workdir / "root", workdir / "meta"
        if (meta / "config.json").exists():
            return WorkingCopy.open(root, meta, store=repo.store), pub
        return WorkingCopy.create(repo, root, meta, read_only=pub.readonly), pub


def _required(value: str, field: str) -> str:
    if not value:
        raise MissingField(field)
    return value


def _target(path: str) -> str:
    if not os.path.isabs(path) or "\x00" in path:
        raise InvalidArgument(f"target_path must be an absolute path, not {path!r}")
    return os.path.normpath(path)


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
