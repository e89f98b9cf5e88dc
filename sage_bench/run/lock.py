"""One process at a time per job folder.

A sweep launched twice, or a job queued twice, must not run the same job in two processes that
append to the same ``results.jsonl``. ``job_lock`` holds an exclusive ``flock`` on the folder's
``lock`` file while the job runs; the kernel (or the NFS server) releases it when the process
ends, however it ends. ``is_running`` asks, without waiting, whether some process holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sage_bench.errors import UserError

LOCK_FILE = "lock"

# Lock calls that fail because the file system does not implement locks (e.g. Lustre mounted
# without ``-o flock``) rather than because another process holds the lock.
_UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


class JobAlreadyRunning(UserError):
    """Another process is running this job."""


@contextmanager
def job_lock(job_dir: str | os.PathLike, wait_s: float = 5.0) -> Iterator[None]:
    """Hold the job's lock for the duration of the block.

    Waits up to ``wait_s`` seconds (``sage-bench sweep status`` holds it for an instant when it
    looks), then raises ``JobAlreadyRunning``. On a file system without locks it warns and runs.
    """
    path = Path(job_dir) / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise JobAlreadyRunning(
                        f"{job_dir} is already being run by {holder}; wait for it to finish "
                        "or stop it first"
                    ) from None
                time.sleep(0.1)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                warnings.warn(
                    f"cannot lock {path} ({exc.strerror}); running without a lock", stacklevel=3
                )
                yield
                return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_running(job_dir: str | os.PathLike) -> bool:
    """Whether a process holds the job's lock now (``False`` where locks are not supported)."""
    path = Path(job_dir) / LOCK_FILE
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
