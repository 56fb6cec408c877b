"""What a shard source hands the builder: one `SourceItem` per image, plus a `SourceScan` summary.

Sources (celeba, utkface, folder, synthetic) only *scan*: they list items and labels and say what
they skipped. Pixels are read later, in the builder's worker processes, so scanning 200k CelebA
rows is cheap and the heavy work parallelises per shard.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from facegan.errors import DataError  # noqa: F401  (re-exported: the data layer raises it)

# CelebA's 40 attributes in the order of list_attr_celeba.txt.
CELEBA_ATTRS: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SourceItem:
    """One image to write.

    key:    unique within the scan, webdataset-safe (no '.', '/' or whitespace); becomes __key__.
    split:  one of SPLITS.
    path:   the image file for file-backed sources; None for synthetic items (rendered from `index`).
    index:  the synthetic face index (render input); 0 for file-backed sources.
    labels: JSON-serialisable dict stored verbatim in the sample's .json, e.g.
            {"attrs": [0/1 x len(attr_names)], "identity": 2880, "partition": 0,
             "landmarks": [10 ints]} for CelebA, {"age": 61, "gender": 1, "race": null} for UTKFace.
    """

    key: str
    split: str
    path: str | None = None
    index: int = 0
    labels: dict[str, Any] = field(default_factory=dict)


item_key = operator.attrgetter("key")   # sorts SourceItems by key


@dataclass
class SourceScan:
    """Everything a source found. `skipped` and `rows_without_image` go into manifest.json."""

    source: str                                   # "celeba" | "utkface" | "folder" | "synthetic"
    items: list[SourceItem]
    attr_names: list[str]                         # names for labels["attrs"] (may be empty)
    skipped: list[dict[str, str]] = field(default_factory=list)   # {"input": ..., "reason": ...}
    rows_without_image: int = 0                   # annotation rows whose image file is absent
    label_fields: list[str] = field(default_factory=list)         # keys present in labels


