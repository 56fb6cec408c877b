"""Checkpoints: a folder with `state.pt` (state_dicts and tensors only) and `meta.json`.

    ckpt-000040/state.pt    {"G": ..., "D": ..., "G_ema": ..., "opt_G": ..., "opt_D": ..., "scaler": ...,
                             "family": {the family's training state, e.g. BEGAN's k_t},
                             "rng": {"torch_rank0": ByteTensor, "gen_rank0": ..., "cuda_rank0": ...}}
    ckpt-000040/meta.json   family, model, step, images seen, stream position, config, world size,
                            what the family knows of its data (attribute names and rates, shard recipe)

Written under a temporary name, flushed to disk and renamed, so a crash never leaves a half
checkpoint behind a valid name (a killed writer's temporary folder is removed by the next
`prune_checkpoints`); a full disk raises CheckpointError and leaves the earlier checkpoints as they
were. Loaded with `torch.load(weights_only=True)`, so a checkpoint can hold no code.

meta.json carries the sha256 and size of state.pt (format 3), checked before every load: a flipped
bit or a truncated copy is a CheckpointError naming the file, never a silently different model.
Checkpoints written before format 3 carry no checksum and load with a note saying so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from facegan.errors import CheckpointError  # noqa: F401  (re-exported)

META = "meta.json"
STATE = "state.pt"
# 2: nets, EMA copies ("<net>_ema"), optimizers ("opt_<name>") and the family's state ("family") by
# name, for any family; 1: GAN checkpoints before families were packages (G/D only) and classifier
# checkpoints ("model"/"opt"). facegan.families.loading upgrades format 1 on load. 3: format 2 plus
# meta["checksums"] (sha256 and size of state.pt), checked on load.
FORMAT_VERSION = 3
CHECKSUMS_SINCE = 3

log = logging.getLogger(__name__)




def _tmp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}"


def _write_durably(path: Path, write: Any) -> None:
    """write(f) into a new file at `path`, then fsync it: a rename after this never exposes a file
    whose data is still only in the page cache (a crash would leave it empty or short)."""
    with open(path, "wb") as f:
        try:
            write(f)
        except RuntimeError as exc:
            # torch's zip writer reports a failed write (ENOSPC, EDQUOT) as "unexpected pos ..."
            # raised while the file object's OSError was being handled: surface the OSError.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, *, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write state + meta atomically into `directory` (which must not exist yet)."""
    directory = Path(directory)
    tmp = directory.with_name(_tmp_name(directory.name))
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = dict(meta, format_version=FORMAT_VERSION, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        tmp.mkdir(parents=True)
        _write_durably(tmp / STATE, lambda f: torch.save(state, f))
        meta["checksums"] = {STATE: _file_digest(tmp / STATE)}
        _write_durably(tmp / META, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    except OSError as exc:  # disk full, read-only, quota: earlier checkpoints stay as they were
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {directory}: {exc.strerror or exc}; earlier checkpoints "
                              f"in {directory.parent} are intact") from None
    if directory.exists():
        if any(directory.iterdir()) and not (directory / META).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"{directory} exists and holds files that are not a facegan checkpoint; "
                                  "refusing to overwrite it (move it away or choose another train.out_dir)")
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    return directory


def _file_digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            size += len(block)
    return {"sha256": sha.hexdigest(), "bytes": size}


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a facegan checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object (the checkpoint's step, config, ...), "
                              f"got {type(meta).__name__}")
    return meta


def verify_state(directory: Path, meta: dict[str, Any]) -> None:
    """Check state.pt against the checksum in its meta (format >= 3); a note for older checkpoints."""
    path = Path(directory) / STATE
    expected = (meta.get("checksums") or {}).get(STATE) if isinstance(meta.get("checksums"), dict) else None
    if expected is None:
        version = meta.get("format_version", 1)
        if isinstance(version, int) and version > FORMAT_VERSION:
            return   # a newer facegan's checkpoint: facegan.families.loading refuses it naming both formats
        if isinstance(version, int) and version >= CHECKSUMS_SINCE:
            raise CheckpointError(f"{directory / META}: format {version} but no checksum of {STATE}; the meta "
                                  "was edited or damaged")
        log.warning("%s: written in checkpoint format %s, before checkpoints carried checksums: loaded unverified",
                    directory, version)
        return
    found = _file_digest(path)
    if found != expected:
        what = (f"{found['bytes']} bytes, expected {expected.get('bytes')}" if found["bytes"] != expected.get("bytes")
                else f"sha256 {found['sha256'][:12]}..., expected {str(expected.get('sha256'))[:12]}...")
        raise CheckpointError(f"{path}: damaged ({what}); use an earlier checkpoint of the run "
                              "(checkpoints/ckpt-*) or a backup")


def load_checkpoint(directory: Path, *, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a checkpoint folder; tensors only (weights_only=True)."""
    meta = read_meta(directory)
    path = Path(directory) / STATE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {STATE}")
    verify_state(Path(directory), meta)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor pickles
        raise CheckpointError(f"{path}: cannot load with weights_only=True: {exc}") from None
    return state, meta


def check_compatible(meta: dict[str, Any], model: dict[str, Any], *, keys: tuple[str, ...], where: Path) -> None:
    """Raise CheckpointError listing every shape-relevant `model` setting (`keys`, the family's
    shape_keys) that differs between the checkpoint and the config."""
    saved = meta.get("model", {})
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {model.get(k)!r}"
             for k in keys if k in model and saved.get(k) != model.get(k)]
    if diffs:
        raise CheckpointError(f"{where} does not fit this model: " + "; ".join(diffs))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first (by images seen)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt-") and (p / META).is_file()]
    return sorted(found, key=lambda p: read_meta(p).get("images_seen", 0))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest checkpoint of a run folder (<run>/checkpoints/ckpt-*)
    or of a checkpoints/ folder itself."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: no facegan checkpoint here (no {META}, no checkpoints/ckpt-* folders)")
    return found[-1]


def fetch_checkpoint(url: str, into: Path) -> Path:
    """A checkpoint at an fsspec URL (s3://bucket/runs/NAME/checkpoint_..., as Ray Train keeps them
    in ray.storage_path), or the newest one in a run folder there, copied into the folder `into`."""
    from facegan.data.store import FsspecStore

    store = FsspecStore(url)
    fs, root = store.fs, store.path.rstrip("/")
    try:
        if fs.exists(f"{root}/{META}"):
            chosen = root
        else:
            found = []
            for folder in (root, f"{root}/checkpoints"):
                if not fs.isdir(folder):
                    continue
                for sub in fs.ls(folder, detail=False):
                    if fs.exists(f"{sub}/{META}"):
                        found.append((json.loads(fs.cat_file(f"{sub}/{META}")).get("images_seen", 0), sub))
            if not found:
                raise CheckpointError(f"{url}: no facegan checkpoint here (no {META}, no checkpoint folders under it)")
            chosen = max(found)[1]
        local = Path(into) / chosen.rstrip("/").rsplit("/", 1)[-1]
        local.mkdir(parents=True, exist_ok=True)
        for remote in fs.ls(chosen, detail=False):
            if fs.isfile(remote):
                fs.get_file(remote, str(local / remote.rsplit("/", 1)[-1]))
    except OSError as exc:
        raise CheckpointError(f"{url}: cannot read: {exc.strerror or exc}") from None
    return local


def prune_checkpoints(root: Path, *, keep: int) -> None:
    """Keep the newest `keep` checkpoints under root; remove the temporary folders of writers that
    died mid-save (a run has one writer, rank 0, and it calls this after its own save)."""
    root = Path(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".ckpt-*.tmp-*") if root.is_dir() else ():
        if stale.is_dir() and not stale.name.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
