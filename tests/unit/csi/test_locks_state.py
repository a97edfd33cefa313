"""Per-volume locks and the plugin's atomically persisted state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvol.csi.errors import OperationPending
from kvol.csi.locks import VolumeLocks
from kvol.csi.state import Publication, StateFile
from kvol.errors import CorruptData


def test_a_second_operation_on_a_volume_is_refused() -> None:
    locks = VolumeLocks()
    with locks.hold("vol-1", "NodePublishVolume"):
        with (
            pytest.raises(OperationPending, match="NodePublishVolume"),
            locks.hold("vol-1", "NodeUnpublishVolume"),
        ):
            pass
        with locks.hold("vol-2"):  # other volumes are not held up
            pass
    with locks.hold("vol-1"):  # released, even after the refusal
        pass
    assert not locks.busy("vol-1")


def pub(target: str, **kw: object) -> Publication:
    values: dict[str, object] = {
        "volume_id": "csi-1",
        "target_path": target,
        "name": "data",
        "namespace": "ns",
        "backend": "",
        "kvol_id": "0" * 32,
        "workdir": "/state/pubs/x",
        **kw,
    }
    return Publication(**values)  # type: ignore[arg-type]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.put(pub("/t/1", lower="v/1"))
    state.put(pub("/t/2", readonly=True, sub_path="sub"))
    state.put(pub("/t/1", lower="v/2").with_phase("published"))
    state.remove("/t/2")
    again = StateFile(path)
    assert [p.target_path for p in again.all()] == ["/t/1"]
    restored = again.get("/t/1")
    assert restored is not None and restored.lower == "v/2" and restored.phase == "published"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left


def test_a_failed_write_leaves_the_old_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.put(pub("/t/1"))
    before = path.read_bytes()
    (tmp_path / "blocker").mkdir()
    broken = StateFile(path)
    broken.path = tmp_path / "blocker"  # os.replace onto a directory fails
    with pytest.raises(OSError):
        broken.put(pub("/t/2"))
    assert path.read_bytes() == before
    assert broken.get("/t/2") is None  # memory follows disk


def test_corrupt_state_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(CorruptData):
        StateFile(path)
    path.write_text(json.dumps({"format": 1, "publications": [{"volume_id": "x"}]}))
    with pytest.raises(CorruptData):
        StateFile(path)
