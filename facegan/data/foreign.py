"""Labels of samples in WebDataset tars facegan did not write (`facegan shards import`).

A built set's .json carries facegan's labels and checksums (facegan.data.writer.labels_json); an
imported set's samples carry whatever their writer put there: a `.json` object, a `.cls` class
index, a `.txt` caption or class. The import records in its manifest how they map onto facegan's
labels (`manifest["imported"]["labels"]`), and every reader turns a sample into labels with it:

    attrs     JSON keys whose values become `labels["attrs"]` (1 where the value is true or > 0, else 0)
    cls_as    the label field a `.cls` (or an integer `.txt`) becomes, e.g. "identity"
    fields    integer JSON keys passed through as label fields (identity, partition, age, gender, race)

There are no per-sample checksums: the manifest's per-shard sha256 (checked by `verify`) is what
guards an imported set.
"""

from __future__ import annotations

import json
from typing import Any

from facegan.data.imageio import ImageError

# Integer label fields a stream batch carries (facegan.data.stream) and an import may pass through.
LABEL_FIELDS: tuple[str, ...] = ("identity", "partition", "age", "gender", "race")
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png")


def _int_text(raw: bytes) -> int | None:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        return None


def _attr_value(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value > 0)
    raise ValueError(f".json field {name!r} (named by --attrs) is {value!r}, not a number or boolean")


def foreign_sample_labels(sample: dict[str, Any], *, ext: str, spec: dict[str, Any]) -> dict[str, Any]:
    """facegan labels of one imported sample; ValueError (ImageError for a missing image) if the
    sample cannot be used. Nothing is decoded."""
    key = sample.get("__key__")
    if not key or key.endswith("/"):
        raise ValueError("members without a key (a name that starts with '.')")
    if sample.get(ext) is None:
        raise ImageError(f"no .{ext} image")
    labels: dict[str, Any] = {}
    raw = sample.get("json")
    attrs: list[str] = list(spec.get("attrs", []))
    if raw is not None:
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f".json is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ValueError(".json is not a JSON object")
        if attrs:
            missing = [a for a in attrs if a not in meta]
            if missing:
                raise ValueError(f".json has no {', '.join(missing)} (named by --attrs)")
            labels["attrs"] = [_attr_value(a, meta[a]) for a in attrs]
        for name in spec.get("fields", []):
            value = meta.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                labels[name] = value
    elif attrs:
        raise ValueError("no .json for the attributes named by --attrs")
    cls_as = spec.get("cls_as")
    if cls_as:
        for part in ("cls", "txt"):
            if sample.get(part) is not None:
                value = _int_text(sample[part])
                if value is None and part == "cls":
                    raise ValueError(f".cls is not an integer: {sample[part][:40]!r}")
                if value is not None:
                    labels[cls_as] = value
                    break
    return labels


def foreign_labels(samples: list[dict[str, Any]], *, ext: str, spec: dict[str, Any]
                   ) -> list[dict[str, Any] | ValueError]:
    """`foreign_sample_labels` of each sample: its labels or the ValueError saying why not."""
    out: list[dict[str, Any] | ValueError] = []
    for sample in samples:
        try:
            out.append(foreign_sample_labels(sample, ext=ext, spec=spec))
        except ValueError as exc:
            out.append(exc)
    return out


__all__ = ["IMAGE_EXTS", "LABEL_FIELDS", "foreign_labels", "foreign_sample_labels"]
