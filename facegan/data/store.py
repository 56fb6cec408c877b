"""Where shard sets live: a local folder, any fsspec URL, or a `pipe:` command.

    local      /data/shards/celeba64                       atomic writes (temp name + rename)
    fsspec     s3://bucket/celeba64, file:///..., memory://  written through fsspec
    pipe       'pipe:aws s3 cp - s3://bucket/celeba64/{name}'  each file is piped to the command,
               '{name}' replaced by the file name; write-only, so a rerun rebuilds everything.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from facegan.data.records import DataError


class Store:
    """Interface: open_write(name) (atomic where the backend allows), read(name), url(name)."""

    readable: bool = True
    location: str

    @property
    def shared(self) -> bool:
        """Whether another process opening `location` sees the same files (a worker can write
        there itself). Not so for an in-process filesystem such as fsspec's memory://."""
        return True

    def open_write(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def open_read(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def url(self, name: str) -> str:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        """Move `src` over `dst` (atomic on a local filesystem)."""
        raise NotImplementedError

    def listdir(self, prefix: str = "") -> list[str]:
        """Names of the files directly under `prefix` ("" = the top level), sorted."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | None:
        if not self.readable or not self.exists(name):
            return None
        with self.open_read(name) as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as f:
            f.write(data)


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.location = str(self.root)

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # readers and resumed builds only ever see complete files
        finally:
            if tmp.exists():
                tmp.unlink()

    def open_read(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def url(self, name: str) -> str:
        return str(self.root / name)

    def rename(self, src: str, dst: str) -> None:
        os.replace(self.root / src, self.root / dst)

    def listdir(self, prefix: str = "") -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file())

    def clean_temp(self) -> int:
        """Delete temp files a killed build left behind; returns how many."""
        n = 0
        if self.root.is_dir():
            for p in list(self.root.glob(".*.tmp-*")) + list(self.root.glob(".partial/.*.tmp-*")):
                p.unlink(missing_ok=True)
                n += 1
        return n


# S3 (s3fs): bounded waits, so a server that does not answer is an error within seconds, not after
# botocore's default 60 s per attempt. Credentials and the endpoint come from the environment or
# the AWS config as boto reads them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile,
# AWS_ENDPOINT_URL for an S3-compatible server); facegan never takes or writes them itself.
S3_PROTOCOLS = ("s3", "s3a")
S3_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
_S3_PROBE_CONFIG: dict[str, Any] = {"connect_timeout": 3, "read_timeout": 5,
                                     "retries": {"total_max_attempts": 1, "mode": "standard"}}


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options facegan adds for `url` (S3's timeouts), beside the user's fsspec config."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    return {"config_kwargs": S3_CONFIG} if protocol in S3_PROTOCOLS else {}


@functools.lru_cache(maxsize=64)
def check_bucket(url: str, bucket: str) -> None:
    """One short request to the bucket behind `url` (once per process and bucket): a bucket that
    does not exist, credentials the server rejects or an endpoint that does not answer become one
    DataError line naming the URL, instead of a botocore traceback minutes later."""
    import fsspec

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    fs = fsspec.filesystem("s3", config_kwargs=_S3_PROBE_CONFIG, skip_instance_cache=True)
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise DataError(f"{url}: S3 bucket {bucket!r} does not exist (at {endpoint}); create it first") from None
    except PermissionError as exc:
        raise DataError(f"{url}: S3 refused the credentials for bucket {bucket!r} ({exc}); check "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile") from None
    except Exception as exc:   # botocore's own types (no credentials, connect/read timeouts)
        name = type(exc).__name__
        if "Credential" in name:
            raise DataError(f"{url}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE)") from None
        if "Endpoint" in name or "Timeout" in name or "Connect" in name or isinstance(exc, OSError):
            raise DataError(f"{url}: the S3 endpoint {endpoint} does not answer ({name}); check AWS_ENDPOINT_URL "
                            "and the network") from None
        raise


def fsspec_filesystem(url: str) -> tuple[object, str]:
    """fsspec's (filesystem, path) for `url`; DataError naming the package to install for a known
    protocol whose package is missing (s3:// needs s3fs, gs:// gcsfs, ...), or an unknown protocol."""
    import fsspec
    from fsspec.registry import known_implementations, registry

    protocol = url.split("://", 1)[0].split("::")[-1]
    if protocol not in known_implementations and protocol not in registry:
        raise DataError(f"{url}: unknown protocol {protocol}:// (a local path, or an fsspec protocol such as "
                        "file://, memory://, s3://, gs://, az://, http://)")
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as exc:
        hint = known_implementations.get(protocol, {}).get("err") or str(exc)
        raise DataError(f"{url}: the {protocol}:// protocol needs a package that is not installed ({hint})") from None
    except ValueError as exc:
        raise DataError(f"{url}: not a usable fsspec URL: {exc}") from None


class FsspecStore(Store):
    def __init__(self, url: str) -> None:
        self.fs, self.path = fsspec_filesystem(url)
        self.location = url.rstrip("/")
        if url.split("://", 1)[0].lower() in S3_PROTOCOLS:
            check_bucket(url.split("://", 1)[0].lower() + "://" + self.path.split("/", 1)[0], self.path.split("/", 1)[0])

    @property
    def shared(self) -> bool:
        from fsspec.implementations.memory import MemoryFileSystem

        return not isinstance(self.fs, MemoryFileSystem)

    def _p(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        parent = self._p(name).rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        with self.fs.open(self._p(name), "wb") as f:
            yield f

    def open_read(self, name: str) -> BinaryIO:
        return self.fs.open(self._p(name), "rb")

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._p(name))

    def remove(self, name: str) -> None:
        if self.fs.exists(self._p(name)):
            self.fs.rm(self._p(name))

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def rename(self, src: str, dst: str) -> None:
        self.fs.mv(self._p(src), self._p(dst))

    def listdir(self, prefix: str = "") -> list[str]:
        folder = self._p(prefix).rstrip("/") if prefix else self.path.rstrip("/")
        if not self.fs.isdir(folder):
            return []
        return sorted(info["name"].rsplit("/", 1)[-1] for info in self.fs.ls(folder, detail=True)
                      if info.get("type") == "file")


class PipeStore(Store):
    readable = False

    def __init__(self, template: str) -> None:
        if "{name}" not in template:
            raise DataError(f"--out {template!r}: a pipe: destination must contain '{{name}}', "
                            "e.g. 'pipe:aws s3 cp - s3://bucket/set/{name}'")
        self.template = template
        self.location = template

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        cmd = self.template[len("pipe:"):].replace("{name}", name)
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        broken = False
        try:
            yield proc.stdin
        except BrokenPipeError:
            broken = True  # the command stopped reading: its exit status says why
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                broken = True
            rc = proc.wait()
        if rc != 0 or broken:
            raise DataError(f"--out {self.template!r}: writing {name}: command {cmd!r} "
                            + (f"exited with status {rc}" if rc != 0 else "stopped reading its input"))

    def exists(self, name: str) -> bool:
        return False

    def listdir(self, prefix: str = "") -> list[str]:
        return []

    def remove(self, name: str) -> None:
        pass

    def url(self, name: str) -> str:
        return self.template.replace("{name}", name)


def open_store(location: str | Path) -> Store:
    text = str(location)
    if text.startswith("pipe:"):
        return PipeStore(text)
    if "://" in text and not text.startswith("file://"):
        return FsspecStore(text)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return LocalStore(text)


def open_url(url: str) -> BinaryIO:
    """Open a shard URL for reading: local path, fsspec URL or `pipe:` command."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout
    if "://" in url and not url.startswith("file://"):
        fs, path = fsspec_filesystem(url)
        return fs.open(path, "rb")
    return open(url.removeprefix("file://"), "rb")


__all__ = ["Store", "LocalStore", "FsspecStore", "PipeStore", "check_bucket", "open_store", "open_url",
           "storage_options"]
