"""One writer at a time per output folder: a lock file naming its holder (pid, host, command).

    with hold_lock(Path("data/shards/celeba64"), what="--out"):
        ...  # build; a second `facegan shards build --out data/shards/celeba64` is refused at once

The lock is the kernel's (`flock` on `<folder>/.facegan.lock`): it goes when its holder exits, even
by SIGKILL, so a lock file left by a dead writer is stale and taken over (with a note naming the
dead holder). NFS emulates flock with its own byte-range locks, so writers on other hosts are seen
too. A clean release removes the file; one that a killed writer left behind holds its pid and host,
read only for the messages (the flock decides, never the file's content).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from facegan.errors import OutputError, UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".facegan.lock"


class LockedError(UserError):
    """Another process is writing to the same output folder."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']} since {info.get('since', '?')}"
                + (f" ({info['command']})" if info.get("command") else ""))
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _open_locked(path: Path, *, what: str) -> tuple[int, str]:
    """A descriptor of `path` holding its flock, and what the file said (a stale holder's record)."""
    folder = path.parent
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{what}: cannot write to {folder} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise LockedError(f"{what}: {folder} is being written by another facegan process ({holder}); wait for it "
                              "to finish or choose another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:   # not a file its previous holder unlinked between our open and our flock
            return fd, os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)


@contextlib.contextmanager
def hold_lock(folder: str | Path, *, what: str) -> Iterator[Path]:
    """Hold the write lock of `folder` (created if needed) for the `with` block; LockedError naming
    `what` (the flag or field that chose the folder) and the holder when another process has it.
    A clean release removes the lock file; one left behind names a writer that died."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write to {folder} ({exc.strerror or exc})") from None
    fd, previous = _open_locked(path, what=what)
    try:
        if previous.strip():
            log.warning("%s: took over a stale lock left by %s (no longer running)", folder, _holder(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            # Unlinked while still held: a process that opened it meanwhile sees another inode
            # at the path after its flock and starts over (_open_locked).
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(fd)   # closing the descriptor releases the flock
