"""What the machine has, so sizes that multiply memory are refused before anything is allocated.

    check_memory(need_bytes, what="--batch-size 100000 (3x64x64 float32 batches ...)")

A shard set's resolution, a synthetic `count`, a stream's batch size and the build's chunk size
all multiply memory. Each is checked here against the memory this process may still use: the
smaller of MemAvailable (/proc/meminfo) and the address-space limit (`ulimit -v`) minus what the
process already maps. Only a share of it may be planned (`SHARE`), leaving room for torch, the
interpreter and whatever else the machine runs.
"""

from __future__ import annotations

import os
import resource

from facegan.errors import DataError

SHARE = 0.5                     # at most this share of the available memory for one planned need
MAX_SIDE = 4096                 # output resolution bound per side (a 4096x4096 RGB image is 48 MiB)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(0, soft - mapped)


def available_memory() -> int:
    """Bytes this process can still allocate (best estimate; 8 GiB when nothing can be read)."""
    found = [v for v in (_meminfo_available(), _address_space_left()) if v is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError):
            found = [8 << 30]
    return min(found)


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def check_memory(need: int, *, what: str, hint: str = "") -> None:
    """Raise DataError naming `what` when `need` bytes exceed SHARE of the available memory."""
    avail = available_memory()
    if need > SHARE * avail:
        raise DataError(f"{what}: needs about {human(need)} of memory, more than "
                        f"{SHARE:.0%} of the {human(avail)} available" + (f"; {hint}" if hint else ""))


MAX_WORKERS = 64                # loader worker processes per rank (data.num_workers' bound too)
WORKER_BYTES = 256 << 20        # what a forked loader worker comes to (torch, its decode buffers, prefetch)


def processes_left() -> int | None:
    """How many more processes this user may start (`ulimit -u` minus the ones running), or None
    without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return None
    uid, running = os.getuid(), 0
    try:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    running += os.stat(f"/proc/{name}").st_uid == uid
                except OSError:
                    pass
    except OSError:
        return None
    return max(0, soft - running)


def check_workers(n: int, *, what: str) -> None:
    """Refuse `n` worker processes beyond MAX_WORKERS, the process limit or the memory they need."""
    if not 0 <= n <= MAX_WORKERS:
        raise DataError(f"{what}: expected 0..{MAX_WORKERS} worker processes, got {n}")
    left = processes_left()
    if left is not None and n + 1 > left:
        raise DataError(f"{what}: {n} worker processes, but the process limit (ulimit -u) leaves room for "
                        f"{max(0, left - 1)} more")
    check_memory(n * WORKER_BYTES, what=f"{what} {n}", hint=f"about {human(WORKER_BYTES)} per worker; use fewer")


def check_images(n: int, height: int, width: int, *, what: str, factor: int = 16) -> None:
    """Refuse generating `n` height x width images at once when they (float32, with `factor` times
    that for the network's activations) would not fit in memory."""
    check_memory(n * 3 * height * width * 4 * factor, what=f"{what} {n} ({height}x{width} images)",
                 hint="ask for fewer")
