"""Atomic file writes: a reader (a health check, a resumed run, CI, the gate) sees the old file or the new one,
never half of one. The one implementation every stage uses."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, hidden: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` when the block ends without an error
    and is removed when it does not. `hidden` dot-prefixes it, so folder scans (gate captures) skip it.
    The name is unique per call: two processes writing one file (two containers on one engine-cache volume)
    never write into each other's temporary file; the last complete write wins."""
    path = Path(path)
    tmp = path.with_name(f"{'.' if hidden else ''}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes, hidden: bool = False) -> None:
    with atomic_path(path, hidden) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
