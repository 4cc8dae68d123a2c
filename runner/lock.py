"""One writer per directory: an exclusive `flock` on DIR/.paramlab.lock, which holds the owner's
pid for the message. The kernel releases a flock when its process ends, however it ends, so a
lock left by a killed command (or a pid reused after a container restart) never blocks."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .config import UserError

LOCK_NAME = ".paramlab.lock"


def _refusal(folder: Path, what: str, fd: int) -> UserError:
    try:
        pid = os.pread(fd, 32, 0).decode().strip() or "?"
    except OSError:
        pid = "?"
    return UserError(f"{what} {folder} is being written by another paramlab command (pid {pid}); wait for it to "
                     f"finish or give this one another directory (if no such process runs, delete "
                     f"{folder / LOCK_NAME})")


class DirLock:
    """Held from acquire() until release() or the end of the process."""

    def __init__(self, folder: Path, what: str = "directory"):
        self.folder, self.what, self.fd = Path(folder), what, None

    def acquire(self) -> "DirLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _refusal(self.folder, self.what, fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_unlocked(folder: Path, what: str = "directory") -> None:
    """Raise the UserError acquire() would, without creating anything (for up-front checks)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(Path(folder), what, fd) from None
    finally:
        os.close(fd)  # closing drops a lock we may have taken
