"""Checkpoints: one safetensors file per save, holding tensors and, in its JSON header, the run's
configuration and training state. Loading never unpickles and never runs code from the file.

- Writes are atomic: the bytes go to a temporary file in the same directory, are flushed and fsynced,
  then renamed over the final name, so a crash at any moment leaves the previous checkpoint intact.
- Every file carries the SHA-256 of its tensors and metadata; a truncated, tampered or foreign file is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pixeldiffusion.errors import PixelDiffusionError

FORMAT = "pixeldiffusion.checkpoint.v1"
NAME = re.compile(r"step-(\d{8})\.safetensors$")


class CheckpointError(PixelDiffusionError):
    """A checkpoint that cannot be written or trusted."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def _digest(tensors: dict[str, torch.Tensor], meta: str) -> str:
    """SHA-256 over the metadata and the names, dtypes, shapes and bytes of all tensors, in name order."""
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a fsynced temporary file and a rename; on failure nothing changes."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):  # e.g. no directory to remove it from
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {e.strerror or e}; earlier files are untouched") from e


def _sync_directory(folder: Path) -> None:
    """fsync a directory, so that a rename in it survives a power cut; skipped where the OS refuses: Windows cannot
    open a directory (PermissionError), some file systems cannot fsync one (EINVAL)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def remove_partial_writes(folder: Path) -> None:
    """Delete temporary files that a process killed in the middle of `write_atomic` left behind."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save tensors plus JSON-serialisable metadata atomically; returns the path."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_json = json.dumps(meta)
    header = {"format": FORMAT, "sha256": _digest(tensors, meta_json), "meta": meta_json}
    write_atomic(path, save_safetensors(tensors, metadata=header))
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint, after checking its format and integrity."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    try:
        tensors = load_safetensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt?)") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pixeldiffusion checkpoint")
    if _digest(tensors, str(header.get("meta"))) != header.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its content does not match its recorded checksum")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has unreadable metadata") from e
    return tensors, meta


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(p for p in folder.glob("step-*.safetensors") if NAME.search(p.name)) if folder.is_dir() else []


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run directory."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}; is {run_dir} a training run?")
    return found[-1]


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under `prefix/`, with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors plus its JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any) -> None:
    """Load what `optimizer_tensors` saved back into an optimizer."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in split_prefix(tensors, "optim").items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state does not fit this model: {e}") from e
    # Saved states are contiguous; a channels-last parameter needs its moments in its own layout, since fused
    # AdamW on the CPU walks the four tensors' memory in step and silently mixes up elements otherwise.
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state[p].items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
