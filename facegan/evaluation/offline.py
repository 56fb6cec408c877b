"""Evaluate a generator (or a folder of images, or a baseline) against real shards, offline.

    facegan eval --checkpoint runs/dcgan/checkpoints/ckpt-000040000 --shards data/celeba64 \\
        --num-samples 5000 --classifier runs/classifier_celeba64          # fid_attr, kid_attr, ...
    facegan eval --images other_gan_samples/ --shards data/celeba64 --features inception \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth            # plain fid, kid, ...
    facegan eval --baseline random --shards data/celeba64 ...              # faceless random images
    facegan eval --baseline real --shards data/celeba64 ...                # held-out real: the floor

Any family with a generator is scored the same way (GANs, the VAE's decoder); d_accuracy needs a
family whose discriminator gives logits (DCGAN and its relatives).

The generated ("fake") set is compared with held-out real images (`--eval-split`, default val)
for FID/KID/precision/recall, with the training split for memorisation, and with itself for
MS-SSIM diversity; a GAN checkpoint's own discriminator is also scored on held-out real vs
generated images. Fakes are drawn in fixed chunks of `CHUNK` images, chunk i from z seeded by
(seed, i), so the set is the same whether one process draws it or Ray workers split the chunks
(`--workers N`: facegan.launch.evaluate runs `compute_share` as Ray tasks and hands the shares to
`evaluate`; this package never imports launch); features are gathered before any statistic.

Metric names follow the feature network: `fid` only for Inception; `fid_attr` etc. for the
project's attribute classifier, so nobody compares them with published FIDs.

Face identity (`--face`, default auto: on wherever dlib-bin and face_recognition_models are
installed, as requirements.lock installs them): beside the main feature network, the generated and
held-out real images also go through dlib's face descriptor (facegan.metrics.face, the same path for
both sets) and its HOG face detector, giving fid_face, kid_face, precision_face/recall_face,
identity_diversity (against identity_diversity_real) and face_detection_rate (against
face_detection_rate_real). `--features face` makes the descriptor the main network instead (no
classifier needed; memorisation_face then too).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facegan.checkpoint import find_checkpoint
from facegan.config import ConfigError
from facegan.families.loading import Generator, load_generator
from facegan.images import as_uint8_images

log = logging.getLogger(__name__)

CHUNK = 64                      # images per generation chunk: the unit Ray workers split
MIN_IMAGES = 10                 # fewer and precision/recall (k = 3) or FID cannot be computed
MAX_IMAGES = 1_000_000          # generated images are kept (uint8) for MS-SSIM: bounded by memory too
SOURCES = ("checkpoint", "images", "random", "real")
FEATURES = ("attr", "inception", "face")
FACE_MODES = ("auto", "on", "off")


@dataclass(kw_only=True)
class EvalRequest:
    """What to evaluate and how; validated before anything is loaded or any Ray worker starts."""

    shards: str
    checkpoint: str = ""              # a GAN checkpoint folder (or a run's checkpoints/ folder: its latest)
    images: str = ""                  # a folder of images made by any program
    baseline: str = ""                # "random" (no knowledge of faces) or "real" (held-out real images)
    num_samples: int = 5000
    features: str = "attr"
    classifier: str = ""              # attribute classifier checkpoint (features=attr)
    inception_weights: str = ""       # local Inception-v3 weights file (features=inception)
    num_real: int = 10_000            # at most this many real images per split
    train_split: str = "train"
    eval_split: str = "val"
    real_split: str = "test"          # where --baseline real draws its "generated" images
    batch_size: int = 64
    seed: int = 0
    use_ema: bool = True
    metrics: list[str] = field(default_factory=list)   # [] = every metric whose inputs exist
    ms_ssim_pairs: int = 1000
    kid_subset_size: int = 1000
    face: str = "auto"                # face-identity metrics beside the main features: auto (if installed), on, off

    def __post_init__(self) -> None:
        given = [n for n in ("checkpoint", "images", "baseline") if getattr(self, n)]
        if len(given) != 1:
            raise ConfigError("eval: give exactly one of --checkpoint, --images, --baseline "
                              f"(got {', '.join(given) or 'none'})")
        if self.baseline and self.baseline not in ("random", "real"):
            raise ConfigError(f"eval.baseline: expected 'random' or 'real', got {self.baseline!r}")
        if self.features not in FEATURES:
            raise ConfigError(f"eval.features: expected one of {list(FEATURES)}, got {self.features!r}")
        if self.face not in FACE_MODES:
            raise ConfigError(f"eval.face (--face): expected one of {list(FACE_MODES)}, got {self.face!r}")
        if self.features == "face" or self.face == "on":
            from facegan.metrics.face import load_face_models

            load_face_models()   # FaceModelError (one line: how to install) before anything starts
        if self.features == "inception" and not self.inception_weights:
            raise ConfigError("eval.features=inception needs --inception-weights PATH (a local Inception-v3 "
                              "weights file: the standard FID weights or torchvision's inception_v3 state_dict)")
        for name in ("num_samples", "num_real", "batch_size", "ms_ssim_pairs", "kid_subset_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"eval.{name}: expected a positive integer, got {value!r}")
        for name in ("num_samples", "num_real"):
            value = getattr(self, name)
            if not MIN_IMAGES <= value <= MAX_IMAGES:
                raise ConfigError(f"eval.{name} (--{name.replace('_', '-')}): expected {MIN_IMAGES}..{MAX_IMAGES:,} images "
                                  f"(precision/recall needs k + 1 = 4 neighbours per image, FID a covariance), got {value}")
        if self.batch_size > 4096:
            raise ConfigError(f"eval.batch_size (--batch-size): expected 1..4096, got {self.batch_size}")
        for path_name in ("checkpoint", "images", "classifier", "inception_weights"):
            value = getattr(self, path_name)
            if value and not Path(value).exists():
                raise ConfigError(f"eval.{path_name}: {value} does not exist")
        if self.metrics:
            from facegan.metrics import METRICS

            unknown = [m for m in self.metrics if m not in METRICS]
            if unknown:
                raise ConfigError(f"eval.metrics: unknown {unknown}; known: {sorted(METRICS)}")
            face_only = [m for m in self.metrics if m in FACE_ONLY_METRICS]
            if face_only and self.features != "face" and not self.face_extra:
                raise ConfigError(f"eval.metrics: {face_only} need face descriptors: --face on "
                                  f"(dlib-bin and face_recognition_models installed) or --features face")

    def preflight(self) -> None:
        """What can be checked before any image is drawn: the real splits hold enough images, an
        image folder holds enough images, and the generated set fits in memory."""
        from facegan.data.stream import ShardSet

        shards = ShardSet.open(self.shards)
        splits = [self.train_split, self.eval_split] + ([self.real_split] if self.baseline == "real" else [])
        for split in splits:
            if shards.count(split) < MIN_IMAGES:
                raise ConfigError(f"{self.shards}: the {split} split holds {shards.count(split)} images; evaluation needs "
                                  f"at least {MIN_IMAGES} (choose another with --eval-split/--train-split/--real-split)")
        if self.images:
            from facegan.metrics.features import IMAGE_SUFFIXES

            found = sum(1 for f in Path(self.images).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if found < MIN_IMAGES:
                raise ConfigError(f"--images: {self.images} holds {found} images (.png/.jpg); evaluation needs at least "
                                  f"{MIN_IMAGES}")
        h, w = shards.resolution
        need = (self.num_samples + 2 * self.num_real) * 3 * h * w
        from facegan.runtime import memory_bytes

        if need > memory_bytes() // 2:
            raise ConfigError(f"--num-samples {self.num_samples} and --num-real {self.num_real} at {h}x{w} need "
                              f"{need / 2**30:.1f} GiB of images in memory; this machine has "
                              f"{memory_bytes() / 2**30:.1f} GiB: ask for fewer")

    @property
    def needs_train(self) -> bool:
        """Whether a metric asked for looks at the training split (memorisation); all do by default."""
        from facegan.metrics import METRICS

        return not self.metrics or any("real_train_feats" in METRICS[m].needs for m in self.metrics)

    @property
    def face_extra(self) -> bool:
        """Whether a face pass runs beside the main features (features != "face")."""
        if self.features == "face" or self.face == "off":
            return False
        if self.face == "on":
            return True
        from facegan.metrics.face import face_available

        return face_available()

    @property
    def source(self) -> str:
        if self.checkpoint:
            return "checkpoint"
        return "images" if self.images else self.baseline


# --- the generated set

def draw_chunk(G: nn.Module, index: int, *, seed: int, num: int, steps: Any, attrs: Tensor | None = None,
               device: torch.device | None = None) -> Tensor:
    """uint8 CPU images of chunk `index` from G (on `device`): the same on any process. The latents
    come from the family's `steps.latent` with a generator seeded by (seed, index); families that
    take attributes get `attrs` rows cycled over the whole set."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    latent = steps.latent(num, generator=gen).to(device or "cpu")
    rows = None
    if attrs is not None:
        rows = attrs[torch.arange(index * CHUNK, index * CHUNK + num) % len(attrs)].to(latent.device)
    with torch.no_grad():
        img = steps.generate(G, latent, rows)
    return as_uint8_images(img).cpu()


def generator_attrs(gen: Generator, shards: str) -> Tensor | None:
    """Attribute rows for families that take them: the shards' first val rows (the data's
    distribution), or the checkpoint's training rates when the shards have no labels."""
    if not gen.family.takes_attrs:
        return None
    from facegan.data.labels import fixed_attrs
    from facegan.data.stream import ShardSet

    shard_set = ShardSet.open(shards)
    if list(shard_set.attr_names) == gen.attr_names:
        return fixed_attrs(shard_set, 1024)
    return gen.default_attrs(1)


def chunks_for(num_samples: int, *, rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, int]]:
    """(chunk index, size) of this rank's chunks: round-robin, so every rank gets a fair share."""
    for index in range(rank, math.ceil(num_samples / CHUNK), world_size):
        yield index, min(CHUNK, num_samples - index * CHUNK)


def random_chunks(num_samples: int, *, height: int, width: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> Iterator[Tensor]:
    from facegan.metrics import random_baseline_images

    for index, size in chunks_for(num_samples, rank=rank, world_size=world_size):
        yield random_baseline_images(num_images=size, height=height, width=width, seed=seed * 1_000_003 + index)


# --- one worker's share, then the statistics

FACE_ONLY_METRICS = ("identity_diversity", "face_detection")
FACE_FIELDS = ("fake_face", "fake_detected", "eval_face", "eval_detected")


def _empty(dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(0, dtype=dtype)


@dataclass
class Share:
    """What one process contributes: features and images of each set (gathered before statistics),
    and with face metrics the face descriptors and detector flags of the generated and eval images
    (empty when there are none)."""

    fake_feats: Tensor
    fake_images: Tensor
    train_feats: Tensor
    eval_feats: Tensor
    eval_images: Tensor
    skipped_inputs: int = 0
    fake_face: Tensor = field(default_factory=_empty)
    fake_detected: Tensor = field(default_factory=lambda: _empty(torch.bool))
    eval_face: Tensor = field(default_factory=_empty)
    eval_detected: Tensor = field(default_factory=lambda: _empty(torch.bool))
    fake_names: list[str] = field(default_factory=list)   # --images: the file of each generated image


def face_fields(req: EvalRequest, *, fake_images: Tensor | None = None, eval_images: Tensor | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, Tensor]:
    """The face fields of a Share for the images given: dlib descriptors and HOG detector flags
    (the face pass beside the main features), or only the flags when the main features already
    are face descriptors (features="face"); {} when there are no face metrics."""
    if not (req.face_extra or req.features == "face"):
        return {}
    from facegan.metrics.face import describe_faces, detect_faces, load_face_models

    models = load_face_models()
    out: dict[str, Tensor] = {}
    for prefix, images in (("fake", fake_images), ("eval", eval_images)):
        if images is None:
            continue
        feats, flags = [], []
        batches = images.split(req.batch_size) if images.ndim == 4 and images.shape[0] else []
        for batch in _counted(batches, progress if req.face_extra else None):
            if req.face_extra:
                faces = describe_faces(batch, detect=True, batch_size=min(req.batch_size, 1024), models=models)
                feats.append(torch.from_numpy(faces.descriptors))
                assert faces.detected is not None
                flags.append(torch.from_numpy(faces.detected))
            else:
                flags.append(torch.from_numpy(detect_faces(batch, models=models)))
        if req.face_extra:
            out[f"{prefix}_face"] = torch.cat(feats) if feats else _empty()
        out[f"{prefix}_detected"] = torch.cat(flags) if flags else _empty(torch.bool)
    return out


def make_extractor(req: EvalRequest):
    from facegan.metrics import attr_extractor, face_extractor, load_inception

    if req.features == "inception":
        return load_inception(req.inception_weights)
    if req.features == "face":
        return face_extractor(batch_size=min(req.batch_size, 1024))
    return attr_extractor(checkpoint=resolve_classifier(req.classifier))


def resolve_classifier(path: str) -> str:
    """The attribute classifier checkpoint: a checkpoint folder, or a run folder's latest."""
    if not path:
        raise ConfigError("eval.features=attr needs --classifier PATH: a checkpoint of the attribute classifier "
                          "(train one with `facegan classifier train configs/classifier_celeba64.yaml`)")
    return str(find_checkpoint(path))


def compute_share(req: EvalRequest, *, rank: int = 0, world_size: int = 1,
                  progress: Callable[[int], None] | None = None) -> Share:
    """This rank's features of its chunks of generated images and of its share of the real splits.
    `progress(n)` is called after every batch of n images is featurised (generated, real train,
    real eval, in that order)."""
    from facegan.data.stream import ShardSet
    from facegan.metrics import extract_features, read_image_folder, shard_images

    shards = ShardSet.open(req.shards)
    height, width = shards.resolution
    extractor = make_extractor(req)
    skipped = 0
    names: list[str] = []
    if req.source == "checkpoint":
        gen = load_generator(req.checkpoint, ema=req.use_ema)
        h, w = gen.resolution
        if (h, w) != (height, width):
            raise ConfigError(f"{req.checkpoint} makes {h}x{w} images but the shards in {req.shards} "
                              f"are {height}x{width}")
        attrs = generator_attrs(gen, req.shards)
        fakes: Any = (draw_chunk(gen.G, i, seed=req.seed, num=n, steps=gen.steps, attrs=attrs)
                      for i, n in chunks_for(req.num_samples, rank=rank, world_size=world_size))
    elif req.source == "random":
        fakes = random_chunks(req.num_samples, height=height, width=width, seed=req.seed, rank=rank,
                              world_size=world_size)
    elif req.source == "real":
        fakes = shard_images(shards_dir=req.shards, split=req.real_split, max_images=req.num_samples,
                             batch_size=req.batch_size, rank=rank, world_size=world_size)
    else:
        folder = read_image_folder(req.images, height=height, width=width, max_images=req.num_samples)
        skipped = len(folder.skipped)
        fakes = folder.images[rank::world_size]
        names = folder.paths[rank::world_size]
    fake_images, fake_feats = _images_and_features(extractor, fakes, batch_size=req.batch_size, progress=progress)
    train_feats = extract_features(extractor, _counted(shard_images(
        shards_dir=req.shards, split=req.train_split, max_images=req.num_real, batch_size=req.batch_size,
        rank=rank, world_size=world_size), progress), batch_size=req.batch_size) if req.needs_train else _empty()
    eval_images, eval_feats = _images_and_features(
        extractor, shard_images(shards_dir=req.shards, split=req.eval_split, max_images=req.num_real,
                                batch_size=req.batch_size, rank=rank, world_size=world_size),
        batch_size=req.batch_size, progress=progress)
    return Share(fake_feats=fake_feats, fake_images=fake_images, train_feats=train_feats, eval_feats=eval_feats,
                 eval_images=eval_images, skipped_inputs=skipped, fake_names=names,
                 **face_fields(req, fake_images=fake_images, eval_images=eval_images, progress=progress))


def _counted(batches: Iterable[Tensor], progress: Callable[[int], None] | None) -> Iterator[Tensor]:
    """The batches, reporting each one's size to `progress` once the consumer asks for the next."""
    for batch in batches:
        yield batch
        if progress is not None:
            progress(len(batch))


def _images_and_features(extractor, images: Tensor | Iterator[Tensor], *, batch_size: int,
                         progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    from facegan.metrics import extract_features

    kept: list[Tensor] = []

    def tee() -> Iterator[Tensor]:
        batches = images.split(batch_size) if isinstance(images, Tensor) else images
        for batch in _counted(batches, progress):
            kept.append(batch)
            yield batch

    feats = extract_features(extractor, tee(), batch_size=batch_size)
    return torch.cat(kept), feats


def merge_shares(shares: list[Share]) -> Share:
    tensors = ("fake_feats", "fake_images", "train_feats", "eval_feats", "eval_images", *FACE_FIELDS)
    return Share(**{f: torch.cat([getattr(s, f) for s in shares]) for f in tensors},
                 skipped_inputs=sum(s.skipped_inputs for s in shares),
                 fake_names=[n for s in shares for n in s.fake_names])


def canonical_order(images_NCHW: Tensor) -> Tensor:
    """A permutation that sorts images by their content: gathered sets come in rank order, and KID
    subsets and MS-SSIM pairs are drawn by index, so sorting makes scores independent of how
    the work was split."""
    flat = images_NCHW.reshape(images_NCHW.shape[0], -1).double()
    weights = torch.rand(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.argsort(flat @ weights, stable=True)


def statistics(req: EvalRequest, share: Share, *, disc: nn.Module | None = None) -> dict[str, float]:
    """Every metric over the gathered sets (features already extracted)."""
    from facegan.metrics import MetricOptions, compute_metrics

    from facegan.metrics import METRICS

    fake_order, eval_order = canonical_order(share.fake_images), canonical_order(share.eval_images)

    def order(t: Tensor, idx: Tensor) -> Tensor:
        return t[idx] if t.numel() else t

    share = Share(fake_feats=share.fake_feats[fake_order], fake_images=share.fake_images[fake_order],
                  train_feats=share.train_feats, eval_feats=share.eval_feats[eval_order],
                  eval_images=share.eval_images[eval_order], skipped_inputs=share.skipped_inputs,
                  fake_face=order(share.fake_face, fake_order), fake_detected=order(share.fake_detected, fake_order),
                  eval_face=order(share.eval_face, eval_order), eval_detected=order(share.eval_detected, eval_order))

    options = MetricOptions(ms_ssim_pairs=req.ms_ssim_pairs, kid_subset_size=req.kid_subset_size, seed=req.seed)
    detected = {"fake_detected": share.fake_detected if share.fake_detected.numel() else None,
                "real_detected": share.eval_detected if share.eval_detected.numel() else None}
    main = [m for m in req.metrics if METRICS[m].applies_to(req.features)
            and (m != "face_detection" or req.features == "face")]
    scores = compute_metrics(names=main if req.metrics else None, feature_name=req.features,
                             real_train_feats=share.train_feats if share.train_feats.numel() else None,
                             real_eval_feats=share.eval_feats,
                             fake_feats=share.fake_feats, fake_images=share.fake_images,
                             real_images=share.eval_images, disc=disc, options=options,
                             **(detected if req.features == "face" else {}))
    if share.fake_face.numel():
        # The face pass beside the main features: held-out real images only (no train descriptors,
        # so no memorisation_face), the detector's flags for the detection rate.
        face = [m for m in req.metrics if m != "memorisation" and (METRICS[m].feature_based or m == "face_detection")]
        scores.update(compute_metrics(names=face if req.metrics else None, feature_name="face",
                                      real_eval_feats=share.eval_face, fake_feats=share.fake_face,
                                      options=options, **detected))
    scores.update(num_fake=float(share.fake_feats.shape[0]), num_real_train=float(share.train_feats.shape[0]),
                  num_real_eval=float(share.eval_feats.shape[0]), skipped_inputs=float(share.skipped_inputs))
    return scores


def evaluate(req: EvalRequest, *, shares: list[Share] | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score the request: from `shares` computed elsewhere (facegan.launch.evaluate.ray_shares: Ray
    tasks), else in this process (`progress` as in compute_share). Returns the JSON result."""
    workers = len(shares) if shares is not None else 0
    share = merge_shares(shares if shares is not None else [compute_share(req, progress=progress)])
    disc = None
    if req.source == "checkpoint":
        gen = load_generator(req.checkpoint, ema=req.use_ema)
        disc = gen.run.nets.get(gen.family.discriminator) if gen.family.discriminator else None
    scores = statistics(req, share, disc=disc)
    result: dict[str, Any] = {"request": asdict(req), "source": describe_source(req), "workers": workers,
                              "scores": scores}
    if share.fake_detected.numel():
        result["face"] = face_summary(share)
    if req.source == "checkpoint":
        from facegan.checkpoint import read_meta

        path = find_checkpoint(req.checkpoint)
        result["checkpoint"] = str(path)
        result["kimg"] = read_meta(path).get("kimg")
    return result


def face_summary(share: Share) -> dict[str, Any]:
    """How the face metrics were measured, and how many images (with --images: which files) had no
    face the detector could find; such an image is scored all the same, from the fixed face box."""
    from facegan.metrics import face

    summary: dict[str, Any] = {
        "descriptor": face.MODEL_FILES["descriptor"], "landmarks": face.MODEL_FILES["landmarks"],
        "detector": "dlib HOG frontal face detector", "align": "fixed box (facegan.metrics.face.FACE_BOX)",
        "work_size": face.WORK_SIZE, "same_person_threshold": face.SAME_PERSON_THRESHOLD,
        "fake_without_face": int((~share.fake_detected).sum()),
        "eval_without_face": int((~share.eval_detected).sum()) if share.eval_detected.numel() else None}
    if share.fake_names:
        summary["files_without_face"] = [n for n, found in zip(share.fake_names, share.fake_detected.tolist())
                                         if not found]
    return summary


def describe_source(req: EvalRequest) -> str:
    if req.source == "checkpoint":
        return f"checkpoint {find_checkpoint(req.checkpoint)} ({'EMA ' if req.use_ema else ''}generator)"
    if req.source == "images":
        return f"images in {req.images}"
    if req.source == "real":
        return f"real images, split {req.real_split!r}"
    return "random baseline (no knowledge of faces)"


def format_table(results: list[dict[str, Any]]) -> str:
    """Rows: sources; columns: metrics (those present in any result)."""
    keys: list[str] = []
    for r in results:
        keys += [k for k in r["scores"] if k not in keys and not k.startswith("num_") and k != "skipped_inputs"]
    label_w = max(len("source"), *(len(r["source"]) for r in results))
    head = f"{'source':<{label_w}}  " + "  ".join(f"{k:>12}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = []
        for k in keys:
            v = r["scores"].get(k)
            cells.append(f"{'-':>12}" if v is None else f"{v:>12.4g}")
        lines.append(f"{r['source']:<{label_w}}  " + "  ".join(cells))
    n = results[0]["scores"]
    train = f"; {int(n['num_real_train'])} training images for memorisation" if n["num_real_train"] else ""
    lines.append(f"({int(n['num_fake'])} generated vs {int(n['num_real_eval'])} held-out real{train})")
    return "\n".join(lines)


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    return path
