import errno
import os
import stat

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixeldiffusion.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def sample_tensors():
    return {"model/w": torch.arange(12.0).reshape(3, 4), "model/b": torch.tensor([1, 2], dtype=torch.int64)}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", sample_tensors(), {"step": 7, "config": {"a": [1, 2]}})
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 7, "config": {"a": [1, 2]}}
    assert all(torch.equal(tensors[k], v) for k, v in sample_tensors().items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a pixeldiffusion checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_a_flipped_bit_in_the_weights_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", sample_tensors(), {})
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", sample_tensors(), {})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", sample_tensors(), {"step": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(path, {"model/w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


OPEN, FSYNC = os.open, os.fsync


def open_refusing_directories(path, flags, *args, **kwargs):
    """os.open on Windows, where a directory cannot be opened."""
    if os.path.isdir(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return OPEN(path, flags, *args, **kwargs)


def fsync_refusing_directories(fd):
    """os.fsync on a file system that cannot fsync a directory."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "Invalid argument")
    FSYNC(fd)


@pytest.mark.parametrize(
    "name, refusing",
    [("open", open_refusing_directories), ("fsync", fsync_refusing_directories)],
    ids=["windows-open", "einval-fsync"],
)
def test_the_directory_fsync_is_skipped_where_the_os_refuses_it(tmp_path, monkeypatch, name, refusing):
    monkeypatch.setattr(os, name, refusing)
    path = save_checkpoint(tmp_path / "run" / "c.safetensors", sample_tensors(), {"step": 1})
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"step": 1}


def test_latest_and_pruning(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path / "checkpoints" / f"step-{step:08d}.safetensors", sample_tensors(), {"step": step})
    assert latest_checkpoint(tmp_path).name == "step-00000015.safetensors"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()].__len__() == 2
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")


def test_edited_metadata_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", sample_tensors(), {"step": 3})
    raw = path.read_bytes()
    edited = raw.replace(b'step\\": 3', b'step\\": 7')
    assert edited != raw
    path.write_bytes(edited)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bytes_never_crash_or_load_silently_wrong(tmp_path, data):
    """Corrupt a valid checkpoint at random places: loading either refuses with CheckpointError or returns
    exactly the original content (a change that hits padding or is undone)."""
    original = save_checkpoint(tmp_path / "ok.safetensors", sample_tensors(), {"step": 3}).read_bytes()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(raw[:cut]))
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError:
        return
    assert meta == {"step": 3}
    assert all(torch.equal(tensors[k], v) for k, v in sample_tensors().items())
