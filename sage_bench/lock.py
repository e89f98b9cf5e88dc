"""One process at a time per job folder.

A sweep launched twice, or a job queued twice, must not run the same job in two processes that
append to the same ``results.jsonl``, and ``sweep delete_incomplete`` must not delete the folder
of a job that runs. ``job_lock`` holds an exclusive lock on the folder while the job runs;
``is_running`` asks, without waiting, whether some process holds it.

The lock is what the file system supports:

- an ``flock`` on the folder's ``lock`` file (local disks, NFS, Lustre mounted with ``-o flock``):
  the kernel (or the NFS server) releases it when the process ends, however it ends;
- where ``flock`` fails as unsupported (e.g. Lustre mounted without ``flock``), the file
  ``lock.owner``, created only if absent (``O_EXCL``), naming its owner's pid and host; the owner
  touches it every ``HEARTBEAT_S`` seconds and deletes it when done. A process that died
  leaves it behind: it is taken over when its pid no longer exists on this host or, for a
  process on another host, when nobody touched it for ``STALE_S`` seconds (so a process frozen
  longer than that, or on a host whose clock is that far off, can lose its lock).

A lock is only held on a file that is still the folder's: a process that waited for the lock
of a folder that was deleted meanwhile starts over on the new folder. So the holder may delete
its lock file before it lets go (``Lock.remove_on_release``): a finished job leaves no ``lock``
behind, and whoever waited takes a new one.

The same lock, under another file name (``name``), keeps two ``sage-bench data cache`` runs from
building one evaluation cache at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sage_bench.errors import UserError

LOCK_FILE = "lock"
OWNER_FILE = "lock.owner"
HEARTBEAT_S = 30.0  # how often the owner of a lock.owner file touches it
STALE_S = 300.0  # a lock.owner file of another host untouched this long is abandoned

# Lock calls that fail because the file system does not implement locks (e.g. Lustre mounted
# without ``-o flock``) rather than because another process holds the lock.
_UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}
_RETRY = object()  # the folder changed under the attempt: try again at once


class JobAlreadyRunning(UserError):
    """Another process is running this job."""


class Lock:
    """A held lock (``job_lock``). Set ``remove_on_release`` to delete its file when letting go."""

    def __init__(self) -> None:
        self.remove_on_release = False


@contextmanager
def job_lock(job_dir: str | os.PathLike, wait_s: float = 5.0, name: str = LOCK_FILE) -> Iterator[Lock]:
    """Hold the lock of folder ``job_dir`` for the duration of the block (the folder is created
    if missing); its file is ``job_dir/name`` (``name.owner`` where ``flock`` is unsupported).

    Waits up to ``wait_s`` seconds (``sage-bench sweep status`` holds it for an instant when it
    looks; ``float("inf")``: as long as it takes), then raises ``JobAlreadyRunning``.
    """
    job_dir = Path(job_dir)
    deadline = time.monotonic() + wait_s
    while True:
        lock = _try_lock(job_dir, name)
        if lock is _RETRY:
            continue
        if lock is not None:
            break
        if time.monotonic() >= deadline:
            raise JobAlreadyRunning(
                f"{job_dir} is already being run by {holder(job_dir, name)}; wait for it to finish "
                "or stop it first"
            )
        time.sleep(0.1)
    handle = Lock()
    try:
        yield handle
    finally:
        lock.release(handle.remove_on_release)


def holder(job_dir: str | os.PathLike, name: str = LOCK_FILE) -> str:
    """Who holds the lock, as its lock file says (``pid N on HOST``)."""
    for file in (f"{name}.owner", name):
        try:
            text = (Path(job_dir) / file).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        match = re.match(r"pid \d+ on \S+", text)
        if match:
            return match.group(0)
    return "another process"


def is_running(job_dir: str | os.PathLike) -> bool:
    """Whether a process holds the job's lock now (of either kind)."""
    job_dir = Path(job_dir)
    if _owner_alive(job_dir / OWNER_FILE):
        return True
    try:
        f = open(job_dir / LOCK_FILE, encoding="utf-8")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no flock here: the owner file above answered
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


# -- flock -----------------------------------------------------------------------------------


class _Flock:
    def __init__(self, f: IO[str], path: Path):
        self.f = f
        self.path = path

    def release(self, remove: bool = False) -> None:
        try:
            if remove and _same_file(self.f, self.path):
                # deleted while still held: a process waiting on this file finds it is no
                # longer the folder's and takes a new one (see ``_try_lock``)
                self.path.unlink(missing_ok=True)
            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        finally:
            self.f.close()


def _same_file(f: IO[str], path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not deleted or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _try_lock(job_dir: Path, name: str = LOCK_FILE) -> _Flock | _OwnerFile | object | None:
    """The folder's lock, ``None`` when another process holds it, ``_RETRY`` when the folder
    changed under the attempt."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / name
    owner = job_dir / f"{name}.owner"
    try:
        f = open(path, "a+", encoding="utf-8")
    except FileNotFoundError:  # the folder was deleted after mkdir
        return _RETRY
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError as exc:
        f.close()
        if exc.errno not in _UNSUPPORTED:
            raise
        return _OwnerFile.acquire(owner)
    if not _same_file(f, path):  # deleted (or replaced) while this process waited for it
        f.close()
        return _RETRY
    if _owner_alive(owner):  # a process on a mount without flock holds it
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return _Flock(f, path)


# -- lock.owner, where flock is not supported ------------------------------------------------


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _owner_alive(path: Path, text: str | None = None) -> bool | None:
    """Whether the owner of the ``lock.owner`` file ``path`` holds it; ``None``: no such file."""
    try:
        st = os.stat(path)
        if text is None:
            text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    match = re.match(r"pid (\d+) on (\S+)", text)
    if match and match.group(2) == socket.gethostname():
        return _pid_exists(int(match.group(1)))
    # another host, or a file still being written: alive while it is touched
    return time.time() - st.st_mtime < STALE_S


class _OwnerFile:
    """A held ``lock.owner`` file and the thread that keeps touching it."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="sage-bench-lock", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, path: Path) -> _OwnerFile | object | None:
        text = f"pid {os.getpid()} on {socket.gethostname()} token {uuid.uuid4().hex}\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return _RETRY if _take_over_if_abandoned(path) else None
        except FileNotFoundError:  # the folder was deleted meanwhile
            return _RETRY
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return cls(path, text)

    def _mine(self) -> bool:
        try:
            return self.path.read_text(encoding="utf-8") == self.text
        except OSError:
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self._mine():
                try:
                    os.utime(self.path)
                except OSError:
                    pass

    def release(self, remove: bool = False) -> None:
        self._stop.set()
        self._thread.join()
        if self._mine():
            if remove:  # the empty file flock was tried on
                self.path.with_name(self.path.name.removesuffix(".owner")).unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)


def _take_over_if_abandoned(path: Path) -> bool:
    """Remove ``path`` if its owner is gone; ``True`` when it is gone now (try again)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return True
    alive = _owner_alive(path, text)
    if alive is None:
        return True
    if alive:
        return False
    # move it to a name of our own first: of two processes taking over at once, only one can
    # move the abandoned file; the other would move the winner's new file, and puts it back
    aside = path.with_name(f"{path.name}.abandoned-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    try:
        if aside.read_text(encoding="utf-8", errors="replace") != text:
            try:
                os.link(aside, path)
            except OSError:
                pass
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)
