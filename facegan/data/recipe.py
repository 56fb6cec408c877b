"""Shard recipes: how a source becomes a shard set (`shards/*.yaml` load into `ShardRecipe`).

    facegan shards build shards/celeba64.yaml --root /data/celeba --out /data/shards/celeba64
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from facegan import errors
from facegan.config import ConfigError, apply_overrides, from_dict, read_yaml, require, to_dict
from facegan.data.limits import MAX_SIDE

SourceName = Literal["celeba", "utkface", "folder", "synthetic"]
ImageFormat = Literal["jpg", "png", "raw"]
IMAGE_EXT: dict[str, str] = {"jpg": "jpg", "png": "png", "raw": "npy"}
# Static ceilings; memory-dependent bounds are checked against the machine when building
# (facegan.data.limits). Nothing holds a whole shard in memory, so shard_size is bounded only to
# keep a shard a unit that a reader can restart on.
MAX_SHARD_SIZE = 100_000
MAX_COUNT = 100_000_000


def parse_hw(value: Any, *, field_name: str) -> tuple[int, int]:
    """`64`, `"64"`, `"218x178"` or `[218, 178]` -> (height, width), both positive ints."""
    expected = f"{field_name}: expected a positive integer or [height, width] / 'HxW', got {value!r}"
    if isinstance(value, bool):
        raise ConfigError(expected)
    if isinstance(value, str):
        text = value.strip().lower()
        parts = text.split("x") if "x" in text else [text, text]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(expected) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        value = [value, value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ConfigError(expected)
    return int(value[0]), int(value[1])


@dataclass(kw_only=True)
class ShardRecipe:
    """One shard set. `root`/`out` come from the command line, everything else may be in YAML.

    crop: "square" (largest centred square; CelebA 178x218 -> 178x178), "none" (whole image),
          an int N (centred N x N box) or [h, w] (centred h x w box), in source pixels.
    resolution: output size, an int (square) or [height, width] (CelebA native: [218, 178]),
          at most MAX_SIDE (4096) per side.
    min_side, max_aspect: a source image whose shorter side is below `min_side` pixels, or whose
          long/short side ratio is above `max_aspect`, is skipped and listed with the reason
          instead of being stretched into a face (a 1x1 or 3000x8 file is not a photo).
    """

    source: SourceName
    resolution: int | str | list[int] = 64
    crop: int | str | list[int] = "square"
    format: ImageFormat = "jpg"
    quality: int = 95
    shard_size: int = 1000
    workers: int = 0                      # 0: all cores
    seed: int = 0
    shuffle: bool = True                  # shuffle the train split's order across shards
    val_fraction: float = 0.1             # used where the source has no official partition
    test_fraction: float = 0.1
    annotations: str | None = None        # celeba: folder holding list_attr_celeba.txt etc.
    labels_csv: str | None = None         # folder: optional CSV of labels
    labels_json: bool = False             # folder: labels from a JSON sidecar per image (IMAGE.json)
    count: int = 1000                     # synthetic: number of faces
    limit: int = 0                        # >0: keep only the first N items (smoke runs)
    # >0: keep N train-split items (a choice seeded by `seed`), val and test whole: the small
    # training sets of data-efficiency runs (`--set train_limit=500`), scored on the usual splits
    train_limit: int = 0
    min_side: int = 32                    # skip sources whose shorter side is below this (px; 0: off)
    max_aspect: float = 4.0               # skip sources whose long/short side ratio exceeds this
    description: str = ""

    def __post_init__(self) -> None:
        self.height, self.width = parse_hw(self.resolution, field_name="resolution")
        require(max(self.height, self.width) <= MAX_SIDE,
                f"resolution: expected at most {MAX_SIDE} per side, got {self.height}x{self.width}")
        self.resolution = [self.height, self.width] if self.height != self.width else self.height
        if not (isinstance(self.crop, str) and self.crop in ("square", "none")):
            try:
                self.crop = list(parse_hw(self.crop, field_name="crop"))
            except ConfigError:
                raise ConfigError(f"crop: expected 'square', 'none', N or [h, w], got {self.crop!r}") from None
        require(1 <= self.quality <= 100, f"quality: expected 1..100, got {self.quality}")
        require(1 <= self.shard_size <= MAX_SHARD_SIZE,
                f"shard_size: expected 1..{MAX_SHARD_SIZE}, got {self.shard_size}")
        require(self.workers >= 0, f"workers: expected >= 0 (0 = all cores), got {self.workers}")
        require(0 <= self.val_fraction < 1, f"val_fraction: expected 0 <= x < 1, got {self.val_fraction}")
        require(0 <= self.test_fraction < 1, f"test_fraction: expected 0 <= x < 1, got {self.test_fraction}")
        require(self.val_fraction + self.test_fraction < 1,
                f"val_fraction + test_fraction: expected < 1, got {self.val_fraction + self.test_fraction}")
        require(self.count >= 1, f"count: expected a positive integer, got {self.count}")
        require(self.count <= MAX_COUNT, f"count: expected at most {MAX_COUNT:,}, got {self.count:,}")
        require(self.limit >= 0, f"limit: expected >= 0, got {self.limit}")
        require(self.train_limit >= 0, f"train_limit: expected >= 0, got {self.train_limit}")
        require(self.min_side >= 0, f"min_side: expected >= 0 pixels (0 = no bound), got {self.min_side}")
        require(isinstance(self.max_aspect, (int, float)) and 1.0 <= self.max_aspect < float("inf"),
                f"max_aspect: expected a ratio >= 1 (long side / short side), got {self.max_aspect}")
        require(self.source == "celeba" or self.annotations is None,
                f"annotations: only used by source celeba, not {self.source}")
        require(self.source == "folder" or self.labels_csv is None,
                f"labels_csv: only used by source folder, not {self.source}")
        require(self.source == "folder" or not self.labels_json,
                f"labels_json: only used by source folder, not {self.source}")
        require(not (self.labels_csv and self.labels_json), "labels_csv, labels_json: give one source of labels")

    @property
    def crop_hw(self) -> tuple[int, int] | str:
        return self.crop if isinstance(self.crop, str) else (self.crop[0], self.crop[1])

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def fingerprint(self) -> str:
        """Hash of every setting that changes the bytes written (not workers or description)."""
        data = {k: v for k, v in self.as_dict().items() if k not in ("workers", "description")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]




def _one_line(text: str) -> str:
    return " ".join(text.split())   # YAML errors span lines; `facegan` prints one


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_recipe(path: str | os.PathLike[str] | None = None, *, flags: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> ShardRecipe:
    """The recipe from a YAML file, then `flags` (field -> value, given as --field-name), then
    `sets` ("key=value", given as --set). A bad value is reported under the name it was given
    as: `--resolution: ...`, `--set quality: ...` or `FILE: quality: ...`; anything the YAML or
    the values can throw becomes one ConfigError (facegan.errors) naming the file.

        load_recipe("shards/celeba64.yaml", flags={"resolution": "128"}, sets=["quality=90"])
    """
    where = str(path) if path is not None else "recipe"
    try:
        data: dict[str, Any] = read_yaml(path) if path is not None else {}
        origin = {key: f"{where}: {key}" for key in data}
        for name, value in (flags or {}).items():
            if value is not None:
                data[name] = value
                origin[name] = _flag(name)
        for item in sets or []:
            key = item.split("=", 1)[0].strip()
            origin[key] = f"--set {key}"
        data = apply_overrides(data, sets)
    except ConfigError as exc:
        raise errors.ConfigError(_one_line(str(exc))) from None
    except yaml.YAMLError as exc:   # a --set value that is not YAML (read_yaml reports the file's own)
        raise errors.ConfigError(_one_line(f"--set: a value is not valid YAML: {exc}")) from None
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        # e.g. a YAML date that does not exist (2021-02-30): not a yaml.YAMLError
        raise errors.ConfigError(_one_line(f"{where}: not a valid recipe: {type(exc).__name__}: {exc}")) from None
    if "source" not in data:
        raise errors.ConfigError(f"{where}: source: not given (pass a recipe file with `source:` or --source)"
                                 if path is not None else "source: not given (pass a recipe file or --source)")
    try:
        return from_dict(ShardRecipe, data)
    except ConfigError as exc:
        msg = _one_line(str(exc))
        field, sep, rest = msg.partition(": ")
        if sep and field in origin:
            raise errors.ConfigError(f"{origin[field]}: {rest}") from None
        if msg.startswith("unknown key"):
            unknown = [k for k in data if k not in ShardRecipe.__dataclass_fields__]
            if unknown and all(origin.get(k, "").startswith("--set") for k in unknown):
                raise errors.ConfigError(f"--set: {msg}") from None
        raise errors.ConfigError(f"{where}: {msg}" if path is not None else msg) from None
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError, ZeroDivisionError) as exc:
        # The loader's coercions can throw these on odd values (e.g. "1/0" as a number).
        raise errors.ConfigError(_one_line(f"{where}: not a valid recipe: {type(exc).__name__}: {exc}")) from None
