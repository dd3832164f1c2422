"""One writer per run folder: a `LOCK` file naming its owner (pid and host).

Two processes writing one run folder at once (the same learned soup or eval launched twice) would
duplicate and drop records and write DONE early. The first writer creates `LOCK` with O_EXCL; a second
is refused in one line naming the owner. A lock whose owner is gone (a dead pid on this host: a killed
run) is taken over, saying so. A lock from another host cannot be checked from here: the message says
to remove it if that run is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from models.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(lock: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):  # being written, or not ours: treat as a live owner we cannot name
        return None, "?"


def acquire(folder: Path) -> Path:
    """Create `folder/LOCK` for this process, or raise a UserError naming the live owner."""
    folder.mkdir(parents=True, exist_ok=True)
    lock, host, me = folder / LOCK_FILE, socket.gethostname(), os.getpid()
    for _ in range(2):  # a stale lock is removed once, then created again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            pid, owner_host = _owner(lock)
            if pid == me and owner_host == host:
                return lock  # this process already holds it (a nested call)
            if pid is not None and owner_host == host and not _alive(pid):
                log.warning("%s: taking over the lock of process %d on %s, which is gone (a killed run; resuming it)", folder, pid, host)
                print(f"note: {folder}: the run that held it (pid {pid} on {host}) is gone; taking it over", flush=True)
                lock.unlink(missing_ok=True)
                continue
            where = "this host" if owner_host == host else f"host {owner_host}"
            raise UserError(
                f"{folder}: another run (pid {pid} on {where}) is writing this folder ({LOCK_FILE}); "
                f"wait for it to finish, or remove {lock} if that run is gone"
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{me} {host}\n")
        return lock
    raise UserError(f"{lock}: could not take over the stale lock; remove it and rerun")


def release(lock: Path) -> None:
    pid, host = _owner(lock)
    if pid == os.getpid() and host == socket.gethostname():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder/LOCK` for the block (see the module docstring). Under torchrun the ranks of one job share
    its folder: rank 0 holds the lock for all of them."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield folder / LOCK_FILE
        return
    lock = acquire(folder)
    try:
        yield lock
    finally:
        release(lock)
