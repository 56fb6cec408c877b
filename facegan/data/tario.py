"""A lean reader of WebDataset tar shards: (name, bytes) members grouped into samples.

`tarfile` spends ~35 us per sample in Python bookkeeping, as much as decoding a 64x64 JPEG; this
reader parses the 512-byte ustar/pax headers directly (header checksums checked) and costs a few
microseconds. Truncation and corrupt headers raise `TarFormatError` after yielding every complete
member before them, so a reader loses only what is actually damaged.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterator

BLOCK = 512


class TarFormatError(ValueError):
    """The tar stream is truncated or has a corrupt header."""


def _octal(field: bytes) -> int:
    field = field.strip(b"\0 ")
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256 for big sizes
        return int.from_bytes(field[1:], "big")
    return int(field, 8)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def iter_tar_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Yield (name, data) for every regular file in a tar stream."""
    pax_path: str | None = None
    long_name: str | None = None
    offset = 0
    while True:
        header = _read_exact(f, BLOCK)
        if len(header) == 0:
            # Every tar writer ends with zero blocks; a stream that just stops was cut short.
            raise TarFormatError(f"truncated: no end-of-archive marker after byte {offset}")
        if len(header) < BLOCK:
            raise TarFormatError(f"truncated header at byte {offset}")
        if header == b"\0" * BLOCK:
            return
        try:
            stored = _octal(header[148:156])
            size = _octal(header[124:136])
        except ValueError:
            raise TarFormatError(f"corrupt header at byte {offset}") from None
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError(f"header checksum mismatch at byte {offset}")
        typeflag = header[156:157]
        data = _read_exact(f, size)
        if len(data) < size:
            raise TarFormatError(f"truncated member at byte {offset} ({len(data)} of {size} bytes)")
        pad = (-size) % BLOCK
        if pad and len(_read_exact(f, pad)) < pad:
            raise TarFormatError(f"truncated padding at byte {offset + BLOCK + size}")
        offset += BLOCK + size + pad
        if typeflag == b"x":  # pax extended header for the next member
            for record in data.decode("utf-8", "replace").split("\n"):
                _, _, kv = record.partition(" ")
                if kv.startswith("path="):
                    pax_path = kv[len("path="):]
            continue
        if typeflag == b"L":  # GNU long name
            long_name = data.rstrip(b"\0").decode("utf-8", "replace")
            continue
        if typeflag == b"g":
            continue
        if typeflag not in (b"0", b"\0", b"7"):
            pax_path = long_name = None
            continue
        if pax_path is not None:
            name = pax_path
        elif long_name is not None:
            name = long_name
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
        pax_path = long_name = None
        yield name, data


def iter_samples(f: BinaryIO) -> Iterator[dict[str, Any]]:
    """Group members into samples by key (webdataset's rule: basename up to its first dot)."""
    current: dict[str, Any] | None = None
    try:
        for name, data in iter_tar_members(f):
            dirname, _, base = name.rpartition("/")
            key, _, ext = base.partition(".")
            if dirname:
                key = f"{dirname}/{key}"
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
    except TarFormatError:
        # Hand over what was read before the damage (the caller's checks reject it if a part is
        # missing), then report the damage itself.
        if current is not None:
            yield current
        raise
    if current is not None:
        yield current
