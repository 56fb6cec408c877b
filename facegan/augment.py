"""Augmentation for face recognition (seed 002's purpose): real photos of a person, inverted into a
generator's latent space, edited, and written back as more training data.

    facegan augment data/celeba64 --split train --checkpoint runs/dcgan --variants 4 \\
        --direction Smiling=1.5 --direction Eyeglasses=2 --out data/celeba64_aug

For every source image (a shard set's split, chosen identities, or a folder of photos): invert it
(facegan.inversion), then make `variants` edited faces. Each variant takes one of the given edits
(in turn, starting at an offset drawn from the image's key) and, with `jitter` > 0, a small
seeded latent perturbation, so variants differ even under the same edit. Everything is seeded by
the image's key and `seed`: the same command gives the same faces.

The faces are staged as PNG files with a JSON sidecar of labels under `<out>.staging/` (one folder
per source image, written last and atomically, so a rerun skips every image already done), then
`facegan shards build --source folder --labels-json` writes the shard set in the usual format and
manifest: labels keep the source's identity (and its other labels), `attrs` set to the edit's
target where the edit names attributes, `source_key` the original's key, `augmented: true`, the
edit's name, and the original's split. The result passes `facegan shards verify` and trains like
any shards. Unreadable photos are skipped and listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facegan.errors import ConfigError, DataError
from facegan.families.loading import Generator
from facegan.inversion import Edit, InvertOptions, apply_edit, invert

STAGING_SUFFIX = ".staging"
DONE = "done.json"
MAX_VARIANTS = 256


@dataclass
class Source:
    """One image to augment: its pixels (3 x H x W in [-1, 1]), key, split and labels."""

    key: str
    image: Tensor
    split: str
    labels: dict[str, Any]


def _seed_of(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def shard_sources(shards: str, *, splits: list[str], identities: set[int] | None = None,
                  resolution: tuple[int, int]) -> Iterator[Source]:
    """The images of a shard set's splits (optionally only some identities), in shard order."""
    from facegan.data.stream import ShardSet, eval_loader

    shard_set = ShardSet.open(shards)
    if tuple(shard_set.resolution) != tuple(resolution):
        raise ConfigError(f"{shards}: its images are {shard_set.resolution[0]}x{shard_set.resolution[1]}, the "
                          f"generator makes {resolution[0]}x{resolution[1]}")
    for split in splits:
        if not shard_set.count(split):
            raise ConfigError(f"--split: {shards} has no {split} split")
        for batch in eval_loader(shard_set, split=split, batch_size=64):
            for i, key in enumerate(batch["key"]):
                labels: dict[str, Any] = {}
                if "attrs" in batch:
                    labels["attrs"] = [int(v) for v in batch["attrs"][i].tolist()]
                for name in ("identity", "partition", "age", "gender", "race"):
                    if name in batch and int(batch[name][i]) >= 0:
                        labels[name] = int(batch[name][i])
                if identities is not None and labels.get("identity") not in identities:
                    continue
                yield Source(key=key, image=batch["image"][i], split=split, labels=labels)


def folder_sources(paths: list[str], *, crop: Any, resolution: tuple[int, int],
                   skipped: list[dict[str, str]]) -> Iterator[Source]:
    """Photos from files (cropped and resized as the generator's shards were); unreadable ones are
    skipped and listed in `skipped` instead of stopping the run."""
    from facegan.control import load_photos

    for path in paths:
        try:
            image = load_photos([path], crop=crop, height=resolution[0], width=resolution[1])[0]
        except DataError as exc:
            skipped.append({"input": str(path), "reason": str(exc).split(": ", 1)[-1]})
            continue
        key = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).stem)
        yield Source(key=key, image=image, split="train", labels={})


def variant_edits(edits: list[Edit], *, variants: int, key: str, seed: int) -> list[Edit]:
    """The `variants` edits of one image: the list in turn from a seeded offset."""
    if not edits:
        raise ConfigError("augment: give at least one edit (--direction, --attrs, --set) or --jitter")
    start = _seed_of(key, seed) % len(edits)
    return [edits[(start + i) % len(edits)] for i in range(variants)]


def augment_batch(gen: Generator, sources: list[Source], *, edits: list[Edit], variants: int, options: InvertOptions,
                  directions: dict[str, Tensor] | None, jitter: float, seed: int,
                  predictor: Callable[[Tensor], Tensor] | None = None) -> list[list[tuple[Edit, Tensor]]]:
    """Per source, `variants` (edit, image) pairs: one batched inversion, then the edits."""
    photos = torch.stack([s.image for s in sources])
    # Each photo's random starts are seeded by its key, so batching does not change its latent.
    result = invert(gen, photos, options, predictor=predictor, indices=[_seed_of(s.key, seed) % 2**31 for s in sources])
    out: list[list[tuple[Edit, Tensor]]] = []
    with torch.no_grad():
        for i, source in enumerate(sources):
            latent = result.latent[i:i + 1]
            attrs = result.attrs[i:i + 1] if result.attrs is not None else None
            noise_gen = torch.Generator().manual_seed(_seed_of(source.key, seed + 1))
            faces = []
            for edit in variant_edits(edits, variants=variants, key=source.key, seed=seed):
                lat, att = apply_edit(gen, latent, attrs, edit, directions=directions)
                if jitter > 0:
                    lat = gen.steps.project_latent(lat + jitter * torch.randn(lat.shape, generator=noise_gen))
                faces.append((edit, gen.generate(lat, att)[0]))
            out.append(faces)
    return out


def variant_labels(source: Source, edit: Edit, *, attr_names: list[str], index: int) -> dict[str, Any]:
    labels = {k: v for k, v in source.labels.items() if k not in ("img_crc32", "labels_crc32")}
    target = edit.target_attrs()
    if target and attr_names:
        attrs = list(labels.get("attrs") or [0] * len(attr_names))
        for name, value in target.items():
            if name in attr_names:
                attrs[attr_names.index(name)] = int(value > 0.5)
        labels["attrs"] = attrs
    labels.update(source_key=source.key, augmented=True, edit=edit.name, variant=index, split=source.split)
    return labels


def stage(root: Path, source: Source, faces: list[tuple[Edit, Tensor]], *, attr_names: list[str]) -> None:
    """One source's variants as PNG + JSON sidecars in root/<key>/, made visible by a rename."""
    from facegan.images import save_pngs

    final = root / source.key
    tmp = root / f".{source.key}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        paths = save_pngs(torch.stack([f for _, f in faces]), tmp, prefix=source.key)
        for i, ((edit, _), path) in enumerate(zip(faces, paths)):
            path.with_suffix(".json").write_text(json.dumps(variant_labels(source, edit, attr_names=attr_names,
                                                                           index=i), sort_keys=True))
        (tmp / DONE).write_text(json.dumps({"key": source.key, "variants": len(faces)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write augmented faces to {final}: {exc.strerror or exc}") from None


def staging_fingerprint(*, checkpoint: str, edits: list[Edit], variants: int, options: InvertOptions, jitter: float,
                        seed: int, sources: str) -> str:
    """What the staged faces depend on: a rerun with another fingerprint starts the staging afresh."""
    doc = {"checkpoint": checkpoint, "edits": [vars(e) for e in edits], "variants": variants, "jitter": jitter,
           "seed": seed, "sources": sources, "losses": options.losses, "steps": options.steps, "lr": options.lr,
           "restarts": options.restarts, "inversion_seed": options.seed}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
