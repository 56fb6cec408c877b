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

Identity filter (`IdentityFilter`, on by default in `facegan augment`): every variant's dlib face
descriptor is compared with its photo's (facegan.inversion.FaceCheck) and only variants still the
same person (distance <= max_distance, dlib's 0.6 by default) are written; the distances and the
number dropped (and why) go into the new set's manifest. With an attribute classifier, an edit by
attribute directions is searched per photo over `strengths` (multiples of the edit's scale, the
smallest first): the first strength at which the classifier reads the edit's target attributes is
taken, and the variant is dropped when none lands or when the landed edit is no longer the person.
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
from facegan.inversion import Edit, FaceCheck, InvertOptions, apply_edit, invert

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


MAX_STRENGTHS = 32
DROPPED = {"identity": "descriptor distance to the photo over --max-identity-distance",
           "not_landed": "the classifier did not read the edit's target at any strength tried",
           "no_face": "no face detected in the source photo (identity cannot be checked)"}


@dataclass(frozen=True)
class IdentityFilter:
    """Keep a variant only while it is still its photo's person; optionally search edit strengths."""

    check: FaceCheck
    max_distance: float                      # dlib descriptor distance (0.6: dlib's same-person threshold)
    classifier: torch.nn.Module | None = None
    strengths: tuple[float, ...] = (1.0,)    # multiples of a direction edit's scale tried, smallest first

    def __post_init__(self) -> None:
        if not 0 < self.max_distance <= 2:
            raise ConfigError(f"--max-identity-distance: expected 0 < D <= 2 (descriptor distances lie in [0, 2]; "
                              f"0 turns the filter off), got {self.max_distance}")
        if not 1 <= len(self.strengths) <= MAX_STRENGTHS or any(not 0 < f <= 100 for f in self.strengths):
            raise ConfigError(f"--strengths: expected 1..{MAX_STRENGTHS} multiples in (0, 100], got "
                              f"{list(self.strengths)}")


@dataclass
class Variant:
    """One variant of a source photo: the edit it took, the face, and what the filter found."""

    edit: Edit
    image: Tensor
    strength: float = 1.0                    # the multiple of the edit's scale used
    landed: bool | None = None               # the classifier read the edit's targets (None: not searched)
    distance: float | None = None            # dlib descriptor distance to the photo (None: not measured)
    descriptor: Any = None                   # its dlib descriptor (128,) where measured
    dropped: str = ""                        # why it was dropped: one of DROPPED ("": kept)

    @property
    def kept(self) -> bool:
        return not self.dropped

    def record(self) -> dict[str, Any]:
        return {"edit": self.edit.name, "strength": self.strength, "landed": self.landed,
                "identity_distance": None if self.distance is None else round(self.distance, 4),
                "kept": self.kept, **({"dropped": self.dropped} if self.dropped else {})}


def _scaled(edit: Edit, factor: float) -> Edit:
    return Edit(name=edit.name, codes=edit.codes, attrs=edit.attrs,
                directions={k: v * factor for k, v in edit.directions.items()})


def _lands(classifier: torch.nn.Module, faces: Tensor, targets: dict[str, float]) -> Tensor:
    """(N,) bool: the classifier reads every target attribute of the edit in each face."""
    from facegan.families.classifier.scoring import attribute_probs

    names = list(classifier.attr_names)
    probs = attribute_probs(classifier, faces)
    ok = torch.ones(faces.shape[0], dtype=torch.bool)
    for name, value in targets.items():
        ok &= (probs[:, names.index(name)] > 0.5) == (value > 0.5)
    return ok


def _make_variant(gen: Generator, latent: Tensor, attrs: Tensor | None, edit: Edit, *,
                  directions: dict[str, Tensor] | None, noise: Tensor | None,
                  identity: IdentityFilter | None) -> Variant:
    """The edit applied to one latent; with a classifier, the smallest strength at which it lands."""
    searched = identity is not None and identity.classifier is not None and bool(edit.directions)
    factors = identity.strengths if searched and identity is not None else (1.0,)
    lats, atts = [], []
    for f in factors:
        lat, att = apply_edit(gen, latent, attrs, _scaled(edit, f), directions=directions)
        if noise is not None:
            lat = gen.steps.project_latent(lat + noise)
        lats.append(lat)
        atts.append(att)
    faces = gen.generate(torch.cat(lats), torch.cat(atts) if atts[0] is not None else None)
    if not searched or identity is None or identity.classifier is None:
        return Variant(edit=edit, image=faces[0])
    landed = _lands(identity.classifier, faces, edit.target_attrs())
    if not bool(landed.any()):
        return Variant(edit=edit, image=faces[-1], strength=factors[-1], landed=False, dropped="not_landed")
    j = int(landed.nonzero()[0])
    return Variant(edit=edit, image=faces[j], strength=factors[j], landed=True)


def filter_identity(identity: IdentityFilter, photos: Tensor, variants: list[list[Variant]]) -> None:
    """Measure each variant against its photo (one batched descriptor pass) and drop those that
    are no longer the person; a photo with no detectable face drops all its variants."""
    todo = [(i, v) for i, vs in enumerate(variants) for v in vs if v.kept]
    if not todo:
        return
    src_desc, src_found = identity.check.describe(photos)
    made_desc, _ = identity.check.describe(torch.stack([v.image for _, v in todo]))
    import numpy as np

    dist = np.linalg.norm(src_desc[[i for i, _ in todo]] - made_desc, axis=1)
    for (i, v), d, desc in zip(todo, dist, made_desc):
        v.descriptor = desc
        if not src_found[i]:
            v.dropped = "no_face"
            continue
        v.distance = float(d)
        if d > identity.max_distance:
            v.dropped = "identity"


def augment_batch(gen: Generator, sources: list[Source], *, edits: list[Edit], variants: int, options: InvertOptions,
                  directions: dict[str, Tensor] | None, jitter: float, seed: int,
                  predictor: Callable[[Tensor], Tensor] | None = None,
                  identity: IdentityFilter | None = None) -> list[list[Variant]]:
    """Per source, `variants` Variants: one batched inversion, then the edits (searched and
    identity-filtered with `identity`; dropped variants are returned with kept=False)."""
    photos = torch.stack([s.image for s in sources])
    # Each photo's random starts are seeded by its key, so batching does not change its latent.
    result = invert(gen, photos, options, predictor=predictor, indices=[_seed_of(s.key, seed) % 2**31 for s in sources])
    out: list[list[Variant]] = []
    with torch.no_grad():
        for i, source in enumerate(sources):
            latent = result.latent[i:i + 1]
            attrs = result.attrs[i:i + 1] if result.attrs is not None else None
            noise_gen = torch.Generator().manual_seed(_seed_of(source.key, seed + 1))
            made = []
            for edit in variant_edits(edits, variants=variants, key=source.key, seed=seed):
                noise = jitter * torch.randn(latent.shape, generator=noise_gen) if jitter > 0 else None
                made.append(_make_variant(gen, latent, attrs, edit, directions=directions, noise=noise,
                                          identity=identity))
            out.append(made)
    if identity is not None:
        filter_identity(identity, photos, out)
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


def stage(root: Path, source: Source, faces: list[Variant], *, attr_names: list[str]) -> None:
    """One source's kept variants as PNG + JSON sidecars in root/<key>/, made visible by a rename;
    done.json records every variant (kept or dropped) for the manifest."""
    from facegan.images import save_pngs

    final = root / source.key
    tmp = root / f".{source.key}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    kept = [(i, v) for i, v in enumerate(faces) if v.kept]
    try:
        if kept:
            paths = save_pngs(torch.stack([v.image for _, v in kept]), tmp, prefix=source.key)
            for (i, v), path in zip(kept, paths):
                labels = variant_labels(source, v.edit, attr_names=attr_names, index=i)
                if v.distance is not None:
                    labels["identity_distance"] = round(v.distance, 4)
                path.with_suffix(".json").write_text(json.dumps(labels, sort_keys=True))
        (tmp / DONE).write_text(json.dumps({"key": source.key, "variants": len(kept),
                                            "records": [v.record() for v in faces]}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write augmented faces to {final}: {exc.strerror or exc}") from None


def identity_summary(records: dict[str, list[dict[str, Any]]], identity: IdentityFilter | None) -> dict[str, Any]:
    """The manifest's `identity_filter` section: settings, counts kept/dropped (by reason) and every
    variant's distance (records: source key -> its variants' records)."""
    rows = [r for rs in records.values() for r in rs]
    reasons = {k: sum(r.get("dropped") == k for r in rows) for k in DROPPED}
    dists = [r["identity_distance"] for r in rows if r["identity_distance"] is not None]
    doc: dict[str, Any] = {"enabled": identity is not None, "variants": len(rows),
                           "kept": sum(r["kept"] for r in rows), "dropped": sum(not r["kept"] for r in rows),
                           "dropped_by_reason": reasons, "reasons": DROPPED, "variants_per_source": records}
    if identity is not None:
        doc.update(max_distance=identity.max_distance, measure="dlib face descriptor distance to the source photo",
                   strengths=list(identity.strengths) if identity.classifier is not None else None,
                   classifier=str(getattr(identity.classifier, "checkpoint", "")) or None,
                   mean_distance=round(sum(dists) / len(dists), 4) if dists else None)
    return doc


def staging_fingerprint(*, checkpoint: str, edits: list[Edit], variants: int, options: InvertOptions, jitter: float,
                        seed: int, sources: str, identity: IdentityFilter | None = None) -> str:
    """What the staged faces depend on: a rerun with another fingerprint starts the staging afresh."""
    doc = {"checkpoint": checkpoint, "edits": [vars(e) for e in edits], "variants": variants, "jitter": jitter,
           "seed": seed, "sources": sources, "losses": options.losses, "steps": options.steps, "lr": options.lr,
           "restarts": options.restarts, "inversion_seed": options.seed,
           "identity": None if identity is None else
           {"max_distance": identity.max_distance, "strengths": list(identity.strengths),
            "classifier": str(getattr(identity.classifier, "checkpoint", "")) if identity.classifier else None}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
