"""Checks on the paths a user gives, before anything is read or written.

    refuse_overlap("data/set", out_flag="--out", inputs={"SRC": "data/set"})   # DataError: would replace its input
    output_file("x/eval.json", flag="--json", suffix=".json")                  # a writable file path, or ConfigError
    output_dir("samples/", flag="--out-dir")                                    # a folder (maybe new), or ConfigError
"""

from __future__ import annotations

from pathlib import Path

from facegan.errors import ConfigError, DataError


def _is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://") or text.startswith("pipe:")


def _local(text: str | Path) -> Path:
    return Path(str(text).removeprefix("file://")).expanduser().resolve()


def refuse_overlap(out: str | Path, *, out_flag: str, inputs: dict[str, str | Path | None]) -> None:
    """DataError when the output `out` is one of the `inputs` ({flag: path}), lies inside one, or
    holds one: writing it would replace or mix into what is being read."""
    if _is_url(str(out)):
        return
    target = _local(out)
    for flag, given in inputs.items():
        if not given or _is_url(str(given)):
            continue
        source = _local(given)
        if target == source:
            raise DataError(f"{out_flag} {out}: is the input {flag} itself; writing it would replace what is being "
                            "read; choose another folder")
        if source in target.parents:
            raise DataError(f"{out_flag} {out}: is inside the input {flag} {given}; choose a folder outside it")
        if target in source.parents:
            raise DataError(f"{out_flag} {out}: holds the input {flag} {given}; choose a folder that does not")


def _check_output(path: str | Path, *, flag: str, want_dir: bool, suffix: str = "") -> Path:
    p = Path(path).expanduser()
    if suffix and p.suffix.lower() != suffix:
        raise ConfigError(f"{flag}: expected a {suffix} file, got {path}")
    if p.exists() and p.is_dir() != want_dir:
        raise ConfigError(f"{flag}: {path} is a file; expected a folder" if want_dir
                          else f"{flag}: {path} is a folder; expected a {suffix or 'file'} path")
    for parent in p.parents:   # the nearest existing folder above must be one, not a file
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag}: {path}: {parent} is a file, not a folder")
            break
    return p


def output_file(path: str | Path, *, flag: str, suffix: str = "") -> Path:
    """`path` as a file this command may create or replace: not a folder, no file where a folder
    above it must be, the `suffix` (e.g. ".json") when given."""
    return _check_output(path, flag=flag, want_dir=False, suffix=suffix)


def output_dir(path: str | Path, *, flag: str) -> Path:
    """`path` as a folder this command may create or write into (not an existing file)."""
    return _check_output(path, flag=flag, want_dir=True)


def input_dir(path: str | Path, *, flag: str) -> Path:
    """`path` as an existing folder to read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{flag}: {path} does not exist")
    if not p.is_dir():
        raise ConfigError(f"{flag}: {path} is a file; expected a folder")
    return p
