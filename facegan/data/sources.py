"""Scanners for the file-backed image sources: CelebA, UTKFace and a plain folder of images.

A scanner lists one `SourceItem` per usable image (key, split, path, labels) and reports in the
`SourceScan` what it left out and why. It never opens an image: corrupt files are caught later by
the shard builder's workers, so a scan of the full 202,599-row CelebA annotations takes well
under a second.

    >>> scan = scan_celeba(root="../shared/data/celeba_sample",
    ...                    annotations="../shared/data/celeba_annotations")
    >>> len(scan.items), scan.rows_without_image
    (3000, 199599)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegan.data.records import CELEBA_ATTRS, SPLITS, DataError, SourceItem, SourceScan, item_key

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")

CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
CELEBA_IMAGE_DIR = "img_align_celeba"
CELEBA_LANDMARK_NAMES: tuple[str, ...] = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)
# list_eval_partition.txt's codes: 0 train, 1 val, 2 test (the SPLITS order).
_PARTITION_CODES = frozenset(("0", "1", "2"))

_UTK_MAX_AGE = 130   # UTKFace ages run 1-116; anything far beyond is a mangled name, not an age
_CSV_PATH_COLUMNS: tuple[str, ...] = ("filename", "file", "path", "image")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Characters str.split()/str.strip() treat as whitespace besides space, tab and CR/LF: in an
# annotation file they are damage (a flipped or inserted byte), not a column separator.
_ODD_SPACE = re.compile(r"[\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_LONE_CR = re.compile(r"\r")
_CELL_SPACE = " \t"
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


# ---------------------------------------------------------------------------------------------
# Splits and keys
# ---------------------------------------------------------------------------------------------

def split_for_key(key: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split ("train" | "val" | "test") of `key`: a pure function of (seed, key).

    blake2b of f"{seed}:{key}" gives a uniform number u in [0, 1); u < test_fraction is "test",
    the next val_fraction is "val", the rest "train". Adding or removing other items never moves
    a key to another split, and every machine agrees without sharing a list.
    """
    _check_seed(seed)
    _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    return _hash_split(key, seed, val_fraction, test_fraction)


def _hash_split(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    data = f"{seed}:{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _check_fractions(*, val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if not val_fraction + test_fraction < 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 so that train is not empty, "
            f"got {val_fraction!r} + {test_fraction!r}"
        )


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _safe_key(text: str) -> str:
    """`text` with every character outside [A-Za-z0-9_-] replaced by '_' (webdataset-safe)."""
    if text.isascii() and text.isalnum():
        return text   # the common case (CelebA's 000001), without the regex
    return _UNSAFE_KEY_CHARS.sub("_", text) or "_"


def _unique_keys(bases: list[str]) -> list[str]:
    """Make `bases` unique: the first occurrence keeps its key, later ones get _2, _3, ...

    A suffixed key never takes a key that some other input has naturally, so adding a file never
    renames an existing one unless it collides with it.
    """
    natural = set(bases)
    used: set[str] = set()
    keys: list[str] = []
    for base in bases:
        key = base
        if key in used:
            n = 2
            while f"{base}_{n}" in used or f"{base}_{n}" in natural:
                n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def _check_root(root: str | Path, *, source: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise DataError(f"{source} root {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"{source} root {str(path)!r} is not a directory")
    return path.absolute()


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(directory: Path) -> list[tuple[str, str]]:
    """(file name, full path) of the image files directly in `directory`, sorted by name."""
    found: list[tuple[str, str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if _is_image_name(entry.name) and entry.is_file():
                found.append((entry.name, entry.path))
    found.sort()
    return found


def _no_usable_images(
    *, source: str, looked_in: str, num_files: int, skipped: list[dict[str, str]], extra: str = ""
) -> DataError:
    message = (
        f"{source}: no usable images: looked in {looked_in} and found {num_files} image file(s) "
        f"({', '.join(IMAGE_EXTENSIONS)}), {len(skipped)} skipped"
    )
    if skipped:
        examples = "; ".join(f"{s['input']}: {s['reason']}" for s in skipped[:3])
        message += f", e.g. {examples}"
    if extra:
        message += f". {extra}"
    return DataError(message)


def _stem(name: str) -> str:
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: expected UTF-8/ASCII text, found byte "
                        f"{data[exc.start]:#04x}") from exc


def _shown(line: str) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= 120 else line[:117] + "...")


# ---------------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------------

@dataclass
class _CelebaTable:
    """One parsed CelebA annotation file, keeping only the rows of images that exist."""

    path: Path
    column_names: list[str] | None   # the header line's names (attr and landmark files)
    rows: dict[str, Any]             # image stem -> converted values, only for wanted stems
    num_rows: int
    num_rows_without_image: int


def _parse_celeba_table(
    path: Path,
    *,
    wanted: set[str],
    has_header: bool,
    num_values: int,
    expected: str,
    value_desc: str,
    bad_value: Callable[[list[str]], int | None],
    convert: Callable[[list[str]], Any],
) -> _CelebaTable:
    """Parse `path`: [count line, names line] then rows of `name v1 .. v{num_values}`.

    Spaces or tabs separate columns; lines end in LF or CRLF. A lone CR or another control/space
    character inside a line is refused as damage.
    `bad_value(values)` returns the index of the first invalid value or None; it runs on every
    row so a corrupt file is caught even where no image exists. `convert` runs only on the rows
    of `wanted` images, which keeps the full 202,599-row files fast to scan.
    """
    # CRLF endings are fine; a lone CR or an odd space character inside a line is damage (a
    # flipped bit turns "-1" into "\r1", which str.split() would read as a valid "1").
    text = _read_text(path).replace("\r\n", "\n")
    odd = _ODD_SPACE.search(text) or _LONE_CR.search(text)
    if odd:
        line = text.count("\n", 0, odd.start()) + 1
        raise DataError(f"{path}: line {line}: unexpected control or space character {odd.group()!r} "
                        "(columns are separated by spaces or tabs, lines end in LF or CRLF)")
    lines = text.split("\n")
    column_names: list[str] | None = None
    first_row = 0
    declared_count = 0
    if has_header:
        if len(lines) < 2:
            raise DataError(f"{path}: expected a row-count line and a names line, "
                            f"found {len(lines)} line(s)")
        count_text = lines[0].strip()
        if not (count_text.isascii() and count_text.isdigit()):
            raise DataError(f"{path}: line 1: expected the number of rows (an integer), "
                            f"found {_shown(lines[0])}")
        declared_count = int(count_text)
        column_names = lines[1].split()
        if len(column_names) != num_values:
            raise DataError(f"{path}: line 2: expected {num_values} column names, "
                            f"found {len(column_names)}: {_shown(lines[1])}")
        if len(set(column_names)) != num_values:
            repeated = sorted(n for n, c in Counter(column_names).items() if c > 1)
            raise DataError(f"{path}: line 2: column names must be unique, repeated: {repeated}")
        first_row = 2

    num_columns = num_values + 1
    seen: dict[str, int] = {}
    rows: dict[str, Any] = {}
    num_rows = 0
    for index in range(first_row, len(lines)):
        parts = lines[index].split()
        if not parts:
            continue  # blank (e.g. trailing) line
        if len(parts) != num_columns:
            raise DataError(f"{path}: line {index + 1}: expected {num_columns} whitespace-"
                            f"separated columns ({expected}), found {len(parts)}: "
                            f"{_shown(lines[index])}")
        values = parts[1:]
        bad = bad_value(values)
        if bad is not None:
            column = column_names[bad] if column_names else "value"
            raise DataError(f"{path}: line {index + 1}: {column} (column {bad + 2}) must be "
                            f"{value_desc}, found {values[bad]!r}")
        stem, dot, _ = parts[0].rpartition(".")   # _stem, inlined: this loop runs 202,599 times
        if not (dot and stem):
            stem = parts[0]
        previous = seen.get(stem)
        if previous is not None:
            raise DataError(f"{path}: line {index + 1}: image {parts[0]!r} is listed twice "
                            f"(also on line {previous})")
        seen[stem] = index + 1
        num_rows += 1
        if stem in wanted:
            rows[stem] = convert(values)

    if has_header and declared_count != num_rows:
        raise DataError(f"{path}: line 1 says {declared_count} rows but the file has {num_rows} "
                        f"rows (truncated or edited file?)")
    return _CelebaTable(path=path, column_names=column_names, rows=rows, num_rows=num_rows,
                        num_rows_without_image=num_rows - len(rows))


_ATTR_VALUES = frozenset(("1", "-1"))
_ATTR_BITS = bytes.maketrans(b"01", b"\x00\x01")


def _attr_bits(values: list[str]) -> list[int]:
    """[1 where "1", 0 where "-1"] of values already checked to be "1" or "-1": joined, "-1"
    becomes "0", and each character its byte value (one pass in C instead of 40 lookups)."""
    return list("".join(values).replace("-1", "0").encode().translate(_ATTR_BITS))


def _bad_attr(values: list[str]) -> int | None:
    if _ATTR_VALUES.issuperset(values):
        return None
    return next(i for i, v in enumerate(values) if v not in _ATTR_VALUES)


def _bad_partition(values: list[str]) -> int | None:
    return None if values[0] in _PARTITION_CODES else 0


def _bad_identity(values: list[str]) -> int | None:
    return None if values[0].isascii() and values[0].isdigit() else 0


def _bad_int(values: list[str]) -> int | None:
    for i, v in enumerate(values):
        digits = v[1:] if v[:1] == "-" else v
        if not (digits.isascii() and digits.isdigit()):
            return i
    return None


def scan_celeba(
    *,
    root: str | Path,
    annotations: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> SourceScan:
    """Scan CelebA in its released layout.

    Images: ROOT/img_align_celeba/NNNNNN.jpg, or ROOT itself when it has no img_align_celeba/
    (also .jpeg/.png/.webp, matched to annotation rows by file stem). Annotation files are read
    from `annotations` if given, else ROOT:
      list_attr_celeba.txt (required)            -> labels["attrs"]: 40 ints, 1 where the file
                                                    says 1, else 0
      identity_CelebA.txt (optional)             -> labels["identity"]: int
      list_eval_partition.txt (optional)         -> labels["partition"]: 0|1|2 and the split
                                                    (0 train, 1 val, 2 test)
      list_landmarks_align_celeba.txt (optional) -> labels["landmarks"]: 10 ints
    Without a partition file the split is `split_for_key(key, seed=0, ...)` with the fractions.

    Annotation rows whose image is absent are counted in `rows_without_image` (a full annotation
    set with a partial image folder is normal). Images missing from any given annotation file are
    listed in `skipped`. A malformed annotation file raises DataError naming file and line.
    """
    _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    root_path = _check_root(root, source="celeba")
    image_dir = root_path / CELEBA_IMAGE_DIR
    if not image_dir.is_dir():
        image_dir = root_path
    if annotations is None:
        anno_dir = root_path
    else:
        anno_dir = Path(annotations)
        if not anno_dir.is_dir():
            raise DataError(f"celeba annotations directory {str(anno_dir)!r} does not exist"
                            if not anno_dir.exists() else
                            f"celeba annotations path {str(anno_dir)!r} is not a directory")
        anno_dir = anno_dir.absolute()
    attr_path = anno_dir / CELEBA_ATTR_FILE
    if not attr_path.is_file():
        raise DataError(f"celeba: required annotation file {CELEBA_ATTR_FILE} not found: looked "
                        f"for {attr_path}" + ("" if annotations is not None else
                                             " (pass --annotations DIR, or annotations: DIR in the recipe, "
                                             "if the annotation files live elsewhere)"))

    skipped: list[dict[str, str]] = []
    images: dict[str, str] = {}
    image_files = _list_images(image_dir)
    for name, path in image_files:
        stem = _stem(name)
        if stem in images:
            skipped.append({"input": path, "reason": f"another image with stem {stem!r} is "
                                                     f"already used: {images[stem]}"})
            continue
        images[stem] = path
    wanted = set(images)

    attrs = _parse_celeba_table(
        attr_path, wanted=wanted, has_header=True, num_values=len(CELEBA_ATTRS),
        expected=f"image name + {len(CELEBA_ATTRS)} values of -1/1", value_desc="-1 or 1",
        bad_value=_bad_attr,
        convert=_attr_bits,
    )
    assert attrs.column_names is not None
    optional: dict[str, _CelebaTable] = {}
    for label, file_name, kwargs in (
        ("identity", CELEBA_IDENTITY_FILE,
         dict(has_header=False, num_values=1, expected="image name + identity number",
              value_desc="a non-negative integer",
              bad_value=_bad_identity, convert=lambda values: int(values[0]))),
        ("partition", CELEBA_PARTITION_FILE,
         dict(has_header=False, num_values=1, expected="image name + partition 0|1|2",
              value_desc="0 (train), 1 (val) or 2 (test)",
              bad_value=_bad_partition, convert=lambda values: int(values[0]))),
        ("landmarks", CELEBA_LANDMARKS_FILE,
         dict(has_header=True, num_values=len(CELEBA_LANDMARK_NAMES),
              expected=f"image name + {len(CELEBA_LANDMARK_NAMES)} integers",
              value_desc="an integer", bad_value=_bad_int,
              convert=lambda values: [int(v) for v in values])),
    ):
        path = anno_dir / file_name
        if path.is_file():
            optional[label] = _parse_celeba_table(path, wanted=wanted, **kwargs)

    label_fields = ["attrs", *optional]
    tables = (attrs, *optional.values())
    usable = wanted.intersection(*(t.rows for t in tables))
    if len(usable) < len(images):
        for stem, path in images.items():
            if stem not in usable:
                missing = [t.path.name for t in tables if stem not in t.rows]
                skipped.append({"input": path, "reason": f"no row in {', '.join(missing)}"})
    stems = sorted(usable)

    # Label columns, each a list in `stems` order, then one dict per item: this runs 202,599 times
    # for full CelebA, so nothing is done per item that can be done per column.
    columns = [[table.rows[stem] for stem in stems] for table in tables]
    keys = _unique_keys([_safe_key(s) for s in stems])
    if "partition" in optional:
        splits = [SPLITS[code] for code in columns[label_fields.index("partition")]]
    else:
        splits = [_hash_split(key, 0, val_fraction, test_fraction) for key in keys]
    items = [SourceItem(key=key, split=split, path=images[stem], labels=dict(zip(label_fields, values)))
             for key, split, stem, *values in zip(keys, splits, stems, *columns)]
    items.sort(key=item_key)

    if not items:
        raise _no_usable_images(
            source="celeba", looked_in=str(image_dir), num_files=len(image_files), skipped=skipped,
            extra=f"{attr_path} has {attrs.num_rows} rows",
        )
    return SourceScan(source="celeba", items=items, attr_names=list(attrs.column_names),
                      skipped=skipped, rows_without_image=attrs.num_rows_without_image,
                      label_fields=label_fields)


# ---------------------------------------------------------------------------------------------
# UTKFace
# ---------------------------------------------------------------------------------------------

def _utk_stem(name: str) -> str:
    lower = name.lower()
    for suffix in (".jpg.chip.jpg", *IMAGE_EXTENSIONS):
        if lower.endswith(suffix):
            return name[: len(name) - len(suffix)]
    return name


def _is_uint(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_utk_name(stem: str) -> tuple[dict[str, Any] | None, str]:
    """(labels, "") for a usable name, (None, reason) for an unusable one.

    AGE_GENDER_RACE_DATETIME is the released pattern. Three fields ending in a datetime
    (8+ digits) are names with a field missing: the middle one is the gender if it is 0/1 and
    the race if it is 2-4 (the only reading), the other is None and labels["partial_name"] is
    True. Three fields ending in a short number are read as AGE_GENDER_RACE without a datetime.
    """
    fields = stem.split("_")
    if len(fields) not in (3, 4):
        return None, (f"expected AGE_GENDER_RACE_DATETIME, found {len(fields)} '_'-separated "
                      f"field(s) in {stem!r}")
    age_text = fields[0]
    if not _is_uint(age_text):
        return None, f"age {age_text!r} is not an integer"
    age = int(age_text)
    if age > _UTK_MAX_AGE:
        return None, f"age {age} is outside 0-{_UTK_MAX_AGE}"

    partial = len(fields) == 3 and _is_uint(fields[2]) and len(fields[2]) >= 8
    if partial:
        middle = fields[1]
        if middle in ("0", "1"):
            return {"age": age, "gender": int(middle), "race": None, "partial_name": True}, ""
        if middle in ("2", "3", "4"):
            return {"age": age, "gender": None, "race": int(middle), "partial_name": True}, ""
        return None, (f"field 2 {middle!r} of a 3-field name is neither a gender (0/1) "
                      f"nor a race (0-4)")
    gender_text, race_text = fields[1], fields[2]
    if gender_text not in ("0", "1"):
        return None, f"gender {gender_text!r} is not 0 (male) or 1 (female)"
    if race_text not in ("0", "1", "2", "3", "4"):
        return None, f"race {race_text!r} is not one of 0-4"
    return {"age": age, "gender": int(gender_text), "race": int(race_text)}, ""


def scan_utkface(
    *,
    root: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> SourceScan:
    """Scan a UTKFace folder (non-recursive): AGE_GENDER_RACE_DATETIME.jpg.chip.jpg or .jpg.

    labels = {"age": int, "gender": 0 male | 1 female | None, "race": 0-4 | None}. Names missing a
    field (the release has a few, e.g. 61_1_20170109142408075.jpg.chip.jpg) are kept with the
    unknown field None and labels["partial_name"] = True, for the builder to count. Names that
    cannot be read (no age, a gender other than 0/1, a race outside 0-4, ...) go to `skipped`
    with the bad field named. The key is the name without its suffix, '_' for unsafe characters.
    """
    _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    _check_seed(seed)
    root_path = _check_root(root, source="utkface")
    image_files = _list_images(root_path)
    skipped: list[dict[str, str]] = []
    parsed: list[tuple[str, str, dict[str, Any]]] = []
    for name, path in image_files:
        stem = _utk_stem(name)
        labels, reason = _parse_utk_name(stem)
        if labels is None:
            skipped.append({"input": path, "reason": reason})
        else:
            parsed.append((_safe_key(stem), path, labels))
    parsed.sort(key=lambda p: (p[0], p[1]))

    items = [
        SourceItem(key=key, split=_hash_split(key, seed, val_fraction, test_fraction), path=path,
                   labels=labels)
        for key, (_, path, labels) in zip(_unique_keys([p[0] for p in parsed]), parsed)
    ]
    items.sort(key=lambda item: item.key)
    if not items:
        raise _no_usable_images(source="utkface", looked_in=str(root_path),
                                num_files=len(image_files), skipped=skipped)
    return SourceScan(source="utkface", items=items, attr_names=[], skipped=skipped,
                      rows_without_image=0, label_fields=["age", "gender", "race"])


# ---------------------------------------------------------------------------------------------
# Plain folder (+ optional labels CSV)
# ---------------------------------------------------------------------------------------------

def _walk_images(root: Path, skipped: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(relative posix path, full path) of every image under `root`, sorted by relative path."""

    def unreadable(exc: OSError) -> None:
        skipped.append({"input": str(exc.filename),
                        "reason": f"cannot list directory: {exc.strerror or exc}"})

    found: list[tuple[str, str]] = []
    for directory, dirs, files in os.walk(root, onerror=unreadable):
        dirs.sort()
        for name in files:
            if _is_image_name(name):
                full = os.path.join(directory, name)
                found.append((Path(os.path.relpath(full, root)).as_posix(), full))
    found.sort()
    return found


@dataclass
class _CsvLabels:
    path: Path
    attr_names: list[str]
    rows: dict[str, list[float]]   # relative image path -> raw values
    num_rows_without_image: int


def _read_labels_csv(path: Path, *, root: Path, images: dict[str, str]) -> _CsvLabels:
    """Read a labels CSV: header `filename|file|path|image, NAME, ...`, then one row per image.

    The first column is a path relative to `root` (or absolute under it) or a bare file name
    that is unique in the folder. Rows naming no existing image are counted, not errors.
    """
    by_name: dict[str, list[str]] = {}
    for rel in images:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)

    rows: dict[str, list[float]] = {}
    row_line: dict[str, int] = {}
    num_missing = 0
    header: list[str] | None = None
    reader: Any = None
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            for row in reader:
                line = reader.line_num
                if not any(cell.strip(_CELL_SPACE) for cell in row):
                    continue
                if header is None:
                    header = [cell.strip(_CELL_SPACE) for cell in row]
                    if header[0].lower() not in _CSV_PATH_COLUMNS:
                        raise DataError(f"{path}: line {line}: expected a header row whose first "
                                        f"column is one of {', '.join(_CSV_PATH_COLUMNS)}, found "
                                        f"{header[0]!r}")
                    names = header[1:]
                    if any(not n for n in names) or len(set(names)) != len(names):
                        raise DataError(f"{path}: line {line}: label column names must be "
                                        f"non-empty and unique, found {names}")
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: line {line}: expected {len(header)} columns "
                                    f"({', '.join(header)}), found {len(row)}")
                values: list[float] = []
                for name, cell in zip(header[1:], row[1:]):
                    try:
                        cell = cell.strip(_CELL_SPACE)
                        # float() accepts "1_000", "infinity" and odd spaces; a label cell is a plain number.
                        value = float(cell) if _NUMBER.fullmatch(cell) else math.nan
                    except ValueError:
                        value = math.nan
                    if not math.isfinite(value):
                        raise DataError(f"{path}: line {line}: column {name!r} must be a finite "
                                        f"number, found {cell!r}")
                    values.append(value)
                rel = _csv_image(row[0].strip(_CELL_SPACE), root=root, images=images, by_name=by_name,
                                 where=f"{path}: line {line}")
                if rel is None:
                    num_missing += 1
                    continue
                if rel in row_line:
                    raise DataError(f"{path}: line {line}: image {rel!r} already has a row "
                                    f"(line {row_line[rel]})")
                row_line[rel] = line
                rows[rel] = values
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: unreadable CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: expected UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header is None:
        raise DataError(f"{path}: expected a header row (filename, label names...), found an "
                        f"empty file")
    return _CsvLabels(path=path, attr_names=header[1:], rows=rows,
                      num_rows_without_image=num_missing)


def _csv_image(
    text: str, *, root: Path, images: dict[str, str], by_name: dict[str, list[str]], where: str
) -> str | None:
    if not text:
        raise DataError(f"{where}: the image path (first column) is empty")
    rel = text.replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    if os.path.isabs(rel):
        try:
            rel = Path(rel).relative_to(root).as_posix()
        except ValueError:
            return None
    if rel in images:
        return rel
    if "/" not in rel:
        candidates = by_name.get(rel, [])
        if len(candidates) > 1:
            raise DataError(f"{where}: file name {text!r} matches {len(candidates)} images "
                            f"({', '.join(candidates[:3])}...); give its path relative to {root}")
        if candidates:
            return candidates[0]
    return None


def _attr_values(
    rows: dict[str, list[float]], num_columns: int
) -> dict[str, list[int] | list[float]]:
    """0/1 ints when every column is 0/1 or -1/1 (-1 -> 0); otherwise the raw values as floats."""
    column_values: list[set[float]] = [set() for _ in range(num_columns)]
    for values in rows.values():
        for column, value in zip(column_values, values):
            column.add(value)
    if all(c <= {0.0, 1.0} or c <= {-1.0, 1.0} for c in column_values):
        return {rel: [1 if v == 1.0 else 0 for v in values] for rel, values in rows.items()}
    return {rel: [float(v) for v in values] for rel, values in rows.items()}


def scan_folder(
    *,
    root: str | Path,
    labels_csv: str | Path | None = None,
    labels_json: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> SourceScan:
    """Scan every .jpg/.jpeg/.png/.webp under `root` (recursive, case-insensitive extensions).

    The key is the relative path without its extension, '_' for characters outside
    [A-Za-z0-9_-], made unique with _2, _3, ... The split is `split_for_key(key, seed, ...)`.

    With `labels_csv` (header `filename|file|path|image, NAME1, NAME2, ...`; the first column a
    path relative to ROOT or a unique bare file name): attr_names = [NAME1, ...] and
    labels["attrs"] = one value per column, as 0/1 ints when every column holds only 0/1 or
    only -1/1 (-1 becomes 0), otherwise as the raw floats for every column. Rows naming a missing
    image are counted in `rows_without_image`; images without a row are `skipped`. Without a CSV
    the labels are empty.

    With `labels_json`, each image's labels are the JSON object in its sidecar `NAME.json` (beside
    `NAME.png`; e.g. what `facegan augment` stages): `attrs` in the order of the list in
    `ROOT/attr_names.json`, any other labels verbatim, and a `split` key (train/val/test), when
    present, choosing the image's split instead of the hash. An image without a readable sidecar
    is skipped with its reason.
    """
    _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    _check_seed(seed)
    root_path = _check_root(root, source="folder")
    skipped: list[dict[str, str]] = []
    found = _walk_images(root_path, skipped)
    images = dict(found)

    attr_names: list[str] = []
    labels_by_rel: dict[str, list[int] | list[float]] | None = None
    rows_without_image = 0
    csv_name = ""
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        csv_name = csv_path.name
        if not csv_path.is_file():
            raise DataError(f"folder labels CSV {str(csv_path)!r} does not exist")
        table = _read_labels_csv(csv_path, root=root_path, images=images)
        attr_names = table.attr_names
        labels_by_rel = _attr_values(table.rows, len(attr_names))
        rows_without_image = table.num_rows_without_image

    sidecars: dict[str, dict[str, Any]] = {}
    if labels_json:
        attr_names = _read_attr_names(root_path)
        for rel, path in found:
            try:
                sidecars[rel] = _read_sidecar(Path(path), num_attrs=len(attr_names))
            except DataError as exc:
                skipped.append({"input": path, "reason": str(exc)})

    kept: list[tuple[str, str]] = []
    for rel, path in found:
        if labels_by_rel is not None and rel not in labels_by_rel:
            skipped.append({"input": path, "reason": f"no row in {csv_name}"})
        elif labels_json and rel not in sidecars:
            continue   # skipped above, with the sidecar's problem
        else:
            kept.append((rel, path))
    bases = [_safe_key(rel.rsplit(".", 1)[0]) for rel, _ in kept]
    items: list[SourceItem] = []
    label_fields: set[str] = {"attrs"} if attr_names else set()
    for key, (rel, path) in zip(_unique_keys(bases), kept):
        labels: dict[str, Any] = {}
        split = _hash_split(key, seed, val_fraction, test_fraction)
        if labels_by_rel is not None and attr_names:
            labels["attrs"] = labels_by_rel[rel]
        if labels_json:
            labels = dict(sidecars[rel])
            split = labels.pop("split", split)
            label_fields |= set(labels)
        items.append(SourceItem(key=key, split=split, path=path, labels=labels))
    items.sort(key=lambda item: item.key)
    if not items:
        raise _no_usable_images(source="folder", looked_in=f"{root_path} (recursively)",
                                num_files=len(found), skipped=skipped)
    return SourceScan(source="folder", items=items, attr_names=attr_names, skipped=skipped,
                      rows_without_image=rows_without_image, label_fields=sorted(label_fields))


def _read_attr_names(root: Path) -> list[str]:
    path = root / "attr_names.json"
    if not path.is_file():
        return []
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a JSON list of attribute names: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{path}: expected a JSON list of distinct attribute names")
    return names


def _read_sidecar(image: Path, *, num_attrs: int) -> dict[str, Any]:
    """The labels of `image` from its JSON sidecar; DataError (a skip reason) when unusable."""
    path = image.with_suffix(".json")
    if not path.is_file():
        raise DataError(f"no labels sidecar {path.name}")
    try:
        labels = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"labels sidecar {path.name} is not valid JSON: {exc}") from None
    if not isinstance(labels, dict):
        raise DataError(f"labels sidecar {path.name}: expected a JSON object")
    split = labels.get("split")
    if split is not None and split not in SPLITS:
        raise DataError(f"labels sidecar {path.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    attrs = labels.get("attrs")
    if attrs is not None and (not isinstance(attrs, list) or len(attrs) != num_attrs
                              or not all(v in (0, 1) for v in attrs)):
        raise DataError(f"labels sidecar {path.name}: attrs must be {num_attrs} values of 0/1 "
                        "(in the order of attr_names.json)")
    return labels
