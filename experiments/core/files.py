"""Safe files: atomic writes, SHA-256 digests, and the per-run lock.

`atomic_open`: readers and concurrent writers never see a half-written file. A writer killed
mid-write (SIGKILL) leaves a hidden ``.<name>.<host>.<pid>.<tag>.tmp`` file; the next write into
that folder removes it once it is stale: its writer ran on this host and is dead (and the file is
older than DEAD_TMP_S), or it is older than STALE_TMP_S (a writer on another host of a shared file
system cannot be asked).

`run_lock`: an exclusive `fcntl.flock` on a lock file, held while a run trains. The kernel releases
it when the process dies, however it dies, so a lock is never left behind by a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

from experiments.core.errors import UserError

STALE_TMP_S = 24 * 3600  # a temp file this old is stale whoever wrote it
DEAD_TMP_S = 60  # ... and one of a dead writer on this host this old (a margin for pid namespaces)
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
# .<name>.<host>.<pid>.<8 hex>.tmp; files from before the host was recorded lack the host
_TMP = re.compile(r"^\.(?P<name>.+?)(?:\.(?P<host>[A-Za-z0-9-]+))?\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class LockedError(UserError):
    """Another process holds the lock; the message names it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w"):
    """Open a temp file next to `path`; on success fsync and rename it over `path`.

    Readers and concurrent writers see either the old or the new file, never a mix,
    and a crash leaves at most a stray hidden ``.tmp`` file, never a truncated result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent)
    # A name unique to this writer; "x" refuses to reuse one (and respects the umask).
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
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


def write_json(path: str | Path, obj, **dumps) -> None:
    """`obj` as indented JSON at `path`, written atomically (`atomic_open`): a reader never sees
    half a file. `dumps`: extra ``json.dumps`` arguments (``default=str``)."""
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=1, **dumps) + "\n")


def remove_stale_tmp(folder: Path, now: float | None = None) -> list[Path]:
    """Remove the temp files in `folder` left by dead writers (see the module docstring)."""
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TMP.match(entry.name) if entry.name.endswith(".tmp") else None
            if match is None:
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:  # its writer just renamed it
                continue
            dead_here = match["host"] == HOST and age > DEAD_TMP_S and not _alive(int(match["pid"]))
            if dead_here or age > STALE_TMP_S:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def _lock_file(path: Path):
    """The descriptor of lock file `path` (created, with its folder, if needed), closed after the
    block: closing it releases any lock taken on it. The file itself is left in place: deleting a
    lock file while another process waits on it would let two processes hold "the" lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def waiting_lock(path: str | Path):
    """Hold an exclusive lock on `path` for the `with` block, waiting for it if another process
    holds it."""
    with _lock_file(Path(path)) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def run_lock(path: str | Path, what: str):
    """Hold an exclusive lock on `path` for the `with` block, or raise LockedError at once if
    another process holds it. `what` names the locked thing in the message; the file keeps its
    holder's host and pid (for the message)."""
    path = Path(path)
    with _lock_file(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(f"{what} is being trained by {holder} (lock {path}); wait for it to "
                              "finish, or stop it, then rerun the same command") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {HOST}\n".encode(), 0)
        yield
