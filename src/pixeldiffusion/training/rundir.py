"""The run directory's own files: its lock, and metrics.jsonl, which survives a crash in the middle of a line."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from pixeldiffusion.checkpoint import write_atomic
from pixeldiffusion.data import cache
from pixeldiffusion.errors import PixelDiffusionError


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration, so that a second process training into it is refused."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixelDiffusionError(f"could not write {run_dir / 'config.json'}: {e.strerror}") from e
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(cache.locked(run_dir, wait=False))
        except cache.Busy:
            raise PixelDiffusionError(
                f"{run_dir} is in use by another training process; wait for it to end, or choose another --out"
            ) from None
        yield


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a crash (the last one) is left out."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (where a resumed run restarts), so that its log reads as one run."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
