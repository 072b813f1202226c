"""Atomic file writes: readers and concurrent writers never see a half-written file."""

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w"):
    """Open a temp file next to `path`; on success fsync and rename it over `path`.

    Readers and concurrent writers see either the old or the new file, never a mix,
    and a crash leaves at most a stray hidden ``.tmp`` file, never a truncated result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name unique to this writer; "x" refuses to reuse one (and respects the umask).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
